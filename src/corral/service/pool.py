"""The warm pool: sandboxes started ahead of demand, so a create takes one instead of starting one.

A pooled sandbox is an ordinary sandbox that nobody has used: made from the template with its default
resources and network, its start command already run (with the template's envs, not the caller's) and,
for code-interpreter templates, its default python kernel started (listed as its one context; given
the caller's envs, or restarted with them if python reads them at start), never handed out twice.
``take`` pops one in O(1) (the caller then gives it an owner, a record and a deadline); ``refill`` runs
in the background and keeps, per pool key, ``min_size`` plus what recent demand needs (creates per
second in the last window × the time one start takes), bounded by ``max_size`` and the server's
sandbox limit. Only creates that ask
for nothing the pool can't know in advance (default resources, the default network) are served from it.
A template rebuilt under the same name changes the key, so sandboxes of its old version are drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("corral.pool")
WINDOW = 10.0  # seconds of demand history that size the pool


@dataclass(frozen=True)
class PoolKey:
    template: str
    template_key: str  # the template's build key: a rebuild makes a new pool
    cpu: float
    memory_mb: int
    disk_mb: int


@dataclass
class _Pool:
    min_size: int
    ready: deque[str] = field(default_factory=deque)
    starting: int = 0
    demand: deque[float] = field(default_factory=deque)  # monotonic times of recent takes (and misses)
    start_seconds: float = 0.5  # moving average of one start

    def target(self, max_size: int, now: float) -> int:
        while self.demand and self.demand[0] < now - WINDOW:
            self.demand.popleft()
        rate = len(self.demand) / WINDOW
        return min(max_size, max(self.min_size, math.ceil(rate * self.start_seconds * 2)))


Starter = Callable[[PoolKey], Awaitable[str]]  # start one sandbox for the key, return its id
Destroyer = Callable[[str], Awaitable[None]]


class WarmPool:
    def __init__(
        self, start: Starter, destroy: Destroyer, room: Callable[[], int], *, max_size: int = 8, parallel: int = 2,
    ) -> None:
        self._start = start
        self._destroy = destroy
        self._room = room  # how many more sandboxes the server may hold now
        self.max_size = max_size
        self._parallel = asyncio.Semaphore(parallel)
        self._pools: dict[PoolKey, _Pool] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fills: set[asyncio.Task[None]] = set()
        self._destroys: set[asyncio.Task[None]] = set()
        self._closed = False

    # configuration
    def want(self, key: PoolKey, min_size: int) -> None:
        """Keep at least ``min_size`` ready sandboxes for ``key`` (and drain pools of older builds)."""
        for other in [k for k in self._pools if k.template == key.template and k.template_key != key.template_key]:
            self.drop(other)
        pool = self._pools.setdefault(key, _Pool(min_size))
        pool.min_size = max(pool.min_size, min_size)
        self._wake.set()

    def drop(self, key: PoolKey) -> None:
        pool = self._pools.pop(key, None)
        if pool is not None:
            for sandbox_id in pool.ready:
                self._spawn(self._destroy(sandbox_id), self._destroys)

    # the hot path
    def take(self, key: PoolKey) -> str | None:
        """A ready sandbox for ``key`` (now the caller's), or None; either way demand is noted."""
        pool = self._pools.get(key)
        if pool is None:
            self._pools[key] = pool = _Pool(0)
        pool.demand.append(time.monotonic())
        self._wake.set()
        return pool.ready.popleft() if pool.ready else None

    def forget(self, sandbox_id: str) -> bool:
        """A pooled sandbox died while idle: drop it. True if it was pooled."""
        for pool in self._pools.values():
            if sandbox_id in pool.ready:
                pool.ready.remove(sandbox_id)
                self._wake.set()
                return True
        return False

    def status(self) -> list[dict[str, object]]:
        now = time.monotonic()
        return [
            {"template": k.template, "cpu": k.cpu, "memory_mb": k.memory_mb, "disk_mb": k.disk_mb,
             "ready": len(p.ready), "starting": p.starting, "min": p.min_size, "target": p.target(self.max_size, now),
             "start_seconds": round(p.start_seconds, 3)}
            for k, p in self._pools.items()
        ]

    def size(self) -> int:
        return sum(len(p.ready) + p.starting for p in self._pools.values())

    def ready(self, key: PoolKey) -> int:
        pool = self._pools.get(key)
        return len(pool.ready) if pool else 0

    # background refill
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._refill())

    async def _refill(self) -> None:
        while not self._closed:
            self._wake.clear()
            now = time.monotonic()
            for key, pool in list(self._pools.items()):
                missing = pool.target(self.max_size, now) - len(pool.ready) - pool.starting
                for _ in range(max(0, min(missing, self._room()))):
                    pool.starting += 1
                    self._spawn(self._fill(key, pool), self._fills)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

    async def _fill(self, key: PoolKey, pool: _Pool) -> None:
        try:
            async with self._parallel:
                if self._closed or self._pools.get(key) is not pool:
                    return
                started = time.monotonic()
                try:
                    sandbox_id = await self._start(key)
                except Exception as exc:  # a broken template must not spin: wait for new demand
                    log.warning("pool: starting a %s sandbox failed: %s", key.template, exc)
                    await asyncio.sleep(5)
                    return
                pool.start_seconds = 0.8 * pool.start_seconds + 0.2 * (time.monotonic() - started)
                if self._closed or self._pools.get(key) is not pool:
                    await self._destroy(sandbox_id)
                    return
                pool.ready.append(sandbox_id)
        finally:
            pool.starting -= 1
            self._wake.set()

    @staticmethod
    def _spawn(work: Awaitable[None], tasks: set[asyncio.Task[None]]) -> None:
        task = asyncio.ensure_future(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def close(self) -> None:
        """Stop refilling and destroy every idle pooled sandbox."""
        self._closed = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._fills):  # a start being cancelled cleans up after itself
            task.cancel()
        for task in list(self._fills):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        for key in list(self._pools):
            self.drop(key)
        for task in list(self._destroys):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
