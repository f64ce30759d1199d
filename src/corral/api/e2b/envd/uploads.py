"""Streaming ``multipart/form-data`` uploads: each ``file`` part goes to the agent as it arrives.

Nothing is spooled on the host: part bytes are handed to `AgentClient.write` through a small
queue (so a slow sandbox disk slows the upload down instead of filling server memory), and each file
is replaced atomically by the agent once its part ends.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from corral.agent.client import AgentClient

QUEUED_CHUNKS = 8
_PARAM = re.compile(r';\s*([A-Za-z0-9_.*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_ESCAPED = re.compile(r"%(22|[01][0-9A-Fa-f])")  # what HTML5 form encoders write for ", CR, LF…


class UploadError(Exception):
    """The request body is not an acceptable multipart upload (answered with 400)."""


def disposition(value: str) -> dict[str, str]:
    """The parameters of a ``Content-Disposition: form-data; name="file"; filename="/a/b"`` header."""
    params: dict[str, str] = {}
    for match in _PARAM.finditer(value):
        text = match.group(2).strip()
        if text.startswith('"'):
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        params[match.group(1).lower()] = text
    if "filename" in params:
        params["filename"] = _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), params["filename"])
    return params


def boundary_of(content_type: str) -> bytes:
    boundary = disposition(content_type).get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise UploadError("multipart/form-data needs a boundary parameter")
    return boundary.encode("latin-1")


class PartWriter:
    """One file being written by the agent from chunks fed through `send`."""

    def __init__(self, agent: AgentClient, path: str, user: str) -> None:
        self.path = path
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUED_CHUNKS)
        self._task = asyncio.ensure_future(agent.write(path, self._chunks(), user=user))

    async def _chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk

    async def send(self, chunk: bytes | None) -> None:
        """Queue a chunk (None: the end); raises the agent's error if it already gave up."""
        put = asyncio.ensure_future(self._queue.put(chunk))
        await asyncio.wait({put, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            await self._task  # it ended early: with an error
            raise UploadError(f"the agent stopped reading {self.path!r}")

    async def finish(self) -> dict[str, Any]:
        await self.send(None)
        return await self._task

    async def abort(self) -> None:
        self._task.cancel()
        await asyncio.wait({self._task})


async def write_parts(
    body: AsyncIterable[bytes], boundary: bytes, open_part: Callable[[str], Awaitable[PartWriter]]
) -> list[dict[str, Any]]:
    """Feed the body through the parser; `open_part(filename)` starts the writer of each ``file``
    part. Returns the agent's Entry of each written file, in order."""
    events: list[tuple[str, bytes]] = []

    def note(kind: str) -> Callable[..., None]:
        def callback(data: bytes | None = None, start: int = 0, end: int = 0) -> None:
            events.append((kind, bytes(data[start:end]) if data is not None else b""))

        return callback

    kinds = ("part_begin", "header_field", "header_value", "header_end", "headers_finished", "part_data", "part_end")
    parser = MultipartParser(boundary, {f"on_{kind}": note(kind) for kind in kinds})  # type: ignore[arg-type]
    headers: dict[str, str] = {}
    field, value = bytearray(), bytearray()
    writer: PartWriter | None = None
    written: list[dict[str, Any]] = []
    try:
        async for chunk in body:
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise UploadError(f"malformed multipart body: {exc}") from None
            for kind, data in events:
                if kind == "part_begin":
                    headers, writer = {}, None
                elif kind == "header_field":
                    field += data
                elif kind == "header_value":
                    value += data
                elif kind == "header_end":
                    headers[field.decode("latin-1").lower()] = value.decode("utf-8", "replace")
                    field, value = bytearray(), bytearray()
                elif kind == "headers_finished":
                    params = disposition(headers.get("content-disposition", ""))
                    if params.get("name") == "file":
                        writer = await open_part(params.get("filename", ""))
                elif kind == "part_data" and writer is not None:
                    await writer.send(data)
                elif kind == "part_end" and writer is not None:
                    current, writer = writer, None
                    written.append(await current.finish())
            events.clear()
        parser.finalize()
    finally:
        if writer is not None:
            await writer.abort()
    return written
