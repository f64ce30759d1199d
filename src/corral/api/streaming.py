"""Event streams as NDJSON (default) or SSE, chosen by the Accept header; the streaming response
that may end with its last chunk (`Last`) instead of an empty one after it; and file downloads whose
stated length is always the length sent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Send

from corral.agent.protocol import AgentError

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
WHOLE_FILE_LIMIT = 256 * 1024  # files up to this are read ahead (one agent chunk) and sent with their exact length


class Last(bytes):
    """A body chunk that ends the response: nothing follows it."""


class EndingStreamingResponse(StreamingResponse):
    """A `StreamingResponse` whose body iterator may mark its last chunk as `Last`: that chunk goes
    out as the end of the body (with HTTP/1.1 chunking, chunk and terminator in one write), so the
    client sees the end together with the last event instead of after one more write and wake-up.
    The iterator is still run to its end (its clean-up unchanged); a chunk after `Last` is dropped."""

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        ended = False
        async for chunk in self.body_iterator:
            if ended:
                continue
            if not isinstance(chunk, bytes | memoryview):
                chunk = chunk.encode(self.charset)
            ended = isinstance(chunk, Last)
            await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
        if not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def event_response(
    request: Request, events: AsyncIterator[dict[str, Any]], final: Callable[[dict[str, Any]], bool] | None = None
) -> StreamingResponse:
    """The events as a stream; `final(event)` true marks the event after which none can follow."""
    sse = SSE in request.headers.get("accept", "")

    async def body() -> AsyncIterator[bytes]:
        async for event in events:
            line = json.dumps(event, separators=(",", ":"))
            data = (f"data: {line}\n\n" if sse else line + "\n").encode()
            yield Last(data) if final is not None and final(event) else data

    return EndingStreamingResponse(
        body(), media_type=SSE if sse else NDJSON,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@dataclass
class FileBody:
    """A download: its chunks, and their exact total when it is known before the first byte goes out."""

    chunks: AsyncIterator[bytes]
    length: int | None


async def _at_most(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    left = size
    if left <= 0:
        return
    async for chunk in chunks:
        yield chunk[:left]
        left -= len(chunk)
        if left <= 0:
            return


async def file_body(chunks: AsyncIterator[bytes], size: object, close: Callable[[], Awaitable[None]]) -> FileBody:
    """A file's bytes, at most `size` (its size when opened, as the agent reported it; a growing file
    ends there). A file of up to WHOLE_FILE_LIMIT is read ahead and closed: its length is exact. A
    larger one streams with no length stated, so one that shrinks while it is read (the sandbox is
    free to truncate it) ends the body early instead of breaking a promised Content-Length.
    `close` runs once the chunks are read (or failed), or when the streamed body ends."""
    try:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise AgentError("internal", f"the agent reported a file size of {size!r:.40}")
        if size > WHOLE_FILE_LIMIT:
            return FileBody(_closing(_at_most(chunks, size), close), None)
        held = [part async for part in _at_most(chunks, size)]
    except BaseException:
        await close()
        raise
    await close()
    return FileBody(_replay(held), sum(len(part) for part in held))


async def _replay(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _closing(chunks: AsyncIterator[bytes], close: Callable[[], Awaitable[None]]) -> AsyncIterator[bytes]:
    try:
        async for part in chunks:
            yield part
    finally:
        await close()
