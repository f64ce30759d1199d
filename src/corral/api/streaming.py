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

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
WHOLE_FILE_LIMIT = 1 << 20  # files up to this are read ahead and sent with their exact length


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


async def file_body(chunks: AsyncIterator[bytes], size: int, close: Callable[[], Awaitable[None]]) -> FileBody:
    """A file's bytes, at most `size` (its size when opened, so a growing file ends). A file that ends
    within WHOLE_FILE_LIMIT is read ahead and closed: its length is exact. A longer one streams with
    no length stated, so one that shrinks while it is read (the sandbox is free to truncate it) ends
    the body early instead of breaking a promised Content-Length. `close` runs exactly once."""
    bounded = _at_most(chunks, size)
    held: list[bytes] = []
    total = 0
    try:
        while total <= WHOLE_FILE_LIMIT:
            try:
                part = await anext(bounded)
            except StopAsyncIteration:
                break
            held.append(part)
            total += len(part)
        else:
            return FileBody(_rest(held, bounded, close), None)
    except BaseException:
        await close()
        raise
    await close()
    return FileBody(_rest(held, None, None), total)


async def _rest(
    held: list[bytes], more: AsyncIterator[bytes] | None, close: Callable[[], Awaitable[None]] | None
) -> AsyncIterator[bytes]:
    try:
        while held:
            yield held.pop(0)
        if more is not None:
            async for part in more:
                yield part
    finally:
        if close is not None:
            await close()
