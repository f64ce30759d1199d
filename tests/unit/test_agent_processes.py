"""The agent's process operations, driven through AgentClient against a real agent subprocess."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pwd
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_agent_harness import RunningAgent, agent, alive, collect, read_until, run, wait_until

from corral.agent.processes import Deadlines, ProcessTable, Spec
from corral.agent.protocol import AgentError, Exit, Output
from corral.agent.users import User

__all__ = ["agent"]  # the fixture, imported from the harness

MiB = 1 << 20


def other_user() -> pwd.struct_passwd:
    """The host's uid 1000 (what the agent's "user" means), or nobody if there is none."""
    try:
        return pwd.getpwuid(1000)
    except KeyError:
        return pwd.getpwnam("nobody")


def test_exec_separates_stdout_stderr_and_reports_exit_code(agent: RunningAgent) -> None:
    async def main() -> None:
        stream = await agent.client.exec(["sh", "-c", "echo out; echo err >&2; exit 3"], user="root")
        assert stream.pid > 0
        assert await collect(stream) == (b"out\n", b"err\n", Exit(3, None, None))

    run(main())


def test_output_arrives_while_the_process_still_runs(agent: RunningAgent) -> None:
    async def main() -> None:
        stream = await agent.client.exec(["sh", "-c", "echo first; read x; echo second $x"], stdin=True)
        first = await stream.__anext__()
        first_at = time.monotonic()
        assert first == Output("stdout", b"first\n")
        assert stream.pid in [p["pid"] for p in await agent.client.processes()]
        await agent.client.stdin(stream.pid, b"go\n")
        out, _, exit_ = await collect(stream)
        assert (out, exit_) == (b"second go\n", Exit(0, None, None))
        assert first_at < time.monotonic()

    run(main())


def test_stdin_larger_than_a_pipe_then_eof(agent: RunningAgent) -> None:
    data = os.urandom(3 * MiB // 2)

    async def main() -> None:
        stream = await agent.client.exec(["cat"], stdin=True)
        feed = agent.client.stdin(stream.pid, data, eof=True)
        (out, err, exit_), _ = await asyncio.gather(collect(stream), feed)
        assert out == data and err == b"" and exit_ == Exit(0, None, None)

    run(main())


def test_signal_kills_process_and_reports_it_like_a_shell(agent: RunningAgent) -> None:
    async def main() -> None:
        stream = await agent.client.exec(["sleep", "100"])
        await agent.client.signal(stream.pid, signal.SIGTERM)
        assert await collect(stream) == (b"", b"", Exit(128 + 15, 15, None))
        with pytest.raises(AgentError) as err:
            await agent.client.signal(stream.pid, signal.SIGTERM)
        assert err.value.kind == "not_found"

    run(main())


def test_signal_reaches_the_whole_process_group(agent: RunningAgent) -> None:
    script = """
        trap 'echo parent got TERM' TERM
        (trap 'echo child got TERM; exit 0' TERM; echo ready; while :; do sleep 5; done)
        echo parent done
    """

    async def main() -> None:
        stream = await agent.client.exec(["sh", "-c", script])
        await read_until(stream, b"ready\n")
        await agent.client.signal(stream.pid, signal.SIGTERM)
        out, _, exit_ = await collect(stream)
        assert out == b"child got TERM\nparent got TERM\nparent done\n"
        assert exit_ == Exit(0, None, None)

    run(main())


def test_timeout_sigkills_a_group_that_ignores_sigterm(agent: RunningAgent) -> None:
    async def main() -> None:
        started = time.monotonic()
        script = "trap '' TERM; sleep 100 & echo $!; wait"
        stream = await agent.client.exec(["sh", "-c", script], timeout=0.5)
        sleeper = int((await read_until(stream, b"\n")).decode())
        await agent.client.signal(stream.pid, signal.SIGTERM)  # ignored by both
        _, _, exit_ = await collect(stream)
        assert exit_.signal == signal.SIGKILL and exit_.exit_code == 137
        assert exit_.error is not None and "timed out" in exit_.error
        assert 0.5 <= time.monotonic() - started < 10
        await wait_until(lambda: not alive(sleeper), "the sleeper in the group is dead too")

    run(main())


def test_timeouts_of_concurrent_processes_each_fire_once_and_finished_ones_never(agent: RunningAgent) -> None:
    async def main() -> None:
        started = time.monotonic()
        long = [await agent.client.exec(["sleep", "100"], timeout=t) for t in (1.2, 0.4, 0.8)]
        quick = await agent.client.exec(["true"], timeout=0.6)
        assert (await collect(quick))[2] == Exit(0, None, None)  # done before its deadline: not killed
        exits = await asyncio.gather(*[collect(stream) for stream in long])
        assert [e[2].signal for e in exits] == [signal.SIGKILL] * 3
        assert all("timed out after" in (e[2].error or "") for e in exits)
        assert 1.2 <= time.monotonic() - started < 10

    run(main())


def test_deadlines_fire_in_order_once_and_not_after_cancel() -> None:
    deadlines = Deadlines()
    fired: list[str] = []
    done = threading.Event()

    def note(name: str) -> None:
        fired.append(name)
        if name == "last":
            done.set()

    deadlines.add(0.3, lambda: note("last"))
    deadlines.add(0.1, lambda: note("second"))
    cancelled = deadlines.add(0.05, lambda: note("cancelled"))
    deadlines.add(0.02, lambda: note("first"))  # earlier than what the thread already waits for
    deadlines.cancel(cancelled)
    keys = [deadlines.add(60, lambda: note("never")) for _ in range(1000)]
    for key in keys:  # many cancelled entries: the heap is compacted, it stays bounded
        deadlines.cancel(key)
    deadlines.add(0.01, lambda: note("after-cancels"))
    assert done.wait(10)
    assert [name for name in fired if name != "after-cancels"] == ["first", "second", "last"]
    assert fired.count("after-cancels") == 1 and "cancelled" not in fired and "never" not in fired
    assert len(deadlines._heap) <= 2 * len(deadlines._due) + 65


def test_deadlines_keep_one_thread_for_every_deadline() -> None:
    deadlines = Deadlines()
    seen: list[int] = []
    done = threading.Event()
    deadlines.add(0.01, lambda: seen.append(threading.get_ident()))
    ident = deadlines._thread
    deadlines.add(0.02, lambda: (seen.append(threading.get_ident()), done.set()))
    assert done.wait(10)
    assert ident is not None and deadlines._thread == ident and seen == [ident, ident]


def test_pty_output_and_resize(agent: RunningAgent) -> None:
    script = "stty size; : </dev/tty && test -t 1 && echo tty; read x; stty size"  # /dev/tty: ctty

    async def main() -> None:
        stream = await agent.client.exec(["sh", "-c", script], pty={"cols": 80, "rows": 24})
        early = await read_until(stream, b"tty\r\n")
        assert early == b"24 80\r\ntty\r\n"
        await agent.client.resize(stream.pid, 132, 43)
        await agent.client.stdin(stream.pid, b"\n")
        out, err, exit_ = await collect(stream)
        assert out.endswith(b"43 132\r\n") and err == b"" and exit_ == Exit(0, None, None)
        info = [p for p in await agent.client.processes() if p["pid"] == stream.pid]
        assert info == []

    run(main())


def test_resize_is_not_held_up_by_a_stdin_write_waiting_for_a_full_terminal(agent: RunningAgent) -> None:
    script = "stty raw -echo && echo ready && exec sleep 60"  # raw: a full input queue blocks the writer

    def queued(pid: int) -> int:
        """Bytes waiting in the input queue of the sleeper's terminal (TIOCINQ on its stdin)."""
        fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCINQ, b"\0\0\0\0"))[0]
        finally:
            os.close(fd)

    async def main() -> None:
        stream = await agent.client.exec(["sh", "-c", script], pty={"cols": 80, "rows": 24})
        await read_until(stream, b"ready")
        writing = asyncio.ensure_future(agent.client.stdin(stream.pid, b"x" * (256 * 1024)))
        await wait_until(lambda: queued(stream.pid) >= 4095, "the terminal's input queue is full")
        await asyncio.wait_for(agent.client.resize(stream.pid, 100, 40), 10)
        assert not writing.done()  # the sleeper reads nothing: the write still waits for room
        await agent.client.signal(stream.pid, signal.SIGKILL)
        try:  # the write ends too: the hung-up terminal takes the rest, or the exit is seen first
            await writing
        except AgentError as exc:
            assert exc.kind in ("not_found", "invalid"), exc
        assert (await collect(stream))[2] == Exit(128 + signal.SIGKILL, signal.SIGKILL, None)

    run(main())


def test_resize_without_pty_is_invalid(agent: RunningAgent) -> None:
    async def main() -> None:
        stream = await agent.client.exec(["cat"], stdin=True)
        with pytest.raises(AgentError) as err:
            await agent.client.resize(stream.pid, 100, 30)
        assert err.value.kind == "invalid"
        await agent.client.stdin(stream.pid, b"", eof=True)
        assert (await stream.wait()).exit_code == 0

    run(main())


def test_attach_after_detach_streams_from_now_on_and_keeps_exits(agent: RunningAgent) -> None:
    async def main() -> None:
        stream = await agent.client.exec(["sh", "-c", "echo early; read a; echo got $a"], stdin=True)
        assert await read_until(stream, b"early\n") == b"early\n"
        await stream.close()  # detach: the process keeps running
        assert stream.pid in [p["pid"] for p in await agent.client.processes()]

        attached = await agent.client.attach(stream.pid)
        await agent.client.stdin(stream.pid, b"later\n")
        assert await collect(attached) == (b"got later\n", b"", Exit(0, None, None))

        again = await agent.client.attach(stream.pid)  # finished: its exit comes at once
        assert [event async for event in again] == [Exit(0, None, None)]
        with pytest.raises(AgentError) as err:
            await agent.client.attach(2**22 + 12345)
        assert err.value.kind == "not_found"

    run(main())


def test_detached_output_is_discarded_and_the_process_finishes(agent: RunningAgent) -> None:
    async def main() -> None:
        stream = await agent.client.exec(["head", "-c", str(32 * MiB), "/dev/zero"])
        await stream.close()

        async def finished() -> bool:
            return stream.pid not in [p["pid"] for p in await agent.client.processes()]

        await wait_until(finished, "the detached process finished")
        assert [event async for event in await agent.client.attach(stream.pid)] == [Exit(0, None, None)]

    run(main())


def test_a_slow_reader_slows_the_process_instead_of_filling_memory(agent: RunningAgent) -> None:
    total = 32 * MiB

    async def main() -> None:
        stream = await agent.client.exec(["head", "-c", str(total), "/dev/zero"])

        def blocked_in_pipe_write() -> int | None:
            with open(f"/proc/{stream.pid}/wchan") as f:
                if "pipe_write" not in f.read():
                    return None
            with open(f"/proc/{stream.pid}/io") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))

        async def stuck() -> int | None:
            before = blocked_in_pipe_write()
            await agent.client.ping()  # a round trip through the agent's event loop
            return before if before is not None and blocked_in_pipe_write() == before else None

        written = await wait_until(stuck, "the producer stays blocked on its full pipe")
        assert written < 8 * MiB  # bounded queues, not the whole output, sit in between

        received = 0
        async for event in stream:
            if isinstance(event, Exit):
                assert event == Exit(0, None, None)
                break
            received += len(event.data)
        assert received == total

    run(main())


def test_processes_lists_running_ones_with_their_details(agent: RunningAgent, tmp_path: Path) -> None:
    async def main() -> None:
        stream = await agent.client.exec(["sleep", "100"], tag="napper", cwd=str(tmp_path), user="root")
        listed = [p for p in await agent.client.processes() if p["pid"] == stream.pid]
        assert listed == [
            {
                "pid": stream.pid,
                "cmd": ["sleep", "100"],
                "tag": "napper",
                "cwd": str(tmp_path),
                "user": "root",
                "pty": None,
            }
        ]
        await agent.client.signal(stream.pid, signal.SIGKILL)
        assert (await stream.wait()).signal == signal.SIGKILL
        assert stream.pid not in [p["pid"] for p in await agent.client.processes()]

    run(main())


def test_runs_as_another_user_with_its_identity(agent: RunningAgent) -> None:
    target = other_user()
    name = "user" if target.pw_uid == 1000 else target.pw_name
    home = target.pw_dir if os.path.isdir(target.pw_dir) else "/"
    script = 'id -u; id -g; id -G; echo "$HOME $USER $LOGNAME"; pwd'

    async def main() -> None:
        out, _, exit_ = await collect(await agent.client.exec(["sh", "-c", script], user=name))
        groups = " ".join(str(g) for g in os.getgrouplist(target.pw_name, target.pw_gid))
        expected = (
            f"{target.pw_uid}\n{target.pw_gid}\n{groups}\n{target.pw_dir} {target.pw_name} {target.pw_name}\n{home}\n"
        )
        assert (out.decode(), exit_.exit_code) == (expected, 0)
        nobody = await collect(await agent.client.exec(["id", "-un"], user="nobody", cwd="/"))
        assert nobody[0] == b"nobody\n"
        with pytest.raises(AgentError) as err:
            await agent.client.exec(["true"], user="no-such-user-here")
        assert err.value.kind == "not_found"

    run(main())


def test_env_and_cwd(agent: RunningAgent, tmp_path: Path) -> None:
    script = 'echo "$GREETING"; pwd; echo "$PATH"; echo "$HOME"'

    async def main() -> None:
        stream = await agent.client.exec(
            ["sh", "-c", script], env={"GREETING": "hi there"}, cwd=str(tmp_path), user="root"
        )
        out, _, _ = await collect(stream)
        path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        assert out.decode().splitlines() == ["hi there", str(tmp_path), path, pwd.getpwuid(0).pw_dir]
        custom = await agent.client.exec(["sh", "-c", 'echo "$PATH"'], env={"PATH": "/bin"}, user="root")
        assert (await collect(custom))[0] == b"/bin\n"

    run(main())


def test_exec_failures_are_structured_errors(agent: RunningAgent, tmp_path: Path) -> None:
    """As root (started by the agent) and as another user, on a terminal or not (started through the
    exec-as helper: the user's first commands, before its spawner runs, and every terminal's)."""

    async def main() -> None:
        cases = [
            (["definitely-not-a-command"], {}, "not_found"),
            (["true"], {"cwd": "/definitely/missing"}, "not_found"),  # not under tmp_path: only root enters it
            ([str(tmp_path)], {}, "permission"),
            ([], {}, "invalid"),
            (["true"], {"pty": {"cols": 0, "rows": 10}}, "invalid"),
            (["true"], {"timeout": -1}, "invalid"),
        ]
        for user in ("root", other_user().pw_name):
            for terminal in ({}, {"pty": {"cols": 80, "rows": 24}}):
                for cmd, options, kind in cases:
                    with pytest.raises(AgentError) as err:
                        await agent.client.exec(cmd, user=user, **{**terminal, **options})
                    assert err.value.kind == kind, (user, cmd, options, err.value)
        assert (await agent.client.ping())["version"] == 1
        assert [p for p in await agent.client.processes()] == []

    run(main())


def _refuse_first_fork(monkeypatch: pytest.MonkeyPatch, on_refusal: Callable[[], None] = lambda: None) -> list[bool]:
    """The next ``Popen`` fails with EAGAIN (a sandbox out of pids), after ``on_refusal``; later ones
    run. Returns the list that records the refusal."""
    real_popen = subprocess.Popen
    refusals: list[bool] = []

    def refuse_once(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        if not refusals:
            refusals.append(True)
            on_refusal()
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_popen(*args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(subprocess, "Popen", refuse_once)
    return refusals


def _me() -> User:
    me = pwd.getpwuid(os.getuid())
    return User(me.pw_name, me.pw_uid, me.pw_gid, me.pw_dir, me.pw_shell, tuple(os.getgroups()))


def test_a_fork_refused_for_want_of_pids_reaps_exited_children_and_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after a fork bomb is killed, its orphans (adopted by the agent) hold the sandbox's pids
    until reaped; a command started then must not fail with EAGAIN while the agent still holds
    zombies it can collect. Here: one unreaped child, and a fork refused once with EAGAIN."""
    table = ProcessTable()
    zombie = os.fork()
    if zombie == 0:
        os._exit(0)
    while Path(f"/proc/{zombie}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.001)  # until it has exited (asserted by the loop's condition, not a timing)
    refusals = _refuse_first_fork(monkeypatch)
    process = table.spawn(Spec(["true"], {}, None, _me(), False, None, None, 0.0))
    assert refusals == [True]
    assert os.waitpid(process.pid, 0)[1] == 0
    with pytest.raises(ChildProcessError):
        os.waitpid(zombie, os.WNOHANG)  # collected by the retry


def test_a_fork_refused_for_want_of_pids_waits_for_children_still_exiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fork bomb's group just killed: its processes hold the pids until they have exited, which
    takes a moment after the SIGKILL. A command started in that moment waits for them (bounded)
    instead of failing with EAGAIN; with nothing to wait for it fails after PIDS_WAIT."""
    from corral.agent import processes

    table = ProcessTable()
    release_r, release_w = os.pipe()
    exiting = os.fork()
    if exiting == 0:  # exits 50 ms after it is told to: not yet collectable when the fork is refused
        os.close(release_w)
        os.read(release_r, 1)
        time.sleep(0.05)
        os._exit(0)
    os.close(release_r)
    refusals = _refuse_first_fork(monkeypatch, lambda: os.close(release_w))  # the child starts its way out
    user = _me()
    process = table.spawn(Spec(["true"], {}, None, user, False, None, None, 0.0))
    assert refusals == [True] and os.waitpid(process.pid, 0)[1] == 0
    with pytest.raises(ChildProcessError):
        os.waitpid(exiting, os.WNOHANG)  # collected while the start waited

    def refuse(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(processes, "PIDS_WAIT", 0.05)
    with pytest.raises(AgentError, match="Resource temporarily unavailable"):  # all held by live processes
        table.spawn(Spec(["true"], {}, None, user, False, None, None, 0.0))


def _no_threads_in(module: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads `module` starts (``workers.start_thread``) fail to start, as when the sandbox's task limit is reached."""

    def start_thread(function: object, *args: object) -> int:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(module, "start_thread", start_thread)


def test_a_command_left_without_a_thread_for_its_output_is_killed_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import corral.agent.workers
    from corral.agent.processes import Listener

    table = ProcessTable(workers=corral.agent.workers.Workers("pump-test"))
    listener = Listener()
    process = table.spawn(Spec(["sleep", "30"], {}, None, _me(), False, None, None, 0.0), listener)
    _no_threads_in(corral.agent.workers, monkeypatch)  # the pump's
    starting = threading.Thread(target=process.start)  # returns once the command was killed, drained, collected
    starting.start()
    while starting.is_alive():
        table.reap()  # the agent's main thread does this on SIGCHLD
        starting.join(0.01)
    result = listener.take()
    assert len(result) == 1 and isinstance(result[0], Exit)
    assert (result[0].exit_code, result[0].signal) == (137, signal.SIGKILL)
    assert "no thread left" in (result[0].error or "")
    assert process.pid not in table.running and table.finished[process.pid].signal == signal.SIGKILL
    listener.close()


def test_a_spawner_without_a_thread_for_its_exits_is_stopped_and_commands_still_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its commands' exits would never be read: it is killed at once, collected like any child, and
    the user's next command starts from the agent itself."""
    from corral.agent.processes import Listener

    entry = other_user()
    user = User(entry.pw_name, entry.pw_uid, entry.pw_gid, "/", "/bin/sh", (entry.pw_gid,))
    table = ProcessTable()
    import corral.agent.spawner

    _no_threads_in(corral.agent.spawner, monkeypatch)  # the spawner's exit reader (_start_spawner is called here)
    key = (user.uid, user.gid, user.groups)
    table._start_spawner(user, key)
    made = table._spawners[key]
    assert not made.alive and made.eof
    deadline = time.monotonic() + 10
    while not made.reaped and time.monotonic() < deadline:
        table.reap()  # the agent's main thread does this on SIGCHLD
        time.sleep(0.001)
    assert made.reaped and made.pid not in table._spawner_pids
    listener = Listener()
    process = table.spawn(Spec(["sh", "-c", "echo $(id -u)"], {}, "/", user, False, None, None, 0.0), listener)
    assert process.spawner is None  # from the agent, not from the stopped spawner
    process.start()
    items: list[object] = []
    deadline = time.monotonic() + 10
    while not any(isinstance(item, Exit) for item in items) and time.monotonic() < deadline:
        table.reap()  # the agent's main thread does this on SIGCHLD
        select.select([listener.fd], [], [], 0.01)
        items += listener.take()
    assert items[0] == (b"O", f"{user.uid}\n".encode()) and items[-1] == Exit(0, None, None)
    listener.close()
