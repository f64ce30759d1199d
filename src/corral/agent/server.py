"""The agent's server: one operation per connection, accepted on the inherited listening socket or
donated by the host over an inherited control socket (the gVisor backend).

Everything runs on one asyncio event loop thread; blocking filesystem work goes to the worker threads
of a `FileRunner`, each operation with the requesting user's filesystem credentials.
A connection's failure (malformed frame, bad field, dropped peer, a bug in a handler) ends that
connection with a structured error where possible and never touches the others.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from . import copyin, files, libc
from .creds import FileRunner
from .processes import Listener, Process, ProcessTable, Spec
from .protocol import DATA, END, OPS, VERSION, AgentError, Channel, Exit, Request
from .users import User, resolve_user
from .watch import Watch

log = logging.getLogger("corral.agent")

Handler = Callable[[Channel, Request], Awaitable[None]]


class Agent:
    """Serves connections; owns the process table and the file workers. Not thread-safe: create and
    use it on one event loop thread only."""

    def __init__(self) -> None:
        self.processes = ProcessTable()
        self.fs = FileRunner()
        self.handlers: dict[str, Handler] = {op: getattr(self, f"op_{op}") for op in OPS}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection: read the request, run its op, reply with an error if it fails."""
        chan = Channel(reader, writer)

        async def reply_error(error: AgentError) -> None:
            if not chan.sent:  # once a reply went out, the stream just ends
                await chan.send_json(error.to_reply())

        try:
            try:
                request = Request(await chan.recv_json())
                await self.handlers[request.op](chan, request)
            except AgentError as exc:
                await reply_error(exc)
            except (EOFError, ConnectionError):
                raise
            except Exception as exc:
                log.exception("internal error")
                await reply_error(AgentError("internal", f"{type(exc).__name__}: {exc}"))
        except (EOFError, ConnectionError):
            pass  # the peer went away
        except asyncio.CancelledError:
            pass  # agent shutdown; this is the connection task's outermost frame, nobody awaits it
        finally:
            chan.close()

    # -- processes ----------------------------------------------------------------------------

    async def op_ping(self, chan: Channel, req: Request) -> None:
        await chan.send_json({"ok": True, "version": VERSION})

    async def op_exec(self, chan: Channel, req: Request) -> None:
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
        listener = Listener()
        process = self.processes.spawn(spec, listener)
        await _stream(chan, process, listener)

    async def op_attach(self, chan: Channel, req: Request) -> None:
        pid = req.integer("pid")
        listener = Listener()
        found = self.processes.attach(pid, listener)
        if isinstance(found, Exit):
            await chan.send_json({"ok": True, "pid": pid})
            await chan.send_json(found.to_event())
        else:
            await _stream(chan, found, listener)

    async def op_stdin(self, chan: Channel, req: Request) -> None:
        pid, eof = req.integer("pid"), req.flag("eof", False)
        try:
            data = base64.b64decode(req.text("data", ""), validate=True)
        except (binascii.Error, ValueError):
            raise AgentError("invalid", "stdin: data must be base64") from None
        await self.processes.get(pid).write_stdin(data, eof)
        await chan.send_json({"ok": True})

    async def op_signal(self, chan: Channel, req: Request) -> None:
        pid, sig = req.integer("pid"), req.integer("signal")
        if sig not in signal.valid_signals():
            raise AgentError("invalid", f"signal: {sig} is not a signal number")
        self.processes.get(pid).signal(sig)
        await chan.send_json({"ok": True})

    async def op_resize(self, chan: Channel, req: Request) -> None:
        pid = req.integer("pid")
        cols, rows = _pty_size({"cols": req.integer("cols"), "rows": req.integer("rows")}) or (0, 0)
        self.processes.get(pid).resize(cols, rows)
        await chan.send_json({"ok": True})

    async def op_processes(self, chan: Channel, req: Request) -> None:
        running = [p.info() for p in self.processes.running.values()]
        await chan.send_json({"ok": True, "processes": running})

    # -- files --------------------------------------------------------------------------------

    async def op_stat(self, chan: Channel, req: Request) -> None:
        user = _user(req)
        entry = await self.fs.run(user, files.entry, user.resolve(req.path()))
        await chan.send_json({"ok": True, "entry": entry})

    async def op_list(self, chan: Channel, req: Request) -> None:
        user = _user(req)
        path = user.resolve(req.path())
        depth = req.integer("depth", 1)
        if depth < 1:
            raise AgentError("invalid", "list: depth must be >= 1")
        entries = await self.fs.run(user, files.list_entries, path, depth)
        await chan.send_json({"ok": True, "entries": entries})

    async def op_read(self, chan: Channel, req: Request) -> None:
        user = _user(req)
        path = user.resolve(req.path())
        fd, entry = await self.fs.run(user, files.open_for_read, path)
        try:
            await chan.send_json({"ok": True, "entry": entry})
            try:
                while chunk := await self.fs.run(user, files.read_chunk, fd, path):
                    await chan.send(DATA, chunk)
            except AgentError as exc:  # mid-stream: a JSON error frame instead of END
                await chan.send_json(exc.to_reply())
                return
            await chan.send(END)
        finally:
            os.close(fd)

    async def op_write(self, chan: Channel, req: Request) -> None:
        writer: files.FileWriter | None = None
        try:  # every error, a bad user or path too, is answered after the DATA frames are drained
            user = _user(req)
            path = user.resolve(req.path())
            mode = None if req.fields.get("mode") is None else req.integer("mode")
            if mode is not None and not 0 <= mode <= 0o7777:
                raise AgentError("invalid", "write: mode must be within 0..0o7777")
            writer = await self.fs.run(user, files.FileWriter, path, mode)
            while (frame := await chan.recv())[0] != END:
                if frame[0] != DATA:
                    raise AgentError("invalid", "write: expected DATA or END frames after the request")
                await self.fs.run(user, writer.write, frame[1])
            entry = await self.fs.run(user, writer.commit)
        except AgentError as exc:
            if writer is not None:
                self.fs.submit(user, writer.abort)
            await chan.send_json(exc.to_reply())
            await chan.discard_until_end()  # so closing leaves nothing unread for the client
            return
        except BaseException:
            if writer is not None:
                self.fs.submit(user, writer.abort)  # no awaiting here: we may be being cancelled
            raise
        await chan.send_json({"ok": True, "entry": entry})

    async def op_mkdir(self, chan: Channel, req: Request) -> None:
        user = _user(req)
        created = await self.fs.run(user, files.make_dirs, user.resolve(req.path()))
        await chan.send_json({"ok": True, "created": created})

    async def op_remove(self, chan: Channel, req: Request) -> None:
        user = _user(req)
        await self.fs.run(user, files.remove, user.resolve(req.path()))
        await chan.send_json({"ok": True})

    async def op_rename(self, chan: Channel, req: Request) -> None:
        user = _user(req)
        src, dst = user.resolve(req.path("src")), user.resolve(req.path("dst"))
        await chan.send_json({"ok": True, "entry": await self.fs.run(user, files.rename, src, dst)})

    async def op_watch(self, chan: Channel, req: Request) -> None:
        user = _user(req)
        path = user.resolve(req.path())
        watch = await self.fs.run(user, Watch, path, req.flag("recursive", False), self.fs, user)
        try:
            await chan.send_json({"ok": True})

            async def forward() -> None:
                while not watch.ended:
                    for event in await watch.next_events():
                        await chan.send_json(event)

            await _until_peer_closes(chan, forward())
        finally:
            watch.close()


    async def op_copy_in(self, chan: Channel, req: Request) -> None:
        items = req.fields.get("items")
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise AgentError("invalid", "copy_in: items must be a list of objects")
        chmod = None if req.fields.get("chmod") is None else req.integer("chmod")
        if chmod is not None and not 0 <= chmod <= 0o7777:
            raise AgentError("invalid", "copy_in: chmod must be within 0..0o7777")
        root = resolve_user("root")
        written = await self.fs.run(root, copyin.copy_in, items, req.optional_text("chown"), chmod)
        await chan.send_json({"ok": True, "written": written})

    async def op_port_open(self, chan: Channel, req: Request) -> None:
        port = req.integer("port")
        if not 1 <= port <= 65535:
            raise AgentError("invalid", "port_open: port must be within 1..65535")
        await chan.send_json({"ok": True, "open": await _accepts(port)})


async def _accepts(port: int) -> bool:
    for host in ("127.0.0.1", "::1"):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except (OSError, TimeoutError):
            continue
        writer.close()
        return True
    return False


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


async def _stream(chan: Channel, process: Process, listener: Listener) -> None:
    """Reply with the pid, then forward the listener's output and exit until either side ends."""
    try:
        await chan.send_json({"ok": True, "pid": process.pid})

        async def forward() -> None:
            while True:
                item = await listener.queue.get()
                if isinstance(item, Exit):
                    await chan.send_json(item.to_event())
                    return
                await chan.send(*item)

        await _until_peer_closes(chan, forward())
    finally:
        process.listeners.discard(listener)
        listener.close()


async def _until_peer_closes(chan: Channel, work: Coroutine[Any, Any, None]) -> None:
    """Run `work` until it ends or the peer closes the connection (which detaches the caller)."""
    task = asyncio.ensure_future(work)
    peer = asyncio.ensure_future(chan.discard_until_closed())
    try:
        await asyncio.wait({task, peer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        peer.cancel()
        await asyncio.gather(task, peer, return_exceptions=True)
    if not task.cancelled():
        task.result()  # re-raise what went wrong while forwarding


# -- process entry point ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corral-agent", description="Corral in-sandbox agent.")
    channel = parser.add_mutually_exclusive_group(required=True)
    channel.add_argument("--listen-fd", type=int, help="inherited listening unix socket")
    channel.add_argument(
        "--control-fd", type=int, help="inherited connected unix socket; each connection arrives on it as an fd"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="corral-agent: %(levelname)s %(message)s")
    donated = args.control_fd is not None
    fd = args.control_fd if donated else args.listen_fd
    try:
        sock = _channel_socket(fd, listening=not donated)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    _close_stray_fds(keep=fd)
    # Otherwise sandbox root (same uid, same capabilities) could rewrite the agent through
    # /proc/<pid>/mem until the first file operation as another user happens to clear the flag.
    libc.set_not_dumpable()
    if os.geteuid() != 0:
        log.warning("running as uid %d, not root: processes and file operations only work as this user", os.geteuid())
    os.umask(0o022)
    asyncio.run(serve(sock, donated=donated))
    return 0


async def serve(sock: socket.socket, donated: bool = False) -> None:
    """Serve until SIGTERM/SIGINT (or, with donated connections, the control socket's end), then
    kill and reap every process the agent started."""
    loop = asyncio.get_running_loop()
    agent = Agent()
    agent.processes.install(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if donated:
        server: asyncio.AbstractServer | None = None
        accepting = loop.create_task(_serve_donated(sock, agent.handle))
        accepting.add_done_callback(lambda _: stop.set())
    else:
        server = await asyncio.start_unix_server(agent.handle, sock=sock)
    try:
        await stop.wait()
    finally:
        if server is not None:
            server.close()
        else:
            accepting.cancel()
        await agent.processes.shutdown()
        # file workers stay up: cancelled writes still queue their clean-up while asyncio.run winds
        # down, and interpreter exit waits for the queued work (as it would for asyncio's executor)


async def _serve_donated(control: socket.socket, handle: Callable[..., Awaitable[None]]) -> None:
    """Accept connections the host donates: each message on ``control`` carries connected sockets
    (SCM_RIGHTS), each served like an accepted connection. Returns when the host closes ``control``
    (the server is gone, so the sandbox should end too)."""
    loop = asyncio.get_running_loop()
    control.setblocking(False)
    tasks: set[asyncio.Task[None]] = set()
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(control, 64, 16, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            readable = loop.create_future()
            loop.add_reader(control, readable.set_result, None)
            try:
                await readable
            finally:
                loop.remove_reader(control)
            continue
        if not msg and not fds:
            return
        for fd in fds:
            conn = socket.socket(fileno=fd)
            if conn.family != socket.AF_UNIX or conn.type != socket.SOCK_STREAM:
                conn.close()  # only the host sends here; anything else is dropped
                continue
            reader, writer = await asyncio.open_unix_connection(sock=conn)
            task = loop.create_task(handle(reader, writer))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


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
            log.warning("closed inherited fd %d", fd)
