"""The Connect protocol (JSON codec only), server side, as the E2B SDKs speak it over HTTP/1.1.

- Unary: ``POST /{package.Service}/{Method}``, ``Content-Type: application/json``, body = one
  message; the answer is 200 ``application/json``, or an error status with ``{"code", "message"}``.
- Streams (server- and client-streaming): ``application/connect+json`` both ways; bodies are
  envelopes ``flags(1) | length(4, big-endian) | JSON``; the answer is always 200 and ends with an
  end-of-stream envelope (flags 0x02) holding ``{}`` or ``{"error": {"code", "message"}}``.
- ``Connect-Timeout-Ms`` is the call's deadline (see `Deadline`).

Pure helpers plus two Starlette response builders; no sandbox knowledge. Error codes and their HTTP
statuses follow the Connect specification.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from corral.api.streaming import EndingStreamingResponse, Last

UNARY_TYPE = "application/json"
STREAM_TYPE = "application/connect+json"
MAX_MESSAGE = 4 << 20  # a request message larger than this is refused (stdin chunks, paths: all small)
END_STREAM = 0x02
COMPRESSED = 0x01
_HEADER = struct.Struct(">BI")

STATUS = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}


class ConnectError(Exception):
    """An RPC failure: one of the Connect codes in `STATUS` and a message for the caller."""

    def __init__(self, code: str, message: str) -> None:
        assert code in STATUS, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def parse_timeout(value: str | None) -> float | None:
    """Seconds from a ``Connect-Timeout-Ms`` header (None when absent). At most 10 digits, per spec."""
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 10:
        raise ConnectError("invalid_argument", f"Connect-Timeout-Ms: {value!r:.20} is not a number of ms")
    return int(value) / 1000


def envelope(message: dict[str, Any], flags: int = 0) -> bytes:
    payload = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(flags, len(payload)) + payload


def end_of_stream(error: ConnectError | None = None) -> bytes:
    return envelope({"error": error.to_json()} if error else {}, END_STREAM)


def decode_message(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        raise ConnectError("invalid_argument", "request message is not valid JSON") from None
    if not isinstance(value, dict):
        raise ConnectError("invalid_argument", "request message must be a JSON object")
    return value


class EnvelopeReader:
    """Splits a request body into messages as its bytes arrive (push-style; not thread-safe).

    A malformed envelope raises ``ConnectError`` — after the messages before it were handed out
    (from the next ``feed`` or ``finish``), so how the body was chunked never changes what is read."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: ConnectError | None = None
        self.ended = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if self._error is not None:
            raise self._error
        self._buffer += data
        messages: list[dict[str, Any]] = []
        try:
            self._split(messages)
        except ConnectError as exc:
            if not messages:
                raise
            self._error = exc
        return messages

    def _split(self, messages: list[dict[str, Any]]) -> None:
        while len(self._buffer) >= _HEADER.size:
            flags, length = _HEADER.unpack_from(self._buffer)
            if length > MAX_MESSAGE:
                raise ConnectError("resource_exhausted", f"request message of {length} bytes is too large")
            if flags & COMPRESSED:
                raise ConnectError("internal", "compressed request messages are not supported")
            if len(self._buffer) < _HEADER.size + length:
                return
            payload = bytes(self._buffer[_HEADER.size : _HEADER.size + length])
            del self._buffer[: _HEADER.size + length]
            if flags & END_STREAM:
                self.ended = True
                continue
            messages.append(decode_message(payload))

    def finish(self) -> None:
        if self._error is not None:
            raise self._error
        if self._buffer:
            raise ConnectError("invalid_argument", "request body ends inside an envelope")


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def check_content_type(request: Request, streaming: bool) -> None:
    """Refuse a codec other than JSON (the proto codec is not served)."""
    expected = STREAM_TYPE if streaming else UNARY_TYPE
    if _content_type(request) != expected:
        raise ConnectError("unimplemented", f"content type must be {expected} (only the JSON codec is served)")


async def read_unary(request: Request) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_MESSAGE:
            raise ConnectError("resource_exhausted", "request message is too large")
    return decode_message(bytes(body)) if body.strip() else {}


async def read_single(request: Request) -> dict[str, Any]:
    """The one message of a server-streaming request (sent enveloped, usually chunked)."""
    reader = EnvelopeReader()
    messages: list[dict[str, Any]] = []
    async for chunk in request.stream():
        messages += reader.feed(chunk)
        if len(messages) > 1:
            break
    else:
        reader.finish()
    if len(messages) != 1:
        raise ConnectError("invalid_argument", f"expected exactly one request message, got {len(messages)}")
    return messages[0]


async def read_stream(request: Request) -> AsyncIterator[dict[str, Any]]:
    """The messages of a client-streaming request, each as soon as it has arrived."""
    reader = EnvelopeReader()
    async for chunk in request.stream():
        for message in reader.feed(chunk):
            yield message
    reader.finish()


def unary_response(message: dict[str, Any]) -> Response:
    return Response(json.dumps(message, separators=(",", ":")), media_type=UNARY_TYPE)


def error_response(error: ConnectError) -> Response:
    body = json.dumps(error.to_json(), separators=(",", ":"))
    return Response(body, status_code=STATUS[error.code], media_type=UNARY_TYPE)


def stream_response(messages: AsyncIterable[dict[str, Any]]) -> StreamingResponse:
    """200 with each message flushed as produced, then end-of-stream carrying a ConnectError raised
    by `messages` (any other exception becomes ``internal``; it is the caller's job to map first)."""

    async def body() -> AsyncIterator[bytes]:
        try:
            async for message in messages:
                yield envelope(message)
        except ConnectError as exc:
            yield Last(end_of_stream(exc))
            return
        yield Last(end_of_stream())

    return EndingStreamingResponse(body(), media_type=STREAM_TYPE, headers={"Cache-Control": "no-store"})


async def paced(
    messages: AsyncIterable[dict[str, Any]],
    deadline: float | None,
    keepalive: float | None,
    ping: dict[str, Any],
) -> AsyncIterator[dict[str, Any]]:
    """`messages`, plus `ping` whenever none came for `keepalive` seconds; past `deadline` (event
    loop time) the stream fails with ``deadline_exceeded``. The next message is awaited in a task
    that survives the waits, so a message half-read from a socket is never lost; closing this
    iterator cancels that task and closes `messages`."""
    loop = asyncio.get_running_loop()
    source = aiter(messages)
    pending: asyncio.Future[dict[str, Any]] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            waits = [w for w in (keepalive, None if deadline is None else deadline - loop.time()) if w is not None]
            done, _ = await asyncio.wait({pending}, timeout=max(0.0, min(waits)) if waits else None)
            if done:
                finished, pending = pending, None
                try:
                    message = finished.result()
                except StopAsyncIteration:
                    return
                yield message
            elif deadline is not None and loop.time() >= deadline:
                raise ConnectError("deadline_exceeded", "the call's deadline (Connect-Timeout-Ms) passed")
            else:
                yield ping
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.wait({pending})
            if not pending.cancelled():
                pending.exception()  # dropped, but marked as retrieved
        close = getattr(source, "aclose", None)
        if close is not None:
            await close()
