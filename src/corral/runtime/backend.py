"""The backend interface: what the service may ask of a sandbox runtime.

A backend owns sandboxes on one node: it creates them from a spec, hands out an agent client for
each, reports usage, freezes and thaws them, destroys them and cleans up whatever a crash left behind. The service never
knows which backend it holds. Implementations: ``BwrapBackend`` (default), ``GvisorBackend``, and
``Backends``, which holds one of each kind on a node and routes by ``SandboxSpec.isolation``.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from corral.runtime.netpolicy import INTERNET, NetworkPolicy

if TYPE_CHECKING:
    from corral.agent.client import AgentClient


ISOLATIONS = ("bwrap", "gvisor")  # the kinds of backend a sandbox may ask for


class RuntimeFailure(RuntimeError):
    """A sandbox could not be created or has died; the message says why."""


@dataclass(frozen=True)
class SandboxSpec:
    """What a sandbox should be. ``layers`` are template rootfs dirs, topmost first."""

    sandbox_id: str
    layers: tuple[Path, ...]
    cpu: float
    memory_mb: int
    disk_mb: int
    pids: int = 1024
    network: NetworkPolicy = INTERNET
    binds: tuple[tuple[Path, str], ...] = ()  # extra host dirs bound read-only at a path inside (builds)
    isolation: str = ""  # one of ISOLATIONS; "" = the node's default


@dataclass(frozen=True)
class SandboxUsage:
    cpu_seconds: float
    memory_bytes: int
    memory_limit_bytes: int
    disk_bytes: int
    disk_limit_bytes: int
    pids: int
    oom_kills: int


OnExit = Callable[[str, str], Awaitable[None]]
"""Called as ``on_exit(sandbox_id, reason)`` when a sandbox dies without being destroyed."""


class Backend(Protocol):
    name: str

    async def create(self, spec: SandboxSpec) -> None: ...

    def agent(self, sandbox_id: str) -> AgentClient: ...

    async def usage(self, sandbox_id: str) -> SandboxUsage: ...

    async def oom_kills(self, sandbox_id: str) -> int:
        """Processes killed by the sandbox's memory limit so far (cheap: read per command)."""
        ...

    async def freeze(self, sandbox_id: str) -> None:
        """Stop every process of the sandbox in place (pause); memory and disk stay as they are."""
        ...

    async def thaw(self, sandbox_id: str) -> None:
        """Let a frozen sandbox's processes run again (resume)."""
        ...

    async def destroy(self, sandbox_id: str) -> None:
        """End the sandbox: returns once none of its processes runs; its network, disk, mounts and
        cgroups may go after that, in the background (``torn_down``)."""
        ...

    async def torn_down(self) -> None:
        """Wait until every sandbox destroyed so far is torn down."""
        ...

    def default_env(self, spec: SandboxSpec) -> dict[str, str]:
        """Environment every process of this sandbox gets (e.g. the CA bundle of a networked one)."""
        ...

    async def update_network(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        """Replace a networked sandbox's egress policy; new and existing flows follow it."""
        ...

    def network_info(self, sandbox_id: str) -> dict[str, Any]:
        """The sandbox's policy, address and recent DNS questions."""
        ...

    async def connect_port(self, sandbox_id: str, port: int) -> socket.socket:
        """A connected TCP socket to ``127.0.0.1:port`` inside the sandbox (its exposed ports)."""
        ...

    async def commit(self, sandbox_id: str, dest: Path) -> None:
        """End the sandbox and copy its writable layer (what it changed, whiteouts included) to ``dest``,
        which must not exist: a template build step's result. The sandbox is gone afterwards."""
        ...

    async def reconcile(self, keep: set[str]) -> list[str]:
        """Remove every sandbox this node holds that is not in ``keep``; return their ids."""
        ...

    async def close(self) -> None: ...
