"""One conformance suite, every backend: the Backend interface on real bwrap and real gVisor (runsc).

Each test runs a fresh backend on a fresh data dir in its own event loop; the `node` fixture's
teardown is the ambient guard: after ``close`` no mount, cgroup, process or runsc state of that
data dir is left. Where the backends differ on purpose (gVisor has no OOM killer or pid limit of
its own, so the whole sandbox ends), the test says so and checks each side's behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import (
    PF_EXITING,
    corral_cgroups,
    loop_devices_of,
    make_data_dir,
    mounts_under,
    remove_data_dir,
    run_command,
    sandbox_mounts,
    spare_dirs,
    start_server,
)
from corral.agent.client import AgentClient
from corral.agent.protocol import AgentError, AgentUnavailable, Exit, Output
from corral.config import Settings
from corral.runtime import launch_priv
from corral.runtime.backend import Backend, RuntimeFailure, SandboxSpec
from corral.runtime.backends import Backends
from corral.runtime.bwrap import BwrapBackend
from corral.runtime.cgroups_priv import detect
from corral.runtime.gvisor import GvisorBackend
from corral.runtime.netpolicy import NONE
from corral.runtime.plan import AgentRuntime

BASE = Path(os.environ.get("CORRAL_TEST_TEMPLATES", "/var/lib/corral/templates")) / "base" / "rootfs"
ID_OFFSET = 1_000_000
needs_runsc = pytest.mark.skipif(shutil.which("runsc") is None, reason="runsc (gVisor) is not installed")
KINDS = ["bwrap", pytest.param("gvisor", marks=needs_runsc)]
EXIT_TIMEOUT = 30.0  # a hung test fails instead of hanging; never used to wait for something
# runsc 2024 at a small host pids limit: its sentry ended 11-44 s into a fork bomb here (3-5 s with 2022's)
BOMB_END_GVISOR = 120.0


@dataclass
class Node:
    kind: str
    data: Path
    exits: dict[str, asyncio.Future[str]] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return Settings(data_dir=self.data, run_dir=Path(f"{self.data}.run"))

    def backend(self) -> Backend:
        """A backend of this kind (call inside the test's event loop)."""
        s = self.settings

        async def on_exit(sandbox_id: str, reason: str) -> None:
            future = self.exits.setdefault(sandbox_id, asyncio.get_running_loop().create_future())
            if not future.done():
                future.set_result(reason)

        args = (s.sandboxes_dir, s.mounts_dir, AgentRuntime.find(BASE), detect(instance=s.instance), ID_OFFSET,
                on_exit)
        return GvisorBackend(*args, state_root=s.runsc_root) if self.kind == "gvisor" else BwrapBackend(*args)

    def ended(self, sandbox_id: str) -> asyncio.Future[str]:
        return self.exits.setdefault(sandbox_id, asyncio.get_running_loop().create_future())

    def run(self, body: Callable[[Backend], Awaitable[None]]) -> None:
        async def main() -> None:
            backend = self.backend()
            await backend.reconcile(set())
            try:
                await body(backend)
            finally:
                await backend.close()

        asyncio.run(main())


def node_processes(data: Path) -> list[int]:
    """Live host processes of one data dir: in its cgroups, or naming its dirs (runsc, bundles).
    Neither zombies nor processes already in their exit count (a killed sandbox's pid 1 sleeps in
    its exit until the rest of its pid namespace is gone; as ``conftest.sandbox_processes``)."""
    marks = [f"/corral/{Settings(data_dir=data).instance}/", str(data)]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            about = (entry / "cgroup").read_text() + (entry / "cmdline").read_text(errors="replace")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and not int(fields[6]) & PF_EXITING and any(m in about for m in marks):
            found.append(int(entry.name))
    return found


def runsc_state(data: Path) -> list[str]:
    root = Settings(data_dir=data, run_dir=Path(f"{data}.run")).runsc_root
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


@pytest.fixture(params=KINDS)
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    data = make_data_dir()
    try:
        yield Node(request.param, data)
        assert mounts_under(data) == [], "backend left mounts behind"
        assert corral_cgroups(data) == [], "backend left cgroups behind"
        assert node_processes(data) == [], "backend left processes behind"
        assert runsc_state(data) == [], "backend left runsc state behind"
        assert loop_devices_of(data) == [], "backend left loop devices behind"
    finally:
        remove_data_dir(data)


def spec(sandbox_id: str, **limits: int) -> SandboxSpec:
    return SandboxSpec(sandbox_id=sandbox_id, layers=(BASE,), cpu=1.0, memory_mb=limits.get("memory_mb", 256),
                       disk_mb=128, pids=limits.get("pids", 1024), network=NONE)


async def collect(
    agent: AgentClient, cmd: str, bound: float = EXIT_TIMEOUT, **kw: object,
) -> tuple[bytes, bytes, Exit, list[float]]:
    """Run a shell command; its stdout, stderr, exit and the arrival times of stdout chunks."""
    out, err, times = b"", b"", []
    async with asyncio.timeout(bound):
        stream = await agent.exec(["/bin/sh", "-c", cmd], **kw)  # type: ignore[arg-type]
        async for event in stream:
            if isinstance(event, Exit):
                return out, err, event, times
            if event.stream == "stdout":
                out += event.data
                times.append(time.monotonic())
            else:
                err += event.data
    raise AssertionError("stream ended without an exit event")


async def gvisor_kernel(agent: AgentClient) -> bool:
    """Whether the sandbox runs on gVisor's kernel (its log says so; the host's is not readable)."""
    out, _, _, _ = await collect(agent, "dmesg 2>/dev/null | head -1", user="root")
    return b"gVisor" in out


def test_create_runs_the_agent_on_the_expected_kernel_and_streams_output(node: Node) -> None:
    async def body(b: Backend) -> None:
        await b.create(spec("conf-exec"))
        agent = b.agent("conf-exec")
        assert await gvisor_kernel(agent) == (node.kind == "gvisor")
        counting = "for i in 1 2 3; do echo $i; sleep 0.2; done; echo err >&2; exit 3"
        out, err, done, times = await collect(agent, counting)
        assert (done.exit_code, err, out.split()) == (3, b"err\n", [b"1", b"2", b"3"])
        assert times[-1] - times[0] > 0.3, "output arrived in one piece, not as produced"
        out, _, done, _ = await collect(agent, "id -u; id -un; cd && pwd")
        assert out.split() == [b"1000", b"user", b"/home/user"] and done.exit_code == 0
        await b.destroy("conf-exec")

    node.run(body)


def test_stdin_signals_and_process_list(node: Node) -> None:
    async def body(b: Backend) -> None:
        await b.create(spec("conf-stdin"))
        agent = b.agent("conf-stdin")
        async with asyncio.timeout(EXIT_TIMEOUT):
            cat = await agent.exec(["cat"], stdin=True)
            await agent.stdin(cat.pid, b"hello\n")
            first = await anext(cat)
            assert isinstance(first, Output) and first.data == b"hello\n"
            await agent.stdin(cat.pid, b"", eof=True)
            assert (await cat.wait()).exit_code == 0
            sleeper = await agent.exec(["sleep", "300"], tag="napper")
            assert [p["tag"] for p in await agent.processes()] == ["napper"]
            await agent.signal(sleeper.pid, signal.SIGTERM)
            done = await sleeper.wait()
            assert done.signal == signal.SIGTERM or done.exit_code == 128 + signal.SIGTERM
            assert await agent.processes() == []
        await b.destroy("conf-stdin")

    node.run(body)


def test_files_are_written_read_listed_and_owned_like_on_bwrap(node: Node) -> None:
    async def body(b: Backend) -> None:
        await b.create(spec("conf-files"))
        agent = b.agent("conf-files")
        entry = await agent.write("d/notes.txt", b"x" * 300_000)
        assert entry["path"] == "/home/user/d/notes.txt" and entry["owner"] == "user"
        async with agent.read("/home/user/d/notes.txt") as reader:
            assert await reader.read_all() == b"x" * 300_000
        assert [e["name"] for e in await agent.list("/home/user/d")] == ["notes.txt"]
        with pytest.raises(AgentError) as denied:
            await agent.write("/etc/passwd", b"no")  # as "user"
        assert denied.value.kind == "permission"
        await agent.write("/etc/motd", b"root may", user="root")
        out, _, _, _ = await collect(agent, "cat /etc/motd; stat -c %u /home/user/d/notes.txt 2>/dev/null || true")
        assert out.startswith(b"root may")
        # on the host, the file sits in the sandbox's disk, owned by the shifted uid of "user"
        assert isinstance(b, BwrapBackend)  # gVisor's too: the disk as the host reaches it
        st = await b.on_disk("conf-files", lambda disk: (disk / "upper/home/user/d/notes.txt").stat())
        assert st.st_uid == ID_OFFSET + 1000 and st.st_size == 300_000
        await b.destroy("conf-files")

    node.run(body)


def test_memory_limit(node: Node) -> None:
    """bwrap: the kernel kills the process (137), the sandbox lives. gVisor: the sandbox ends."""
    async def body(b: Backend) -> None:
        await b.create(spec("conf-oom", memory_mb=128))
        agent = b.agent("conf-oom")
        hog = "python3 -c 'b = bytearray(1 << 30); print(len(b))'"
        if node.kind == "bwrap":
            _, _, done, _ = await collect(agent, hog)
            assert done.exit_code == 137 and await b.oom_kills("conf-oom") >= 1
            out, _, _, _ = await collect(agent, "echo alive")
            assert out == b"alive\n"
        else:
            with pytest.raises(AgentUnavailable):
                await collect(agent, hog)
            reason = await asyncio.wait_for(node.ended("conf-oom"), EXIT_TIMEOUT)
            assert reason.startswith("out of memory"), reason
        await b.destroy("conf-oom")

    node.run(body)


def test_pid_limit(node: Node) -> None:
    """bwrap: fork fails with EAGAIN and the sandbox lives. gVisor: the host limit ends the sandbox."""
    bomb = (
        "import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
        "            os.closerange(0, 3); os.pause()\n        n += 1\n"
        "except OSError as e:\n    print('stopped', n, e.errno, flush=True)\nos.killpg(0, 9)\n"
    )

    async def body(b: Backend) -> None:
        await b.create(spec("conf-pids", pids=64, memory_mb=1024))
        agent = b.agent("conf-pids")
        await agent.write("/tmp/bomb.py", bomb.encode())
        if node.kind == "bwrap":
            out, _, _, _ = await collect(agent, "python3 /tmp/bomb.py")
            words = out.split()
            assert words[0] == b"stopped" and int(words[1]) < 64 and words[2] == b"11"
            assert (await collect(agent, "echo alive"))[0] == b"alive\n"
        else:
            with pytest.raises(AgentUnavailable):
                await collect(agent, "python3 /tmp/bomb.py", bound=BOMB_END_GVISOR)
            await asyncio.wait_for(node.ended("conf-pids"), EXIT_TIMEOUT)
        await b.destroy("conf-pids")

    node.run(body)


def test_freeze_stops_everything_and_thaw_continues(node: Node) -> None:
    async def body(b: Backend) -> None:
        await b.create(spec("conf-freeze"))
        agent = b.agent("conf-freeze")
        counter = await agent.exec(["/bin/sh", "-c", "read line; echo got $line"], stdin=True)
        await b.freeze("conf-freeze")
        with pytest.raises(TimeoutError):  # a frozen agent answers nothing
            await asyncio.wait_for(agent.ping(), 0.5)
        await b.thaw("conf-freeze")
        async with asyncio.timeout(EXIT_TIMEOUT):
            assert (await agent.ping())["ok"] is True
            await agent.stdin(counter.pid, b"thawed\n")  # the process from before the pause lives on
            first = await anext(counter)
            assert isinstance(first, Output) and first.data == b"got thawed\n"
        await b.destroy("conf-freeze")

    node.run(body)


def test_destroy_and_commit_leave_nothing_behind(node: Node) -> None:
    async def body(b: Backend) -> None:
        await b.create(spec("conf-gone"))
        await collect(b.agent("conf-gone"), "sleep 300 & sleep 300 & echo started")
        await b.destroy("conf-gone")
        assert node_processes(node.data) == []  # at once; the rest goes in the background
        await b.torn_down()
        assert runsc_state(node.data) == []
        assert not [m for m in mounts_under(node.data) if "conf-gone" in m]
        with pytest.raises(AgentUnavailable):
            await b.agent("conf-gone").ping()

        await b.create(spec("conf-commit"))
        agent = b.agent("conf-commit")
        await collect(agent, "echo built > /opt/layer.txt && rm /etc/motd", user="root")  # no sync: commit's job
        dest = node.data / "layer"
        await b.commit("conf-commit", dest)
        assert (dest / "opt" / "layer.txt").read_text() == "built\n"
        assert (dest / "opt" / "layer.txt").stat().st_uid == ID_OFFSET
        assert (dest / "etc" / "motd").is_char_device(), "the deletion is kept as an overlay whiteout"
        assert not (dest / "etc" / "ld.so.preload").exists(), "gVisor's stat fix-up stays out of layers"
        with pytest.raises(RuntimeFailure):
            await b.freeze("conf-commit")

    node.run(body)


def test_a_teardown_that_meets_a_busy_cgroup_is_tried_again() -> None:
    """A sandbox's cgroup can stay busy past the removal's own wait (its last process still exiting
    under load: a burst of kills, each exit unmounting a disk). The first removal here fails as the
    kernel's EBUSY would; the teardown is tried again in the background and leaves nothing."""
    tries: list[str] = []

    async def body(b: BwrapBackend, node: Node) -> None:
        remove = b.cgroups.remove

        def busy_once(sandbox_id: str) -> None:
            tries.append(sandbox_id)
            if len(tries) == 1:
                raise OSError(errno.EBUSY, "Device or resource busy")
            remove(sandbox_id)

        b.cgroups.remove = busy_once  # type: ignore[method-assign]
        await b.create(spec("conf-busy"))
        await collect(b.agent("conf-busy"), "sleep 300 & echo started")
        await b.destroy("conf-busy")
        await b.torn_down()
        assert tries == ["conf-busy", "conf-busy"]
        assert not [c for c in corral_cgroups(node.data) if "conf-busy" in c]
        assert not (node.settings.sandboxes_dir / "conf-busy").exists()

    on_a_bwrap_node_of_its_own(body)


def test_a_create_cancelled_while_its_host_work_runs_waits_for_it_and_leaves_nothing() -> None:
    """A create cancelled while a thread prepares its sandbox (a server stopping during a pool
    refill) does not return before that thread ends: a clean-up run alongside it would miss what it
    makes afterwards (its cgroups stayed on the host). Then everything it made is gone."""
    async def body(b: BwrapBackend, node: Node) -> None:
        loop = asyncio.get_running_loop()
        started, gate = asyncio.Event(), threading.Event()
        prepare = launch_priv.prepare

        def held_prepare(*args: object, **kwargs: object) -> object:
            loop.call_soon_threadsafe(started.set)
            gate.wait()
            return prepare(*args, **kwargs)  # type: ignore[arg-type]

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(launch_priv, "prepare", held_prepare)
            create = asyncio.create_task(b.create(spec("conf-cancel")))
            await started.wait()
            create.cancel()
            done, _ = await asyncio.wait({create}, timeout=0.5)
            if done:  # returned early: its teardown first, then the thread's cgroups and files
                await b.torn_down()
            gate.set()
            assert not done, "a cancelled create returned while its prepare still ran"
            with pytest.raises(asyncio.CancelledError):
                await create
        await b.torn_down()
        assert not [c for c in corral_cgroups(node.data) if "conf-cancel" in c]
        assert not (node.settings.sandboxes_dir / "conf-cancel").exists()

    on_a_bwrap_node_of_its_own(body)


def on_a_bwrap_node_of_its_own(body: Callable[[BwrapBackend, Node], Awaitable[None]]) -> None:
    """``body`` on a bwrap backend with a data dir of its own; after the backend's close nothing of
    it is left on the host (mounts, cgroups, processes)."""
    data = make_data_dir()
    try:
        node = Node("bwrap", data)

        async def run(b: Backend) -> None:
            assert isinstance(b, BwrapBackend)
            await body(b, node)

        node.run(run)
        assert mounts_under(data) == [] and corral_cgroups(data) == [] and node_processes(data) == []
    finally:
        remove_data_dir(data)


def test_a_dead_runtime_is_reported() -> None:
    """A sandbox whose runtime dies on its own (its init killed from the host) is reported, once."""
    for kind in ("bwrap", *(["gvisor"] if shutil.which("runsc") else [])):
        data = make_data_dir()
        try:
            node = Node(kind, data)

            async def body(b: Backend, node: Node = node) -> None:
                await b.create(spec("conf-dies"))
                for pid in node_processes(node.data):  # the whole runtime, as a host OOM kill would
                    with contextlib.suppress(ProcessLookupError):  # gone with one killed before it
                        os.kill(pid, signal.SIGKILL)
                reason = await asyncio.wait_for(node.ended("conf-dies"), EXIT_TIMEOUT)
                assert "exited" in reason or "signal" in reason, reason
                await b.destroy("conf-dies")

            node.run(body)
            assert node_processes(data) == [] and mounts_under(data) == [] and runsc_state(data) == []
        finally:
            remove_data_dir(data)


@needs_runsc
def test_backends_route_each_sandbox_and_report_a_missing_kind() -> None:
    data = make_data_dir()
    try:
        node = Node("bwrap", data)

        async def body(_: Backend) -> None:
            s = node.settings
            args = (s.sandboxes_dir, s.mounts_dir, AgentRuntime.find(BASE), detect(instance=s.instance), ID_OFFSET,
                    _ignore_exit)
            both = Backends({"bwrap": BwrapBackend(*args), "gvisor": GvisorBackend(*args, state_root=s.runsc_root)},
                            default="bwrap")
            await both.create(spec("route-b"))
            await both.create(SandboxSpec("route-g", (BASE,), 1.0, 256, 128, network=NONE, isolation="gvisor"))
            assert [await gvisor_kernel(both.agent(i)) for i in ("route-b", "route-g")] == [False, True]
            assert await both.reconcile(set()) == []  # each keeps the other's sandboxes
            assert (await collect(both.agent("route-b"), "echo ok"))[0] == b"ok\n"
            await both.close()
            assert node_processes(data) == [] and runsc_state(data) == []

            only = Backends({"bwrap": BwrapBackend(*args)}, default="bwrap", missing={"gvisor": "runsc not found"})
            with pytest.raises(RuntimeFailure, match="runsc not found"):
                await only.create(SandboxSpec("route-x", (BASE,), 1.0, 256, 128, network=NONE, isolation="gvisor"))
            await only.close()

        node.run(body)
    finally:
        remove_data_dir(data)


async def _ignore_exit(sandbox_id: str, reason: str) -> None:
    return None


@pytest.mark.parametrize("kind", KINDS)
def test_reconcile_after_a_crash_of_the_server(kind: str) -> None:
    data = make_data_dir()
    try:
        first = start_server(data, CORRAL_BACKEND=kind)
        with first.client() as api:
            ids = [api.post("/v1/sandboxes", json={"timeout": 300}).json()["id"] for _ in range(2)]
            assert run_command(api, ids[0], "echo up").stdout == "up\n"
        first_spares = spare_dirs(data)
        first.stop(signal.SIGKILL)
        assert mounts_under(data), "expected the crash to leave mounts for the restart to clean"
        second = start_server(data, api_key=first.api_key, CORRAL_BACKEND=kind)
        try:
            assert sandbox_mounts(data) == [] and corral_cgroups(data) == []
            assert not [p for p in first_spares if p.exists()]
            assert node_processes(data) == []
            assert runsc_state(data) == []
            with second.client() as api:
                assert api.get(f"/v1/sandboxes/{ids[0]}").status_code == 404
                r = api.post("/v1/sandboxes", json={"timeout": 30, "isolation": kind})
                assert r.status_code == 201, r.text
                assert run_command(api, r.json()["id"], "echo fresh").stdout == "fresh\n"
                bad = api.post("/v1/sandboxes", json={"isolation": "kvm"})
                assert bad.status_code == 400 and "isolation" in bad.json()["message"]
        finally:
            second.stop()
        assert mounts_under(data) == [] and runsc_state(data) == [] and node_processes(data) == []
    finally:
        remove_data_dir(data)
