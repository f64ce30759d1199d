"""The code-interpreter methods of ``Sandbox`` and ``AsyncSandbox`` (``run_code`` and contexts).

``CodeInterpreter`` and ``AsyncCodeInterpreter`` are bases of the two faces, written as twins
that differ only in ``await``: requests come from ``_calls``, the stream is decoded by
``_stream.EventDecoder`` and folded by ``_execution.ExecutionState``. ``run_code`` calls its
callbacks as events arrive, on the calling thread (sync) or in the calling task (async, where a
callback may also be a coroutine function). A callback that raises ends the call with that
exception and closes the stream; the server then interrupts the cell.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from . import _calls, _core
from ._execution import (
    DEFAULT_CODE_TIMEOUT,
    Context,
    Execution,
    ExecutionError,
    ExecutionState,
    OutputMessage,
    Result,
    callback_for,
    context_id,
    parse_code_event,
)
from ._http import AsyncHTTP, SyncHTTP
from ._stream import EventDecoder, aevents, aread_to_end, events, read_to_end

__all__ = ["AsyncCodeInterpreter", "CodeInterpreter"]

T = TypeVar("T")
OutputHandler = Callable[[T], Any]
AsyncOutputHandler = Callable[[T], Awaitable[Any] | Any]


def _required_id(context: Context | str) -> str:
    ident = context_id(context)
    if not ident:
        raise TypeError("a context (a Context or its ID) is required")
    return ident


def _read_timeout(timeout: float | None) -> float | None:
    return _core.stream_read_timeout(DEFAULT_CODE_TIMEOUT if timeout is None else timeout)


def _describe(code: str) -> str:
    first = code.strip().splitlines()[0] if code.strip() else ""
    return f"code {first!r:.80}"


class CodeInterpreter:
    """``run_code`` and code contexts, for ``Sandbox`` (thread-safe, like it)."""

    _sandbox_id: str
    _http: SyncHTTP

    def run_code(
        self,
        code: str,
        language: str | None = None,
        context: Context | str | None = None,
        on_stdout: OutputHandler[OutputMessage] | None = None,
        on_stderr: OutputHandler[OutputMessage] | None = None,
        on_result: OutputHandler[Result] | None = None,
        on_error: OutputHandler[ExecutionError] | None = None,
        envs: Mapping[str, str] | None = None,
        timeout: float | None = None,
        request_timeout: float | None = None,
    ) -> Execution:
        """Run ``code`` in a stateful context and return its ``Execution`` (sandboxes from ``code-interpreter``).

        Without ``context``, each ``language`` (``python`` by default, ``javascript``,
        ``typescript``, ``bash``) has one default context; give either, not both
        (``InvalidArgumentException``). An error raised by the code is returned in
        ``Execution.error``, not raised. Output, results and the error reach the callbacks as they
        are produced. ``envs`` apply to this cell only. At ``timeout`` seconds (default 300, ``0``
        none) the server interrupts the cell, keeping the context's state, and ``error.name`` is
        ``ExecutionTimeout``. ``request_timeout`` limits connecting and sending, not the cell.
        An unknown context raises ``NotFoundException``.
        """
        ident = context_id(context)
        call = _calls.run_code(self._sandbox_id, code, language=language, context_id=ident, envs=envs, timeout=timeout)
        stream = self._http.open(call, request_timeout, read_timeout=_read_timeout(timeout))
        state = ExecutionState(self._sandbox_id, _describe(code))
        decoder = EventDecoder(sse=stream.is_sse, sandbox_id=self._sandbox_id, parse=parse_code_event)
        stream_events = events(stream.chunks(), decoder)
        try:
            for event in stream_events:
                item = state.feed(event)
                if item is not None and (handler := callback_for(item, on_stdout, on_stderr, on_result, on_error)):
                    handler(item)
                if state.finished:
                    read_to_end(stream_events)
                    break
        finally:
            stream_events.close()
            stream.close()
        return state.result()

    def create_code_context(
        self, cwd: str | None = None, language: str | None = None, request_timeout: float | None = None
    ) -> Context:
        """Start a new context for ``language`` (default ``python``) in ``cwd`` (default ``/home/user``)."""
        return self._http.call(_calls.create_context(self._sandbox_id, language=language, cwd=cwd), request_timeout)

    def list_code_contexts(self, request_timeout: float | None = None) -> list[Context]:
        """The sandbox's code contexts, default ones included once they exist."""
        return self._http.call(_calls.list_contexts(self._sandbox_id), request_timeout)

    def restart_code_context(self, context: Context | str, request_timeout: float | None = None) -> None:
        """Restart a context: its state is cleared, its ID, language and cwd stay."""
        self._http.call(_calls.restart_context(self._sandbox_id, _required_id(context)), request_timeout)

    def remove_code_context(self, context: Context | str, request_timeout: float | None = None) -> None:
        """Stop a context and forget it; ``NotFoundException`` if it does not exist."""
        self._http.call(_calls.remove_context(self._sandbox_id, _required_id(context)), request_timeout)


class AsyncCodeInterpreter:
    """``run_code`` and code contexts, for ``AsyncSandbox``; callbacks may be sync or async."""

    _sandbox_id: str
    _http: AsyncHTTP

    async def run_code(
        self,
        code: str,
        language: str | None = None,
        context: Context | str | None = None,
        on_stdout: AsyncOutputHandler[OutputMessage] | None = None,
        on_stderr: AsyncOutputHandler[OutputMessage] | None = None,
        on_result: AsyncOutputHandler[Result] | None = None,
        on_error: AsyncOutputHandler[ExecutionError] | None = None,
        envs: Mapping[str, str] | None = None,
        timeout: float | None = None,
        request_timeout: float | None = None,
    ) -> Execution:
        """Run ``code`` in a stateful context; see ``Sandbox.run_code``."""
        ident = context_id(context)
        call = _calls.run_code(self._sandbox_id, code, language=language, context_id=ident, envs=envs, timeout=timeout)
        stream = await self._http.open(call, request_timeout, read_timeout=_read_timeout(timeout))
        state = ExecutionState(self._sandbox_id, _describe(code))
        decoder = EventDecoder(sse=stream.is_sse, sandbox_id=self._sandbox_id, parse=parse_code_event)
        stream_events = aevents(stream.chunks(), decoder)
        try:
            async for event in stream_events:
                item = state.feed(event)
                if item is not None and (handler := callback_for(item, on_stdout, on_stderr, on_result, on_error)):
                    outcome = handler(item)
                    if inspect.isawaitable(outcome):
                        await outcome
                if state.finished:
                    await aread_to_end(stream_events)
                    break
        finally:
            await stream_events.aclose()
            await stream.close()
        return state.result()

    async def create_code_context(
        self, cwd: str | None = None, language: str | None = None, request_timeout: float | None = None
    ) -> Context:
        """Start a new context for ``language`` (default ``python``) in ``cwd`` (default ``/home/user``)."""
        call = _calls.create_context(self._sandbox_id, language=language, cwd=cwd)
        return await self._http.call(call, request_timeout)

    async def list_code_contexts(self, request_timeout: float | None = None) -> list[Context]:
        """The sandbox's code contexts, default ones included once they exist."""
        return await self._http.call(_calls.list_contexts(self._sandbox_id), request_timeout)

    async def restart_code_context(self, context: Context | str, request_timeout: float | None = None) -> None:
        """Restart a context: its state is cleared, its ID, language and cwd stay."""
        await self._http.call(_calls.restart_context(self._sandbox_id, _required_id(context)), request_timeout)

    async def remove_code_context(self, context: Context | str, request_timeout: float | None = None) -> None:
        """Stop a context and forget it; ``NotFoundException`` if it does not exist."""
        await self._http.call(_calls.remove_context(self._sandbox_id, _required_id(context)), request_timeout)
