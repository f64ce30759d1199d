"""Spawners: a child of the agent per sandbox user, which starts that user's commands with vfork.

Starting a process as another user means setting its ids between fork and exec, so the agent's
``Popen(user=...)`` forks the agent itself, and a fork copies the agent's page tables: ~2.3 ms on a
host with paravirtualised page tables, against ~0.9 ms for the vfork that ``Popen`` uses when no ids
change. ``corral-tools exec-as`` (``exec_as``) avoids that fork at the cost of one more exec; a
spawner, ~0.25 ms cheaper per command, is forked from the agent once per user and takes that user's ids for good (uid,
gid and groups, real, effective and saved; no capabilities left); the agent sends it the command
with the child's stdio fds, it starts the command with vfork, replies with the pid, reaps its
children and reports each exit. Commands as root and on a terminal start from the agent (a
terminal's through ``exec-as``).

Two SOCK_SEQPACKET pairs per spawner, one JSON message each: *requests* (the agent asks, the spawner
replies; one request at a time) and *events* (the spawner's reports of exits, read by a thread of the
agent). The spawner trusts nothing but the agent's socket; the agent reads the spawner's messages as
it reads the sandbox's: bounded and type-checked. Sandbox code running as the same user can signal
a spawner (same uid): a stopped one is killed after ``REPLY_TIMEOUT`` and its user's commands fork
again; a killed one is replaced on the next command, and its children, reparented to the agent (a
subreaper), are reaped there.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import subprocess

from . import libc
from .protocol import recv_fds
from .workers import start_thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from .users import User

MAX_MESSAGE = 60 * 1024  # a request above this (a large env) is started by the agent itself
REPLY_TIMEOUT = 5.0  # seconds; a spawner that takes longer (stopped) is killed and not replaced
_FDS_MAX = 3


class SpawnerGone(Exception):
    """The spawner is not there (any more). ``started_unknown``: a request went out without its reply,
    so the command may be running."""

    def __init__(self, message: str, started_unknown: bool = False, died: bool = False) -> None:
        super().__init__(message)
        self.started_unknown = started_unknown
        self.died = died  # it ended with the request unanswered (killed), rather than stopped answering


class Spawner:
    """The agent's side of one spawner: ``spawn`` under the caller's lock, exits to ``on_exit``."""

    def __init__(self, pid: int, requests: socket.socket, events: socket.socket) -> None:
        self.pid = pid
        self._requests = requests
        self._events = events
        self.alive = True
        self.eof = False  # events ended: every exit it reported has been handled
        self.reaped = False  # the agent collected it: its running children are now the agent's
        self._replies = select.poll()
        self._replies.register(requests, select.POLLIN)

    def spawn(self, cmd: list[str], env: dict[str, str], cwd: str, stdio: tuple[int, int, int]) -> int:
        """Start `cmd` with `stdio` as fds 0, 1, 2 (-1: /dev/null); returns its pid. Raises OSError
        as Popen would (exec and chdir failures), SpawnerGone if the spawner cannot answer."""
        if not self.alive:
            raise SpawnerGone("spawner gone")
        message = json.dumps({"cmd": cmd, "env": env, "cwd": cwd, "stdin": stdio[0] >= 0}).encode()
        fds = [fd for fd in stdio if fd >= 0]
        if len(message) > MAX_MESSAGE:
            raise SpawnerGone("request too large for the spawner")
        try:
            socket.send_fds(self._requests, [message], fds)
        except OSError as exc:
            self.stop()
            raise SpawnerGone(f"spawner gone: {exc}") from None
        if not self._replies.poll(REPLY_TIMEOUT * 1000):
            self.stop()
            raise SpawnerGone("the spawner did not answer", started_unknown=True)
        try:
            reply = self._requests.recv(MAX_MESSAGE)
        except OSError:
            reply = b""
        if not reply:  # it died: perhaps killed by the very command it had just started
            self.alive = False
            raise SpawnerGone("the spawner died", started_unknown=True, died=True)
        return _pid_from_reply(reply)

    def read_events(self, on_exit: Callable[[int, int], None], on_end: Callable[[], None]) -> None:
        """Hand each reported exit to ``on_exit(pid, status)`` until the spawner's end, then ``on_end``.
        Runs on a thread of its own."""
        try:
            while True:
                try:
                    data = self._events.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    break
                parsed = _exit_from_event(data)
                if parsed is not None:
                    on_exit(*parsed)
        finally:
            self.alive = False
            self.eof = True
            on_end()

    def stop(self) -> None:
        """Kill it (its children keep running, then belong to the agent); idempotent."""
        self.alive = False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self._requests.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._requests.close()
        self._events.close()


def start(user: User) -> Spawner:
    """Fork a spawner for `user` (not root). Call with every agent module already imported."""
    requests, their_requests = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    events, their_events = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    agent = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # The agent's objects stay in this copy of its heap with their fds closed below: no
            # collection may finalise one and close a number reused meanwhile.
            gc.disable()
            _become(user, agent, keep=(their_requests.fileno(), their_events.fileno()))
            requests.detach()  # closed with the rest of the agent's fds
            events.detach()
            _serve(their_requests, their_events)
            code = 0
        finally:
            os._exit(code)
    their_requests.close()
    their_events.close()
    return Spawner(pid, requests, events)


# -- in the spawner -------------------------------------------------------------------------------


def _become(user: User, agent: int, keep: tuple[int, ...]) -> None:
    """Drop everything of the agent's but `keep`: fds, signal handlers, ids, capabilities."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    libc.set_name("corral-spawner")
    libc.setgroups(list(user.groups))
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)  # the kernel clears every capability
    if os.getresuid() != (user.uid,) * 3 or os.getresgid() != (user.gid,) * 3 or any(libc.capget()[:2]):
        raise SystemExit(1)
    libc.set_not_dumpable()
    # No parent-death signal: it follows the forking *thread*, which ends soon. When the agent goes,
    # so do its ends of the sockets, and the spawner stops at their end.
    if os.getppid() != agent:
        raise SystemExit(1)


def _serve(requests: socket.socket, events: socket.socket) -> None:
    """Start what the agent asks until it closes either socket; report every exit."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    events.setblocking(False)
    children: dict[int, subprocess.Popen[bytes]] = {}
    pending: list[bytes] = []  # exits not yet sent: the agent may be busy; never block on it
    poller = select.poll()
    poller.register(requests, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        poller.register(events, select.POLLOUT if pending else 0)
        for fd, event in poller.poll():
            if fd == requests.fileno():
                message, fds = recv_fds(requests, MAX_MESSAGE, _FDS_MAX)
                if not message:
                    return  # the agent is done
                requests.send(_start(message, fds, children))
            elif fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
                pending += _collect(children)
            elif event & (select.POLLHUP | select.POLLERR):
                return  # the agent closed the events socket
        while pending:
            try:
                events.send(pending[0])
            except BlockingIOError:
                break
            pending.pop(0)


def _start(message: bytes, fds: list[int], children: dict[int, subprocess.Popen[bytes]]) -> bytes:
    try:
        request = json.loads(message)
        stdio = fds if request["stdin"] else [subprocess.DEVNULL, *fds]
        popen = subprocess.Popen(
            request["cmd"], env=request["env"], cwd=request["cwd"], stdin=stdio[0], stdout=stdio[1],
            stderr=stdio[2], start_new_session=True, close_fds=True,
        )
    except OSError as exc:
        return json.dumps({"errno": exc.errno, "strerror": exc.strerror, "filename": exc.filename}).encode()
    except Exception as exc:  # a malformed request (the agent's bug) or a SubprocessError
        return json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
    finally:
        for fd in fds:
            os.close(fd)
    children[popen.pid] = popen
    return json.dumps({"pid": popen.pid}).encode()


def exited_children() -> Iterator[tuple[int, int]]:
    """(pid, wait status) of each child that has exited, collecting it; ends when none is left."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def _collect(children: dict[int, subprocess.Popen[bytes]]) -> list[bytes]:
    exits = []
    for pid, status in exited_children():
        popen = children.pop(pid, None)
        if popen is not None:
            popen.returncode = os.waitstatus_to_exitcode(status)  # Popen must never waitpid again
        exits.append(json.dumps({"pid": pid, "status": status}).encode())
    return exits


# -- the agent reading the spawner ------------------------------------------------------------------


def _pid_from_reply(data: bytes) -> int:
    try:
        reply: Any = json.loads(data)
    except ValueError:
        reply = None
    if isinstance(reply, dict):
        pid, errno_ = reply.get("pid"), reply.get("errno")
        if type(pid) is int and pid > 1:
            return pid
        if type(errno_) is int and errno_ > 0:
            strerror, filename = reply.get("strerror"), reply.get("filename")
            raise OSError(errno_, strerror if isinstance(strerror, str) else os.strerror(errno_),
                          filename if isinstance(filename, str) else None)
        if isinstance(reply.get("error"), str):
            raise subprocess.SubprocessError(reply["error"][:500])
    raise SpawnerGone("malformed reply from the spawner", started_unknown=True)


def _exit_from_event(data: bytes) -> tuple[int, int] | None:
    try:
        event: Any = json.loads(data)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    pid, status = event.get("pid"), event.get("status")
    if type(pid) is int and type(status) is int and pid > 1 and 0 <= status < 1 << 16:
        return pid, status
    return None


def event_reader(spawner: Spawner, on_exit: Callable[[int, int], None], on_end: Callable[[], None]) -> None:
    """Start `spawner`'s event reader thread."""
    start_thread(spawner.read_events, on_exit, on_end)
