"""``sbx.commands``: run commands in a sandbox and manage running ones, sync and async twins.

Both faces build requests with ``_core``, decode streams with ``_stream`` and differ only in
``await``. ``run`` reads the NDJSON stream as it arrives and calls ``on_stdout``/``on_stderr`` per
chunk; the HTTP read timeout is the command's ``timeout`` plus a margin (none for ``timeout=0``),
so a long quiet command is never cut off by the client.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Literal, overload

from . import _calls, _core
from ._handles import (
    AsyncCommandHandle,
    AsyncOutputHandler,
    Chunk,
    CommandHandle,
    OutputHandler,
    adeliver,
    deliver,
)
from ._http import AsyncHTTP, SyncHTTP
from ._models import CommandResult, ProcessInfo
from ._stream import CommandState, EventDecoder, ExitEvent, StartEvent, aevents, aread_to_end, events, read_to_end

__all__ = ["AsyncCommands", "Commands"]


def _until_start(state: CommandState, event: object, pending: list[Chunk]) -> bool:
    """Feed one pre-start event; True once the handle can be returned (started or already ended)."""
    chunk = state.feed(event)  # type: ignore[arg-type]
    if chunk is not None:
        pending.append(chunk)
    return isinstance(event, StartEvent | ExitEvent)


class Commands:
    """Commands of one sandbox (``sbx.commands``). Thread-safe."""

    def __init__(self, sandbox_id: str, http: SyncHTTP) -> None:
        self._sandbox_id = sandbox_id
        self._http = http

    @overload
    def run(
        self,
        cmd: str,
        background: Literal[False] = False,
        envs: Mapping[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: bool = False,
        timeout: float | None = 60,
        request_timeout: float | None = None,
        *,
        check: bool = True,
    ) -> CommandResult: ...

    @overload
    def run(
        self,
        cmd: str,
        background: Literal[True],
        envs: Mapping[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: bool = False,
        timeout: float | None = 60,
        request_timeout: float | None = None,
        *,
        check: bool = True,
    ) -> CommandHandle: ...

    def run(
        self,
        cmd: str,
        background: bool = False,
        envs: Mapping[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        stdin: bool = False,
        timeout: float | None = 60,
        request_timeout: float | None = None,
        *,
        check: bool = True,
    ) -> CommandResult | CommandHandle:
        """Run ``cmd`` with ``/bin/bash -l -c`` and return its result, or a handle if ``background``.

        ``timeout`` is the command's limit in seconds (``0``/``None``: none); the server kills it at
        the deadline. Output reaches ``on_stdout``/``on_stderr`` as it is produced. Unless
        ``check=False``, a non-zero exit raises ``CommandExitException`` and a timeout
        ``TimeoutException``. ``request_timeout`` limits connecting and sending, not the command.
        """
        call = _calls.run_command(self._sandbox_id, cmd, envs=envs, user=user, cwd=cwd, timeout=timeout, stdin=stdin)
        stream = self._http.open(call, request_timeout, read_timeout=_core.stream_read_timeout(timeout))
        state = CommandState(self._sandbox_id, cmd, timeout)
        stream_events = events(stream.chunks(), EventDecoder(sse=stream.is_sse, sandbox_id=self._sandbox_id))
        started = time.monotonic()
        owned = False  # whether a handle took over the stream
        try:
            if background:
                pending: list[Chunk] = []
                for event in stream_events:
                    if _until_start(state, event, pending):
                        break
                state.check_started()
                handle = CommandHandle(
                    commands=self,
                    state=state,
                    stream=stream,
                    events=stream_events,
                    pending=pending,
                    on_stdout=on_stdout,
                    on_stderr=on_stderr,
                    check=check,
                )
                owned = True
                return handle
            for event in stream_events:
                chunk = state.feed(event)
                if chunk is not None:
                    deliver(chunk, on_stdout, on_stderr)
                if state.finished:
                    read_to_end(stream_events)
                    break
        finally:
            if not owned:
                stream_events.close()
                stream.close()
        return state.result(check=check, elapsed=time.monotonic() - started)

    def connect(self, pid: int, timeout: float | None = 60, request_timeout: float | None = None) -> CommandHandle:
        """Attach to a running command; its output from now on reaches the returned handle.

        ``timeout``: seconds the command may stay silent before the handle gives up with
        ``TimeoutException`` (``0``/``None``: no limit); the command itself is not affected.
        """
        stream = self._http.open(
            _calls.attach_command(self._sandbox_id, pid), request_timeout, read_timeout=timeout or None
        )
        state = CommandState(self._sandbox_id, None, None, pid=pid)
        stream_events = events(stream.chunks(), EventDecoder(sse=stream.is_sse, sandbox_id=self._sandbox_id))
        return CommandHandle(commands=self, state=state, stream=stream, events=stream_events, pending=[])

    def list(self, request_timeout: float | None = None) -> list[ProcessInfo]:
        """The commands running in the sandbox."""
        return self._http.call(_calls.list_commands(self._sandbox_id), request_timeout)

    def kill(self, pid: int, request_timeout: float | None = None) -> bool:
        """Kill a command (SIGKILL). True if it was killed, False if no such process."""
        return self._http.call(_calls.signal_command(self._sandbox_id, pid, "SIGKILL"), request_timeout)

    def send_stdin(self, pid: int, data: str | bytes, request_timeout: float | None = None) -> None:
        """Write to a command's stdin (it must have been started with ``stdin=True``)."""
        self._http.call(_calls.send_stdin(self._sandbox_id, pid, data), request_timeout)

    def close_stdin(self, pid: int, request_timeout: float | None = None) -> None:
        """Close a command's stdin (EOF)."""
        self._http.call(_calls.send_stdin(self._sandbox_id, pid, "", eof=True), request_timeout)


class AsyncCommands:
    """Commands of one sandbox (``sbx.commands``), for asyncio. Callbacks may be sync or async."""

    def __init__(self, sandbox_id: str, http: AsyncHTTP) -> None:
        self._sandbox_id = sandbox_id
        self._http = http

    @overload
    async def run(
        self,
        cmd: str,
        background: Literal[False] = False,
        envs: Mapping[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
        on_stdout: AsyncOutputHandler | None = None,
        on_stderr: AsyncOutputHandler | None = None,
        stdin: bool = False,
        timeout: float | None = 60,
        request_timeout: float | None = None,
        *,
        check: bool = True,
    ) -> CommandResult: ...

    @overload
    async def run(
        self,
        cmd: str,
        background: Literal[True],
        envs: Mapping[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
        on_stdout: AsyncOutputHandler | None = None,
        on_stderr: AsyncOutputHandler | None = None,
        stdin: bool = False,
        timeout: float | None = 60,
        request_timeout: float | None = None,
        *,
        check: bool = True,
    ) -> AsyncCommandHandle: ...

    async def run(
        self,
        cmd: str,
        background: bool = False,
        envs: Mapping[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
        on_stdout: AsyncOutputHandler | None = None,
        on_stderr: AsyncOutputHandler | None = None,
        stdin: bool = False,
        timeout: float | None = 60,
        request_timeout: float | None = None,
        *,
        check: bool = True,
    ) -> CommandResult | AsyncCommandHandle:
        """Run ``cmd`` with ``/bin/bash -l -c``; see ``Commands.run``."""
        call = _calls.run_command(self._sandbox_id, cmd, envs=envs, user=user, cwd=cwd, timeout=timeout, stdin=stdin)
        stream = await self._http.open(call, request_timeout, read_timeout=_core.stream_read_timeout(timeout))
        state = CommandState(self._sandbox_id, cmd, timeout)
        stream_events = aevents(stream.chunks(), EventDecoder(sse=stream.is_sse, sandbox_id=self._sandbox_id))
        started = time.monotonic()
        owned = False  # whether a handle took over the stream
        try:
            if background:
                pending: list[Chunk] = []
                async for event in stream_events:
                    if _until_start(state, event, pending):
                        break
                state.check_started()
                handle = AsyncCommandHandle(
                    commands=self,
                    state=state,
                    stream=stream,
                    events=stream_events,
                    pending=pending,
                    on_stdout=on_stdout,
                    on_stderr=on_stderr,
                    check=check,
                )
                owned = True
                return handle
            async for event in stream_events:
                chunk = state.feed(event)
                if chunk is not None:
                    await adeliver(chunk, on_stdout, on_stderr)
                if state.finished:
                    await aread_to_end(stream_events)
                    break
        finally:
            if not owned:
                await stream_events.aclose()
                await stream.close()
        return state.result(check=check, elapsed=time.monotonic() - started)

    async def connect(
        self, pid: int, timeout: float | None = 60, request_timeout: float | None = None
    ) -> AsyncCommandHandle:
        """Attach to a running command; see ``Commands.connect``."""
        stream = await self._http.open(
            _calls.attach_command(self._sandbox_id, pid), request_timeout, read_timeout=timeout or None
        )
        state = CommandState(self._sandbox_id, None, None, pid=pid)
        stream_events = aevents(stream.chunks(), EventDecoder(sse=stream.is_sse, sandbox_id=self._sandbox_id))
        return AsyncCommandHandle(commands=self, state=state, stream=stream, events=stream_events, pending=[])

    async def list(self, request_timeout: float | None = None) -> list[ProcessInfo]:
        """The commands running in the sandbox."""
        return await self._http.call(_calls.list_commands(self._sandbox_id), request_timeout)

    async def kill(self, pid: int, request_timeout: float | None = None) -> bool:
        """Kill a command (SIGKILL). True if it was killed, False if no such process."""
        return await self._http.call(_calls.signal_command(self._sandbox_id, pid, "SIGKILL"), request_timeout)

    async def send_stdin(self, pid: int, data: str | bytes, request_timeout: float | None = None) -> None:
        """Write to a command's stdin (it must have been started with ``stdin=True``)."""
        await self._http.call(_calls.send_stdin(self._sandbox_id, pid, data), request_timeout)

    async def close_stdin(self, pid: int, request_timeout: float | None = None) -> None:
        """Close a command's stdin (EOF)."""
        await self._http.call(_calls.send_stdin(self._sandbox_id, pid, "", eof=True), request_timeout)
