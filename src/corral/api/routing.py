"""One port for everything: sandbox traffic goes to per-port apps, the rest to the main app.

A request is sandbox traffic when it carries ``E2b-Sandbox-Id`` + ``E2b-Sandbox-Port`` headers (the
E2B SDKs with ``E2B_SANDBOX_URL``), or when ``CORRAL_DOMAIN`` is set and its Host is
``{port}-{sandbox id}.{domain}`` (wildcard DNS behind a TLS-terminating proxy), or when its path
is ``/v1/sandboxes/{id}/ports/{port}/...`` (the rest of the path is what the sandbox sees). The
target is put in the ASGI scope as ``corral.sandbox = (sandbox_id, port)``. Ports without an app
of their own (envd, interpreter) go to the exposed-ports proxy (``api/ports.py``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.api.fastpath import FastPath

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ENVD_PORT = 49983
INTERPRETER_PORT = 49999
_ID = re.compile(r"^[a-z0-9]{1,64}$")
_PORT_PATH = re.compile(r"^/v1/sandboxes/([a-z0-9]{1,64})/ports/([0-9]{1,5})(/.*)?$")


def port_path(path: str) -> tuple[str, int, str] | None:
    """(sandbox id, port, path inside) for ``/v1/sandboxes/{id}/ports/{port}/...``, else None. Pure."""
    m = _PORT_PATH.match(path)
    if m is None:
        return None
    return m.group(1), int(m.group(2)), m.group(3) or "/"


def sandbox_target(headers: list[tuple[bytes, bytes]], domain: str | None) -> tuple[str, int] | None:
    """(sandbox id, port) if this request is for a sandbox, else None. Pure; unit-tested."""
    found: dict[bytes, bytes] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in (b"e2b-sandbox-id", b"e2b-sandbox-port", b"host"):
            found.setdefault(lowered, value)
    sid, port = found.get(b"e2b-sandbox-id"), found.get(b"e2b-sandbox-port")
    if sid is not None and port is not None:
        sandbox_id, port_text = sid.decode("latin-1").strip(), port.decode("latin-1").strip()
        return (sandbox_id, int(port_text)) if port_text.isascii() and port_text.isdigit() else (sandbox_id, -1)
    host = found.get(b"host", b"").decode("latin-1").split(":", 1)[0].lower()
    if domain and host.endswith("." + domain.lower()):
        label = host[: -len(domain) - 1]
        port_text, sep, sandbox_id = label.partition("-")
        if sep and port_text.isascii() and port_text.isdigit() and _ID.match(sandbox_id):
            return sandbox_id, int(port_text)
    return None


class SandboxRouter:
    """ASGI dispatcher in front of the main app."""

    def __init__(
        self, main: ASGIApp, ports: dict[int, ASGIApp], domain: str | None, any_port: ASGIApp | None = None,
        fast: FastPath | None = None,
    ) -> None:
        self.main = main
        self.ports = ports
        self.domain = domain
        self.any_port = any_port
        self.fast = fast  # the calls on a create's and a command's way, taken ahead of the apps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            target = sandbox_target(scope.get("headers", []), self.domain)
            by_path = port_path(scope.get("path", "")) if target is None else None
            if by_path is not None and self.any_port is not None:
                sandbox_id, port, inside = by_path
                scope = {**scope, "path": inside, "raw_path": inside.encode(), "corral.sandbox": (sandbox_id, port)}
                await self.any_port(scope, receive, send)
                return
            if target is not None:
                app = self.ports.get(target[1], self.any_port if 0 < target[1] < 65536 else None)
                if app is None:
                    await _json_error(send, 502, f"sandbox {target[0]}: port {target[1]} is not served")
                    return
                scope["corral.sandbox"] = target
                envd = target[1] == ENVD_PORT and scope["type"] == "http"
                if envd and self.fast is not None and await self.fast.envd_call(scope, receive, send):
                    return
                await app(scope, receive, send)
                return
            if self.fast is not None and scope["type"] == "http":
                passed_on = await self.fast.main_call(scope, receive, send)
                if passed_on is None:
                    return
                receive = passed_on
        await self.main(scope, receive, send)


async def _json_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"code": status, "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
