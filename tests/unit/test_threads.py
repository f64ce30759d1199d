"""``runtime.threads.to_the_end``: a cancelled caller waits for its thread, then undoes what it made."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

import pytest

from corral.runtime.threads import to_the_end


def _held(gate: threading.Event, result: object, started: Callable[[], None]) -> Callable[[], object]:
    def work() -> object:
        started()
        gate.wait()
        if isinstance(result, BaseException):
            raise result
        return result

    return work


async def _cancelled_while_held(result: object, undo: Callable[[object], object], cancels: int = 1) -> list[str]:
    """Run `to_the_end` on a held thread, cancel it `cancels` times while held, then release it;
    what happened, in order."""
    loop = asyncio.get_running_loop()
    gate, started, seen = threading.Event(), asyncio.Event(), asyncio.Event()
    events: list[str] = []

    def on_cancel() -> None:
        events.append("on_cancel")
        seen.set()

    task = asyncio.create_task(to_the_end(_held(gate, result, lambda: loop.call_soon_threadsafe(started.set)),
                                          undo=undo, on_cancel=on_cancel))
    await started.wait()
    for n in range(cancels):
        task.cancel(f"stop {n}")
        await seen.wait()
        await asyncio.sleep(0)  # the task takes the cancellation and waits again
        assert not task.done(), "the caller returned while its thread still ran"
    events.append("released")
    gate.set()
    with pytest.raises(asyncio.CancelledError) as raised:
        await task
    events.append(f"raised {raised.value.args}")
    return events


def test_a_cancelled_caller_waits_for_its_thread_then_undoes_what_it_made() -> None:
    undone: list[object] = []
    events = asyncio.run(_cancelled_while_held("made", lambda made: undone.append(made)))
    assert events == ["on_cancel", "released", "raised ('stop 0',)"]  # the first cancellation, its message kept
    assert undone == ["made"]


def test_cancelled_again_and_again_it_still_waits_and_on_cancel_runs_once() -> None:
    undone: list[object] = []
    events = asyncio.run(_cancelled_while_held(7, lambda made: undone.append(made), cancels=3))
    assert events == ["on_cancel", "released", "raised ('stop 0',)"] and undone == [7]


def test_a_thread_that_failed_has_nothing_to_undo() -> None:
    undone: list[object] = []
    events = asyncio.run(_cancelled_while_held(OSError("no room"), lambda made: undone.append(made)))
    assert events[-1] == "raised ('stop 0',)" and undone == []


def test_a_failing_undo_is_logged_and_the_cancellation_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    def undo(_: object) -> None:
        raise OSError("already closed")

    with caplog.at_level(logging.ERROR, logger="corral.runtime"):
        events = asyncio.run(_cancelled_while_held("made", undo))
    assert events[-1] == "raised ('stop 0',)"
    assert "undoing work for a cancelled caller failed" in caplog.text


def test_without_a_cancellation_it_is_a_thread_call() -> None:
    async def main() -> tuple[object, str]:
        result = await to_the_end(lambda a, b: a + b, 2, 3)
        with pytest.raises(OSError) as failed:
            await to_the_end(_held(_set(), OSError("boom"), lambda: None))
        return result, str(failed.value)

    assert asyncio.run(main()) == (5, "boom")


def test_a_timeout_around_it_still_times_out_after_the_thread() -> None:
    gate = threading.Event()

    async def main() -> None:
        async with asyncio.timeout(0.05):  # its cancel releases the thread (on_cancel)
            await to_the_end(_held(gate, "x", lambda: None), on_cancel=gate.set)

    with pytest.raises(TimeoutError):
        asyncio.run(main())


def test_the_loops_shutdown_does_not_skip_the_undo() -> None:
    """``asyncio.run`` cancels every task left when its main returns; the thread's future is not a
    task, so the caller still waits for it and undoes what it made."""
    gate, undone = threading.Event(), []

    async def main() -> None:
        started = asyncio.Event()
        loop = asyncio.get_running_loop()
        call = asyncio.create_task(to_the_end(_held(gate, "made", lambda: loop.call_soon_threadsafe(started.set)),
                                              undo=undone.append, on_cancel=gate.set))
        await started.wait()
        assert not call.done()  # main returns with the call in flight

    asyncio.run(main())
    assert undone == ["made"]


def _set() -> threading.Event:
    event = threading.Event()
    event.set()
    return event
