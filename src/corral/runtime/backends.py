"""The backends of one node, one per isolation kind, behind the one ``Backend`` interface.

``Backends`` creates each sandbox on the backend its spec asks for (or the node's default) and
remembers which one holds it, so every later call reaches the same backend. A kind that cannot run
on this host (runsc missing) is listed with the reason, which creating such a sandbox reports.
Used from one event loop, like the backends it holds.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from corral.agent.client import AgentClient
from corral.runtime.backend import ISOLATIONS, Backend, OnExit, RuntimeFailure, SandboxSpec, SandboxUsage
from corral.runtime.bwrap import BwrapBackend
from corral.runtime.cgroups_priv import Cgroups
from corral.runtime.gvisor import GvisorBackend, runsc_missing
from corral.runtime.netpolicy import NetworkPolicy
from corral.runtime.network import Network
from corral.runtime.plan import AgentRuntime
from corral.runtime.spares import DiskSpares


class Backends:
    name = "backends"

    def __init__(
        self, backends: dict[str, Backend], default: str, missing: dict[str, str] | None = None,
        spares: DiskSpares | None = None,
    ) -> None:
        if default not in backends:
            raise RuntimeFailure((missing or {}).get(default) or f"no {default!r} backend on this node")
        self.backends = backends
        self.default = default
        self.missing = missing or {}
        self._where: dict[str, str] = {}  # sandbox id -> kind, from create until destroy
        self.spares = spares  # disks made ahead, taken by every backend's creates

    def isolation(self, sandbox_id: str) -> str:
        return self._where.get(sandbox_id, self.default)

    def _of(self, sandbox_id: str) -> Backend:
        return self.backends[self.isolation(sandbox_id)]

    async def create(self, spec: SandboxSpec) -> None:
        kind = spec.isolation or self.default
        backend = self.backends.get(kind)
        if backend is None:
            why = self.missing.get(kind) or f"isolation {kind!r} is not one of {', '.join(ISOLATIONS)}"
            raise RuntimeFailure(f"sandbox {spec.sandbox_id} cannot start: {why}")
        self._where[spec.sandbox_id] = kind
        try:
            await backend.create(spec)
        except BaseException:
            self._where.pop(spec.sandbox_id, None)
            raise

    def agent(self, sandbox_id: str) -> AgentClient:
        return self._of(sandbox_id).agent(sandbox_id)

    async def usage(self, sandbox_id: str) -> SandboxUsage:
        return await self._of(sandbox_id).usage(sandbox_id)

    async def oom_kills(self, sandbox_id: str) -> int:
        return await self._of(sandbox_id).oom_kills(sandbox_id)

    async def freeze(self, sandbox_id: str) -> None:
        await self._of(sandbox_id).freeze(sandbox_id)

    async def thaw(self, sandbox_id: str) -> None:
        await self._of(sandbox_id).thaw(sandbox_id)

    async def destroy(self, sandbox_id: str) -> None:
        await self._of(sandbox_id).destroy(sandbox_id)
        self._where.pop(sandbox_id, None)

    async def torn_down(self) -> None:
        for backend in self.backends.values():
            await backend.torn_down()

    def default_env(self, spec: SandboxSpec) -> dict[str, str]:
        return self.backends.get(spec.isolation or self.default, self.backends[self.default]).default_env(spec)

    async def update_network(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        await self._of(sandbox_id).update_network(sandbox_id, policy)

    def network_info(self, sandbox_id: str) -> dict[str, Any]:
        return self._of(sandbox_id).network_info(sandbox_id)

    async def connect_port(self, sandbox_id: str, port: int) -> socket.socket:
        return await self._of(sandbox_id).connect_port(sandbox_id, port)

    async def commit(self, sandbox_id: str, dest: Path) -> None:
        try:
            await self._of(sandbox_id).commit(sandbox_id, dest)
        finally:
            self._where.pop(sandbox_id, None)

    async def reconcile(self, keep: set[str]) -> list[str]:
        """Each backend keeps what the others hold; gVisor first, so runsc's own state goes before
        bwrap's sweep of the shared dirs and cgroups."""
        stale: set[str] = set()
        for kind in sorted(self.backends, key=lambda k: k != "gvisor"):
            others = {i for i, k in self._where.items() if k != kind}
            stale |= set(await self.backends[kind].reconcile(keep | others))
        if self.spares is not None:
            await self.spares.start()
        return sorted(stale)

    async def close(self) -> None:
        if self.spares is not None:
            await self.spares.close()
        for kind in sorted(self.backends, key=lambda k: k != "gvisor"):
            await self.backends[kind].close()


def node_backends(
    sandboxes_dir: Path, mounts_dir: Path, runsc_root: Path, runtime: AgentRuntime, cgroups: Cgroups,
    id_offset: int, on_exit: OnExit, network: Network | None, default: str, zygote: bool = True,
    spare_disks: tuple[int, int] = (0, 0), spare_netns: int = 0,
) -> Backends:
    """Every backend this host can run (bwrap always; gVisor if runsc is installed), sharing the
    instance's network (addresses, nftables table, DNS forwarder) and ``spare_disks`` (size in
    MiB, count) made ahead; bwrap keeps ``spare_netns`` network namespaces made ahead."""
    args = (sandboxes_dir, mounts_dir, runtime, cgroups, id_offset, on_exit)
    size, count = spare_disks
    spares = DiskSpares(sandboxes_dir, id_offset, size, count) if count > 0 else None
    bwrap = BwrapBackend(*args, network, zygote=zygote, spares=spares, spare_netns=spare_netns)
    backends: dict[str, Backend] = {"bwrap": bwrap}
    missing: dict[str, str] = {}
    why = runsc_missing()
    if why is None:
        backends["gvisor"] = GvisorBackend(*args, state_root=runsc_root, network=network, spares=spares)
    else:
        missing["gvisor"] = why
    return Backends(backends, default, missing, spares)
