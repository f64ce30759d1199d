"""What the envd emulation remembers between calls: process configs and polling watchers.

One `State` per envd app, used from the event loop only (not thread-safe). Everything here is
bounded, so a sandbox that starts many processes or abandons watchers cannot grow server memory.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from .watchers import Watchers

MAX_CONFIGS = 4096


class ProcessConfigs:
    """The ``ProcessConfig`` each Start asked for, by (sandbox, pid), for List to echo (the agent
    knows the argv and cwd it ran, but not which envs were the caller's own). Oldest dropped first."""

    def __init__(self, limit: int = MAX_CONFIGS) -> None:
        self._configs: collections.OrderedDict[tuple[str, int], dict[str, Any]] = collections.OrderedDict()
        self._limit = limit

    def remember(self, sandbox_id: str, pid: int, config: dict[str, Any]) -> None:
        self._configs[(sandbox_id, pid)] = config
        self._configs.move_to_end((sandbox_id, pid))
        while len(self._configs) > self._limit:
            self._configs.popitem(last=False)

    def get(self, sandbox_id: str, pid: int) -> dict[str, Any] | None:
        return self._configs.get((sandbox_id, pid))

    def keep_only(self, sandbox_id: str, pids: set[int]) -> None:
        """Forget the sandbox's processes that are no longer running."""
        for key in [k for k in self._configs if k[0] == sandbox_id and k[1] not in pids]:
            del self._configs[key]


@dataclass
class State:
    configs: ProcessConfigs = field(default_factory=ProcessConfigs)
    watchers: Watchers = field(default_factory=Watchers)
