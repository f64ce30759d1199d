"""The gVisor backend: the same overlay root, cgroups and agent as bwrap, run by ``runsc`` (ptrace).

The sandbox's system calls go to gVisor's user-space kernel (the sentry) instead of the host's;
files reach the host only through runsc's gofer. The agent is reached over connections the host
donates through its control socket (docs/gvisor.md says why). Safe to use from one asyncio event
loop (not thread-safe). Privileged steps live in ``gvisor_priv``; this module sequences them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import socket
import subprocess
from functools import partial
from pathlib import Path

from corral.agent.client import AgentClient, DonatedAgentClient, Donor
from corral.agent.protocol import AgentError, AgentUnavailable
from corral.runtime import gvisor_preload, gvisor_priv, netns_priv
from corral.runtime.backend import OnExit, RuntimeFailure, SandboxSpec
from corral.runtime.bwrap import BwrapBackend, _Live
from corral.runtime.cgroups_priv import Cgroups, CgroupUnavailable
from corral.runtime.network import Network
from corral.runtime.plan import AgentRuntime, plan
from corral.runtime.spares import DiskSpares
from corral.runtime.threads import to_the_end

SYNC_TIMEOUT = 30.0


def runsc_missing() -> str | None:
    """Why this host cannot run gVisor sandboxes, or None if it can."""
    if shutil.which("runsc") is None:
        return "gVisor is not installed on this node: `runsc` not found (install the Debian package runsc)"
    return None


class GvisorBackend(BwrapBackend):
    """Sandboxes as gVisor containers. Reuses bwrap's bookkeeping (usage, freeze/thaw through the
    cgroup2 freezer, exit watching); differs in how it starts, reaches, saves and stops them."""

    name = "gvisor"
    shares_runtime = False  # runsc gets the runtime bound into each root (its gofer serves the root)
    python_agents = True  # the agent is each container's init, started by the runtime's python

    def __init__(
        self, sandboxes_dir: Path, mounts_dir: Path, runtime: AgentRuntime, cgroups: Cgroups, id_offset: int,
        on_exit: OnExit, state_root: Path, network: Network | None = None, spares: DiskSpares | None = None,
    ) -> None:
        super().__init__(sandboxes_dir, mounts_dir, runtime, cgroups, id_offset, on_exit, network, spares=spares)
        self.state_root = state_root  # runsc --root: this server's containers only
        self._donors: dict[str, Donor] = {}
        # The stat fix-up (``gvisor_preload``), compiled at the first gVisor create of this server if
        # its runsc needs it.
        self.fixup_dir = state_root.with_name(f"{state_root.name}.preload")
        self._fixup_task: asyncio.Task[gvisor_preload.Preload | None] | None = None
        self._preloaded: set[str] = set()  # sandboxes it is bound in (their commit drops its mount point)

    async def _fixup(self) -> gvisor_preload.Preload | None:
        if self._fixup_task is None:
            self._fixup_task = asyncio.create_task(asyncio.to_thread(self._build_fixup))
        return await asyncio.shield(self._fixup_task)

    def _build_fixup(self) -> gvisor_preload.Preload | None:
        return gvisor_preload.build(self.fixup_dir) if gvisor_preload.runsc_needs_it() else None

    async def create(self, spec: SandboxSpec) -> None:
        net = self.network
        if spec.network.networked and net is None:
            raise RuntimeFailure(f"sandbox {spec.sandbox_id}: networking is disabled on this server (CORRAL_NETWORK)")
        networked = net is not None and spec.network.networked
        p = plan(
            spec, sandboxes_dir=self.sandboxes_dir, mounts_dir=self.mounts_dir, runtime=self.runtime,
            agent_src=self.agent_src, id_offset=self.id_offset,
            net_dirs=tuple(net.dirs()) if net and networked else (),
            net_files=tuple(net.files()) if net and networked else (),
        )
        netns_fd = -1
        spare = self.spares.take(p.disk_mb) if self.spares else None
        try:
            netns = None
            if net is not None and networked:
                # The netns is made and plugged before runsc starts, so the sandbox never runs unplugged;
                # this fd holds it until the sentry lives in it.
                att = net.reserve(spec.sandbox_id, spec.network)
                assert att is not None
                # each host step to its end even if the create is cancelled meanwhile (runtime/threads.py)
                netns_fd = await to_the_end(netns_priv.new_netns, undo=os.close)
                netns = f"/proc/{os.getpid()}/fd/{netns_fd}"
                await to_the_end(partial(net.plug, att, netns, prepared=True))
            fixup = await self._fixup()
            bundle, preloaded = await to_the_end(gvisor_priv.prepare, p, self.cgroups, netns, spare, fixup)
            if preloaded:
                self._preloaded.add(spec.sandbox_id)
            process, control = await to_the_end(
                gvisor_priv.spawn, p, bundle, self.state_root, self.cgroups, networked, undo=_stop_runsc,
            )
            self._donors[spec.sandbox_id] = Donor(control)
            loop = asyncio.get_running_loop()
            live = _Live(p, process, os.pidfd_open(process.pid), loop.create_future())
            self._live[spec.sandbox_id] = live
            loop.add_reader(live.pidfd, self._reap, spec.sandbox_id, live)
            await self._wait_ready(spec.sandbox_id, live)
        except BaseException as exc:
            await self.destroy(spec.sandbox_id)
            await self._drop_spare(spare)
            if isinstance(exc, RuntimeFailure | asyncio.CancelledError):
                raise
            raise RuntimeFailure(f"sandbox {spec.sandbox_id} failed to start: {exc}") from exc
        finally:
            if netns_fd >= 0:
                os.close(netns_fd)
            if self.spares is not None:
                self.spares.refill()

    async def _report_exit(self, sandbox_id: str, live: _Live, code: int) -> None:
        """The whole sandbox ends when it outgrows its cgroup (gVisor has no OOM killer of its own)."""
        try:
            oom = await asyncio.to_thread(self.cgroups.oom_kills, sandbox_id)
        except OSError:
            oom = 0
        if oom:
            mib = live.plan.limits.memory_bytes >> 20
            await self.on_exit(sandbox_id, f"out of memory: the sandbox used more than its {mib} MiB and was ended")
        else:
            await super()._report_exit(sandbox_id, live, code)

    async def connect_port(self, sandbox_id: str, port: int) -> socket.socket:
        """A connection to ``port`` on the sandbox's loopback, spliced by its agent: netstack owns the
        sandbox's network, so no host socket can enter it (and a ``none`` sandbox has no veth)."""
        self._require(sandbox_id)
        try:
            return await self.agent(sandbox_id).relay(port)
        except AgentUnavailable as exc:
            raise RuntimeFailure(f"sandbox {sandbox_id}: its agent is unreachable: {exc.message}") from exc
        except AgentError as exc:
            raise ConnectionRefusedError(errno.ECONNREFUSED, exc.message) from exc

    def agent(self, sandbox_id: str) -> AgentClient:
        donor = self._donors.get(sandbox_id)
        if donor is None:  # not (or no longer) here: fails like bwrap's client for a missing socket
            return super().agent(sandbox_id)
        return DonatedAgentClient(donor, f"sandbox {sandbox_id}", pool=self.channels)

    async def commit(self, sandbox_id: str, dest: Path) -> None:
        self._require(sandbox_id)
        # The sentry may hold written data in its own cache: flush it to the gofer (the host upper).
        try:
            async with asyncio.timeout(SYNC_TIMEOUT):
                stream = await self.agent(sandbox_id).exec(
                    [*self.runtime.python_argv(), "-c", "import os; os.sync()"], user="root"
                )
                done = await stream.wait()
        except Exception as exc:
            await self.destroy(sandbox_id)
            raise RuntimeFailure(f"sandbox {sandbox_id}: flushing its files failed: {exc}") from exc
        if done.exit_code != 0:
            await self.destroy(sandbox_id)
            raise RuntimeFailure(f"sandbox {sandbox_id}: flushing its files failed (exit {done.exit_code})")
        preloaded = sandbox_id in self._preloaded
        await super().commit(sandbox_id, dest)
        if preloaded:
            await asyncio.to_thread(gvisor_preload.drop_mount_point, dest)

    async def _stop(self, sandbox_id: str) -> None:
        """Kill runsc, its gofer and sentry (all in the sandbox's cgroups) and wait for runsc."""
        live = self._live.pop(sandbox_id, None)
        if live is not None:
            live.destroying = True
            with contextlib.suppress(OSError, CgroupUnavailable):
                await asyncio.to_thread(self.cgroups.remove, sandbox_id)  # thaws, kills, removes
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(live.exited), 5)
        donor = self._donors.pop(sandbox_id, None)
        if donor is not None:
            donor.close()
        self._preloaded.discard(sandbox_id)

    async def _teardown(self, sandbox_id: str) -> None:
        # gVisor's veth goes before runsc's state and mounts, as before the release went to the
        # background: the two full gVisor passes that saw /.corral renamed had them at once
        # (docs/gvisor.md; the cause is not known, so the order is kept)
        unplug = self.network.release(sandbox_id) if self.network is not None else None
        if unplug is not None:
            await asyncio.shield(unplug)
        await asyncio.to_thread(
            gvisor_priv.teardown, (self.sandboxes_dir / sandbox_id, self.mounts_dir / sandbox_id), sandbox_id,
            self.cgroups, self.state_root,
        )

    async def reconcile(self, keep: set[str]) -> list[str]:
        keep = keep | set(self._live)
        stale = [c for c in await asyncio.to_thread(gvisor_priv.containers, self.state_root) if c not in keep]
        for sandbox_id in stale:
            await self._teardown(sandbox_id)
        return sorted(set(stale) | set(await super().reconcile(keep)))

    async def close(self) -> None:
        await super().close()
        await asyncio.to_thread(gvisor_priv.remove_state_root, self.state_root)
        if self._fixup_task is not None:
            with contextlib.suppress(Exception):
                await self._fixup_task  # a build still running would write after the removal
            await asyncio.to_thread(gvisor_preload.remove, self.fixup_dir)


def _stop_runsc(started: tuple[subprocess.Popen[bytes], socket.socket]) -> None:
    """The runsc of a create cancelled while it started: killed, its control socket closed (its
    sentry and gofer go with the sandbox's cgroups in the teardown; Python reaps the process)."""
    process, control = started
    control.close()
    process.kill()
