"""Polling directory watchers (CreateWatcher / GetWatcherEvents / RemoveWatcher).

Each watcher owns one agent watch stream, drained by a task into a bounded buffer that
GetWatcherEvents empties. A watcher ends when its directory goes away or its sandbox ends; an
ended watcher nobody removed is forgotten after `ENDED_KEPT_SECONDS`. Event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from corral.agent.client import Watcher
from corral.agent.protocol import AgentError

from .connect import ConnectError

log = logging.getLogger("corral.envd")

MAX_BUFFERED = 10_000  # events kept per watcher between two polls; the oldest are dropped first
MAX_WATCHERS = 64  # per sandbox
ENDED_KEPT_SECONDS = 600.0

Convert = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class PollingWatcher:
    """One watch, its task and its buffered (already converted) events."""

    def __init__(self, sandbox_id: str, watch: Watcher, convert: Convert) -> None:
        self.sandbox_id = sandbox_id
        self.ended_at: float | None = None
        self._watch = watch
        self._convert = convert
        self._events: list[dict[str, Any]] = []
        self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            async for event in self._watch:
                self._events.append(await self._convert(event))
                if len(self._events) > MAX_BUFFERED:
                    del self._events[: len(self._events) - MAX_BUFFERED]
        except AgentError as exc:
            log.info("watcher in sandbox %s ended: %s", self.sandbox_id, exc)
        finally:
            self.ended_at = asyncio.get_running_loop().time()
            with contextlib.suppress(AgentError, OSError):
                await self._watch.__aexit__(None, None, None)

    def take(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.wait({self._task})


class Watchers:
    def __init__(self) -> None:
        self._all: dict[str, PollingWatcher] = {}

    def add(self, sandbox_id: str, watch: Watcher, convert: Convert) -> str:
        self._forget_ended()
        if sum(w.sandbox_id == sandbox_id for w in self._all.values()) >= MAX_WATCHERS:
            raise ConnectError("resource_exhausted", f"sandbox {sandbox_id}: at most {MAX_WATCHERS} watchers")
        watcher_id = secrets.token_hex(8)
        self._all[watcher_id] = PollingWatcher(sandbox_id, watch, convert)
        return watcher_id

    def get(self, sandbox_id: str, watcher_id: str) -> PollingWatcher:
        watcher = self._all.get(watcher_id)
        if watcher is None or watcher.sandbox_id != sandbox_id:
            raise ConnectError("not_found", f"sandbox {sandbox_id}: no watcher {watcher_id!r:.40}")
        return watcher

    async def remove(self, sandbox_id: str, watcher_id: str) -> None:
        watcher = self.get(sandbox_id, watcher_id)
        del self._all[watcher_id]
        await watcher.close()

    async def close(self) -> None:
        watchers, self._all = list(self._all.values()), {}
        for watcher in watchers:
            await watcher.close()

    def _forget_ended(self) -> None:
        now = asyncio.get_running_loop().time()
        for key, watcher in list(self._all.items()):
            if watcher.ended_at is not None and now - watcher.ended_at > ENDED_KEPT_SECONDS:
                del self._all[key]
