"""Sandbox disks made ahead: the ext4 image copy, its loop device and mount cost ~7 ms of a cold
create (docs/performance.md), so a few empty ones of the default size wait in the sandboxes dir,
each disk mounted detached and held by an fd (``mounts_priv.make_spare``). A create of
that size takes one by renaming it to its own dir and mounting the disk there (in the sandbox's
mount namespace) and a refill starts once the create is done; other sizes, or none left, make theirs
on the spot.

A spare never held a sandbox: each is a fresh copy of the pristine image with its own UUID, so a
sandbox on one is the same as a sandbox on a disk made for it. Used from one event loop.

``Spares`` is what disks and network namespaces made ahead (``netspares``) share: the background
fill, one at a time, up to a count, and the clean-up at close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Generic, TypeVar

from corral.runtime import mounts_priv

log = logging.getLogger(__name__)
T = TypeVar("T")
# Seconds from a create's end to its spares' refill: its caller's first command comes right after
# (the SDK's create, then run), and a refill made meanwhile competes with it for the cores.
REFILL_DELAY = 0.03


class Spares(Generic[T]):
    """Up to ``count`` things made ahead, one at a time by a background task; a subclass makes one
    (``_make``; None: it could not, filling stops until the next refill) and destroys one."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._ready: list[T] = []
        self._filling: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    @property
    def ready(self) -> int:
        """Spares made and not taken."""
        return len(self._ready)

    async def close(self) -> None:
        self._closed = True
        if self._filling is not None:
            await asyncio.wait({self._filling})  # never cancelled mid-make: that would leak what it made
        while self._ready:
            await self._destroy(self._ready.pop())

    def refill(self) -> None:
        """Make spares until there are ``count`` again, in the background, from ``REFILL_DELAY`` on
        (a create calls it once it is done)."""
        asyncio.get_running_loop().call_later(REFILL_DELAY, self._refill)

    def _refill(self) -> None:
        if self._started and not self._closed and self.count > 0 and self._filling is None:
            self._filling = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        try:
            while not self._closed and len(self._ready) < self.count:
                made = await self._make()
                if made is None:
                    return
                if self._closed:
                    await self._destroy(made)
                    return
                self._ready.append(made)
        finally:
            self._filling = None

    async def _make(self) -> T | None:
        raise NotImplementedError

    async def _destroy(self, spare: T) -> None:
        raise NotImplementedError


class DiskSpares(Spares[mounts_priv.Spare]):
    def __init__(self, sandboxes_dir: Path, owner: int, size_mb: int, count: int) -> None:
        super().__init__(count)
        self.sandboxes_dir = sandboxes_dir
        self.owner = owner
        self.size_mb = size_mb

    def take(self, size_mb: int) -> mounts_priv.Spare | None:
        """A spare of this size, or None (then the caller makes its disk itself). The caller calls
        ``refill`` once its create is done: a refill made meanwhile would compete with it."""
        return self._ready.pop() if size_mb == self.size_mb and self._ready else None

    async def start(self) -> None:
        """Remove spares a previous server process left (a crash: their disks went with its fds),
        then fill. Called once, after the backends' start-up reconcile."""
        if self._started or self._closed:
            return
        self._started = True
        mine = {spare.path for spare in self._ready}
        for path in self._listed():
            if path not in mine:
                await self._destroy(mounts_priv.Spare(path, -1))
        self._refill()

    def _listed(self) -> list[Path]:
        if not self.sandboxes_dir.is_dir():
            return []
        return [p for p in self.sandboxes_dir.iterdir() if p.name.startswith(mounts_priv.SPARE_PREFIX)]

    async def _make(self) -> mounts_priv.Spare | None:
        try:
            return await asyncio.to_thread(mounts_priv.make_spare, self.sandboxes_dir, self.size_mb, self.owner)
        except (OSError, mounts_priv.MountError) as exc:  # creates make their own disks meanwhile
            log.warning("making a spare sandbox disk failed: %s", exc)
            return None

    async def _destroy(self, spare: mounts_priv.Spare) -> None:
        await asyncio.to_thread(_destroy, spare)


def _destroy(spare: mounts_priv.Spare) -> None:
    with contextlib.suppress(OSError, mounts_priv.MountError):
        mounts_priv.destroy_spare(spare)
