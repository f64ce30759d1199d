"""Event streams as NDJSON (default) or SSE, chosen by the Accept header."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def event_response(request: Request, events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    sse = SSE in request.headers.get("accept", "")

    async def body() -> AsyncIterator[bytes]:
        async for event in events:
            line = json.dumps(event, separators=(",", ":"))
            yield (f"data: {line}\n\n" if sse else line + "\n").encode()

    return StreamingResponse(
        body(), media_type=SSE if sse else NDJSON,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
