"""Exposed ports: HTTP to a server a sandbox runs on any port other than envd's and the interpreter's.

Reached through the router as ``{port}-{id}.{domain}`` (Host), the ``E2b-Sandbox-Id``/``-Port``
headers, or the path ``/v1/sandboxes/{id}/ports/{port}/...``; authenticated like every sandbox
port (its access token, or an API key that may use it: ``deps.sandbox_caller``). The connection is
made inside the sandbox's network namespace to ``127.0.0.1:port``, so it works in every network
mode and needs no route from the host; other sandboxes can never reach the port (docs/network.md).

One HTTP/1.1 exchange per request (``Connection: close`` upstream), bodies streamed both ways
with h11. WebSocket upgrades are not proxied.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import h11
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from corral.api import NO_TELEMETRY
from corral.api.deps import SandboxCallerDep, ServicesDep
from corral.service.errors import Unreachable

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Not forwarded: hop-by-hop headers and the credentials that opened the port.
DROPPED = {
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"x-access-token", b"e2b-traffic-access-token", b"x-api-key", b"authorization", b"e2b-sandbox-id",
    b"e2b-sandbox-port",
}
READ = 65536


def create_ports_app() -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, telemetry=NO_TELEMETRY)

    @app.api_route("/{path:path}", methods=METHODS)
    async def proxy(request: Request, caller: SandboxCallerDep, svc: ServicesDep) -> Response:
        sock = await svc.sandboxes.connect_port(caller.sandbox_id, caller.port)
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            return await _exchange(request, reader, writer, f"sandbox {caller.sandbox_id} port {caller.port}")
        except BaseException:
            writer.close()
            raise

    return app


async def _exchange(
    request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str
) -> Response:
    conn = h11.Connection(h11.CLIENT)
    headers = [(k, v) for k, v in request.headers.raw if k.lower() not in DROPPED]
    if not any(k.lower() == b"host" for k, _ in headers):
        headers.append((b"host", b"localhost"))
    has_length = any(k.lower() == b"content-length" for k, _ in headers)
    if not has_length and request.method not in ("GET", "HEAD", "OPTIONS", "DELETE"):
        headers.append((b"transfer-encoding", b"chunked"))
    headers.append((b"connection", b"close"))
    target = request.scope.get("raw_path") or request.url.path.encode()
    if request.url.query:
        target = target.split(b"?", 1)[0] + b"?" + request.url.query.encode()
    try:
        writer.write(conn.send(h11.Request(method=request.method, target=target, headers=headers)) or b"")
        async for chunk in request.stream():
            if chunk:
                writer.write(conn.send(h11.Data(data=chunk)) or b"")
                await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        head = await _next_event(conn, reader)
    except (h11.ProtocolError, OSError) as exc:
        raise Unreachable(f"{where}: the server there broke the exchange ({exc})") from exc
    if not isinstance(head, h11.Response):
        raise Unreachable(f"{where}: the server there closed without an HTTP answer")
    out_headers = {}
    for k, v in head.headers:
        if k.lower() not in DROPPED and k.lower() != b"content-length":
            out_headers[k.decode("latin-1")] = v.decode("latin-1")
    return StreamingResponse(_body(conn, reader, writer), status_code=head.status_code, headers=out_headers)


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(READ))
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        return event


async def _body(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> AsyncIterator[bytes]:
    try:
        while True:
            event = await _next_event(conn, reader)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            else:  # EndOfMessage or ConnectionClosed
                return
    except (h11.ProtocolError, OSError):
        return  # the status is sent already: a cut body is all the caller can see
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
