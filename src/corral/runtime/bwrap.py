"""The default backend: bubblewrap namespaces over an overlay root, cgroup limits, seccomp.

Owns the sandboxes of this node. Safe to use from one asyncio event loop (not thread-safe).
Privileged steps live in ``launch_priv``/``mounts_priv``/``cgroups_priv``; this module sequences them.
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import corral.agent
from corral.agent.client import AgentClient, ChannelPool
from corral.runtime import agent_bundle, launch_priv, mounts_priv, netns_priv, netspares, static_tools
from corral.runtime.backend import OnExit, RuntimeFailure, SandboxSpec, SandboxUsage
from corral.runtime.cgroups_priv import Cgroups, CgroupUnavailable
from corral.runtime.netpolicy import NetworkPolicy
from corral.runtime.netspares import NetSpares
from corral.runtime.network import Network
from corral.runtime.plan import LOG_NAME, AgentRuntime, LaunchPlan, agent_binds, plan
from corral.runtime.seccomp import build_filter
from corral.runtime.spares import DiskSpares
from corral.runtime.threads import to_the_end
from corral.runtime.zygote import AgentProcess, Joiner, Zygote, ZygoteError, finish_agent, place_joiner, request_joiner

READY_TIMEOUT = 20.0
TEARDOWN_RETRIES = (0.5, 1.0, 2.0, 4.0)  # seconds before each further try of a sandbox's teardown
T = TypeVar("T")
log = logging.getLogger("corral.bwrap")


@dataclass
class _Live:
    plan: LaunchPlan
    process: subprocess.Popen[bytes]
    pidfd: int
    exited: asyncio.Future[int]  # bwrap's exit code, set when the pidfd says it is gone
    init_pid: int = 0  # the sandbox's pid 1 (bwrap's child), host view
    init_pidfd: int = -1  # a pidfd of it: signals never reach a process that reused its pid
    agent_pidfd: int = -1  # an agent from the zygote: readable once it exited
    destroying: bool = False
    frozen: bool = False


def _admit_agent(live: _Live, spawned: launch_priv.Spawned, plug: Callable[[int], None] | None,
                 joiner: Joiner, cgroups: Cgroups) -> AgentProcess:
    """One thread job (a hop through the event loop between steps cost ~0.5–1 ms): ``admit`` bwrap,
    place the joiner the zygote forked meanwhile, ``finish_agent``. Sets ``live``'s pid 1 as soon
    as it is known (a cancelled create kills it); closes the joiner and the ready pipe."""
    assert spawned.ready is not None
    try:
        live.init_pid = launch_priv.admit(live.plan, spawned, plug)
        place_joiner(joiner, live.plan.sandbox_id, cgroups)
    except BaseException:
        joiner.close()
        spawned.ready.close()
        raise
    finally:
        live.init_pidfd = spawned.init_pidfd
    return finish_agent(joiner, live.init_pidfd, spawned.ready, READY_TIMEOUT)


SHARED_RUNTIME = ".runtime"  # in the mounts dir: the agent's runtime, bound once (LaunchPlan.runtime_binds)


class BwrapBackend:
    """Sandboxes as bubblewrap process trees. See docs/security.md for what each layer stops."""

    name = "bwrap"
    shares_runtime = True  # bwrap binds the runtime inside each sandbox from one host mount
    python_agents = False  # agents are forked from the zygote (unless it is off), not started by python

    def __init__(
        self, sandboxes_dir: Path, mounts_dir: Path, runtime: AgentRuntime, cgroups: Cgroups, id_offset: int,
        on_exit: OnExit, network: Network | None = None, zygote: bool = True, spares: DiskSpares | None = None,
        spare_netns: int = 0,
    ) -> None:
        self.sandboxes_dir = sandboxes_dir
        self.mounts_dir = mounts_dir
        self.runtime = runtime
        self.cgroups = cgroups
        self.id_offset = id_offset
        self.on_exit = on_exit
        self.network = network  # None: sandboxes get loopback only, whatever they ask
        self.spares = spares  # disks made ahead (shared by the node's backends)
        self.agent_src = Path(corral.agent.__file__).parent
        self.channels = ChannelPool()  # idle agent connections, reused by the next operation
        # Sandboxes start the agent with -B (they cannot write here): byte-compile it once, ~20 ms per create.
        for package in (self.agent_src, self.agent_src.parent / "interpreter"):
            compileall.compile_dir(package, quiet=2, workers=1)
        # Agents started by python (gVisor's, or bwrap's without the zygote) import from one file.
        if self.python_agents or not zygote:
            self.runtime = replace(self.runtime, bundle=agent_bundle.build(runtime, self.agent_src))
        tools = static_tools.build(self.agent_src)  # bwrap's start, pid 1, commands as another user
        self.runtime = replace(self.runtime, tools=tools.name if tools else None)
        # Networked sandboxes' namespaces are made by corral-tools (ahead, or on the spot), not by bwrap.
        self.netns_maker = netns_priv.NetnsMaker(str(tools), id_offset) if network and tools else None
        self.net_spares = NetSpares(network, self.netns_maker, spare_netns) if network and self.netns_maker else None
        self.seccomp = build_filter()
        # One thread spawns every bwrap, off the event loop: --die-with-parent follows the spawning
        # thread, so it must live as long as the backend (a pool thread could come and go).
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corral-spawn")
        # Agents forked from one pre-imported python (docs/architecture.md, "The agent zygote").
        self.zygote = Zygote(runtime, self.agent_src, self.seccomp, id_offset) if zygote else None
        self._live: dict[str, _Live] = {}
        # Each sandbox's disk (an fd of its root dir) from prepare until teardown: mounted only in the
        # sandbox's own mount namespace, it is reached through this (``on_disk``).
        self._disks: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._teardowns: set[asyncio.Task[None]] = set()  # destroyed sandboxes' disks, cgroups, files going
        sandboxes_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        mounts_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        # Bound once rather than into every root: each mount in the host's namespace is copied by
        # every later sandbox's new mount namespace (docs/performance.md, "Mounts per sandbox").
        self.shared_runtime = mounts_dir / SHARED_RUNTIME if self.shares_runtime else None
        if self.shared_runtime is not None:
            mounts_priv.mount_shared(self.shared_runtime, agent_binds(runtime, self.agent_src))

    async def create(self, spec: SandboxSpec) -> None:
        net = self.network
        if spec.network.networked and net is None:
            raise RuntimeFailure(f"sandbox {spec.sandbox_id}: networking is disabled on this server (CORRAL_NETWORK)")
        own_netns = self.net_spares is not None and spec.network.networked
        p = plan(
            spec, sandboxes_dir=self.sandboxes_dir, mounts_dir=self.mounts_dir, runtime=self.runtime,
            agent_src=self.agent_src, id_offset=self.id_offset,
            net_dirs=tuple(net.dirs()) if net and spec.network.networked else (),
            net_files=tuple(net.files()) if net and spec.network.networked else (),
            shared_runtime=self.shared_runtime, joins_netns=own_netns,
        )
        prepared: launch_priv.Prepared | None = None
        spawned: launch_priv.Spawned | None = None
        joiner: Joiner | None = None
        handed = False
        spare = self.spares.take(p.disk_mb) if self.spares else None
        netns = -1
        try:
            if own_netns:
                netns = await self._netns(spec)
                att = None  # plugged already
            else:
                att = net.reserve(spec.sandbox_id, spec.network) if net else None
            def drop(made: launch_priv.Prepared) -> None:  # cancelled meanwhile: as below, then destroy's
                made.listener.close()
                made.release()
                self._disks[spec.sandbox_id] = made.disk

            prepared = await to_the_end(launch_priv.prepare, p, self.cgroups, spare, undo=drop)
            prepared.netns, netns = netns, -1
            self._disks[spec.sandbox_id] = prepared.disk
            loop = asyncio.get_running_loop()
            spawning = loop.run_in_executor(self._spawner, self._spawn, p, prepared)
            cancelled = False
            while True:  # a cancelled create still takes the bwrap it started, so destroy can end it
                try:
                    spawned, joiner = await asyncio.shield(spawning)
                    break
                except asyncio.CancelledError:
                    if spawning.cancelled():
                        raise
                    cancelled = True
            live = _Live(p, spawned.process, os.pidfd_open(spawned.process.pid), loop.create_future())
            self._live[spec.sandbox_id] = live
            loop.add_reader(live.pidfd, self._reap, spec.sandbox_id, live)
            if cancelled:  # never admitted: bwrap would wait on its block fd until teardown
                spawned.process.kill()
                for fd in (spawned.info_r, spawned.block_w):
                    os.close(fd)
                if joiner is not None:
                    joiner.close()
                raise asyncio.CancelledError
            # a namespace bwrap made: plugged now, or (no network) only its ports opened as in the others
            plug = None if own_netns else partial(net.plug, att) if net and att else netns_priv.open_ports
            if joiner is not None and spawned.ready is not None:
                handed = True  # _admit_agent owns (and closes) the joiner and the ready pipe
                agent = await self._step(live, _admit_agent, live, spawned, plug, joiner, self.cgroups)
                live.agent_pidfd = agent.pidfd
                loop.add_reader(agent.pidfd, self._agent_exited, live)
                # No first ping: the agent runs (forked from the pre-imported zygote), and the
                # listener we bound queues connections until it serves (~3.5 ms after its fork); an
                # agent that dies instead closes it, so a waiting request fails at once.
            else:
                try:
                    live.init_pid = await self._step(live, launch_priv.admit, p, spawned, plug)
                finally:
                    live.init_pidfd = spawned.init_pidfd
                await self._wait_ready(spec.sandbox_id, live)
        except BaseException as exc:
            if netns >= 0:
                os.close(netns)
            if not handed and prepared is not None:
                prepared.listener.close()
            if prepared is not None:
                prepared.release()
            if not handed and spawned is not None and spawned.ready is not None:
                spawned.ready.close()
            if not handed and joiner is not None:
                joiner.close()
            await self.destroy(spec.sandbox_id)
            await self._drop_spare(spare)
            if isinstance(exc, RuntimeFailure | asyncio.CancelledError):
                raise
            raise RuntimeFailure(f"sandbox {spec.sandbox_id} failed to start: {exc}") from exc
        finally:  # spares are made again once the create no longer competes with them
            if self.spares is not None:
                self.spares.refill()
            if own_netns and self.net_spares is not None:
                self.net_spares.refill()

    async def _netns(self, spec: SandboxSpec) -> int:
        """The networked sandbox's namespace, plugged, its address claimed: a spare, or made now. An
        fd that holds it; the attachment is the sandbox's (``destroy`` releases it) even on failure."""
        assert self.network is not None and self.net_spares is not None and self.netns_maker is not None
        spare = self.net_spares.take()
        if spare is not None:
            try:
                await self.network.claim(spare.att, spec.sandbox_id, spec.network)
            except BaseException:
                os.close(spare.fd)
                raise
            return spare.fd
        att = self.network.reserve(spec.sandbox_id, spec.network)
        assert att is not None
        return await to_the_end(netspares.make, self.network, att, self.netns_maker, undo=os.close)

    async def _drop_spare(self, spare: mounts_priv.Spare | None) -> None:
        """A spare a failed create took but never used (cancelled before its prepare ran)."""
        if spare is not None and spare.mount >= 0:
            await asyncio.to_thread(mounts_priv.destroy_spare, spare)

    def _spawn(self, p: LaunchPlan, prepared: launch_priv.Prepared) -> tuple[launch_priv.Spawned, Joiner | None]:
        """On the spawner thread: (re)start the zygote if it is not running (its --die-with-parent
        follows this long-lived thread), start bwrap, then, while bwrap sets the sandbox up, have the
        zygote fork the agent's joiner (it waits for ``finish_agent``)."""
        try:
            return self._spawn_sandbox(p, prepared)
        finally:
            prepared.release()

    def _spawn_sandbox(
        self, p: LaunchPlan, prepared: launch_priv.Prepared,
    ) -> tuple[launch_priv.Spawned, Joiner | None]:
        if self.zygote is None:
            return launch_priv.spawn(p, prepared, self.seccomp, self.cgroups), None
        self.zygote.start()
        spawned = launch_priv.spawn(p, prepared, self.seccomp, self.cgroups, zygote=True)
        request = partial(request_joiner, self.zygote, prepared.root, prepared.listener, prepared.log)
        try:
            try:
                joiner = request()
            except ZygoteError:  # it died since start() looked: once more, with a new one
                self.zygote.start()
                joiner = request()
            prepared.listener.close()  # the joiner has it
            return spawned, joiner
        except BaseException:
            spawned.process.kill()  # blocked before the sandbox exists: gone at once
            spawned.process.wait()
            for fd in (spawned.info_r, spawned.block_w):
                os.close(fd)
            if spawned.ready is not None:
                spawned.ready.close()
            raise

    async def _step(self, live: _Live, step: Callable[..., T], *args: Any) -> T:
        """Run a blocking launch step in a thread. A create cancelled meanwhile lets the step finish
        first (it owns fds and processes the cleanup needs; pid 1 is killed so that nothing waits
        for it), releases what the step returned and then stops."""
        def undo(result: object) -> None:
            if isinstance(result, AgentProcess):
                os.close(result.pidfd)

        return await to_the_end(step, *args, undo=undo, on_cancel=partial(self._kill_init, live))

    def _kill_init(self, live: _Live) -> None:
        """SIGKILL the sandbox's pid 1 (its pid namespace, and with it every process inside, ends)."""
        if live.init_pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(live.init_pidfd, signal.SIGKILL)

    async def _wait_ready(self, sandbox_id: str, live: _Live) -> None:
        ping = asyncio.ensure_future(self.agent(sandbox_id).ping())
        try:
            finished, _ = await asyncio.wait({ping, live.exited}, timeout=READY_TIMEOUT,
                                             return_when=asyncio.FIRST_COMPLETED)
            if ping in finished and ping.exception() is None:
                return
            why = await self.on_disk(sandbox_id, _log_tail)
            if ping in finished:
                why = f"{ping.exception()}; {why}"
            elif not finished:
                why = f"agent not ready after {READY_TIMEOUT:.0f}s; {why}"
            raise RuntimeFailure(f"sandbox {sandbox_id} failed to start: {why}")
        finally:
            ping.cancel()

    def _agent_exited(self, live: _Live) -> None:
        """An agent from the zygote is gone: end its sandbox (bwrap's exit then reports it), as when
        an agent that bwrap started exits."""
        self._forget_agent(live)
        if not live.destroying:
            self._kill_init(live)

    def _forget_agent(self, live: _Live) -> None:
        if live.agent_pidfd >= 0:
            asyncio.get_running_loop().remove_reader(live.agent_pidfd)
            os.close(live.agent_pidfd)
            live.agent_pidfd = -1

    def _reap(self, sandbox_id: str, live: _Live) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(live.pidfd)
        os.close(live.pidfd)
        self._forget_agent(live)
        code = live.process.wait()
        if not live.exited.done():
            live.exited.set_result(code)
        if live.destroying or self._live.get(sandbox_id) is not live:
            return
        task = loop.create_task(self._report_exit(sandbox_id, live, code))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report_exit(self, sandbox_id: str, live: _Live, code: int) -> None:
        why = await self.on_disk(sandbox_id, _log_tail)
        await self.on_exit(sandbox_id, f"sandbox runtime exited with code {code}: {why}")

    async def on_disk(self, sandbox_id: str, work: Callable[[Path], T]) -> T:
        """``work(disk)`` in a thread, ``disk`` the sandbox's disk (its overlay's ``upper`` and ``work``,
        the runtime log) as a path the host can use: bwrap's is mounted in the sandbox's namespace
        only and reached through a copy of the fd held since prepare, which the thread closes when
        done (a cancelled caller waits for it), so no teardown meanwhile can give its number to
        another sandbox's disk; gVisor's is at its mount point on the host."""
        fd = self._disks.get(sandbox_id)
        ref = os.dup(fd) if fd is not None else -1
        path = Path(f"/proc/{os.getpid()}/fd/{ref}") if ref >= 0 else self.sandboxes_dir / sandbox_id / "disk"

        def run() -> T:
            try:
                return work(path)
            finally:
                if ref >= 0:
                    os.close(ref)

        job = asyncio.ensure_future(asyncio.to_thread(run))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            await asyncio.wait({job})
            raise

    def agent(self, sandbox_id: str) -> AgentClient:
        return AgentClient(str(self.sandboxes_dir / sandbox_id / "agent.sock"), pool=self.channels)

    async def usage(self, sandbox_id: str) -> SandboxUsage:
        live = self._live.get(sandbox_id)
        if live is None:
            raise RuntimeFailure(f"sandbox {sandbox_id} is not running on this node")
        use = await asyncio.to_thread(self.cgroups.usage, sandbox_id)
        disk_used, disk_total = await self.on_disk(sandbox_id, mounts_priv.disk_usage)
        return SandboxUsage(
            cpu_seconds=use.cpu_seconds, memory_bytes=use.memory_bytes,
            memory_limit_bytes=live.plan.limits.memory_bytes, disk_bytes=disk_used,
            disk_limit_bytes=disk_total, pids=use.pids, oom_kills=use.oom_kills,
        )

    async def oom_kills(self, sandbox_id: str) -> int:
        self._require(sandbox_id)
        try:
            return await asyncio.to_thread(self.cgroups.oom_kills, sandbox_id)
        except OSError as exc:
            raise RuntimeFailure(f"sandbox {sandbox_id}: memory events unreadable: {exc}") from exc

    async def freeze(self, sandbox_id: str) -> None:
        live = self._require(sandbox_id)
        try:
            await asyncio.to_thread(self.cgroups.freeze, sandbox_id)
        except (OSError, CgroupUnavailable) as exc:
            raise RuntimeFailure(f"sandbox {sandbox_id}: pausing failed: {exc}") from exc
        live.frozen = True

    async def thaw(self, sandbox_id: str) -> None:
        live = self._require(sandbox_id)
        try:
            await asyncio.to_thread(self.cgroups.thaw, sandbox_id)
        except (OSError, CgroupUnavailable) as exc:
            raise RuntimeFailure(f"sandbox {sandbox_id}: resuming failed: {exc}") from exc
        live.frozen = False

    def _require(self, sandbox_id: str) -> _Live:
        live = self._live.get(sandbox_id)
        if live is None or live.destroying:
            raise RuntimeFailure(f"sandbox {sandbox_id} is not running on this node")
        return live

    async def destroy(self, sandbox_id: str) -> None:
        """Stop the sandbox: returns once none of its processes runs. Its network, disk, cgroups and
        files then go in the background (``close`` waits for them; a crash leaves them to the next
        start's ``reconcile``): a kill need not wait for the kernel's unmounts and deletions."""
        await self._stop(sandbox_id)
        task = asyncio.get_running_loop().create_task(self._teardown_logged(sandbox_id))
        self._teardowns.add(task)
        task.add_done_callback(self._teardowns.discard)

    async def _teardown_logged(self, sandbox_id: str) -> None:
        """``_teardown``, tried again after ``TEARDOWN_RETRIES`` if it fails: a cgroup stays busy
        while its last process is still exiting, which under load (a burst of kills, each exit
        unmounting its sandbox's disk) outlasts the removal's own wait."""
        for delay in (0.0, *TEARDOWN_RETRIES):
            await asyncio.sleep(delay)
            try:
                await self._teardown(sandbox_id)
                return
            except Exception as exc:
                failure = exc
        log.error("tearing down sandbox %s failed; the next start's reconcile will retry", sandbox_id,
                  exc_info=failure)

    async def torn_down(self) -> None:
        """Wait until every sandbox destroyed so far is torn down."""
        if self._teardowns:
            await asyncio.wait(set(self._teardowns))

    async def commit(self, sandbox_id: str, dest: Path) -> None:
        self._require(sandbox_id)
        await self._stop(sandbox_id)
        try:
            await asyncio.to_thread(self.cgroups.remove, sandbox_id)  # every process gone: a quiet upper
            await self.on_disk(sandbox_id, partial(mounts_priv.capture_upper, dest=dest))
        except (OSError, mounts_priv.MountError, CgroupUnavailable) as exc:
            raise RuntimeFailure(f"sandbox {sandbox_id}: saving its changes failed: {exc}") from exc
        finally:
            await self._teardown(sandbox_id)

    async def _stop(self, sandbox_id: str) -> None:
        """Kill the sandbox's process tree and wait for bwrap; its disk and cgroups stay."""
        live = self._live.pop(sandbox_id, None)
        if live is not None:
            live.destroying = True
            # Killing the namespace's init first lets bwrap reap it and exit, so no orphan zombies;
            # the cgroup kill in teardown then catches anything that escaped the pid namespace.
            self._kill_init(live)
            if live.frozen:  # the kill lands now; thawed, bwrap can reap its child and exit
                with contextlib.suppress(OSError, CgroupUnavailable):
                    await asyncio.to_thread(self.cgroups.thaw, sandbox_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(live.exited), 5)
            if live.init_pidfd >= 0:  # closed only here: no launch step of this sandbox runs any more
                os.close(live.init_pidfd)
                live.init_pidfd = -1

    async def _teardown(self, sandbox_id: str) -> None:
        if self.network is not None:
            self.network.release(sandbox_id)
        disk = self._disks.pop(sandbox_id, None)

        def teardown() -> None:
            if disk is not None:  # the disk unmounts with the last of this and the sandbox's processes:
                os.close(disk)  # ext4's unmount, milliseconds, off the event loop
            launch_priv.teardown(self.sandboxes_dir / sandbox_id, self.mounts_dir / sandbox_id, sandbox_id,
                                 self.cgroups)

        await asyncio.to_thread(teardown)

    def running(self) -> set[str]:
        return set(self._live)

    async def reconcile(self, keep: set[str]) -> list[str]:
        if not keep and not self._live:
            await asyncio.to_thread(launch_priv.kill_strays, self.id_offset, self.mounts_dir)
        keep = keep | set(self._live)
        found = set(await asyncio.to_thread(self.cgroups.existing))
        if self.sandboxes_dir.is_dir():
            found |= {p.name for p in self.sandboxes_dir.iterdir() if p.is_dir()}
        if self.mounts_dir.is_dir():
            found |= {p.name for p in self.mounts_dir.iterdir()}
        for base in (self.sandboxes_dir, self.mounts_dir):
            found |= {p.relative_to(base).parts[0] for p in mounts_priv.mounted_under(base)}
        # spares, the shared runtime and the skeleton are no sandbox's (spares.py, mount_shared replace old ones)
        own = (SHARED_RUNTIME, mounts_priv.SKELETON)
        stale = sorted(i for i in found - keep if not i.startswith(mounts_priv.SPARE_PREFIX) and i not in own)
        for sandbox_id in stale:
            await self._teardown(sandbox_id)
        if self.network is not None:
            await self.network.reconcile()
        if self.net_spares is not None:
            self.net_spares.start()
        return stale

    async def close(self) -> None:
        for sandbox_id in list(self._live):
            await self.destroy(sandbox_id)
        await self.torn_down()
        if self.shared_runtime is not None:
            await asyncio.to_thread(mounts_priv.unmount_shared, self.shared_runtime)
        await asyncio.to_thread(mounts_priv.remove_skeleton, self.mounts_dir)
        with contextlib.suppress(OSError):
            self.mounts_dir.rmdir()  # only if empty: never leave this server's run dir behind
        await asyncio.to_thread(self.cgroups.close)
        if self.net_spares is not None:
            await self.net_spares.close()
        if self.netns_maker is not None:
            await asyncio.to_thread(self.netns_maker.close)
        if self.network is not None:
            await self.network.close()
        if self.zygote is not None:
            await asyncio.to_thread(self.zygote.close)
        self._spawner.shutdown(wait=False)  # every sandbox is gone; the idle thread just exits

    # networking (see runtime/network.py)
    def default_env(self, spec: SandboxSpec) -> dict[str, str]:
        return self.network.env() if self.network and spec.network.networked else {}

    async def update_network(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        self._require(sandbox_id)
        if self.network is None or self.network.attachment(sandbox_id) is None:
            raise RuntimeFailure(f"sandbox {sandbox_id} was created without a network (network='none')")
        await self.network.update(sandbox_id, policy)

    def network_info(self, sandbox_id: str) -> dict[str, Any]:
        self._require(sandbox_id)
        return self.network.describe(sandbox_id) if self.network else {"mode": "none"}

    async def connect_port(self, sandbox_id: str, port: int) -> socket.socket:
        live = self._require(sandbox_id)
        if live.init_pidfd < 0:
            raise RuntimeFailure(f"sandbox {sandbox_id} is not running on this node")
        pidfd = os.dup(live.init_pidfd)  # its own: a destroy meanwhile closes the sandbox's
        try:
            sock = await asyncio.to_thread(netns_priv.connect_inside, pidfd, port)
        finally:
            os.close(pidfd)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return sock


def _log_tail(disk: Path, limit: int = 600) -> str:
    """The end of the runtime log on the sandbox's ``disk``. Only its last bytes are read: the
    sandbox can make it as big as its disk."""
    try:
        with open(disk / LOG_NAME, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4 * limit))
            text = f.read(4 * limit).decode(errors="replace").strip()
    except OSError:
        return "no runtime log"
    return text[-limit:] or "no output from the runtime"
