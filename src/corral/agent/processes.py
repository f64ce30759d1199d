"""Process table: commands spawned on pipes or a PTY, their output fanned out to listeners, reaping.

Everything here runs on the agent's event loop thread and is not thread-safe. Output is read in
chunks as produced and handed to each listener's bounded queue; a full queue makes the reader wait,
so a slow caller slows the process down (its pipe fills) instead of growing the agent's memory. With
no listener the output is read and dropped, and the process keeps running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import logging
import os
import signal
import struct
import subprocess
import termios
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import libc
from .protocol import STDERR, STDOUT, AgentError, Exit, error_from_os
from .users import User

log = logging.getLogger("corral.agent")

CHUNK = 64 * 1024
LISTENER_QUEUE = 16  # frames queued per listener before the output reader waits for it
FINISHED_KEPT = 256
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Item = tuple[bytes, bytes] | Exit  # (frame kind, output bytes), or the final exit


@dataclass(frozen=True, slots=True)
class Spec:
    """What an exec request asked for, already validated."""

    cmd: list[str]
    env: dict[str, str]
    cwd: str | None
    user: User
    stdin: bool
    pty: tuple[int, int] | None  # (cols, rows)
    tag: str | None
    timeout: float


class Listener:
    """One attached caller: a bounded queue, drained by that caller's connection."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Item] = asyncio.Queue(LISTENER_QUEUE)
        self.closed = False

    async def put(self, item: Item) -> None:
        if not self.closed:
            await self.queue.put(item)

    def close(self) -> None:
        """Stop accepting items and empty the queue, which releases any reader waiting on it."""
        self.closed = True
        while not self.queue.empty():
            self.queue.get_nowait()


class Process:
    """One spawned command: its fds, listeners and exit status. Created by `ProcessTable.spawn`."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        spec: Spec,
        cwd: str,
        outputs: dict[int, bytes],
        stdin_fd: int | None,
        on_finish: Callable[[Process, Exit], None],
    ) -> None:
        self.pid = popen.pid
        self.spec = spec
        self.cwd = cwd
        self.listeners: set[Listener] = set()
        self._popen = popen
        self._outputs = outputs
        self._stdin_fd = stdin_fd
        self._on_finish = on_finish
        self._status: int | None = None
        self._reaped = asyncio.Event()
        self._wakers: set[asyncio.Future[None]] = set()
        self._stdin_lock = asyncio.Lock()
        self._timed_out = False
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(spec.timeout, self._on_timeout) if spec.timeout > 0 else None
        self._task = loop.create_task(self._run())

    def info(self) -> dict[str, Any]:
        pty = {"cols": self.spec.pty[0], "rows": self.spec.pty[1]} if self.spec.pty else None
        return {
            "pid": self.pid,
            "cmd": self.spec.cmd,
            "tag": self.spec.tag,
            "cwd": self.cwd,
            "user": self.spec.user.name,
            "pty": pty,
        }

    # -- control ------------------------------------------------------------------------------

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group is gone; its exit event is coming
            os.killpg(self.pid, sig)

    def resize(self, cols: int, rows: int) -> None:
        if self.spec.pty is None or self._stdin_fd is None:
            raise AgentError("invalid", f"process {self.pid} has no terminal")
        _set_window_size(self._stdin_fd, cols, rows)

    async def write_stdin(self, data: bytes, eof: bool) -> None:
        """Write all of `data` (waiting while the pipe is full), then optionally close stdin."""
        async with self._stdin_lock:
            if self._stdin_fd is None:
                raise AgentError("invalid", f"process {self.pid} has no open stdin")
            view = memoryview(data + (b"\x04" if eof and self.spec.pty else b""))
            while view:
                if self._status is not None:
                    raise AgentError("not_found", f"process {self.pid} has exited")
                try:
                    view = view[os.write(self._stdin_fd, view) :]
                except BlockingIOError:
                    await self._wait_fd(self._stdin_fd, readable=False)
                except BrokenPipeError:
                    raise AgentError("invalid", f"process {self.pid} closed its stdin") from None
            if eof and self.spec.pty is None:
                os.close(self._stdin_fd)
                self._stdin_fd = None

    def kill_group(self) -> None:
        self.signal(signal.SIGKILL)

    # -- lifecycle ----------------------------------------------------------------------------

    def reaped(self, status: int) -> None:
        """Called by the table once waitpid returned this process's status."""
        self._status = status
        self._popen.returncode = os.waitstatus_to_exitcode(status)  # Popen must never waitpid again
        for waker in self._wakers:
            wake(waker)
        self._reaped.set()

    def _on_timeout(self) -> None:
        self._timed_out = True
        self.kill_group()

    async def _run(self) -> None:
        pumps = [self._pump(fd, kind) for fd, kind in self._outputs.items()]
        for failure in await asyncio.gather(*pumps, return_exceptions=True):
            if isinstance(failure, Exception):
                log.error("reading output of process %d: %r", self.pid, failure)
        await self._reaped.wait()
        if self._timer is not None:
            self._timer.cancel()
        for fd in {*self._outputs, *([self._stdin_fd] if self._stdin_fd is not None else [])}:
            os.close(fd)
        self._stdin_fd = None
        status = self._status if self._status is not None else 0
        if os.WIFSIGNALED(status):
            sig: int | None = os.WTERMSIG(status)
            code = 128 + (sig or 0)
        else:
            sig, code = None, os.WEXITSTATUS(status)
        error = f"timed out after {self.spec.timeout:g}s: process group killed" if self._timed_out else None
        result = Exit(code, sig, error)
        self._on_finish(self, result)
        for listener in list(self.listeners):
            await listener.put(result)

    async def _pump(self, fd: int, kind: bytes) -> None:
        while data := await self._read(fd):
            for listener in list(self.listeners):
                await listener.put((kind, data))

    async def _read(self, fd: int) -> bytes:
        """Next chunk, or b"" at end: EOF/EIO, or the pipe is empty after the process was reaped."""
        while True:
            try:
                return os.read(fd, CHUNK)
            except BlockingIOError:
                if self._status is not None:
                    return b""  # everything the process wrote before exiting has been read
            except OSError as exc:
                if exc.errno == errno.EIO:  # PTY: every slave fd is closed
                    return b""
                raise
            await self._wait_fd(fd, readable=True)

    async def _wait_fd(self, fd: int, readable: bool) -> None:
        """Wait until `fd` is ready, or the process is reaped (whichever comes first)."""
        loop = asyncio.get_running_loop()
        waker: asyncio.Future[None] = loop.create_future()
        (loop.add_reader if readable else loop.add_writer)(fd, wake, waker)
        self._wakers.add(waker)
        try:
            await waker
        finally:
            self._wakers.discard(waker)
            (loop.remove_reader if readable else loop.remove_writer)(fd)


class ProcessTable:
    """All processes the agent started: running ones, and the exits of the last 256 finished."""

    def __init__(self) -> None:
        self.running: dict[int, Process] = {}
        self.finished: collections.OrderedDict[int, Exit] = collections.OrderedDict()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reap children on SIGCHLD, including orphans adopted as a child subreaper."""
        libc.set_child_subreaper()
        loop.add_signal_handler(signal.SIGCHLD, self.reap)

    def spawn(self, spec: Spec, listener: Listener | None = None) -> Process:
        user = spec.user
        cwd = spec.cwd or (user.home if os.path.isdir(user.home) else "/")
        env = {"PATH": DEFAULT_PATH, "HOME": user.home, "USER": user.name, "LOGNAME": user.name, "SHELL": user.shell}
        if spec.pty:
            env["TERM"] = "xterm-256color"
        env.update(spec.env)
        identity: dict[str, Any] = {}
        if user.uid != os.geteuid() or user.gid != os.getegid():
            identity = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}

        parent_fds: list[int] = []
        child_fds: list[int] = []
        try:
            if spec.pty:
                master, slave = os.openpty()
                parent_fds.append(master)
                child_fds.append(slave)
                _set_window_size(slave, *spec.pty)
                if identity:  # like grantpt(): the terminal belongs to the user running on it
                    os.fchown(slave, user.uid, -1)
                stdio: dict[str, Any] = {"stdin": slave, "stdout": slave, "stderr": slave}
                outputs, stdin_fd = {master: STDOUT}, master
            else:
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                parent_fds += [out_r, err_r]
                child_fds += [out_w, err_w]
                stdin: int = subprocess.DEVNULL
                stdin_fd = None
                if spec.stdin:
                    stdin, stdin_fd = os.pipe()
                    parent_fds.append(stdin_fd)
                    child_fds.append(stdin)
                stdio = {"stdin": stdin, "stdout": out_w, "stderr": err_w}
                outputs = {out_r: STDOUT, err_r: STDERR}
            for fd in parent_fds:
                os.set_blocking(fd, False)
            popen = subprocess.Popen(
                spec.cmd,
                env=env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
                preexec_fn=_take_controlling_tty if spec.pty else None,
                **stdio,
                **identity,
            )
        except OSError as exc:
            for fd in parent_fds:
                os.close(fd)
            raise error_from_os(exc) from None
        except subprocess.SubprocessError as exc:
            for fd in parent_fds:
                os.close(fd)
            raise AgentError("internal", f"could not start {spec.cmd[0]!r}: {exc}") from None
        finally:
            for fd in child_fds:
                os.close(fd)

        process = Process(popen, spec, cwd, outputs, stdin_fd, self._finished)
        if listener is not None:
            process.listeners.add(listener)
        self.running[process.pid] = process
        self.finished.pop(process.pid, None)  # a reused pid no longer names the old process
        return process

    def get(self, pid: int) -> Process:
        process = self.running.get(pid)
        if process is None:
            raise AgentError("not_found", f"no running process with pid {pid}")
        return process

    def attach(self, pid: int, listener: Listener) -> Process | Exit:
        """Add a listener to a running process and return it, or return a finished process's exit."""
        process = self.running.get(pid)
        if process is not None:
            process.listeners.add(listener)
            return process
        if pid in self.finished:
            return self.finished[pid]
        raise AgentError("not_found", f"no process with pid {pid}")

    def reap(self) -> None:
        """Collect every exited child; orphans adopted by the subreaper are just discarded."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            process = self.running.get(pid)
            if process is not None:
                process.reaped(status)

    def _finished(self, process: Process, result: Exit) -> None:
        self.running.pop(process.pid, None)
        self.finished[process.pid] = result
        while len(self.finished) > FINISHED_KEPT:
            self.finished.popitem(last=False)

    async def shutdown(self, deadline: float = 5.0) -> None:
        """SIGKILL every process group and any other descendant, and reap them all."""
        for process in list(self.running.values()):
            process.kill_group()
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while loop.time() < end:
            self.reap()
            children = _children()
            if not children:
                return
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.01)  # poll: waiting for the kernel to finish killing them


def _children() -> list[int]:
    """Pids whose parent is the agent, live or zombie (found in /proc: cheap at sandbox scale)."""
    me, pids = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(fields[1]) == me:
            pids.append(int(name))
    return pids


def wake(future: asyncio.Future[None]) -> None:
    """Resolve `future` unless already done (fd callbacks may fire more than once)."""
    if not future.done():
        future.set_result(None)


def _set_window_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_controlling_tty() -> None:
    """In the child, after setsid: make the PTY slave (now fd 0) the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
