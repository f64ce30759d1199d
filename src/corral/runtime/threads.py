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
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def to_the_end(func: Callable[..., T], *args: Any, undo: Callable[[T], object] | None = None) -> T:
    """``func(*args)`` on a thread, awaited to its end even if the caller is cancelled meanwhile.
    Cancelled: ``undo(result)`` (if the thread succeeded), then CancelledError. Otherwise its result,
    or its exception."""
    work = asyncio.ensure_future(asyncio.to_thread(func, *args))
    cancelled = False
    while not work.done():
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            cancelled = True  # the caller's: the thread runs on
        except BaseException:  # the thread's own failure: raised below
            pass
    if cancelled:
        if undo is not None and work.exception() is None:
            undo(work.result())
        raise asyncio.CancelledError
    return work.result()
