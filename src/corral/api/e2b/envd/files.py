"""envd's plain HTTP file transfer: ``GET /files`` (download) and ``POST /files`` (upload).

Callers prove access with the sandbox's token or a signed URL (`access.authorize`). Errors are JSON ``{code, message}``
with envd's statuses: 400 bad request or a directory, 401 credentials or user, 404 missing path,
507 disk full. Bodies stream both ways; a download of up to 256 KiB is read ahead so its
Content-Length is exact (`streaming.file_body`), nothing larger is buffered whole on the host.
"""

from __future__ import annotations

import mimetypes
import posixpath
import urllib.parse
import zlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from corral.agent.protocol import AgentError, AgentUnavailable
from corral.api.deps import Services
from corral.api.errors import error
from corral.api.streaming import file_body

from .access import authorize
from .process import home_relative
from .rpc import DEFAULT_USER
from .uploads import PartWriter, UploadError, boundary_of, write_parts

_STATUS = {
    "not_found": 404,
    "exists": 409,
    "not_dir": 400,
    "is_dir": 400,
    "invalid": 400,
    "permission": 403,
    "no_space": 507,
    "too_large": 507,
}


def _failure(exc: AgentError, sandbox_id: str, path: str) -> JSONResponse:
    if isinstance(exc, AgentUnavailable):
        return error(503, f"sandbox {sandbox_id}: its agent is not reachable ({exc.message})")
    if exc.kind == "not_found" and exc.message.startswith("unknown user"):
        return error(401, f"sandbox {sandbox_id}: {exc.message}")
    if exc.kind == "not_found":
        return error(404, f"sandbox {sandbox_id}: path '{path}' does not exist")
    return error(_STATUS.get(exc.kind, 500), f"sandbox {sandbox_id}: {exc.message}")


def _disposition(name: str) -> str:
    if name.isascii() and name.isprintable():
        return 'inline; filename="{}"'.format(name.replace("\\", "\\\\").replace('"', '\\"'))
    return "inline; filename*=UTF-8''" + urllib.parse.quote(name, safe="")


def _wants_gzip(accept_encoding: str) -> bool:
    """Compress only when gzip is asked for by itself, as ``files.read(gzip=True)`` does: generic
    clients (httpx, curl --compressed) list several codings by default, and compressing every
    download would cost far more CPU than it saves on loopback or a LAN. Identity is always allowed."""
    codings = {part.split(";", 1)[0].strip().lower() for part in accept_encoding.split(",") if part.strip()}
    return codings == {"gzip"}


async def _gzipped(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    async for chunk in chunks:
        if packed := packer.compress(chunk):
            yield packed
    yield packer.flush()


async def _gunzipped(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    unpacker = zlib.decompressobj(47)  # gzip or zlib header
    try:
        async for chunk in chunks:
            if data := unpacker.decompress(chunk):
                yield data
        if rest := unpacker.flush():
            yield rest
    except zlib.error as exc:
        raise AgentError("invalid", f"the gzip body is corrupt: {exc}") from None


async def download(request: Request, services: Services) -> Response:
    sandbox_id = await authorize(request, services, "read")
    path = request.query_params.get("path", "")
    if not path or "\0" in path:
        return error(400, f"sandbox {sandbox_id}: query parameter 'path' is required")
    user = request.query_params.get("username") or DEFAULT_USER
    reader = services.sandboxes.backend.agent(sandbox_id).read(home_relative(path), user=user)
    try:
        opened = await reader.__aenter__()
    except AgentError as exc:
        return _failure(exc, sandbox_id, path)

    async def close() -> None:
        await reader.__aexit__(None, None, None)

    try:
        content = await file_body(aiter(opened), opened.entry.get("size"), close)
    except AgentError as exc:
        return _failure(exc, sandbox_id, path)
    name = posixpath.basename(opened.entry.get("path") or path)
    headers = {"Content-Disposition": _disposition(name), "Vary": "Accept-Encoding", "Cache-Control": "no-store"}
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if _wants_gzip(request.headers.get("accept-encoding", "")):
        headers["Content-Encoding"] = "gzip"
        return StreamingResponse(_gzipped(content.chunks), media_type=media_type, headers=headers)
    if content.length is not None:
        headers["Content-Length"] = str(content.length)
    return StreamingResponse(content.chunks, media_type=media_type, headers=headers)


def _written(entry: dict[str, Any]) -> dict[str, Any]:
    return {"path": entry["path"], "name": entry["name"], "type": "file"}


async def upload(request: Request, services: Services) -> Response:
    sandbox_id = await authorize(request, services, "write")
    if any(name.lower().startswith("x-metadata-") for name in request.headers):
        return error(400, f"sandbox {sandbox_id}: file metadata (X-Metadata-*) is not supported")
    agent = services.sandboxes.backend.agent(sandbox_id)
    user = request.query_params.get("username") or DEFAULT_USER
    path = request.query_params.get("path")
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    chunks = request.stream()
    if request.headers.get("content-encoding", "").lower() == "gzip":
        chunks = _gunzipped(chunks)
    current = path or ""
    try:
        if content_type == "multipart/form-data":
            seen: set[str] = set()

            async def open_part(filename: str) -> PartWriter:
                nonlocal current
                current = path if path and not seen else filename
                if not current or "\0" in current or current in seen:
                    raise UploadError(f"file part {current!r:.200}: missing or repeated destination path")
                seen.add(current)
                return PartWriter(agent, home_relative(current), user)

            entries = await write_parts(chunks, boundary_of(request.headers["content-type"]), open_part)
        elif content_type == "application/octet-stream":
            if not path or "\0" in path:
                return error(400, f"sandbox {sandbox_id}: query parameter 'path' is required for a raw upload")
            entries = [await agent.write(home_relative(path), chunks, user=user)]
        else:
            return error(400, f"sandbox {sandbox_id}: upload as multipart/form-data or application/octet-stream")
    except UploadError as exc:
        return error(400, f"sandbox {sandbox_id}: {exc}")
    except AgentError as exc:
        return _failure(exc, sandbox_id, current)
    if not entries:
        return error(400, f"sandbox {sandbox_id}: no part named 'file' in the upload")
    return JSONResponse([_written(e) for e in entries])
