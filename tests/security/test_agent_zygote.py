"""The agent zygote (bwrap): an agent forked from it into a sandbox is set up exactly like the agent
bwrap starts itself, joins only the sandbox it was asked for, and a lost zygote is replaced.

These look at the agent from the host (its /proc entry), so they are bwrap-only: under gVisor the
agent lives inside the user-space kernel (docs/gvisor.md)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import corral.agent
from conftest import Server, make_data_dir, proc_status, remove_data_dir, sandbox_init, start_server
from corral.agent.client import AgentClient
from corral.runtime.cgroups_priv import detect
from corral.runtime.plan import AGENT_CAPS_MASK, AgentRuntime
from corral.runtime.seccomp import build_filter
from corral.runtime.zygote import AgentProcess, Zygote, ZygoteError, finish_agent, place_joiner, request_joiner

NAMESPACES = ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup")
STATUS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
          "Seccomp_filters", "Umask", "SigBlk", "SigIgn", "SigCgt")


@pytest.fixture(scope="module")
def exec_server() -> Iterator[Server]:
    """A server whose bwrap starts each agent itself (the zygote off): the reference."""
    data = make_data_dir()
    server = start_server(data, CORRAL_AGENT_ZYGOTE="off", CORRAL_POOL="off")
    yield server
    server.stop()
    remove_data_dir(data)


def _agent_of(init: int) -> int:
    """Host pid of the agent: pid 2 in the pid namespace of ``init``."""
    pidns = os.readlink(f"/proc/{init}/ns/pid")
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "ns/pid") == pidns and \
                    proc_status(proc)["NSpid"].split()[-1] == "2":
                return int(proc.name)
        except (OSError, KeyError):
            continue
    raise AssertionError(f"no agent in the pid namespace of {init}")


def _state(api: httpx.Client) -> dict[str, object]:
    """What the agent of a fresh sandbox was given, as seen from the host, in comparable form."""
    sid = api.post("/v1/sandboxes", json={"timeout": 60}).raise_for_status().json()["id"]
    try:
        # a served command first: a create answers before the forked agent's first ping (it may
        # still be starting), and the state compared is that of an agent at work
        answers = api.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "echo hi"}).text.count('"hi\\n"')
        init = sandbox_init(sid)
        agent = _agent_of(init)
        status = proc_status(Path(f"/proc/{agent}"))
        fds = sorted(os.readlink(f"/proc/{agent}/fd/{fd}").split("[")[0] for fd in os.listdir(f"/proc/{agent}/fd"))
        root, init_root = os.stat(f"/proc/{agent}/root/"), os.stat(f"/proc/{init}/root/")
        return {
            **{k: status[k] for k in STATUS},
            "namespaces": {ns: os.readlink(f"/proc/{agent}/ns/{ns}") == os.readlink(f"/proc/{init}/ns/{ns}")
                           for ns in NAMESPACES},
            "root is the sandbox's": (root.st_dev, root.st_ino) == (init_root.st_dev, init_root.st_ino),
            "cgroups": [line.rsplit(":", 1)[0] + (":<sandbox>" if line.endswith(f"/{sid}") else ":/")
                        for line in Path(f"/proc/{agent}/cgroup").read_text().split()],
            "environ": sorted(Path(f"/proc/{agent}/environ").read_bytes().split(b"\0")),
            # kinds only: a connection the server just closed may still be open on the agent's side
            "fds": sorted({fd.rsplit("/", 1)[-1] for fd in fds}),
            "limits": Path(f"/proc/{agent}/limits").read_text(),
            "answers": answers,
        }
    finally:
        api.delete(f"/v1/sandboxes/{sid}")


def test_a_forked_agent_gets_what_bwrap_gives_its_own(server: Server, exec_server: Server) -> None:
    with server.client() as api, exec_server.client() as ref:
        forked, started = _state(api), _state(ref)
    mask = f"{AGENT_CAPS_MASK:016x}"
    assert [forked[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")] == [mask] * 5
    assert forked["NoNewPrivs"] == "1" and forked["Seccomp"] == "2" and forked["Seccomp_filters"] == "1"
    assert forked["namespaces"] == dict.fromkeys(NAMESPACES, True) and forked["root is the sandbox's"] is True
    assert forked["answers"] == 1
    assert forked == started


def test_each_agent_has_a_session_and_process_group_of_its_own(server: Server, api: httpx.Client) -> None:
    """Agents share no session or process group with the zygote or each other, so a kill(0, ...)
    from one (or a group signal) reaches nothing outside its own sandbox."""
    ids = [api.post("/v1/sandboxes", json={"timeout": 60}).raise_for_status().json()["id"] for _ in range(2)]
    try:
        agents = [_agent_of(sandbox_init(sid)) for sid in ids]
        zygote = _own_zygote(server)
        groups = {(os.getsid(pid), os.getpgid(pid)) for pid in [*agents, zygote]}
        assert len(groups) == 3, groups
        assert len({sid for sid, _ in groups}) == 3 and len({pgid for _, pgid in groups}) == 3
    finally:
        for sid in ids:
            assert api.delete(f"/v1/sandboxes/{sid}").status_code == 204


def _own_zygote(server: Server) -> int:
    """Host pid of the python zygote of ``server`` (its bwrap is a child of the server)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"corral_agent.zygote" in (proc / "cmdline").read_bytes():
                bwrap = int(proc_status(proc)["PPid"])
                if int(proc_status(Path(f"/proc/{bwrap}"))["PPid"]) == server.process.pid:
                    return int(proc.name)
        except (OSError, KeyError, ValueError):
            continue
    raise AssertionError("the server has no zygote")


def test_a_lost_zygote_is_replaced_and_its_agents_keep_serving(server: Server, api: httpx.Client, run) -> None:  # type: ignore[no-untyped-def]
    before = api.post("/v1/sandboxes", json={"timeout": 60}).raise_for_status().json()["id"]
    try:
        zygote = _own_zygote(server)
        os.kill(zygote, signal.SIGKILL)
        after = api.post("/v1/sandboxes", json={"timeout": 60})
        assert after.status_code == 201, after.text
        assert _own_zygote(server) != zygote
        assert run(after.json()["id"], "echo new").stdout == "new\n"
        assert run(before, "echo old").stdout == "old\n"
        assert api.delete(f"/v1/sandboxes/{after.json()['id']}").status_code == 204
    finally:
        assert api.delete(f"/v1/sandboxes/{before}").status_code == 204


def test_a_joiner_refuses_a_root_other_than_the_sandbox_s(api: httpx.Client, tmp_path: Path) -> None:
    """The zygote joins pid 1's namespaces only if ``/`` then is the root the host named; with the
    right root it serves a second agent in the same sandbox (the positive control)."""
    sid = api.post("/v1/sandboxes", json={"timeout": 60}).raise_for_status().json()["id"]
    init = sandbox_init(sid)
    id_offset = int(proc_status(Path(f"/proc/{init}"))["Uid"].split()[0])
    instance = next(line.split("/")[-2] for line in Path(f"/proc/{init}/cgroup").read_text().splitlines()
                    if line.endswith(f"/{sid}"))
    base = Path(os.environ.get("CORRAL_TEMPLATES_DIR") or "/var/lib/corral/templates") / "base/rootfs"
    zygote = Zygote(AgentRuntime.find(base), Path(corral.agent.__file__).parent, build_filter(), id_offset)
    zygote.start()
    try:
        with pytest.raises(ZygoteError, match="not the sandbox root"):
            _join(zygote, sid, init, tmp_path, tmp_path / "wrong.sock", instance)
        agent = _join(zygote, sid, init, Path(f"/proc/{init}/root"), tmp_path / "right.sock", instance)
        try:
            assert asyncio.run(AgentClient(str(tmp_path / "right.sock")).ping())
        finally:
            os.kill(agent.pid, signal.SIGKILL)
            os.close(agent.pidfd)
    finally:
        zygote.close()
        assert api.delete(f"/v1/sandboxes/{sid}").status_code == 204


def _join(zygote: Zygote, sid: str, init: int, root: Path, sock_path: Path, instance: str) -> AgentProcess:
    """request_joiner, place_joiner and finish_agent as the server calls them, with pid 1 already reported ready."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(4)
    ready_r, ready_w = os.pipe()
    os.write(ready_w, b".")
    os.close(ready_w)
    log = os.open(sock_path.with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    ready = io.FileIO(ready_r, "rb")
    init_pidfd = os.pidfd_open(init)
    st = os.stat(root)
    try:
        try:
            joiner = request_joiner(zygote, (st.st_dev, st.st_ino), listener, log)
        finally:
            listener.close()
            os.close(log)
        place_joiner(joiner, sid, detect(instance=instance))
        return finish_agent(joiner, init_pidfd, ready, 10)
    finally:
        os.close(init_pidfd)
