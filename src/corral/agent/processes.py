"""Process table: commands spawned on pipes or a PTY, their output fanned out to listeners, reaping.

Each running process has one pump, a job on a reused worker thread (workers.py); timeouts are kept by
one `Deadlines` thread. The pump polls the process's output fds and a pipe that turns readable once
the process is reaped, and hands each chunk to every listener's bounded queue. A full queue makes
the pump wait, so a slow caller slows the process down (its pipe fills) instead of growing the
agent's memory. With no listener the output is read and dropped, and the process keeps running.
The main thread reaps children (`ProcessTable.reap`, on SIGCHLD) under the table's lock, which
`spawn` holds too, so no child is reaped before it is in the table; a pump whose process's output
ended first tries to collect that one child itself (`ProcessTable._reap_one`, same lock), which
saves the exit a hand-off.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import heapq
import os
import select
import signal
import struct
import subprocess
import termios
import threading
import time

from . import exec_as, libc, spawner
from .log import log, log_exception
from .protocol import STDERR, STDOUT, AgentError, Exit, Frozen, error_from_os
from .spawner import Spawner, SpawnerGone
from .users import User
from .workers import Workers, start_thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

CHUNK = 64 * 1024
LISTENER_QUEUE = 16  # frames queued per listener before the pump waits for it
FINISHED_KEPT = 256
PIDS_WAIT = 1.0  # seconds a start that found no free pid waits for killed children to exit (_pids_freed)
PIDS_POLL = 0.005
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READABLE = select.POLLIN | select.POLLHUP | select.POLLERR
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # per second, the unit of a process's start in /proc/<pid>/stat

Item = tuple[bytes, bytes] | Exit  # (frame kind, output bytes), or the final exit


class Spec(Frozen):
    """What an exec request asked for, already validated."""

    __match_args__ = ("cmd", "env", "cwd", "user", "stdin", "pty", "tag", "timeout")
    __slots__ = __match_args__
    cmd: list[str]
    env: dict[str, str]
    cwd: str | None
    user: User
    stdin: bool
    pty: tuple[int, int] | None  # (cols, rows)
    tag: str | None
    timeout: float

    def __init__(
        self,
        cmd: list[str],
        env: dict[str, str],
        cwd: str | None,
        user: User,
        stdin: bool,
        pty: tuple[int, int] | None,
        tag: str | None,
        timeout: float,
    ) -> None:
        super().__init__(cmd, env, cwd, user, stdin, pty, tag, timeout)


class Listener:
    """One attached caller: a bounded queue, filled by the process's pump and drained by the caller's
    connection thread, which polls `fd` (readable while items wait) together with its socket."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: collections.deque[Item] = collections.deque()
        self.closed = False
        self.fd, self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def put(self, item: Item) -> None:
        """Queue `item`, waiting while the queue is full; dropped once closed."""
        with self._cond:
            while len(self._items) >= LISTENER_QUEUE and not self.closed:
                self._cond.wait()
            if self.closed:
                return
            self._items.append(item)
            if len(self._items) == 1:  # at most one byte waits in the pipe
                os.write(self._wake, b"\0")

    def take(self) -> list[Item]:
        """Everything queued so far (empty if nothing is)."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            with contextlib.suppress(BlockingIOError):
                os.read(self.fd, 1)
            self._cond.notify_all()
            return items

    def close(self) -> None:
        """Stop accepting items and empty the queue, which releases a pump waiting on it."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._items.clear()
            self._cond.notify_all()
            os.close(self.fd)
            os.close(self._wake)


class Process:
    """One spawned command: its fds, listeners and exit status. Created by `ProcessTable.spawn`."""

    def __init__(
        self,
        pid: int,
        popen: subprocess.Popen[bytes] | None,
        spawner: Spawner | None,
        spec: Spec,
        cwd: str,
        outputs: dict[int, bytes],
        stdin_fd: int | None,
        on_finish: Callable[[Process, Exit], None],
        workers: Workers,
        deadlines: Deadlines | None = None,
        reap: Callable[[Process], None] | None = None,
    ) -> None:
        self.pid = pid
        self.spawner = spawner  # the spawner that started it and reaps it, or None: the agent's child
        self.spec = spec
        self.cwd = cwd
        self.listeners: set[Listener] = set()
        self._popen = popen
        self._outputs = outputs
        self._stdin_fd = stdin_fd
        self._on_finish = on_finish
        self._reap = reap
        self._status: int | None = None
        # readable once reaped (never drained): wakes the pump and stdin writers
        self._reaped_r, self._reaped_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._reaped = threading.Event()  # set after that pipe was written: the pump may close it
        self._stdin_lock = threading.Lock()  # one writer at a time; held while waiting for room
        self._fd_lock = threading.Lock()  # short: the fds stay open while it (or the above) is held
        self._timed_out = False
        self._deadlines = deadlines if spec.timeout > 0 else None
        self._deadline: int | None = None  # its key in `deadlines`
        self._workers = workers  # one of them pumps its output

    def start(self) -> None:
        """Start the pump (and the timeout); until then output waits in the pipes. With no thread to
        pump it (the sandbox's task limit is reached), the process is killed and, once its output is
        drained and it is collected, its listeners get its exit with the reason."""
        try:
            if self._deadlines is not None:
                self._deadline = self._deadlines.add(self.spec.timeout, self._on_timeout)
            self._workers.run(self._run)
        except RuntimeError as exc:
            listeners, self.listeners = self.listeners, set()
            self.kill_group()
            self._run()  # on this thread, nobody listening: the output is dropped
            result = self._result(f"killed: no thread left to serve it ({exc}; the sandbox's task limit)")
            for listener in listeners:
                listener.put(result)

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
        with self._fd_lock:  # not the stdin lock: a writer may wait on a full terminal for long
            if self.spec.pty is None or self._stdin_fd is None:
                raise AgentError("invalid", f"process {self.pid} has no terminal")
            _set_window_size(self._stdin_fd, cols, rows)

    def write_stdin(self, data: bytes, eof: bool) -> None:
        """Write all of `data` (waiting while the pipe is full), then optionally close stdin."""
        with self._stdin_lock:
            if self._stdin_fd is None:
                raise AgentError("invalid", f"process {self.pid} has no open stdin")
            view = memoryview(data + (b"\x04" if eof and self.spec.pty else b""))
            poller: select.poll | None = None
            while view:
                if self._status is not None:
                    raise AgentError("not_found", f"process {self.pid} has exited")
                try:
                    view = view[os.write(self._stdin_fd, view) :]
                except BlockingIOError:
                    if poller is None:
                        poller = select.poll()
                        poller.register(self._stdin_fd, select.POLLOUT)
                        poller.register(self._reaped_r, select.POLLIN)
                    poller.poll()  # writable, or reaped
                except BrokenPipeError:
                    raise AgentError("invalid", f"process {self.pid} closed its stdin") from None
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    raise AgentError("invalid", f"the terminal of process {self.pid} was hung up") from None
            if eof and self.spec.pty is None:
                with self._fd_lock:
                    os.close(self._stdin_fd)
                    self._stdin_fd = None

    def kill_group(self) -> None:
        self.signal(signal.SIGKILL)

    # -- lifecycle ----------------------------------------------------------------------------

    def reaped_already(self) -> bool:
        return self._status is not None

    def reaped(self, status: int) -> None:
        """Called by the table (under its lock) once waitpid returned this process's status."""
        self._status = status
        if self._popen is not None:
            self._popen.returncode = os.waitstatus_to_exitcode(status)  # Popen must never waitpid again
        os.write(self._reaped_w, b"\0")
        self._reaped.set()

    def _on_timeout(self) -> None:
        if self._status is None:
            self._timed_out = True
            self.kill_group()

    def _run(self) -> None:
        try:
            self._pump_output()
        except Exception:
            log_exception(f"reading output of process {self.pid}")
        if self._reap is not None and not self._reaped.is_set():
            self._reap(self)  # its output ended: most likely it exited, collect it without the main thread
        self._reaped.wait()
        if self._deadlines is not None and self._deadline is not None:
            self._deadlines.cancel(self._deadline)
        with self._stdin_lock, self._fd_lock:  # writers see the reaped pipe and let go
            stdin = [self._stdin_fd] if self._stdin_fd is not None else []
            for fd in {*self._outputs, self._reaped_r, self._reaped_w, *stdin}:
                os.close(fd)
            self._stdin_fd = None
        error = f"timed out after {self.spec.timeout:g}s: process group killed" if self._timed_out else None
        result = self._result(error)
        self._on_finish(self, result)
        for listener in list(self.listeners):
            listener.put(result)

    def _result(self, error: str | None) -> Exit:
        status = self._status if self._status is not None else 0
        if os.WIFSIGNALED(status):
            sig: int | None = os.WTERMSIG(status)
            return Exit(128 + (sig or 0), sig, error)
        return Exit(os.WEXITSTATUS(status), None, error)

    def _pump_output(self) -> None:
        """Forward output until every fd ended, or the process was reaped and its pipes are empty."""
        poller = select.poll()
        for fd in self._outputs:
            poller.register(fd, READABLE)
        poller.register(self._reaped_r, select.POLLIN)
        open_fds = set(self._outputs)
        while open_fds:
            for fd, _ in poller.poll():
                if fd == self._reaped_r:  # read what is left, then stop (a background child may hold the pipe)
                    for out in list(open_fds):
                        while (data := self._read(out)) is not None:
                            self._deliver(out, data)
                            if not data:
                                break
                    return
                data = self._read(fd)
                if data is not None:
                    self._deliver(fd, data)
                    if not data:
                        poller.unregister(fd)
                        open_fds.discard(fd)

    def _deliver(self, fd: int, data: bytes) -> None:
        if data:
            for listener in list(self.listeners):
                listener.put((self._outputs[fd], data))

    def _read(self, fd: int) -> bytes | None:
        """Next chunk, b"" at its end (EOF, or EIO on a PTY whose slave fds are all closed), None if empty."""
        try:
            return os.read(fd, CHUNK)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise


class Deadlines:
    """Timeouts of every process, kept by one thread (started on first use) instead of a timer thread
    per process. `add` returns a key for `cancel`; a deadline that passes calls its function on that
    thread, which must be quick (`Process._on_timeout` sends a signal). Thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []  # (monotonic deadline, key); cancelled keys stay until compacted
        self._due: dict[int, Callable[[], None]] = {}  # the keys not cancelled yet
        self._next = 0
        self._thread: int | None = None  # its ident, once started

    def add(self, seconds: float, fn: Callable[[], None]) -> int:
        with self._cond:
            key = self._next = self._next + 1
            self._due[key] = fn
            heapq.heappush(self._heap, (time.monotonic() + seconds, key))
            if len(self._heap) > 2 * len(self._due) + 64:  # bounded by the live ones
                self._heap = [entry for entry in self._heap if entry[1] in self._due]
                heapq.heapify(self._heap)
            if self._thread is None:
                try:
                    self._thread = start_thread(self._run)
                except RuntimeError:  # no thread (the sandbox's task limit): this deadline is not kept
                    del self._due[key]
                    raise
            elif self._heap[0][1] == key:
                self._cond.notify()  # earlier than what the thread waits for
        return key

    def cancel(self, key: int) -> None:
        with self._cond:
            self._due.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][1] not in self._due:
                        heapq.heappop(self._heap)
                    delay = self._heap[0][0] - time.monotonic() if self._heap else None
                    if delay is not None and delay <= 0:
                        fn = self._due.pop(heapq.heappop(self._heap)[1])
                        break
                    self._cond.wait(delay)
            try:
                fn()
            except Exception:
                log_exception("a process timeout")


class ProcessTable:
    """All processes the agent started: running ones, and the exits of the last 256 finished."""

    def __init__(self, spawners: bool = True, workers: Workers | None = None, tools: str | None = None) -> None:
        self.running: dict[int, Process] = {}
        self.finished: collections.OrderedDict[int, Exit] = collections.OrderedDict()
        self.lock = threading.Lock()
        self._deadlines = Deadlines()
        # spawners (spawner.py) by the ids they hold; under `lock`
        self._spawners: dict[tuple[int, int, tuple[int, ...]], Spawner] = {}
        self._spawner_pids: dict[int, Spawner] = {}
        self._spawners_starting: set[tuple[int, int, tuple[int, ...]]] = set()
        self._spawners_refused: set[tuple[int, int, tuple[int, ...]]] = set()  # one stopped answering
        self._spawners_wanted: set[tuple[int, int, tuple[int, ...]]] = set()  # users whose commands the agent started
        self._use_spawners = spawners
        self._tools = tools  # corral-tools (tools.py); None: commands as another user fork the agent
        self._workers = workers or Workers("pump")

    def install(self) -> None:
        """Adopt orphans as a child subreaper, so that `reap` collects them too."""
        libc.set_child_subreaper()

    def spawn(self, spec: Spec, listener: Listener | None = None) -> Process:
        user = spec.user
        cwd = spec.cwd or (user.home if os.path.isdir(user.home) else "/")
        env = {"PATH": DEFAULT_PATH, "HOME": user.home, "USER": user.name, "LOGNAME": user.name, "SHELL": user.shell}
        if spec.pty:
            env["TERM"] = "xterm-256color"
        env.update(spec.env)
        switch = user.uid != os.geteuid() or user.gid != os.getegid()

        parent_fds: list[int] = []
        child_fds: list[int] = []
        with self.lock:  # the reaper waits: the child may exit before it is in the table
            try:
                if spec.pty:
                    master, slave = os.openpty()
                    parent_fds.append(master)
                    child_fds.append(slave)
                    _set_window_size(slave, *spec.pty)
                    if switch:  # like grantpt(): the terminal belongs to the user running on it
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
                popen: subprocess.Popen[bytes] | None = None
                via = self._spawner_for(user) if switch and not spec.pty and self._use_spawners else None
                pid = self._via_spawner(via, user, spec.cmd, env, cwd, stdio) if via is not None else None
                if pid is None:
                    via = None
                    popen = self._start(spec, switch, env=env, cwd=cwd, start_new_session=True,
                                        close_fds=True, **stdio)
                    pid = popen.pid
            except OSError as exc:
                for fd in parent_fds:
                    os.close(fd)
                raise error_from_os(exc) from None
            except subprocess.SubprocessError as exc:
                for fd in parent_fds:
                    os.close(fd)
                raise AgentError("internal", f"could not start {spec.cmd[0]!r}: {exc}") from None
            except AgentError:
                for fd in parent_fds:
                    os.close(fd)
                raise
            finally:
                for fd in child_fds:
                    os.close(fd)

            process = Process(pid, popen, via, spec, cwd, outputs, stdin_fd, self._finished, self._workers,
                              self._deadlines, self._reap_one)
            if listener is not None:
                process.listeners.add(listener)
            self.running[process.pid] = process
            self.finished.pop(process.pid, None)  # a reused pid no longer names the old process
        return process  # the caller starts it (`Process.start`), right after replying

    def get(self, pid: int) -> Process:
        with self.lock:
            process = self.running.get(pid)
        if process is None:
            raise AgentError("not_found", f"no running process with pid {pid}")
        return process

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return [p.info() for p in self.running.values()]

    def attach(self, pid: int, listener: Listener) -> Process | Exit:
        """Add a listener to a running process and return it, or return a finished process's exit."""
        with self.lock:
            process = self.running.get(pid)
            if process is not None:
                process.listeners.add(listener)
                return process
            if pid in self.finished:
                return self.finished[pid]
        raise AgentError("not_found", f"no process with pid {pid}")

    def detach(self, process: Process, listener: Listener) -> None:
        with self.lock:
            process.listeners.discard(listener)

    def reap(self) -> None:
        """Collect every exited child; orphans adopted by the subreaper are just discarded."""
        with self.lock:
            self._collect()

    def _collect(self) -> int:
        """``reap``'s work, under the lock; returns how many were collected."""
        collected = 0
        for pid, status in spawner.exited_children():
            collected += 1
            process = self.running.get(pid)
            if process is not None:
                process.reaped(status)
            elif pid in self._spawner_pids:
                via = self._spawner_pids[pid]
                via.alive, via.reaped = False, True
                self._orphans_of(via)
        return collected

    def _start(self, spec: Spec, switch: bool, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start `spec`'s command from the agent (under the lock). With ids to change (`switch`) or a
        terminal to take, through ``corral-tools exec-as`` when there is one: Popen then vforks, where
        `user=` or a `preexec_fn` make it fork the agent."""
        user = spec.user
        if (switch or spec.pty) and self._tools is not None:
            return exec_as.start(self._tools, user, spec.cmd, spec.pty is not None, self._popen, **kwargs)
        identity = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)} if switch else {}
        return self._popen(spec.cmd, preexec_fn=_take_controlling_tty if spec.pty else None, **identity, **kwargs)

    def _popen(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """``Popen``, under the lock. A fork that fails for want of pids (EAGAIN: the sandbox's pids
        limit) while children still hold some (a storm of orphans just killed, say a fork bomb's,
        not all exited or reaped yet) collects them and tries again (``_pids_freed``)."""
        while True:
            try:
                return subprocess.Popen(cmd, **kwargs)
            except BlockingIOError:
                if not self._pids_freed():
                    raise

    def _pids_freed(self) -> bool:
        """After a fork failed for want of pids: collect exited children, waiting up to
        ``PIDS_WAIT`` for killed ones still on their way out (SIGKILLed, not yet zombies: a group
        just killed by ``kill -9 -- -pgid``); whether any was collected. Under the lock, so the
        main thread's reaping waits: only this loop collects meanwhile. A sandbox whose pids are
        all held by live processes fails its command after that wait."""
        deadline = time.monotonic() + PIDS_WAIT
        while not self._collect():
            if time.monotonic() >= deadline:
                return False
            time.sleep(PIDS_POLL)  # a child's exit has no event this thread can wait on (SIGCHLD is the main thread's)
        return True

    # -- spawners -------------------------------------------------------------------------------

    def _spawner_for(self, user: User) -> Spawner | None:
        """``user``'s spawner (under the lock), or None: this command starts from the agent. The
        spawner is started in the background once the user's first such command has ended, or at the
        second one: forking it right away slowed a new sandbox's first command (two forks of the
        agent at once, then its copy-on-write faults)."""
        key = _ids(user)
        found = self._spawners.get(key)
        if found is not None and found.alive:
            return found
        if key in self._spawners_wanted:
            self._start_spawner_soon(user)
        self._spawners_wanted.add(key)
        return None

    def _start_spawner_soon(self, user: User) -> None:
        """Start ``user``'s spawner in a thread unless one runs, starts or was refused (under the lock)."""
        key = _ids(user)
        found = self._spawners.get(key)
        if key in self._spawners_starting or key in self._spawners_refused or not (found is None or found.reaped):
            return
        self._spawners_starting.add(key)
        try:
            start_thread(self._start_spawner, user, key)
        except RuntimeError:  # no thread (the sandbox's task limit): a later command tries again
            self._spawners_starting.discard(key)

    def _start_spawner(self, user: User, key: tuple[int, int, tuple[int, ...]]) -> None:
        try:
            made = spawner.start(user)
        except Exception as exc:
            log_exception(f"starting a spawner for uid {user.uid}")
            with self.lock:
                self._spawners_starting.discard(key)
                if not isinstance(exc, BlockingIOError):  # EAGAIN (the task limit, for now): a later one may
                    self._spawners_refused.add(key)
            return
        with self.lock:
            self._spawners_starting.discard(key)
            self._spawners[key] = made
            self._spawner_pids[made.pid] = made
        try:
            spawner.event_reader(made, lambda pid, status: self._spawned_exit(made, pid, status),
                                 lambda: self._spawner_ended(made))
        except RuntimeError as exc:  # no thread for its exits (the sandbox's task limit): unusable
            log("WARNING", f"a spawner for uid {user.uid} stopped at once: {exc}")
            made.eof = True  # no event will be read: once collected, its children are the agent's
            made.stop()  # collected on SIGCHLD; a later command starts another

    def _via_spawner(self, via: Spawner, user: User, cmd: list[str], env: dict[str, str], cwd: str,
                     stdio: dict[str, Any]) -> int | None:
        """Start `cmd` through `via` (under the lock); None if it cannot take the request, so the
        agent starts it itself. One that leaves a request unanswered is killed and not replaced."""
        stdin = stdio["stdin"] if stdio["stdin"] >= 0 else -1
        while True:
            asked = _boot_ticks()
            try:
                return via.spawn(cmd, env, cwd, (stdin, stdio["stdout"], stdio["stderr"]))
            except BlockingIOError:  # as in _popen: exiting children of the agent may hold pids
                if not self._pids_freed():
                    raise
            except SpawnerGone as exc:
                if exc.died:  # None: it had started nothing, and the agent starts it
                    return self._started_by_dead(via, user, asked)
                if not exc.started_unknown:
                    return None
                via.stop()
                self._spawners_refused.add(_ids(user))
                raise AgentError("internal", f"could not start {cmd[0]!r}: {exc}") from None

    def _started_by_dead(self, via: Spawner, user: User, asked: int) -> int | None:
        """The spawner died with a request unanswered (the command it started may have killed it:
        ``kill -9 -1`` as the user). Once it is collected its children are the agent's; the command,
        if it started, is the one of them that the table does not know, leads a session of its own
        as `user` and started since the request (the newest such, to the clock tick)."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(via.pid, 0)
        via.reaped = True
        self._orphans_of(via)
        found: tuple[int, int] | None = None
        for pid in _children():
            if pid in self.running or pid in self._spawner_pids:
                continue
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                uid = os.stat(f"/proc/{pid}").st_uid
            except (OSError, IndexError):
                continue
            started, leads = int(fields[19]), int(fields[3]) == pid
            if leads and uid == user.uid and started >= asked and (found is None or started >= found[1]):
                found = (pid, started)
        return found[0] if found is not None else None

    def _spawned_exit(self, via: Spawner, pid: int, status: int) -> None:
        with self.lock:
            process = self.running.get(pid)
            if process is not None and process.spawner is via and not process.reaped_already():
                process.reaped(status)

    def _spawner_ended(self, via: Spawner) -> None:
        """The spawner's events ended or the agent collected it; once both happened, its children
        that are still running are the agent's, and one whose exit never came is ended as killed."""
        with self.lock:
            self._orphans_of(via)

    def _orphans_of(self, via: Spawner) -> None:
        if not (via.eof and via.reaped):
            return
        for process in [p for p in self.running.values() if p.spawner is via and not p.reaped_already()]:
            try:
                pid, status = os.waitpid(process.pid, os.WNOHANG)
            except ChildProcessError:  # the spawner reaped it and died before telling
                process.reaped(signal.SIGKILL)
                continue
            if pid == process.pid:
                process.reaped(status)
        self._spawner_pids.pop(via.pid, None)
        via.close()

    def _reap_one(self, process: Process) -> None:
        """Collect `process` if it has exited (called by its pump once its output ended), so its exit
        goes out without waiting for the main thread's turn on SIGCHLD. Under the lock, and only while
        not reaped yet: its pid cannot have been reused, so the waitpid names this process."""
        with self.lock:
            if process.pid not in self.running or process.reaped_already():
                return
            try:
                pid, status = os.waitpid(process.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == process.pid:
                process.reaped(status)

    def _finished(self, process: Process, result: Exit) -> None:
        with self.lock:
            self.running.pop(process.pid, None)
            self.finished[process.pid] = result
            while len(self.finished) > FINISHED_KEPT:
                self.finished.popitem(last=False)
            if _ids(process.spec.user) in self._spawners_wanted:
                self._start_spawner_soon(process.spec.user)

    def shutdown(self, deadline: float = 5.0) -> None:
        """SIGKILL every process group and any other descendant, and reap them all."""
        with self.lock:
            processes = list(self.running.values())
        for process in processes:
            process.kill_group()
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            self.reap()
            children = _children()
            if not children:
                return
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)  # poll: waiting for the kernel to finish killing them


def _boot_ticks() -> int:
    """Now, as /proc/<pid>/stat gives a process's start: clock ticks since boot (one tick earlier)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * CLOCK_TICKS) - 1


def _ids(user: User) -> tuple[int, int, tuple[int, ...]]:
    return user.uid, user.gid, user.groups


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


def _set_window_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_controlling_tty() -> None:
    """In the child, after setsid: make the PTY slave (now fd 0) the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
