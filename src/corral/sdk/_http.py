"""The only place the SDK does HTTP: send a ``Call`` with httpx, sync or async.

``SyncHTTP``/``AsyncHTTP`` own one httpx client each (connection pooling; ``SyncHTTP`` is
thread-safe, ``AsyncHTTP`` belongs to one event loop). Every httpx failure is mapped to an SDK
exception here, and status/body are handed to ``Call.result``/``Call.check``, so no httpx type
escapes this module.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import IO, Any, TypeVar

import httpx

from ._config import ConnectionConfig
from ._core import Call, file_chunks
from ._errors import mapped_transport_errors

__all__ = ["AsyncHTTP", "AsyncStream", "SyncHTTP", "SyncStream"]

T = TypeVar("T")


def _timeout(config: ConnectionConfig, request_timeout: float | None, read: float | bool | None) -> httpx.Timeout:
    """``read=False`` means: the same as the other phases."""
    limit = config.timeout(request_timeout)
    return httpx.Timeout(limit) if read is False else httpx.Timeout(limit, read=read)


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context per process (httpx's defaults: SSL_CERT_FILE/DIR, else certifi). Building one
    per client loads the CA bundle each time: tens of ms per ``Sandbox.create()``."""
    return httpx.create_ssl_context()


class SyncHTTP:
    """Sends ``Call``s with an ``httpx.Client``. Thread-safe."""

    def __init__(self, config: ConnectionConfig, transport: httpx.BaseTransport | None = None) -> None:
        self.config = config
        self._client = httpx.Client(
            base_url=config.api_url,
            headers=config.headers(),
            timeout=config.request_timeout,
            transport=transport,
            verify=_tls(),
        )

    def _errors(self, call: Call[Any]) -> contextlib.AbstractContextManager[None]:
        return mapped_transport_errors(self.config.api_url, sandbox_id=call.sandbox_id, operation=call.operation)

    def _request(self, call: Call[Any], content: Any, timeout: httpx.Timeout, *, stream: bool) -> httpx.Response:
        request = self._client.build_request(
            call.method,
            call.path,
            params=call.params or None,
            json=call.json,
            headers=dict(call.headers),
            content=content,
            timeout=timeout,
        )
        return self._client.send(request, stream=stream)

    def call(self, call: Call[T], request_timeout: float | None = None, content: bytes | IO[Any] | None = None) -> T:
        """Send ``call`` and return its value; a file object as ``content`` is streamed in chunks."""
        body = file_chunks(content) if content is not None and not isinstance(content, bytes) else content
        with self._errors(call):
            response = self._request(call, body, _timeout(self.config, request_timeout, False), stream=False)
        return call.result(response.status_code, response.content)

    def open(
        self, call: Call[Any], request_timeout: float | None = None, read_timeout: float | bool | None = False
    ) -> SyncStream:
        """Send ``call`` and return its answer as a stream of bytes, after checking its status."""
        with self._errors(call):
            response = self._request(call, None, _timeout(self.config, request_timeout, read_timeout), stream=True)
            if call.failed(response.status_code):
                try:
                    body = response.read()
                finally:
                    response.close()
                call.check(response.status_code, body)
        return SyncStream(response, call, self)

    def close(self) -> None:
        self._client.close()


class SyncStream:
    """An open streamed answer. Iterate ``chunks()`` once; ``close()`` is idempotent."""

    def __init__(self, response: httpx.Response, call: Call[Any], http: SyncHTTP) -> None:
        self._response = response
        self._call = call
        self._http = http

    @property
    def is_sse(self) -> bool:
        """Whether the server answered with Server-Sent Events rather than NDJSON."""
        return self._response.headers.get("content-type", "").startswith("text/event-stream")

    def chunks(self) -> Iterator[bytes]:
        try:
            with self._http._errors(self._call):
                yield from self._response.iter_bytes()
        finally:
            self._response.close()

    def close(self) -> None:
        self._response.close()

    def abort(self) -> None:
        """Close from another thread, waking a reader blocked on the socket."""
        stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the reader's recv() returns; it then closes
        else:
            with contextlib.suppress(Exception):
                self._response.close()


class AsyncHTTP:
    """Sends ``Call``s with an ``httpx.AsyncClient``. Belongs to the event loop that uses it first."""

    def __init__(self, config: ConnectionConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self._client = httpx.AsyncClient(
            base_url=config.api_url,
            headers=config.headers(),
            timeout=config.request_timeout,
            transport=transport,
            verify=_tls(),
        )

    def _errors(self, call: Call[Any]) -> contextlib.AbstractContextManager[None]:
        return mapped_transport_errors(self.config.api_url, sandbox_id=call.sandbox_id, operation=call.operation)

    async def _request(self, call: Call[Any], content: Any, timeout: httpx.Timeout, *, stream: bool) -> httpx.Response:
        request = self._client.build_request(
            call.method,
            call.path,
            params=call.params or None,
            json=call.json,
            headers=dict(call.headers),
            content=content,
            timeout=timeout,
        )
        return await self._client.send(request, stream=stream)

    async def call(
        self,
        call: Call[T],
        request_timeout: float | None = None,
        content: bytes | IO[Any] | AsyncIterator[bytes] | None = None,
    ) -> T:
        """Send ``call`` and return its value; a file object as ``content`` is read in a worker thread."""
        body: Any = content
        if content is not None and not isinstance(content, bytes) and not hasattr(content, "__aiter__"):
            body = _athread_chunks(content)  # type: ignore[arg-type]
        with self._errors(call):
            response = await self._request(call, body, _timeout(self.config, request_timeout, False), stream=False)
        return call.result(response.status_code, response.content)

    async def open(
        self, call: Call[Any], request_timeout: float | None = None, read_timeout: float | bool | None = False
    ) -> AsyncStream:
        with self._errors(call):
            timeout = _timeout(self.config, request_timeout, read_timeout)
            response = await self._request(call, None, timeout, stream=True)
            if call.failed(response.status_code):
                try:
                    body = await response.aread()
                finally:
                    await response.aclose()
                call.check(response.status_code, body)
        return AsyncStream(response, call, self)

    async def close(self) -> None:
        await self._client.aclose()


class AsyncStream:
    """An open streamed answer. Iterate ``chunks()`` once; ``close()`` is idempotent."""

    def __init__(self, response: httpx.Response, call: Call[Any], http: AsyncHTTP) -> None:
        self._response = response
        self._call = call
        self._http = http

    @property
    def is_sse(self) -> bool:
        """Whether the server answered with Server-Sent Events rather than NDJSON."""
        return self._response.headers.get("content-type", "").startswith("text/event-stream")

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            with self._http._errors(self._call):
                async for chunk in self._response.aiter_bytes():
                    yield chunk
        finally:
            await self._response.aclose()

    async def close(self) -> None:
        await self._response.aclose()


async def _athread_chunks(fileobj: IO[Any]) -> AsyncIterator[bytes]:
    """``file_chunks`` for the event loop: each blocking read runs in a worker thread."""
    import asyncio

    chunks = file_chunks(fileobj)
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk
