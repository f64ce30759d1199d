"""The agent's server: connections accepted on the inherited listening socket or donated by the host
over an inherited control socket (the gVisor backend), each carrying one operation at a time.

Threads, blocking sockets, no event loop: the agent's start-up is most of a cold sandbox create and
its heap most of an idle sandbox's memory, so it imports only what it uses (no asyncio, ssl, logging,
concurrent.futures, typing or dataclasses; copy_in's tarfile/shutil on first use). The main thread
polls the listening (or control) socket and a signal wakeup pipe: it hands each connection to a
worker thread (reused, workers.py), reaps children on SIGCHLD and shuts down on SIGTERM/SIGINT (or,
with donated connections, the control socket's end). A connection's thread reads a request, runs
its op — file operations with the requesting user's filesystem credentials, switched on that thread
only (creds.py) — and polls its socket with the process output or watch it streams, so a caller that
goes away detaches; then it waits for the connection's next request. Each running process's output
is pumped by a worker thread too (processes.py).

A connection's failure (malformed frame, bad field, dropped peer, a bug in a handler) ends that
connection with a structured error where possible and never touches the others.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time

from . import files, libc, tools
from .creds import FileRunner
from .log import log, log_exception
from .processes import Listener, Process, ProcessTable, Spec
from .protocol import DATA, END, OPS, REUSABLE, VERSION, AgentError, Exit, Request, SyncChannel, recv_fds
from .users import User, resolve_user
from .watch import Watch
from .workers import Workers

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Handler = Callable[[SyncChannel, Request], bool | None]  # True: the exchange completed (exec, attach)

USAGE = "usage: corral-agent (--listen-fd N | --control-fd N)"
SHUTDOWN_GRACE = 2.0  # seconds for connection threads to unwind at shutdown
KEEP_IDLE = 15.0  # seconds a connection waits for its next request (the host reuses one for 5 at most)
PEER = select.POLLIN | select.POLLHUP | select.POLLERR


# Found at import: once in the zygote, before any agent is forked from it.
TOOLS = tools.find(os.path.dirname(os.path.abspath(__file__)))


class Agent:
    """Serves connections, each on a worker thread while it lasts; owns the process table and the file credentials."""

    def __init__(self, spawners: bool = True, keep_idle: float = KEEP_IDLE) -> None:
        self.workers = Workers("worker")
        self.processes = ProcessTable(spawners, self.workers, TOOLS)
        self.fs = FileRunner()
        self.handlers: dict[str, Handler] = {op: getattr(self, f"op_{op}") for op in OPS}
        self._lock = threading.Condition()  # notified when a connection ends
        self.keep_idle = keep_idle
        self._connections: set[socket.socket] = set()

    def start(self, conn: socket.socket) -> None:
        """Serve `conn` on a worker thread."""
        conn.setblocking(True)
        with self._lock:
            self._connections.add(conn)
        try:
            self.workers.run(lambda: self.handle(conn))
        except RuntimeError as exc:  # can't start a new thread (a thread limit): this one only
            log("ERROR", f"cannot serve a connection: {exc}")
            with self._lock:
                self._connections.discard(conn)
            conn.close()
            return
        with contextlib.suppress(RuntimeError):  # its command, if it is one, gets its pump at once
            self.workers.keep_one_waiting()

    def handle(self, conn: socket.socket) -> None:
        """Serve one connection: its requests one after another, each completed exchange followed
        by the next request within `keep_idle` seconds (protocol.REUSABLE says which are)."""
        chan = SyncChannel(conn)
        try:
            while self._serve_one(chan) and not self.fs.tainted() and _readable(conn, self.keep_idle):
                chan.sent = False
        except (EOFError, ConnectionError):
            pass  # the peer went away
        except Exception:
            log_exception("connection failed")
        finally:
            if self.fs.tainted():
                self.workers.retire()  # it could not restore the agent's credentials: it serves no more
            chan.close()
            with self._lock:
                self._connections.discard(conn)
                self._lock.notify_all()

    def _serve_one(self, chan: SyncChannel) -> bool:
        """Read one request, run its op, reply with an error if it fails; whether the exchange
        completed so that the connection can carry another request."""
        op = ""
        try:
            request = Request(chan.recv_json())
            op = request.op
            return self.handlers[op](chan, request) is True or op in REUSABLE
        except AgentError as exc:
            error = exc
        except (EOFError, ConnectionError):
            raise
        except Exception as exc:
            log_exception("internal error")
            error = AgentError("internal", f"{type(exc).__name__}: {exc}")
        if chan.sent:  # once a reply went out, the stream just ends
            return False
        chan.send_json(error.to_reply())
        return op in REUSABLE or op in ("exec", "attach")  # the request was read whole

    def close_connections(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Shut every connection's socket down (their threads unwind, writes drop their temp files)
        and give them `grace` seconds to end."""
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):  # closed meanwhile
                    conn.shutdown(socket.SHUT_RDWR)
            deadline = time.monotonic() + grace
            while self._connections and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)

    # -- processes ----------------------------------------------------------------------------

    def op_ping(self, chan: SyncChannel, req: Request) -> None:
        chan.send_json({"ok": True, "version": VERSION})

    def op_exec(self, chan: SyncChannel, req: Request) -> bool:
        user = _user(req)
        cmd = req.texts("cmd")
        if not cmd:
            raise AgentError("invalid", "exec: cmd must not be empty")
        cwd = req.optional_text("cwd")
        timeout = req.number("timeout", 0.0)
        if timeout < 0:
            raise AgentError("invalid", "exec: timeout must be >= 0")
        spec = Spec(
            cmd=cmd,
            env=req.text_map("env"),
            cwd=user.resolve(cwd) if cwd else None,
            user=user,
            stdin=req.flag("stdin", False),
            pty=_pty_size(req.optional_object("pty")),
            tag=req.optional_text("tag"),
            timeout=timeout,
        )
        self.fs.check()  # the child inherits this thread's credentials
        listener = Listener()
        try:
            process = self.processes.spawn(spec, listener)
        except BaseException:
            listener.close()
            raise
        return self._stream(chan, process, listener, start=True)

    def op_attach(self, chan: SyncChannel, req: Request) -> bool:
        pid = req.integer("pid")
        listener = Listener()
        try:
            found = self.processes.attach(pid, listener)
        except BaseException:
            listener.close()
            raise
        if isinstance(found, Exit):
            listener.close()
            chan.send_json({"ok": True, "pid": pid})
            chan.send_json(found.to_event())
            return True
        return self._stream(chan, found, listener)

    def op_stdin(self, chan: SyncChannel, req: Request) -> None:
        pid, eof = req.integer("pid"), req.flag("eof", False)
        try:
            data = base64.b64decode(req.text("data", ""), validate=True)
        except (binascii.Error, ValueError):
            raise AgentError("invalid", "stdin: data must be base64") from None
        self.processes.get(pid).write_stdin(data, eof)
        chan.send_json({"ok": True})

    def op_signal(self, chan: SyncChannel, req: Request) -> None:
        pid, sig = req.integer("pid"), req.integer("signal")
        if sig not in signal.valid_signals():
            raise AgentError("invalid", f"signal: {sig} is not a signal number")
        self.processes.get(pid).signal(sig)
        chan.send_json({"ok": True})

    def op_resize(self, chan: SyncChannel, req: Request) -> None:
        pid = req.integer("pid")
        cols, rows = _pty_size({"cols": req.integer("cols"), "rows": req.integer("rows")}) or (0, 0)
        self.processes.get(pid).resize(cols, rows)
        chan.send_json({"ok": True})

    def op_processes(self, chan: SyncChannel, req: Request) -> None:
        chan.send_json({"ok": True, "processes": self.processes.snapshot()})

    def _stream(self, chan: SyncChannel, process: Process, listener: Listener, start: bool = False) -> bool:
        """Reply with the pid, then forward the listener's output and exit until either side ends;
        True if the exit went out (the exchange completed), False if the caller detached.
        With `start`, the process's pump starts after the reply went out: the reply goes first
        (the command may be one that kills the agent)."""
        try:
            try:
                chan.send_json({"ok": True, "pid": process.pid})
            finally:
                if start:
                    process.start()
            poller = select.poll()
            poller.register(chan.fileno(), PEER)
            poller.register(listener.fd, select.POLLIN)
            while True:
                for fd, _ in poller.poll():
                    if fd != listener.fd:
                        if not chan.discard():
                            return False  # the caller detached; the process runs on
                        continue
                    for item in listener.take():
                        if isinstance(item, Exit):
                            chan.send_json(item.to_event())
                            return True
                        chan.send(*item)
        finally:
            self.processes.detach(process, listener)
            listener.close()

    # -- files --------------------------------------------------------------------------------

    def op_stat(self, chan: SyncChannel, req: Request) -> None:
        user = _user(req)
        entry = self.fs.run(user, files.entry, user.resolve(req.path()))
        chan.send_json({"ok": True, "entry": entry})

    def op_list(self, chan: SyncChannel, req: Request) -> None:
        user = _user(req)
        path = user.resolve(req.path())
        depth = req.integer("depth", 1)
        if depth < 1:
            raise AgentError("invalid", "list: depth must be >= 1")
        entries = self.fs.run(user, files.list_entries, path, depth)
        chan.send_json({"ok": True, "entries": entries})

    def op_read(self, chan: SyncChannel, req: Request) -> None:
        user = _user(req)
        path = user.resolve(req.path())
        fd, entry = self.fs.run(user, files.open_for_read, path)
        try:
            chan.send_json({"ok": True, "entry": entry})
            try:
                while chunk := files.read_chunk(fd, path):  # the open fd needs no credentials
                    chan.send(DATA, chunk)
            except AgentError as exc:  # mid-stream: a JSON error frame instead of END
                chan.send_json(exc.to_reply())
                return
            chan.send(END)
        finally:
            os.close(fd)

    def op_write(self, chan: SyncChannel, req: Request) -> None:
        writer: files.FileWriter | None = None
        user: User | None = None
        try:  # every error, a bad user or path too, is answered after the DATA frames are drained
            user = _user(req)
            path = user.resolve(req.path())
            mode = None if req.fields.get("mode") is None else req.integer("mode")
            if mode is not None and not 0 <= mode <= 0o7777:
                raise AgentError("invalid", "write: mode must be within 0..0o7777")
            writer = self.fs.run(user, files.FileWriter, path, mode)
            while (frame := chan.recv())[0] != END:
                if frame[0] != DATA:
                    raise AgentError("invalid", "write: expected DATA or END frames after the request")
                self.fs.run(user, writer.write, frame[1])
            entry = self.fs.run(user, writer.commit)
        except AgentError as exc:
            self._abort(user, writer)
            chan.send_json(exc.to_reply())
            chan.discard_until_end()  # so closing leaves nothing unread for the client
            return
        except BaseException:
            self._abort(user, writer)  # the peer went away: drop the temp file
            raise
        chan.send_json({"ok": True, "entry": entry})

    def _abort(self, user: User | None, writer: files.FileWriter | None) -> None:
        if user is None or writer is None:
            return
        try:
            self.fs.run(user, writer.abort)
        except Exception as exc:
            log("WARNING", f"dropping the temp file of a failed write failed: {exc}")

    def op_mkdir(self, chan: SyncChannel, req: Request) -> None:
        user = _user(req)
        created = self.fs.run(user, files.make_dirs, user.resolve(req.path()))
        chan.send_json({"ok": True, "created": created})

    def op_remove(self, chan: SyncChannel, req: Request) -> None:
        user = _user(req)
        files.load_shutil()
        self.fs.run(user, files.remove, user.resolve(req.path()))
        chan.send_json({"ok": True})

    def op_rename(self, chan: SyncChannel, req: Request) -> None:
        user = _user(req)
        src, dst = user.resolve(req.path("src")), user.resolve(req.path("dst"))
        files.load_shutil()
        chan.send_json({"ok": True, "entry": self.fs.run(user, files.rename, src, dst)})

    def op_watch(self, chan: SyncChannel, req: Request) -> None:
        user = _user(req)
        path = user.resolve(req.path())
        watch = self.fs.run(user, Watch, path, req.flag("recursive", False))
        try:
            chan.send_json({"ok": True})
            poller = select.poll()
            poller.register(chan.fileno(), PEER)
            poller.register(watch.fd, select.POLLIN)
            while not watch.ended:
                for fd, _ in poller.poll():
                    if fd != watch.fd:
                        if not chan.discard():
                            return  # the caller stopped watching
                        continue
                    for event in self.fs.run(user, watch.read_events):
                        chan.send_json(event)
        finally:
            watch.close()

    def op_copy_in(self, chan: SyncChannel, req: Request) -> None:
        items = req.fields.get("items")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise AgentError("invalid", "copy_in: items must be a list of objects")
        chmod = None if req.fields.get("chmod") is None else req.integer("chmod")
        if chmod is not None and not 0 <= chmod <= 0o7777:
            raise AgentError("invalid", "copy_in: chmod must be within 0..0o7777")
        from . import copyin  # template builds only: tarfile and shutil stay off the start path

        root = resolve_user("root")
        written = self.fs.run(root, copyin.copy_in, items, req.optional_text("chown"), chmod)
        chan.send_json({"ok": True, "written": written})

    def op_port_open(self, chan: SyncChannel, req: Request) -> None:
        port = req.integer("port")
        if not 1 <= port <= 65535:
            raise AgentError("invalid", "port_open: port must be within 1..65535")
        chan.send_json({"ok": True, "open": _accepts(port)})

    def op_relay(self, chan: SyncChannel, req: Request) -> None:
        port = req.integer("port")
        if not 1 <= port <= 65535:
            raise AgentError("invalid", "relay: port must be within 1..65535")
        upstream = _loopback(port, 5.0)
        if upstream is None:
            raise AgentError("not_found", f"nothing accepts connections on 127.0.0.1:{port} or [::1]:{port}")
        with upstream:
            chan.send_json({"ok": True})
            _splice(chan.sock, upstream)


def _loopback(port: int, timeout: float) -> socket.socket | None:
    """A TCP connection to ``port`` on 127.0.0.1 (else ::1) inside the sandbox, or None."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
        except OSError:  # refused, timed out, or no such address family
            sock.close()
            continue
        sock.settimeout(None)
        return sock
    return None


def _splice(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both directions have ended (an EOF is passed on as a shutdown)."""
    peers = {a.fileno(): (a, b), b.fileno(): (b, a)}
    poller = select.poll()
    for fd in peers:
        poller.register(fd, select.POLLIN)
    reading = len(peers)
    while reading:
        for fd, _ in poller.poll():
            src, dst = peers[fd]
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            try:
                if data:
                    dst.sendall(data)
                    continue
                dst.shutdown(socket.SHUT_WR)
            except OSError:  # the other side is gone: nothing more can flow either way
                return
            poller.unregister(fd)
            reading -= 1


def _accepts(port: int) -> bool:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                probe.connect((host, port))
        except OSError:  # refused, timed out, or no such address family
            continue
        return True
    return False


def _readable(conn: socket.socket, timeout: float) -> bool:
    """Whether the next request (or the peer's end) arrived within `timeout` seconds."""
    poller = select.poll()
    poller.register(conn.fileno(), PEER)
    return bool(poller.poll(timeout * 1000))


def _user(req: Request) -> User:
    return resolve_user(req.text("user", "user"))


def _pty_size(pty: dict[str, Any] | None) -> tuple[int, int] | None:
    if pty is None:
        return None
    cols, rows = pty.get("cols", 80), pty.get("rows", 24)
    for value in (cols, rows):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 0xFFFF:
            raise AgentError("invalid", "pty: cols and rows must be integers within 1..65535")
    return cols, rows


# -- process entry point ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    parsed = _parse_args(args)
    if parsed is None:
        print(f"{USAGE}\ncorral-agent: error: bad arguments: {' '.join(args)[:200]}", file=sys.stderr)
        return 2
    donated, fd = parsed
    return serve_listening(fd, donated=donated)


def serve_listening(fd: int, donated: bool = False) -> int:
    """Serve on the inherited socket ``fd`` (listening, or the control socket of donated connections)."""
    try:
        sock = _channel_socket(fd, listening=not donated)
    except ValueError as exc:
        log("ERROR", str(exc))
        return 2
    _close_stray_fds(keep=fd)
    # Otherwise sandbox root (same uid, same capabilities) could rewrite the agent through
    # /proc/<pid>/mem until the first file operation as another user happens to clear the flag.
    libc.set_not_dumpable()
    if os.geteuid() != 0:
        log("WARNING", f"running as uid {os.geteuid()}, not root: processes and file operations only work as this user")
    os.umask(0o022)
    serve(sock, donated=donated)
    return 0


def _parse_args(args: list[str]) -> tuple[bool, int] | None:
    """(donated, fd) from `--listen-fd N` or `--control-fd N` (also `--name=N`); None if malformed."""
    if len(args) == 1 and "=" in args[0]:
        args = args[0].split("=", 1)
    if len(args) != 2 or args[0] not in ("--listen-fd", "--control-fd"):
        return None
    if not (args[1].isascii() and args[1].isdigit()):
        return None
    return args[0] == "--control-fd", int(args[1])


def serve(sock: socket.socket, donated: bool = False) -> None:
    """Serve until SIGTERM/SIGINT (or, with donated connections, the control socket's end), then
    kill and reap every process the agent started."""
    # Spawners only where corral-tools is missing (Popen as another user would fork the agent): its
    # exec-as, vforked, is cheaper than a spawner's round trip since it is built with musl, and a
    # spawner's own fork slowed a sandbox's second command (docs/performance.md, "No spawners").
    # Under gVisor (the backend that donates connections) a process's /proc fds and environ stay
    # open to processes of its uid even when it is not dumpable: no spawner runs as `user` there.
    agent = Agent(spawners=not donated and TOOLS is None, keep_idle=_keep_idle())
    agent.processes.install()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _note_signal)  # the wakeup fd carries the number; handled below
    sock.setblocking(False)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    try:
        while True:
            for fd, _ in poller.poll():
                if fd == wake_r:
                    signals = os.read(wake_r, 512)
                    agent.processes.reap()
                    if signal.SIGTERM in signals or signal.SIGINT in signals:
                        return
                elif donated:
                    if not _receive_donated(sock, agent):
                        return  # the host closed the control socket: the sandbox ends
                else:
                    _accept(sock, agent)
    finally:
        sock.close()
        agent.processes.shutdown()
        agent.close_connections()
        signal.set_wakeup_fd(previous)
        os.close(wake_r)
        os.close(wake_w)


def _keep_idle() -> float:
    """KEEP_IDLE, or the seconds ``CORRAL_AGENT_KEEP_IDLE`` sets (tests)."""
    try:
        seconds = float(os.environ.get("CORRAL_AGENT_KEEP_IDLE", KEEP_IDLE))
    except ValueError:
        return KEEP_IDLE
    return seconds if 0 < seconds <= 3600 else KEEP_IDLE


def _note_signal(signum: int, frame: object) -> None:
    """A Python-level handler must exist for the wakeup fd to see the signal; the loop acts on it."""


def _accept(listener: socket.socket, agent: Agent) -> None:
    try:
        conn, _ = listener.accept()
    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
        return
    except OSError as exc:  # EMFILE and the like: this connection only, keep serving
        log("WARNING", f"accept failed: {exc}")
        return
    agent.start(conn)


def _receive_donated(control: socket.socket, agent: Agent) -> bool:
    """Serve the connections one message on ``control`` carries (SCM_RIGHTS), each like an accepted
    one; False once the host closed ``control`` (the server is gone, so the sandbox should end too)."""
    try:
        msg, fds = recv_fds(control, 64, 16)
    except (BlockingIOError, InterruptedError):
        return True
    if not msg and not fds:
        return False
    for fd in fds:
        conn = socket.socket(fileno=fd)
        if conn.family != socket.AF_UNIX or conn.type != socket.SOCK_STREAM:
            conn.close()  # only the host sends here; anything else is dropped
            continue
        agent.start(conn)
    return True


def _channel_socket(fd: int, listening: bool) -> socket.socket:
    """The inherited fd as a unix stream socket, listening or connected as expected, close-on-exec."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"fd {fd} is not a socket: {exc}") from None
    accepting = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or accepting != listening:
        what = "listening" if listening else "connected"
        raise ValueError(f"fd {fd} is not a {what} AF_UNIX stream socket")
    os.set_inheritable(fd, False)
    return sock


def _close_stray_fds(keep: int) -> None:
    """Close inherited fds other than stdio and the socket: sandbox root could reach them via /proc."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                continue  # the directory fd of the listing itself, already closed
            log("WARNING", f"closed inherited fd {fd}")
