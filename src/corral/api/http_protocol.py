"""uvicorn's httptools protocol with a deadline for request headers (slowloris clients).

uvicorn closes idle keep-alive connections, but a connection that trickles its request line and
headers a byte at a time (or sends nothing at all) is never closed: each holds a socket and a
parser until the client gives up. Here every request must finish its headers within
``header_timeout`` seconds of its first byte (of the connection, for the first request), as
nginx's ``client_header_timeout`` does; bodies are not limited (uploads may be slow).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout: float = 30.0

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_deadline is None:  # a pipelined or keep-alive request: a fresh deadline
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def protocol_class(header_timeout: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for uvicorn's ``http=`` option, with this server's deadline."""
    return type("CorralHttpProtocol", (HeaderDeadlineProtocol,), {"header_timeout": header_timeout})
