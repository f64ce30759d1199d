"""Harness for the agent tests: a real agent subprocess on a socket we own, plus its client.

The `agent` fixture's teardown is an ambient guard: the agent exits cleanly on SIGTERM, leaves no
descendant process behind, and logged no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

import corral.agent
from corral.agent.client import AgentClient
from corral.agent.protocol import Exit, Output
from corral.runtime import static_tools

T = TypeVar("T")
SAFETY_TIMEOUT = 20.0  # a hung test fails instead of hanging; never used to wait for something
USER_UID = 1000  # what the protocol's "user" is on this host (a passwd entry or the default)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="file credentials need a root agent")


@dataclass
class RunningAgent:
    client: AgentClient
    process: subprocess.Popen[bytes]
    socket_path: str
    log_path: str

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()


@contextlib.contextmanager
def start_agent(
    command: list[str] | None = None, cwd: str | None = None, env: dict[str, str] | None = None
) -> Iterator[RunningAgent]:
    """Run an agent on a fresh listening socket; `command` replaces `python -m corral.agent`, `env`
    is added to the environment. It has corral-tools, as a sandbox's agent has."""
    assert static_tools.build(Path(corral.agent.__file__).parent) is not None, "corral-tools did not build"
    workdir = tempfile.mkdtemp(prefix="corral-agent-")  # short: socket paths are limited to 107 bytes
    path, log_path = os.path.join(workdir, "agent.sock"), os.path.join(workdir, "agent.log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener, open(log_path, "wb") as log:
        listener.bind(path)
        listener.listen(64)
        fd = listener.fileno()
        argv = [*(command or [sys.executable, "-m", "corral.agent"]), "--listen-fd", str(fd)]
        environ = {**os.environ, **(env or {})}
        process = subprocess.Popen(argv, pass_fds=[fd], stdout=log, stderr=log, cwd=cwd, env=environ)
    try:
        yield RunningAgent(AgentClient(path), process, path, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        shutil.rmtree(workdir)


@contextlib.contextmanager
def checked_agent(command: list[str] | None = None) -> Iterator[RunningAgent]:
    """``start_agent``, then a clean stop: SIGTERM ends it with 0, nothing it started survives, and
    its log has no traceback."""
    with start_agent(command) as running:
        yield running
        family = descendants(running.process.pid)
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=10) == 0
        assert [pid for pid in family if alive(pid)] == [], "agent left processes behind"
        assert "Traceback" not in running.log(), running.log()


@pytest.fixture
def agent() -> Iterator[RunningAgent]:
    with checked_agent() as running:
        yield running


@pytest.fixture
def shared() -> Iterator[Path]:
    """A root-owned 0755 directory that uid 1000 can reach (pytest's tmp_path lies under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="corral-files-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def user_gid() -> int:
    """The primary gid of the protocol's "user" on this host."""
    try:
        return pwd.getpwuid(USER_UID).pw_gid
    except KeyError:
        return USER_UID


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def guarded() -> T:
        async with asyncio.timeout(SAFETY_TIMEOUT):
            return await coro

    return asyncio.run(guarded())


async def collect(events: AsyncIterable[Output | Exit]) -> tuple[bytes, bytes, Exit]:
    """All stdout, all stderr and the exit of a process stream."""
    out, err = bytearray(), bytearray()
    async for event in events:
        if isinstance(event, Exit):
            return bytes(out), bytes(err), event
        (out if event.stream == "stdout" else err).extend(event.data)
    raise AssertionError("stream ended without an exit event")


async def read_until(events: AsyncIterable[Output | Exit], marker: bytes) -> bytes:
    """Output of a stream up to and including the chunk that completes `marker`."""
    seen = bytearray()
    async for event in events:
        assert isinstance(event, Output), f"exited before printing {marker!r}: {event}, {bytes(seen)!r}"
        seen.extend(event.data)
        if marker in seen:
            return bytes(seen)
    raise AssertionError(f"stream ended before {marker!r}")


async def wait_until(condition: Callable[[], Any], what: str, interval: float = 0.01) -> Any:
    """Poll `condition` (sync or async) until it is truthy: for states nothing notifies us of."""
    deadline = time.monotonic() + SAFETY_TIMEOUT / 2
    while time.monotonic() < deadline:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out waiting until {what}")


def descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError), open(f"/proc/{name}/stat", "rb") as f:
                parents[int(name)] = int(f.read().rsplit(b")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False
