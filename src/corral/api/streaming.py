"""Event streams as NDJSON (default) or SSE, chosen by the Accept header; and the streaming response
that may end with its last chunk (`Last`) instead of an empty one after it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Send

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


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
