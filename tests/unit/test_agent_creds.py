"""File operations run with the requesting user's filesystem credentials.

Two levels: a real agent driven through AgentClient (what a `user` caller may and may not do, and
that root keeps full rights right after), and `creds.FileRunner` in-process (which thread switches,
to what, that it switches back even on errors, and that it fails closed). The agent switches the
connection's own thread, never the main thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from test_agent_harness import USER_UID, RunningAgent, agent, needs_root, run, shared, user_gid, wait_until

from corral.agent import libc
from corral.agent.creds import FileRunner, current
from corral.agent.protocol import AgentError
from corral.agent.users import resolve_user

__all__ = ["agent", "shared"]  # the fixtures, imported from the harness

pytestmark = needs_root

T = TypeVar("T")
CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_SETGID, CAP_SETUID = 0, 1, 2, 3, 6, 7
FS_CAPS = (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER)


async def permission_denied(call: Any) -> AgentError:
    with pytest.raises(AgentError) as err:
        await call
    assert err.value.kind == "permission", err.value
    return err.value


def root_only(shared: Path, mode: int = 0o755) -> Path:
    path = shared / f"root-{mode:o}"
    path.mkdir()
    path.chmod(mode)
    return path


def user_home(shared: Path) -> Path:
    home = shared / "home"
    home.mkdir()
    os.chown(home, USER_UID, user_gid())
    return home


# -- through a real agent ---------------------------------------------------------------------------


def test_user_cannot_write_into_a_root_dir_and_root_can_right_after(agent: RunningAgent, shared: Path) -> None:
    etc = root_only(shared)

    async def main() -> None:
        await permission_denied(agent.client.write(str(etc / "shadow-new"), b"x", user="user"))
        await permission_denied(agent.client.write(str(etc / "new" / "deeper" / "f"), b"x", user="user"))
        await permission_denied(agent.client.mkdir(str(etc / "sub"), user="user"))
        assert os.listdir(etc) == []  # no file, no parent, no temp file
        # the same agent, right after the failures: root's rights are intact
        entry = await agent.client.write(str(etc / "shadow-new"), b"root was here", user="root")
        assert entry["owner"] == "root" and (etc / "shadow-new").read_bytes() == b"root was here"
        assert await agent.client.mkdir(str(etc / "sub" / "deeper"), user="root") is True
        assert (etc / "sub" / "deeper").stat().st_uid == 0

    run(main())


def test_user_reads_what_is_world_readable_and_nothing_else(agent: RunningAgent, shared: Path) -> None:
    (shared / "secret").write_text("root only")
    (shared / "secret").chmod(0o600)
    (shared / "public").write_text("for everyone")
    (shared / "public").chmod(0o644)

    async def read(path: Path, user: str) -> bytes:
        async with agent.client.read(str(path), user=user) as reader:
            return b"".join([chunk async for chunk in reader])

    async def main() -> None:
        await permission_denied(read(shared / "secret", "user"))
        assert await read(shared / "public", "user") == b"for everyone"
        assert await read(shared / "secret", "root") == b"root only"
        assert (await agent.client.stat(str(shared / "secret"), user="user"))["mode"] == 0o600  # stat: fine

    run(main())


def test_what_the_user_creates_is_its_own(agent: RunningAgent, shared: Path) -> None:
    home = user_home(shared)
    owner = (USER_UID, user_gid())

    async def main() -> None:
        await agent.client.write(str(home / "a" / "b" / "file"), b"mine", user="user", mode=0o600)
        assert await agent.client.mkdir(str(home / "x" / "y"), user="user") is True
        await agent.client.rename(str(home / "a" / "b" / "file"), str(home / "moved" / "file"), user="user")
        for path in (home / name for name in ("a", "a/b", "x", "x/y", "moved", "moved/file")):
            assert (path.stat().st_uid, path.stat().st_gid) == owner, path
        assert stat.S_IMODE((home / "moved" / "file").stat().st_mode) == 0o600
        await agent.client.remove(str(home / "moved"), user="user")
        assert sorted(os.listdir(home)) == ["a", "x"]

    run(main())


def test_rename_and_remove_of_root_files_need_root(agent: RunningAgent, shared: Path) -> None:
    etc = root_only(shared)
    (etc / "passwd").write_text("root:x:0:0")
    sticky = root_only(shared, 0o1777)  # like /tmp: the user may create, but not delete root's files
    (sticky / "roots").write_text("x")
    home = user_home(shared)

    async def main() -> None:
        await permission_denied(agent.client.rename(str(etc / "passwd"), str(home / "stolen"), user="user"))
        await permission_denied(agent.client.remove(str(etc / "passwd"), user="user"))
        await permission_denied(agent.client.remove(str(sticky / "roots"), user="user"))  # no CAP_FOWNER
        await permission_denied(agent.client.rename(str(sticky / "roots"), str(sticky / "mine"), user="user"))
        await agent.client.write(str(sticky / "users"), b"x", user="user")  # creating there is allowed
        assert (etc / "passwd").exists() and (sticky / "roots").exists() and os.listdir(home) == []
        await agent.client.rename(str(etc / "passwd"), str(etc / "passwd-"), user="root")
        await agent.client.remove(str(etc / "passwd-"), user="root")
        await agent.client.remove(str(sticky / "roots"), user="root")
        await agent.client.remove(str(sticky / "users"), user="root")
        assert os.listdir(etc) == [] and os.listdir(sticky) == []

    run(main())


def test_user_cannot_list_or_watch_a_private_root_dir(agent: RunningAgent, shared: Path) -> None:
    private = root_only(shared, 0o700)
    (private / "inside").write_text("x")

    async def main() -> None:
        await permission_denied(agent.client.list(str(private), user="user"))
        with pytest.raises(AgentError) as err:
            async with agent.client.watch(str(private), user="user"):
                pass
        assert err.value.kind == "permission"
        assert [e["name"] for e in await agent.client.list(str(private), user="root")] == ["inside"]
        async with agent.client.watch(str(private), user="root") as watcher:
            (private / "new").write_text("x")
            async for event in watcher:
                assert event["name"] == "new"
                break

    run(main())


def test_recursive_watch_only_descends_where_the_user_may(agent: RunningAgent, shared: Path) -> None:
    home = user_home(shared)

    async def main() -> None:
        async with agent.client.watch(str(shared), recursive=True, user="user") as watcher:
            events = aiter(watcher)
            (shared / "locked").mkdir(mode=0o700)
            (shared / "locked" / "hidden").write_text("x")
            (home / "visible").write_text("x")
            seen = []
            async for event in events:
                seen.append(event["name"])
                if event["name"] == "home/visible":
                    break
            assert "locked" in seen and "locked/hidden" not in seen

    run(main())


def test_parallel_operations_do_not_leak_credentials(agent: RunningAgent, shared: Path) -> None:
    etc = root_only(shared)
    home = user_home(shared)
    (shared / "secret").write_text("s")
    (shared / "secret").chmod(0o600)
    pairs, repeats = 24, 5  # 48 callers at once: below the test socket's listen backlog of 64

    async def as_root(i: int) -> str:
        for n in range(repeats):
            await agent.client.write(str(etc / f"root-{i}-{n}"), b"r", user="root")
            async with agent.client.read(str(shared / "secret"), user="root") as reader:
                assert b"".join([c async for c in reader]) == b"s"
        return "ok"

    async def as_user(i: int) -> str:
        for n in range(repeats):
            await permission_denied(agent.client.write(str(etc / f"user-{i}-{n}"), b"u", user="user"))
            await permission_denied(agent.client.read(str(shared / "secret"), user="user").__aenter__())
            await agent.client.write(str(home / f"user-{i}-{n}"), b"u", user="user")
        return "denied"

    async def main() -> None:
        # a watch as the user stays open meanwhile: its thread switched to build it and must be back
        async with agent.client.watch(str(home), user="user"):
            results = await asyncio.gather(*[(as_root if i % 2 else as_user)(i) for i in range(2 * pairs)])
            # the watch's thread switches to the user while it reads each event the writes above made:
            # wait (bounded) for a moment when every thread is at rest; a leaked switch never gets there
            threads = await wait_until(lambda: _at_rest(thread_status(agent.process.pid)), "threads at rest")
        assert results == ["denied", "ok"] * pairs
        assert len(os.listdir(etc)) == pairs * repeats and all(name.startswith("root-") for name in os.listdir(etc))
        assert {(etc / name).stat().st_uid for name in os.listdir(etc)} == {0}
        assert {(home / name).stat().st_uid for name in os.listdir(home)} == {USER_UID}
        assert len(threads) >= 2  # the main thread and the watch's connection thread at least
        for tid, status in threads.items():  # every thread is back to the agent's own credentials
            assert status["Uid"].split()[3] == "0" and status["Gid"].split()[3] == "0", (tid, status)
            assert status["CapEff"] == threads[agent.process.pid]["CapEff"], (tid, status)

    run(main())


def _at_rest(threads: dict[int, dict[str, str]]) -> dict[int, dict[str, str]] | None:
    """``threads`` if every one has the agent's own filesystem ids (fsuid/fsgid 0), else None."""
    if all(t["Uid"].split()[3] == "0" and t["Gid"].split()[3] == "0" for t in threads.values()):
        return threads
    return None


CREDENTIAL_FIELDS = ("Uid", "Gid", "Groups", "CapEff", "CapPrm")


def thread_status(pid: int) -> dict[int, dict[str, str]]:
    """Each thread's credential lines of /proc/PID/task/TID/status (threads may come and go)."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile (earlier tests' retired pools wind down)
        found[int(tid)] = {name: fields[name] for name in CREDENTIAL_FIELDS}
    return found


# -- FileRunner in-process ----------------------------------------------------------------------


def in_thread(fn: Callable[[], T]) -> T:
    """`fn()` in a fresh thread (never the main thread, whose credentials must stay put)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def has(caps: int, *bits: int) -> bool:
    return all(caps >> bit & 1 for bit in bits)


def test_kernel_drops_fs_capabilities_while_the_fsuid_is_not_0() -> None:
    def body() -> list[tuple[int, int]]:
        steps = [(libc.fsuid(), libc.capget()[0])]
        libc.setfsuid(USER_UID)
        steps.append((libc.fsuid(), libc.capget()[0]))
        libc.setfsuid(0)
        steps.append((libc.fsuid(), libc.capget()[0]))
        return steps

    before, switched, after = in_thread(body)
    assert before[0] == 0 and has(before[1], *FS_CAPS, CAP_SETUID)
    assert switched[0] == USER_UID
    assert not any(has(switched[1], bit) for bit in FS_CAPS) and has(switched[1], CAP_SETUID, CAP_SETGID)
    assert after == before


def test_acting_as_switches_only_the_calling_thread_and_switches_back() -> None:
    runner = FileRunner()
    user = resolve_user("user")
    inside, release = threading.Event(), threading.Event()
    main_before = thread_status(os.getpid())[threading.get_native_id()]

    def body() -> tuple[dict[str, str], Any]:
        with runner.acting_as(user):
            status = thread_status(os.getpid())[threading.get_native_id()]
            inside.set()
            release.wait(5)
        return status, current()

    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(body()))
    worker.start()
    assert inside.wait(5)
    try:
        assert thread_status(os.getpid())[threading.get_native_id()] == main_before  # the others: untouched
    finally:
        release.set()
        worker.join()
    status, after = result[0]
    assert status["Uid"].split()[3] == str(USER_UID) and status["Gid"].split()[3] == str(user.gid)
    assert sorted(int(g) for g in status["Groups"].split()) == sorted(set(user.groups))
    assert int(status["CapEff"], 16) == 0  # a non-root user gets no capability at all
    assert after == runner.baseline


def test_credentials_come_back_after_a_failed_operation(shared: Path) -> None:
    runner = FileRunner()
    private = root_only(shared, 0o700)

    def body() -> Any:
        with pytest.raises(PermissionError), runner.acting_as(resolve_user("user")):
            os.listdir(private)
        assert os.listdir(private) == []  # and the thread is root again
        return current()

    assert in_thread(body) == runner.baseline


def test_never_switches_the_main_thread() -> None:
    runner = FileRunner()
    with pytest.raises(AgentError) as err, runner.acting_as(resolve_user("user")):
        pytest.fail("ran on the main thread")
    assert err.value.kind == "internal"
    with pytest.raises(AgentError) as err:
        runner.run(resolve_user("user"), pytest.fail, "ran on the main thread")
    assert err.value.kind == "internal"
    assert current() == runner.baseline


def test_a_switch_that_does_not_take_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = FileRunner()
    real = libc.setfsuid
    monkeypatch.setattr(libc, "setfsuid", lambda uid: real(-1) if uid != 0 else real(uid))  # ignores the switch
    ran = []

    def body() -> tuple[int, int]:
        with pytest.raises(AgentError) as err:
            runner.run(resolve_user("user"), ran.append, "ran")
        assert err.value.kind == "internal" and "credentials" in err.value.message
        monkeypatch.setattr(libc, "setfsuid", real)
        # switched back in full, so the same thread is fine again
        return runner.run(resolve_user("user"), libc.fsuid), runner.run(resolve_user("root"), libc.fsuid)

    assert in_thread(body) == (USER_UID, 0)
    assert ran == []


def test_a_thread_with_foreign_credentials_runs_nothing_ever_again() -> None:
    runner = FileRunner()
    ran = []

    def body() -> list[str]:
        kinds = []
        libc.setfsuid(USER_UID)  # as if an earlier operation had not switched back
        try:
            for name in ("root", "user"):
                try:
                    with runner.acting_as(resolve_user(name)):
                        ran.append(name)
                except AgentError as exc:
                    kinds.append(exc.kind)
        finally:
            libc.setfsuid(0)
        with pytest.raises(AgentError), runner.acting_as(resolve_user("root")):  # that thread stays out
            ran.append("again")
        return kinds

    assert in_thread(body) == ["internal", "internal"] and ran == []
    assert in_thread(lambda: runner.run(resolve_user("root"), libc.fsuid)) == 0  # other threads: fine


def test_a_thread_that_cannot_switch_back_ends_its_connection_and_serves_no_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel refusing the way back (here: setgroups to root's groups) leaves that thread the user's:
    its connection gets an error and ends, and the worker thread is not reused for later connections."""
    import json
    import socket
    import struct

    from corral.agent.server import Agent

    agent = Agent()
    served_on: list[int] = []  # the kernel's thread ids (the agent's threads are not ``threading`` objects)
    handle = agent.handle

    def recording(conn: socket.socket) -> None:
        served_on.append(threading.get_native_id())
        handle(conn)

    agent.handle = recording  # type: ignore[method-assign]
    base_groups = agent.fs.baseline.groups
    real = libc.setgroups
    failing = [True]

    def setgroups(groups: Any) -> None:
        if failing[0] and tuple(sorted(set(groups))) == base_groups:
            raise PermissionError(1, "refused (test)")
        real(groups)

    monkeypatch.setattr(libc, "setgroups", setgroups)

    def stat_root() -> tuple[dict[str, Any], bytes]:
        ours, theirs = socket.socketpair()
        with ours:
            ours.settimeout(10)
            agent.start(theirs)
            body = json.dumps({"op": "stat", "path": "/", "user": "user"}).encode()
            ours.sendall(struct.pack(">Ic", len(body), b"J") + body)
            header = ours.recv(5, socket.MSG_WAITALL)
            reply = json.loads(ours.recv(struct.unpack(">I", header[:4])[0], socket.MSG_WAITALL))
            after = ours.recv(1)  # b"" once the agent closed it, else it waits for the keep-idle
        return reply, after

    reply, after = stat_root()
    assert reply["ok"] is False and "restore" in reply["error"]["message"] and after == b""
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/self/task/{served_on[0]}"):  # retired, not back among the waiting threads
        assert time.monotonic() < deadline, "the tainted thread still runs"
        threading.Event().wait(0.005)
    failing[0] = False
    agent.keep_idle = 0.01
    reply, _ = stat_root()
    assert reply["ok"] is True and reply["entry"]["type"] == "dir" and served_on[1] != served_on[0]
