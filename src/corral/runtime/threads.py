"""Host work on a thread that a cancelled caller still waits for.

``asyncio.to_thread`` returns at once when its caller is cancelled, but the thread cannot be
stopped: it goes on making what it makes (a sandbox's cgroups, mounts, a runsc process) while the
caller's clean-up runs, and what it makes after that clean-up stays on the host. Seen as a
sandbox's empty cgroups left after a server's stop, which cancelled a pool refill during its
``prepare`` (docs/performance.md, "Pooled bursts"). ``to_the_end`` waits for the thread, hands what it
made to ``undo``, then lets the cancellation through, so the clean-up sees everything.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("corral.runtime")


async def to_the_end(
    func: Callable[..., T], *args: Any, undo: Callable[[T], object] | None = None,
    on_cancel: Callable[[], object] | None = None,
) -> T:
    """``func(*args)`` on a thread, awaited to its end even if the caller is cancelled meanwhile
    (again and again, or by the loop's shutdown: the thread's future is not a task, nothing cancels
    it). Cancelled: ``on_cancel()`` at once (e.g. what makes the thread finish sooner), then, once
    the thread is done, ``undo(result)`` if it succeeded, then the first CancelledError. Otherwise
    its result, or its exception. A failing ``undo`` is logged: the cancellation still goes on."""
    loop = asyncio.get_running_loop()
    work = loop.run_in_executor(None, partial(contextvars.copy_context().run, func, *args))
    cancel: asyncio.CancelledError | None = None
    while not work.done():
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError as exc:  # the caller's: the thread runs on
            if cancel is None:
                cancel = exc
                if on_cancel is not None:
                    on_cancel()
        except BaseException:  # the thread's own failure: raised below
            pass
    if cancel is None:
        return work.result()
    if undo is not None and not work.cancelled() and work.exception() is None:
        try:
            undo(work.result())
        except Exception:
            log.exception("undoing %s for a cancelled caller failed", getattr(func, "__name__", func))
    raise cancel
