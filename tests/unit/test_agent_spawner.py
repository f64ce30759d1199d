"""Spawners (agent/spawner.py): where corral-tools could not be built (no C compiler on the host), a
user's commands after the first start from a child of the agent that holds only that user's ids; the
commands see no difference, and a spawner that sandbox code of the same user kills or stops costs
that code nothing but speed. With corral-tools, every command starts through its exec-as instead."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_agent_harness import RunningAgent, checked_agent, collect, descendants, read_until, run, wait_until
from test_agent_processes import other_user

import corral.agent
from corral.agent.protocol import AgentError, Exit


@pytest.fixture
def agent() -> Iterator[RunningAgent]:
    """An agent run from a copy of its package with no corral-tools built in it, as on a host without a
    C compiler: only such an agent starts spawners."""
    parent = Path(tempfile.mkdtemp(prefix="corral-untooled-", dir="/tmp"))
    parent.chmod(0o755)  # the user's spawner, forked from the agent, may still import from it
    package = parent / "corral_agent"
    shutil.copytree(Path(corral.agent.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    try:
        with checked_agent([sys.executable, "-I", str(package)]) as running:
            yield running
    finally:
        shutil.rmtree(parent)


def spawners(running: RunningAgent) -> list[int]:
    found = []
    for pid in descendants(running.process.pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "corral-spawner":
                found.append(pid)
    return found


def status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


async def warm(running: RunningAgent) -> int:
    """Run the user's first command (the agent starts it, then the user's spawner); the spawner's pid."""
    assert (await collect(await running.client.exec(["true"])))[2] == Exit(0, None, None)
    found = await wait_until(lambda: spawners(running), "the spawner runs")
    assert len(found) == 1
    return found[0]


def test_a_users_commands_start_from_a_spawner_holding_only_that_users_ids(agent: RunningAgent) -> None:
    user = other_user()

    async def main() -> None:
        spawner = await warm(agent)
        ids = status_of(spawner)
        assert ids["Uid"].split() == [str(user.pw_uid)] * 4 and ids["Gid"].split() == [str(user.pw_gid)] * 4
        assert int(ids["CapEff"], 16) == int(ids["CapPrm"], 16) == int(ids["CapAmb"], 16) == 0
        assert status_of(spawner)["PPid"] == str(agent.process.pid)
        script = 'echo "$PPID $(id -u) $(id -g) $GREETING $(pwd)"; cat; echo err >&2; exit 5'
        stream = await agent.client.exec(["sh", "-c", script], env={"GREETING": "hi"}, cwd="/tmp", stdin=True)
        await agent.client.stdin(stream.pid, b"typed\n", eof=True)
        out, err, exit_ = await collect(stream)
        assert out.decode().splitlines() == [f"{spawner} {user.pw_uid} {user.pw_gid} hi /tmp", "typed"]
        assert (err, exit_) == (b"err\n", Exit(5, None, None))
        as_root = await collect(await agent.client.exec(["sh", "-c", "echo $PPID"], user="root"))
        assert as_root[0] == f"{agent.process.pid}\n".encode()  # root's commands start from the agent
        assert spawners(agent) == [spawner]  # one for the user, kept

    run(main())


def test_exec_failures_through_a_spawner_are_the_same_structured_errors(agent: RunningAgent, tmp_path: Path) -> None:
    async def main() -> None:
        await warm(agent)
        cases = [
            (["definitely-not-a-command"], {}, "not_found"),
            (["true"], {"cwd": "/definitely/missing"}, "not_found"),
            (["/etc"], {}, "permission"),
        ]
        for cmd, options, kind in cases:
            with pytest.raises(AgentError) as err:
                await agent.client.exec(cmd, **options)
            assert err.value.kind == kind, (cmd, options, err.value)
        late = await agent.client.exec(["sleep", "30"], timeout=0.2)
        assert await collect(late) == (b"", b"", Exit(137, 9, "timed out after 0.2s: process group killed"))

    run(main())


def test_a_spawner_killed_by_the_users_code_leaves_its_commands_whole(agent: RunningAgent) -> None:
    async def main() -> None:
        first = await warm(agent)
        # the command kills its own parent, then goes on: it is the agent's now, and its exit arrives
        stream = await agent.client.exec(["sh", "-c", "kill -9 $PPID; read x; echo after $x; exit 7"], stdin=True)
        await wait_until(lambda: first not in spawners(agent), "the spawner is gone")
        await agent.client.stdin(stream.pid, b"death\n", eof=True)
        assert await collect(stream) == (b"after death\n", b"", Exit(7, None, None))
        out, _, exit_ = await collect(await agent.client.exec(["sh", "-c", "echo ok"]))
        assert (out, exit_) == (b"ok\n", Exit(0, None, None))
        second = await wait_until(lambda: spawners(agent), "a new spawner runs")
        assert second != [first]
        out, _, _ = await collect(await agent.client.exec(["sh", "-c", "echo $PPID"]))
        assert out == f"{second[0]}\n".encode()

    run(main())


def test_a_stopped_spawner_is_replaced_by_the_agent_starting_commands_itself(agent: RunningAgent) -> None:
    """A spawner stopped by the user's code makes one command fail after the reply timeout; the
    agent kills it and starts that user's commands itself from then on."""

    async def main() -> None:
        spawner = await warm(agent)
        os.kill(spawner, signal.SIGSTOP)
        with pytest.raises(AgentError) as err:
            await agent.client.exec(["true"])
        assert err.value.kind == "internal" and "spawner" in err.value.message
        await wait_until(lambda: not spawners(agent), "the stopped spawner is killed")
        out, _, exit_ = await collect(await agent.client.exec(["sh", "-c", "echo $PPID"]))
        assert (out, exit_) == (f"{agent.process.pid}\n".encode(), Exit(0, None, None))
        assert spawners(agent) == []
        stream = await agent.client.exec(["sh", "-c", "echo started; sleep 30"])
        assert await read_until(stream, b"started") == b"started\n"
        await agent.client.signal(stream.pid, signal.SIGKILL)

    run(main())


def test_a_command_that_kills_its_spawner_at_once_still_reports_its_output_and_exit(agent: RunningAgent) -> None:
    """`kill -9 -1` as the user kills the spawner too, often before it has replied with the command's
    pid: the agent finds the command among the children the dead spawner left it."""

    async def main() -> None:
        for _ in range(5):
            spawner = await warm(agent)
            stream = await agent.client.exec(["sh", "-c", "kill -9 $PPID; echo alive; exit 3"])
            assert await collect(stream) == (b"alive\n", b"", Exit(3, None, None))
            await wait_until(lambda: spawner not in spawners(agent), "the spawner is gone")  # noqa: B023

    run(main())
