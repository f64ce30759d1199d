"""Event streams without I/O: bytes → events (NDJSON or SSE) → a ``CommandResult`` or ``Execution``.

Both faces feed the bytes they read, in whatever chunks the network delivers, into an
``EventDecoder`` and fold the events into a ``CommandState`` (commands) or an ``ExecutionState``
(code cells, see ``_execution``). Neither class is thread-safe: each belongs to one stream, read
by one reader at a time.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from ._errors import CommandExitException, ServerException, TimeoutException, prefix
from ._models import CommandResult

__all__ = [
    "CommandState",
    "Event",
    "EventDecoder",
    "ExitEvent",
    "OutputEvent",
    "StartEvent",
    "aevents",
    "events",
    "parse_event",
]

_MAX_LINE = 16 * 1024 * 1024  # a server line longer than this is a broken stream, not output


@dataclass(frozen=True)
class StartEvent:
    pid: int


@dataclass(frozen=True)
class OutputEvent:
    stream: str  # "stdout" or "stderr"
    data: str


@dataclass(frozen=True)
class ExitEvent:
    exit_code: int
    error: str | None


Event = StartEvent | OutputEvent | ExitEvent


def parse_event(obj: object, sandbox_id: str | None) -> Event | None:
    """One decoded JSON event → a typed event; ``None`` for a type this SDK does not know (skipped)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ServerException(f"{prefix(sandbox_id)}malformed stream event {obj!r:.200}", sandbox_id=sandbox_id)
    kind = obj["type"]
    try:
        if kind == "start":
            return StartEvent(pid=int(obj["pid"]))
        if kind in ("stdout", "stderr"):
            return OutputEvent(stream=kind, data=str(obj.get("data", "")))
        if kind == "exit":
            error = obj.get("error")
            return ExitEvent(exit_code=int(obj["exit_code"]), error=None if error is None else str(error))
    except (KeyError, TypeError, ValueError) as exc:
        raise ServerException(
            f"{prefix(sandbox_id)}malformed {kind} event {obj!r:.200}", sandbox_id=sandbox_id
        ) from exc
    return None


class EventDecoder:
    """Incremental parser of an NDJSON (``sse=False``) or SSE (``sse=True``) event stream.

    ``feed(chunk)`` accepts bytes split anywhere — mid-line or mid UTF-8 character — and returns
    the events completed by it; ``close()`` returns what a final unterminated line held.
    Lines are split on bytes (``\\n`` never occurs inside a UTF-8 sequence) and decoded whole.
    ``parse`` turns one decoded JSON object into an event (``None``: skip it); the default reads
    command events.
    """

    def __init__(
        self,
        *,
        sse: bool = False,
        sandbox_id: str | None = None,
        parse: Callable[[object, str | None], Any] = parse_event,
    ) -> None:
        self._sse = sse
        self._sandbox_id = sandbox_id
        self._parse = parse
        self._buffer = bytearray()
        self._data: list[str] = []  # SSE: data lines of the event being assembled

    def feed(self, chunk: bytes) -> list[Any]:
        self._buffer += chunk
        events: list[Any] = []
        start = 0
        while (end := self._buffer.find(b"\n", start)) != -1:
            self._line(bytes(self._buffer[start:end]), events)
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > _MAX_LINE:
            raise ServerException(
                f"{prefix(self._sandbox_id)}stream line longer than {_MAX_LINE} bytes",
                sandbox_id=self._sandbox_id,
            )
        return events

    def close(self) -> list[Any]:
        events: list[Any] = []
        if self._buffer:
            self._line(bytes(self._buffer), events)
            self._buffer.clear()
        if self._sse:
            self._dispatch(events)
        return events

    def _line(self, raw: bytes, events: list[Any]) -> None:
        line = raw.decode("utf-8", "replace").removesuffix("\r")
        if not self._sse:
            if line.strip():
                self._emit(line, events)
            return
        if not line:
            self._dispatch(events)
        elif line.startswith(":"):
            return  # SSE comment / keep-alive
        else:
            name, _, value = line.partition(":")
            if name == "data":
                self._data.append(value.removeprefix(" "))
            # other SSE fields (event, id, retry) carry nothing for us

    def _dispatch(self, events: list[Any]) -> None:
        if self._data:
            payload = "\n".join(self._data)
            self._data = []
            self._emit(payload, events)

    def _emit(self, text: str, events: list[Any]) -> None:
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ServerException(
                f"{prefix(self._sandbox_id)}malformed stream line {text!r:.200}", sandbox_id=self._sandbox_id
            ) from exc
        event = self._parse(obj, self._sandbox_id)
        if event is not None:
            events.append(event)


def events(chunks: Iterator[bytes], decoder: EventDecoder) -> Generator[Any, None, None]:
    """The events in a stream of byte chunks, as soon as each is complete."""
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.close()


async def aevents(chunks: AsyncIterator[bytes], decoder: EventDecoder) -> AsyncGenerator[Any, None]:
    """``events`` for an async stream."""
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.close():
        yield event


_TIMEOUT_WORDS = ("timeout", "timed out", "deadline")


class CommandState:
    """Folds one command's events into its result.

    ``feed`` returns the ``(stdout, stderr)`` chunk an event carries (one side ``None``), or
    ``None`` for start/exit events. ``result`` applies the raising rules of ``commands.run``.
    """

    def __init__(self, sandbox_id: str, cmd: str | None, timeout: float | None = None, pid: int | None = None) -> None:
        self.sandbox_id = sandbox_id
        self.cmd = cmd
        self.timeout = timeout
        self.pid = pid
        self.exit: ExitEvent | None = None
        self._stdout: list[str] = []
        self._stderr: list[str] = []

    @property
    def finished(self) -> bool:
        return self.exit is not None

    @property
    def stdout(self) -> str:
        return "".join(self._stdout)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def feed(self, event: Event) -> tuple[str | None, str | None] | None:
        if isinstance(event, StartEvent):
            self.pid = event.pid
        elif isinstance(event, ExitEvent):
            self.exit = event
        elif event.data:
            if event.stream == "stdout":
                self._stdout.append(event.data)
                return event.data, None
            self._stderr.append(event.data)
            return None, event.data
        return None

    def check_started(self) -> None:
        """For a background start: raise unless the start event has arrived."""
        if self.pid is not None:
            return
        if self.exit is not None:
            self.result(check=True)  # a failed spawn raises here
        raise ServerException(
            f"{prefix(self.sandbox_id)}the stream of {self.describe()} ended before the command started",
            sandbox_id=self.sandbox_id,
        )

    def describe(self) -> str:
        """``command 'cmd' (pid N)`` for messages."""
        if self.cmd is None:
            return f"command with pid {self.pid}"
        pid = f" (pid {self.pid})" if self.pid is not None else ""
        return f"command {self.cmd!r:.120}{pid}"

    def timed_out(self, elapsed: float | None = None) -> bool:
        """Whether the server ended the command at its deadline (the exit event carries ``error``)."""
        if self.exit is None or self.exit.error is None:
            return False
        if any(word in self.exit.error.lower() for word in _TIMEOUT_WORDS):
            return True
        return bool(self.timeout and elapsed is not None and elapsed >= self.timeout)

    def result(self, *, check: bool = True, elapsed: float | None = None) -> CommandResult:
        """The command's result; with ``check``, raise for a timeout or a non-zero exit code.

        Raises ``ServerException`` if the stream ended without an exit event.
        """
        if self.exit is None:
            raise ServerException(
                f"{prefix(self.sandbox_id)}the stream of {self.describe()} ended without an exit event",
                sandbox_id=self.sandbox_id,
            )
        result = CommandResult(
            stdout="".join(self._stdout),
            stderr="".join(self._stderr),
            exit_code=self.exit.exit_code,
            error=self.exit.error,
        )
        if not check:
            return result
        if self.timed_out(elapsed):
            where = f"{prefix(self.sandbox_id)}{self.describe()}"
            raise TimeoutException(
                f"{where} timed out after {self.timeout}s: {self.exit.error}",
                sandbox_id=self.sandbox_id,
            )
        if result.exit_code != 0:
            detail = f" ({result.error})" if result.error else ""
            tail = result.stderr.strip().splitlines()[-1:] if result.stderr.strip() else []
            last = f"; stderr: {tail[0]:.200}" if tail else ""
            where = f"{prefix(self.sandbox_id)}{self.describe()}"
            raise CommandExitException(
                f"{where} exited with code {result.exit_code}{detail}{last}",
                sandbox_id=self.sandbox_id,
                exit_code=result.exit_code,
                stdout=result.stdout,
                stderr=result.stderr,
                error=result.error,
            )
        return result


def read_to_end(events: Iterator[Any]) -> None:
    """Read an answer whose last event arrived to its end. The server ends the body together with
    that event, so nothing is waited for; a body read to its end lets the HTTP connection serve the
    next call, where closing it early would drop the connection (a new one costs a TCP handshake).
    Best effort: the answer is complete, so a failure here only costs the connection."""
    with contextlib.suppress(Exception):
        for _ in events:
            pass


async def aread_to_end(events: AsyncIterator[Any]) -> None:
    """``read_to_end`` for an async stream."""
    with contextlib.suppress(Exception):
        async for _ in events:
            pass
