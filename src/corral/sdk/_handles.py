"""Handles to commands running in a sandbox: ``CommandHandle`` (threads) and ``AsyncCommandHandle`` (asyncio).

From the moment a handle exists a reader — a daemon thread, or an asyncio task — drains the
command's stream, so the command never stalls on a full pipe however late ``wait()`` is called.
The reader calls the ``on_stdout``/``on_stderr`` given to ``run()`` as chunks arrive (on the reader
thread for ``CommandHandle``) and keeps every chunk: iterating a handle, or ``wait()`` with
callbacks, replays the output from the start and then follows it live. A callback that raises
stops the reader; ``wait()`` raises that exception. Both handles are safe to share between threads
(``CommandHandle``) or tasks (``AsyncCommandHandle``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import TYPE_CHECKING

from ._errors import SandboxException, prefix
from ._http import AsyncStream, SyncStream
from ._models import CommandResult
from ._stream import CommandState, Event, aread_to_end, read_to_end

if TYPE_CHECKING:
    from ._commands import AsyncCommands, Commands

__all__ = ["AsyncCommandHandle", "AsyncOutputHandler", "CommandHandle", "OutputHandler", "deliver"]

Chunk = tuple[str | None, str | None]
OutputHandler = Callable[[str], None]
AsyncOutputHandler = Callable[[str], Awaitable[None] | None]


def deliver(chunk: Chunk, on_stdout: OutputHandler | None, on_stderr: OutputHandler | None) -> None:
    stdout, stderr = chunk
    if stdout is not None and on_stdout is not None:
        on_stdout(stdout)
    elif stderr is not None and on_stderr is not None:
        on_stderr(stderr)


async def adeliver(chunk: Chunk, on_stdout: AsyncOutputHandler | None, on_stderr: AsyncOutputHandler | None) -> None:
    stdout, stderr = chunk
    handler, data = (on_stdout, stdout) if stdout is not None else (on_stderr, stderr)
    if handler is not None and data is not None:
        result = handler(data)
        if inspect.isawaitable(result):
            await result


def _disconnected(state: CommandState) -> SandboxException:
    return SandboxException(
        f"{prefix(state.sandbox_id)}disconnected from {state.describe()}; it may still be running "
        f"(reattach with commands.connect({state.pid}))",
        sandbox_id=state.sandbox_id,
    )


class CommandHandle:
    """A command running in a sandbox (returned by ``commands.run(..., background=True)``/``connect``)."""

    def __init__(
        self,
        *,
        commands: Commands,
        state: CommandState,
        stream: SyncStream,
        events: Generator[Event, None, None],
        pending: list[Chunk],
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        check: bool = True,
    ) -> None:
        self._commands = commands
        self._state = state
        self._stream = stream
        self._events = events
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._check = check
        self._started = time.monotonic()
        self._elapsed: float | None = None
        self._chunks: list[Chunk] = list(pending)
        self._cond = threading.Condition()
        self._done = False
        self._disconnected = False
        self._failure: BaseException | None = None
        for chunk in pending:
            deliver(chunk, on_stdout, on_stderr)
        self._reader = threading.Thread(
            target=self._read, name=f"corral-{state.sandbox_id}-pid-{state.pid}", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        """Process ID of the command in the sandbox."""
        assert self._state.pid is not None
        return self._state.pid

    @property
    def stdout(self) -> str:
        """The stdout received so far."""
        return self._state.stdout

    @property
    def stderr(self) -> str:
        """The stderr received so far."""
        return self._state.stderr

    @property
    def exit_code(self) -> int | None:
        """The exit code once the command has ended, else ``None``."""
        return self._state.exit.exit_code if self._state.exit else None

    def _read(self) -> None:
        try:
            if not self._state.finished:
                for event in self._events:
                    chunk = self._state.feed(event)
                    if chunk is not None:
                        with self._cond:
                            self._chunks.append(chunk)
                            self._cond.notify_all()
                        deliver(chunk, self._on_stdout, self._on_stderr)
                    if self._state.finished:
                        read_to_end(self._events)
                        break
        except BaseException as exc:  # kept for wait(); the thread must not die silently
            if not self._disconnected:
                self._failure = exc
        finally:
            self._events.close()
            self._stream.close()
            with self._cond:
                self._done = True
                self._elapsed = time.monotonic() - self._started
                self._cond.notify_all()

    def __iter__(self) -> Iterator[Chunk]:
        """Yield ``(stdout, stderr)`` chunks (one side ``None``) from the start until the command ends."""
        seen = 0
        while True:
            with self._cond:
                while seen >= len(self._chunks) and not self._done:
                    self._cond.wait()
                batch = self._chunks[seen:]
                seen += len(batch)
                finished = self._done and seen >= len(self._chunks)
            yield from batch
            if finished:
                break
        if self._failure is not None:
            raise self._failure

    def wait(
        self,
        on_stdout: OutputHandler | None = None,
        on_stderr: OutputHandler | None = None,
        check: bool | None = None,
    ) -> CommandResult:
        """Wait for the command to end and return its result.

        The callbacks get all output, from the start. Raises ``CommandExitException`` for a non-zero
        exit and ``TimeoutException`` for a command timeout, unless ``check`` is false (default: the
        ``check`` given to ``run``).
        """
        for chunk in self:
            deliver(chunk, on_stdout, on_stderr)
        if self._disconnected and not self._state.finished:
            raise _disconnected(self._state)
        return self._state.result(check=self._check if check is None else check, elapsed=self._elapsed)

    def kill(self, request_timeout: float | None = None) -> bool:
        """Kill the command (SIGKILL). True if it was killed, False if it had already ended."""
        return self._commands.kill(self.pid, request_timeout=request_timeout)

    def send_stdin(self, data: str | bytes, request_timeout: float | None = None) -> None:
        """Write to the command's stdin (it must have been started with ``stdin=True``)."""
        self._commands.send_stdin(self.pid, data, request_timeout=request_timeout)

    def close_stdin(self, request_timeout: float | None = None) -> None:
        """Close the command's stdin (EOF)."""
        self._commands.close_stdin(self.pid, request_timeout=request_timeout)

    def disconnect(self) -> None:
        """Stop receiving output. The command keeps running; ``commands.connect(pid)`` reattaches."""
        with self._cond:
            if self._done:
                return
            self._disconnected = True
        self._stream.abort()
        self._reader.join(timeout=5)

    def __repr__(self) -> str:
        state = self._state
        return f"<CommandHandle sandbox={state.sandbox_id} pid={state.pid} exit_code={self.exit_code}>"


class AsyncCommandHandle:
    """A command running in a sandbox, for asyncio (``await commands.run(..., background=True)``)."""

    def __init__(
        self,
        *,
        commands: AsyncCommands,
        state: CommandState,
        stream: AsyncStream,
        events: AsyncGenerator[Event, None],
        pending: list[Chunk],
        on_stdout: AsyncOutputHandler | None = None,
        on_stderr: AsyncOutputHandler | None = None,
        check: bool = True,
    ) -> None:
        self._commands = commands
        self._state = state
        self._stream = stream
        self._events = events
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._check = check
        self._started = time.monotonic()
        self._elapsed: float | None = None
        self._chunks: list[Chunk] = list(pending)
        self._cond = asyncio.Condition()
        self._done = False
        self._disconnected = False
        self._failure: BaseException | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read(pending))

    @property
    def pid(self) -> int:
        """Process ID of the command in the sandbox."""
        assert self._state.pid is not None
        return self._state.pid

    @property
    def stdout(self) -> str:
        """The stdout received so far."""
        return self._state.stdout

    @property
    def stderr(self) -> str:
        """The stderr received so far."""
        return self._state.stderr

    @property
    def exit_code(self) -> int | None:
        """The exit code once the command has ended, else ``None``."""
        return self._state.exit.exit_code if self._state.exit else None

    async def _read(self, pending: list[Chunk]) -> None:
        try:
            for chunk in pending:
                await adeliver(chunk, self._on_stdout, self._on_stderr)
            if not self._state.finished:
                async for event in self._events:
                    chunk = self._state.feed(event)
                    if chunk is not None:
                        async with self._cond:
                            self._chunks.append(chunk)
                            self._cond.notify_all()
                        await adeliver(chunk, self._on_stdout, self._on_stderr)
                    if self._state.finished:
                        await aread_to_end(self._events)
                        break
        except asyncio.CancelledError:
            if not self._disconnected:
                raise
        except Exception as exc:  # kept for wait()
            self._failure = exc
        finally:
            with contextlib.suppress(Exception):
                await self._events.aclose()
            await self._stream.close()
            async with self._cond:
                self._done = True
                self._elapsed = time.monotonic() - self._started
                self._cond.notify_all()

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        """Yield ``(stdout, stderr)`` chunks (one side ``None``) from the start until the command ends."""
        seen = 0
        while True:
            async with self._cond:
                while seen >= len(self._chunks) and not self._done:
                    await self._cond.wait()
                batch = self._chunks[seen:]
                seen += len(batch)
                finished = self._done and seen >= len(self._chunks)
            for chunk in batch:
                yield chunk
            if finished:
                break
        if self._failure is not None:
            raise self._failure

    async def wait(
        self,
        on_stdout: AsyncOutputHandler | None = None,
        on_stderr: AsyncOutputHandler | None = None,
        check: bool | None = None,
    ) -> CommandResult:
        """Wait for the command to end and return its result.

        The callbacks (sync or async) get all output, from the start. Raises
        ``CommandExitException`` for a non-zero exit and ``TimeoutException`` for a command timeout,
        unless ``check`` is false (default: the ``check`` given to ``run``).
        """
        async for chunk in self:
            await adeliver(chunk, on_stdout, on_stderr)
        if self._disconnected and not self._state.finished:
            raise _disconnected(self._state)
        return self._state.result(check=self._check if check is None else check, elapsed=self._elapsed)

    async def kill(self, request_timeout: float | None = None) -> bool:
        """Kill the command (SIGKILL). True if it was killed, False if it had already ended."""
        return await self._commands.kill(self.pid, request_timeout=request_timeout)

    async def send_stdin(self, data: str | bytes, request_timeout: float | None = None) -> None:
        """Write to the command's stdin (it must have been started with ``stdin=True``)."""
        await self._commands.send_stdin(self.pid, data, request_timeout=request_timeout)

    async def close_stdin(self, request_timeout: float | None = None) -> None:
        """Close the command's stdin (EOF)."""
        await self._commands.close_stdin(self.pid, request_timeout=request_timeout)

    async def disconnect(self) -> None:
        """Stop receiving output. The command keeps running; ``commands.connect(pid)`` reattaches."""
        if self._done:
            return
        self._disconnected = True
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    def __repr__(self) -> str:
        return f"<AsyncCommandHandle sandbox={self._state.sandbox_id} pid={self._state.pid} exit_code={self.exit_code}>"
