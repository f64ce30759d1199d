"""The host side of the agent zygote (``corral.agent.zygote``): start it, ask it for agents.

bwrap sandboxes get their agent forked from one pre-imported python instead of a python started
per sandbox (docs/architecture.md, "The agent zygote"). This module starts that process and,
per sandbox, asks it for a joiner while bwrap still sets the sandbox up (``request_joiner``), moves
that into the sandbox's cgroups (``place_joiner``), then, once bwrap made the namespaces, lets the joiner go with a
pidfd of pid 1 and receives a pidfd of the agent it forked into them; once pid 1 runs (bwrap has
finished its mounts) the agent joins the mount namespace too (``finish_agent``).
"""

from __future__ import annotations

import io
import os
import select
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from corral.agent.protocol import recv_fds
from corral.runtime.cgroups_priv import Cgroups
from corral.runtime.host import SET_SANDBOX_NOFILE, sandbox_nofile
from corral.runtime.plan import AGENT_CAPS_MASK, AGENT_PKG, AgentRuntime, agent_binds, agent_env_args
from corral.runtime.seccomp import program_fd

REPLY_TIMEOUT = 10.0  # seconds for the zygote's and the joiner's replies (each a fork away)


class ZygoteError(RuntimeError):
    """The zygote or a joiner failed; the sandbox being created cannot get its agent this way."""


@dataclass(frozen=True)
class AgentProcess:
    pid: int  # host view
    pidfd: int  # readable once the agent has exited; the caller closes it


class Zygote:
    """One zygote per backend, started on first use and again if it died. Thread-safe."""

    def __init__(self, runtime: AgentRuntime, agent_src: Path, seccomp: bytes, id_offset: int) -> None:
        self.runtime = runtime
        self.agent_src = agent_src
        self.seccomp = seccomp
        self.id_offset = id_offset
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None

    def argv(self, control_fd: int, seccomp_fd: int) -> list[str]:
        """bwrap as root: a mount namespace holding only the agent's runtime and code, read-only, at
        the paths a sandbox has them; no network; the zygote drops to ``id_offset`` itself."""
        binds = [a for src, dst in agent_binds(self.runtime, self.agent_src) for a in ("--ro-bind", str(src), dst)]
        return [
            "bwrap", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
            "--tmpfs", "/", *binds,
            "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
            "--clearenv", *agent_env_args(), "--chdir", "/",
            "--", *self.runtime.python_argv(), "-m", f"{AGENT_PKG}.zygote",
            "--control-fd", str(control_fd), "--seccomp-fd", str(seccomp_fd),
            "--uid", str(self.id_offset), "--caps", hex(AGENT_CAPS_MASK),
        ]

    def start(self) -> None:
        """Start the zygote unless it runs. Call it from a thread that lives as long as the backend
        (bwrap's --die-with-parent follows the starting thread)."""
        with self._lock:
            if self._process is not None and self._process.poll() is None and not self._hung_up():
                return
            self._stop_locked()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            seccomp_fd = program_fd(self.seccomp)
            try:
                self._process = subprocess.Popen(  # with the limit of open files sandboxes get
                    ["/bin/sh", "-c", f'{SET_SANDBOX_NOFILE} && exec "$@"', "corral-zygote", str(sandbox_nofile()),
                     *self.argv(theirs.fileno(), seccomp_fd)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(), seccomp_fd), start_new_session=True,
                )
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
                os.close(seccomp_fd)
            ours.settimeout(REPLY_TIMEOUT)
            self._control = ours

    def ask_joiner(self, listener: int, log_fd: int, go: int, root: tuple[int, int]) -> None:
        """Ask for a joiner of the sandbox whose root is ``root`` (st_dev, st_ino); the zygote answers
        on ``go`` (``place_joiner``), not here, so the caller need not wait for its fork. The joiner
        then waits on ``go`` for the pidfd of the sandbox's pid 1."""
        with self._lock:
            if self._control is None:
                raise ZygoteError("the agent zygote is not running")
            try:
                socket.send_fds(self._control, [f"spawn {root[0]} {root[1]}".encode()], [listener, log_fd, go])
            except OSError as exc:  # it died: the next create starts a new one
                self._stop_locked()
                raise ZygoteError(f"the agent zygote is gone: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._stop_locked()

    def _hung_up(self) -> bool:
        """The zygote's end of the control socket is closed: it died (bwrap may not have yet)."""
        if self._control is None:
            return True
        poller = select.poll()
        poller.register(self._control, select.POLLIN)
        return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in poller.poll(0))

    def _stop_locked(self) -> None:
        if self._control is not None:
            self._control.close()  # the zygote exits on EOF
            self._control = None
        if self._process is not None:
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


@dataclass
class Joiner:
    """A joiner asked of the zygote (``request_joiner``); ``place_joiner`` puts it in the sandbox's
    cgroups, ``finish_agent`` lets it go."""

    go: socket.socket  # the caller closes it: a joiner whose go socket closes exits

    def close(self) -> None:
        self.go.close()


def request_joiner(zygote: Zygote, root: tuple[int, int], listener: socket.socket, log_fd: int) -> Joiner:
    """Have ``zygote`` fork the joiner of the sandbox whose root is ``root`` (st_dev, st_ino), while
    bwrap still sets the sandbox up: the joiner only waits. Returns at once; ``place_joiner`` takes
    the zygote's answer. The joiner gets its own ``listener`` and ``log_fd`` (the caller closes its ones)."""
    go, joiner_go = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        zygote.ask_joiner(listener.fileno(), log_fd, joiner_go.fileno(), root)
    except BaseException:
        go.close()
        raise
    finally:
        joiner_go.close()
    return Joiner(go)


def place_joiner(joiner: Joiner, sandbox_id: str, cgroups: Cgroups) -> None:
    """Take the zygote's answer to ``request_joiner`` and move the joiner into the sandbox's cgroups
    (the agent is forked by it, so it starts inside them); before ``finish_agent``."""
    joiner.go.settimeout(REPLY_TIMEOUT)
    reply, fds = _reply(joiner, "no joiner from the agent zygote")
    kind, _, rest = reply.decode(errors="replace").partition(" ")
    if kind != "pid" or not rest.isdigit() or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ZygoteError(f"the agent zygote refused: {rest[:300]}" if reply else "the agent zygote exited")
    try:  # moved by pid: only while the pidfd says that pid is still the joiner
        if _exited(fds[0]):
            raise ZygoteError("the joiner exited before it was placed")
        cgroups.attach(sandbox_id, int(rest))
    finally:
        os.close(fds[0])


def finish_agent(joiner: Joiner, init_pidfd: int, ready: io.FileIO, timeout: float) -> AgentProcess:
    """Once bwrap made the sandbox's namespaces and their id maps (``launch_priv.admit``), hand the
    joiner a pidfd of pid 1 and receive a pidfd of the agent it forked into them, while bwrap still
    mounts; once pid 1 runs (``ready``: the pipe it writes one byte to, once bwrap has set the sandbox
    up; only then may anything join its mount namespace), have the agent join that namespace too
    (``mount``, answered ``joined``). Closes ``ready`` and the joiner."""
    try:
        socket.send_fds(joiner.go, [b"go"], [init_pidfd])
        joiner.go.settimeout(REPLY_TIMEOUT)
        agent = _agent(_reply(joiner, "no agent from the zygote"))
        try:
            _wait_ready(ready, timeout)
            joiner.go.send(b"mount")
            msg, fds = _reply(joiner, "the agent did not join the sandbox's mounts")
            for fd in fds:
                os.close(fd)
            if msg != b"joined":
                raise ZygoteError(f"the agent did not start: {msg.decode(errors='replace')[:300] or 'it exited'}")
        except BaseException:
            os.close(agent.pidfd)
            raise
    finally:
        joiner.close()
        ready.close()
    return agent


def _reply(joiner: Joiner, what: str) -> tuple[bytes, list[int]]:
    try:
        msg, fds = recv_fds(joiner.go, 1024, 1)
    except OSError as exc:
        raise ZygoteError(f"{what}: {exc}") from exc
    return msg, fds


def _agent(reply: tuple[bytes, list[int]]) -> AgentProcess:
    msg, fds = reply
    text = msg.decode(errors="replace")
    kind, _, rest = text.partition(" ")
    if kind != "agent" or not rest.isdigit() or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise ZygoteError(f"the agent did not start: {text[:300] or 'the joiner exited'}")
    return AgentProcess(pid=int(rest), pidfd=fds[0])


def _readable(fd: int, timeout: float) -> bool:
    """poll(2), not select(2): the server holds far more than FD_SETSIZE (1024) fds at density."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _exited(pidfd: int) -> bool:
    return _readable(pidfd, 0)


def _wait_ready(ready: io.FileIO, timeout: float) -> None:
    if not _readable(ready.fileno(), timeout):
        raise ZygoteError(f"the sandbox's pid 1 was not running after {timeout:.0f}s")
    if ready.read(1) != b".":
        raise ZygoteError("the sandbox's pid 1 exited before it was ready")
