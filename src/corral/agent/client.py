"""Host-side asyncio client for the agent (stdlib only): one connection per operation at a time.

`AgentClient` holds no connection itself, so one instance may be used by many tasks of one event
loop at once. Given a `ChannelPool`, a connection whose exchange completed is kept for the next
operation on that agent (the agent's side: protocol.REUSABLE). Streams (`ProcessStream`,
`FileReader`, `Watcher`) own their connection and belong to one task. Calls have no timeout of
their own: wrap them in `asyncio.timeout` where needed.

Replies come from inside a sandbox and are treated as untrusted: frames are size-checked by
`Channel` and malformed replies raise `AgentError("internal", ...)`. Failures to reach the agent,
or a connection dropping before an operation completes, raise `AgentUnavailable`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any

from .protocol import (
    DATA,
    END,
    HEADER,
    JSON,
    MAX_PAYLOAD,
    REUSABLE,
    STDERR,
    STDOUT,
    AgentError,
    AgentUnavailable,
    Exit,
    Output,
    decode_json,
    parse_header,
)

WRITE_CHUNK = 256 * 1024
REUSE_SECONDS = 5.0  # an idle connection is reused this long (the agent waits 15 s for a request: KEEP_IDLE)
IDLE_PER_AGENT = 4


class Channel:
    """One framed connection to an agent. One task sends and one task receives at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.replied = False  # whether any byte came back since the last `reused()`

    def reused(self) -> Channel:
        self.replied = False
        return self

    def open(self) -> bool:
        """Neither side has closed it, nor has the agent's end reached us (as far as read yet)."""
        return not self._writer.is_closing() and not self._reader.at_eof() and self._reader.exception() is None

    async def send(self, kind: bytes, payload: bytes = b"") -> None:
        if len(payload) > MAX_PAYLOAD:
            raise AgentError("too_large", f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        header = HEADER.pack(len(payload), kind)
        if len(payload) < 65536:  # one write (one syscall, one wake-up of the agent), as the agent does
            self._writer.write(header + payload)
        else:  # no copy of a large payload
            self._writer.write(header)
            self._writer.write(payload)
        await self._writer.drain()

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.send(JSON, json.dumps(message, separators=(",", ":")).encode())

    async def recv(self) -> tuple[bytes, bytes]:
        """Next frame; raises asyncio.IncompleteReadError at end of stream, AgentError if malformed."""
        try:
            header = await self._reader.readexactly(HEADER.size)
        except asyncio.IncompleteReadError as exc:
            self.replied = self.replied or bool(exc.partial)
            raise
        self.replied = True
        length, kind = parse_header(header)
        return kind, await self._reader.readexactly(length) if length else b""

    async def recv_json(self) -> dict[str, Any]:
        kind, payload = await self.recv()
        if kind != JSON:
            raise AgentError("invalid", f"expected a JSON frame, got {kind!r}")
        return decode_json(payload)

    def close(self) -> None:
        self._writer.close()

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):  # the peer may be gone already
            await self._writer.wait_closed()


class ChannelPool:
    """Idle connections to agents, by agent, for one event loop (a server's). A connection whose
    exchange completed is kept `REUSE_SECONDS` for the next operation on that agent: a new one costs
    a socket and a connect here, an accept and a thread hand-off in the agent."""

    def __init__(self) -> None:
        self._idle: dict[str, list[tuple[Channel, asyncio.TimerHandle]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def take(self, agent: str) -> Channel | None:
        """An idle connection to `agent` that still looks open, or None."""
        if asyncio.get_running_loop() is not self._loop:
            return None
        idle = self._idle.get(agent)
        while idle:
            chan, expiry = idle.pop()
            expiry.cancel()
            if not idle:
                del self._idle[agent]
            if chan.open():
                return chan.reused()
            chan.close()
        return None

    def put(self, agent: str, chan: Channel) -> None:
        """Keep `chan`, whose last exchange completed, for the next operation (or close it)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop and (self._loop is None or self._loop.is_closed()):
            self._loop, self._idle = loop, {}  # another run's connections went with its loop
        idle = self._idle.setdefault(agent, [])
        if loop is not self._loop or len(idle) >= IDLE_PER_AGENT or not chan.open():
            if not idle:
                del self._idle[agent]
            chan.close()
            return
        idle.append((chan, loop.call_later(REUSE_SECONDS, self._expire, agent, chan)))

    def idle(self, agent: str) -> int:
        return len(self._idle.get(agent, ()))

    def _expire(self, agent: str, chan: Channel) -> None:
        idle = self._idle.get(agent, [])
        idle[:] = [entry for entry in idle if entry[0] is not chan]
        if not idle:
            self._idle.pop(agent, None)
        chan.close()


@contextlib.contextmanager
def _transport_errors(what: str) -> Iterator[None]:
    """Turn a dropped or reset connection into AgentUnavailable."""
    try:
        yield
    except (EOFError, ConnectionError) as exc:
        raise AgentUnavailable(f"connection to agent lost during {what}: {exc!r}") from exc


def _check(reply: dict[str, Any]) -> dict[str, Any]:
    """Raise the AgentError an ok=false reply carries; return an ok reply."""
    if reply.get("ok") is True:
        return reply
    error = reply.get("error")
    if reply.get("ok") is False and isinstance(error, dict):
        kind, message = error.get("kind"), error.get("message")
        if isinstance(kind, str) and isinstance(message, str):
            raise AgentError(kind, message)
    raise AgentError("internal", f"malformed reply from agent: {reply!r:.200}")


def _field(reply: dict[str, Any], name: str, kind: type) -> Any:
    value = reply.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise AgentError("internal", f"malformed reply from agent: {name!r} is not {kind.__name__}")
    return value


class AgentClient:
    """Operations on one sandbox's agent, reached through its listening socket's path."""

    def __init__(self, socket_path: str, connect_timeout: float = 5.0, pool: ChannelPool | None = None) -> None:
        self.socket_path = socket_path  # also names the agent in `pool`
        self.connect_timeout = connect_timeout
        self.pool = pool

    async def _connect(self) -> Channel:
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_unix_connection(self.socket_path)
        except (OSError, TimeoutError) as exc:
            raise AgentUnavailable(f"cannot reach agent at {self.socket_path}: {exc!r}") from exc
        return Channel(reader, writer)

    async def _connect_socket(self) -> socket.socket:
        """A raw (non-blocking) connection to the agent, for callers that take over its bytes."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await asyncio.get_running_loop().sock_connect(sock, self.socket_path)
        except (OSError, TimeoutError) as exc:
            sock.close()
            raise AgentUnavailable(f"cannot reach agent at {self.socket_path}: {exc!r}") from exc
        return sock

    async def _open(self, request: dict[str, Any]) -> tuple[Channel, dict[str, Any]]:
        """Send `request` on an idle connection or a new one; the channel with the (ok) reply."""
        idle = self.pool.take(self.socket_path) if self.pool is not None else None
        if idle is not None:
            try:
                return await self._exchange(idle, request)
            except AgentUnavailable:
                if idle.replied:
                    raise
                # it ended before any reply: the agent had closed it idle, without reading the request
        return await self._exchange(await self._connect(), request)

    async def _exchange(self, chan: Channel, request: dict[str, Any]) -> tuple[Channel, dict[str, Any]]:
        try:
            with _transport_errors(request["op"]):
                await chan.send_json(request)
                reply = _check(await chan.recv_json())
        except BaseException:
            chan.close()
            raise
        return chan, reply

    def _completed(self, chan: Channel) -> None:
        """`chan`'s exchange completed: keep it for the next operation, if there is a pool."""
        if self.pool is not None:
            self.pool.put(self.socket_path, chan)
        else:
            chan.close()

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        chan, reply = await self._open(request)
        if request["op"] in REUSABLE:
            self._completed(chan)
        else:
            await chan.aclose()
        return reply

    # -- processes ----------------------------------------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return await self._call({"op": "ping"})

    async def exec(
        self,
        cmd: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str = "user",
        stdin: bool = False,
        pty: dict[str, int] | None = None,
        tag: str | None = None,
        timeout: float = 0,
    ) -> ProcessStream:
        """Start `cmd`; the stream yields its output and exit. Closing the stream leaves it running."""
        request = {
            "op": "exec",
            "cmd": cmd,
            "env": env or {},
            "cwd": cwd,
            "user": user,
            "stdin": stdin,
            "pty": pty,
            "tag": tag,
            "timeout": timeout,
        }
        chan, reply = await self._open(request)
        return ProcessStream(chan, _field(reply, "pid", int), self._completed)

    async def exec_shell(self, cmd: list[str], **options: Any) -> ProcessStream:
        """``exec`` of a ``/bin/bash [-l] -c CMD``; in a sandbox without bash (an image such as busybox or
        alpine), ``/bin/sh -c CMD``. Any other command, or any other failure, as ``exec``."""
        try:
            return await self.exec(cmd, **options)
        except AgentError as exc:
            if not (cmd[:1] == ["/bin/bash"] and cmd[1:-1] in (["-l", "-c"], ["-c"])
                    and exc.kind == "not_found" and exc.message.endswith(": /bin/bash")):
                raise
            return await self.exec(["/bin/sh", "-c", cmd[-1]], **options)

    async def attach(self, pid: int) -> ProcessStream:
        """Follow a process's output from now on; a finished one yields just its exit."""
        chan, reply = await self._open({"op": "attach", "pid": pid})
        return ProcessStream(chan, _field(reply, "pid", int), self._completed)

    async def stdin(self, pid: int, data: bytes, eof: bool = False) -> None:
        """Write `data` to the process's stdin (returns once written), then close it if `eof`."""
        step = MAX_PAYLOAD // 2  # base64 grows it by a third
        for start in range(0, len(data), step):
            chunk = base64.b64encode(data[start : start + step]).decode()
            last = start + step >= len(data)
            await self._call({"op": "stdin", "pid": pid, "data": chunk, "eof": eof and last})
        if not data:
            await self._call({"op": "stdin", "pid": pid, "data": "", "eof": eof})

    async def signal(self, pid: int, sig: int) -> None:
        await self._call({"op": "signal", "pid": pid, "signal": int(sig)})

    async def resize(self, pid: int, cols: int, rows: int) -> None:
        await self._call({"op": "resize", "pid": pid, "cols": cols, "rows": rows})

    async def processes(self) -> list[dict[str, Any]]:
        return _field(await self._call({"op": "processes"}), "processes", list)

    # -- files --------------------------------------------------------------------------------

    async def stat(self, path: str, user: str = "user") -> dict[str, Any]:
        return _field(await self._call({"op": "stat", "path": path, "user": user}), "entry", dict)

    async def list(self, path: str, depth: int = 1, user: str = "user") -> list[dict[str, Any]]:
        reply = await self._call({"op": "list", "path": path, "depth": depth, "user": user})
        return _field(reply, "entries", list)

    def read(self, path: str, user: str = "user") -> FileReader:
        """`async with client.read(p) as r:` then `r.entry` and `async for chunk in r`."""
        return FileReader(self, {"op": "read", "path": path, "user": user})

    async def write(
        self,
        path: str,
        chunks: AsyncIterable[bytes] | bytes,
        user: str = "user",
        mode: int | None = None,
    ) -> dict[str, Any]:
        """Replace `path` atomically with the bytes given; returns the new Entry."""
        chan = await self._connect()
        reply: asyncio.Future[dict[str, Any]] | None = None
        try:
            with _transport_errors("write"):
                await chan.send_json({"op": "write", "path": path, "user": user, "mode": mode})
                reply = asyncio.ensure_future(chan.recv_json())  # an error reply may come early
                with contextlib.suppress(ConnectionError):  # the agent stopped reading: see its reply
                    await _upload(chan, chunks, reply)
                return _field(_check(await reply), "entry", dict)
        finally:
            if reply is not None and not reply.done():
                reply.cancel()
            chan.close()

    async def mkdir(self, path: str, user: str = "user") -> bool:
        """Create `path` with its parents; False if it already was a directory."""
        return _field(await self._call({"op": "mkdir", "path": path, "user": user}), "created", bool)

    async def remove(self, path: str, user: str = "user") -> None:
        await self._call({"op": "remove", "path": path, "user": user})

    async def rename(self, src: str, dst: str, user: str = "user") -> dict[str, Any]:
        return _field(await self._call({"op": "rename", "src": src, "dst": dst, "user": user}), "entry", dict)

    async def copy_in(self, items: list[dict[str, Any]], chown: str | None = None, chmod: int | None = None) -> int:
        """Template builds: copy staged files (under /.corral/build) into the image, as its root."""
        reply = await self._call({"op": "copy_in", "items": items, "chown": chown, "chmod": chmod})
        return int(_field(reply, "written", int))

    async def port_open(self, port: int) -> bool:
        return bool(_field(await self._call({"op": "port_open", "port": port}), "open", bool))

    async def relay(self, port: int) -> socket.socket:
        """A connection to ``port`` on the sandbox's loopback, spliced by the agent: the returned
        socket carries the raw bytes. The reply is read frame-exactly, so nothing after it is lost.
        Raises AgentError ``not_found`` when nothing listens there."""
        loop = asyncio.get_running_loop()
        sock = await self._connect_socket()
        try:
            with _transport_errors("relay"):
                payload = json.dumps({"op": "relay", "port": port}).encode()
                await loop.sock_sendall(sock, HEADER.pack(len(payload), JSON) + payload)
                length, kind = parse_header(await _recv_exactly(sock, HEADER.size))
                if kind != JSON:
                    raise AgentError("invalid", f"relay: expected a JSON reply, got {kind!r}")
                _check(decode_json(await _recv_exactly(sock, length)))
        except BaseException:
            sock.close()
            raise
        return sock

    def watch(self, path: str, recursive: bool = False, user: str = "user") -> Watcher:
        """`async with client.watch(p) as w:` then `async for event in w` (dicts with op and name)."""
        return Watcher(self, {"op": "watch", "path": path, "recursive": recursive, "user": user})


async def _upload(chan: Channel, chunks: AsyncIterable[bytes] | bytes, reply: asyncio.Future[Any]) -> None:
    """Send DATA frames then END, stopping early if the agent already replied (with an error)."""

    async def pieces() -> AsyncIterator[bytes]:
        if isinstance(chunks, bytes | bytearray | memoryview):
            yield bytes(chunks)
            return
        async for chunk in chunks:
            yield chunk

    async for chunk in pieces():
        for start in range(0, len(chunk), WRITE_CHUNK):
            if reply.done():
                return
            await chan.send(DATA, chunk[start : start + WRITE_CHUNK])
    if not reply.done():
        await chan.send(END)


class ProcessStream:
    """A process's events on its own connection: `Output`s as produced, then one `Exit`.

    Iterate it once from one task. `close()` detaches: the process keeps running and can be
    re-attached with `AgentClient.attach`. If the connection drops before the exit event, iteration
    raises AgentUnavailable.
    """

    def __init__(self, chan: Channel, pid: int, completed: Callable[[Channel], None] | None = None) -> None:
        self.pid = pid
        self._chan = chan
        self._done = False
        self._completed = completed  # takes the connection once the exit came
        self._handed_on = False

    def __aiter__(self) -> ProcessStream:
        return self

    async def __anext__(self) -> Output | Exit:
        if self._done:
            raise StopAsyncIteration
        try:
            with _transport_errors(f"output of process {self.pid}"):
                kind, payload = await self._chan.recv()
        except BaseException:
            self._done = True
            self._chan.close()
            raise
        if kind == STDOUT:
            return Output("stdout", payload)
        if kind == STDERR:
            return Output("stderr", payload)
        self._done = True
        try:
            event = decode_json(payload) if kind == JSON else {}
            if event.get("event") != "exit":
                raise AgentError("internal", f"unexpected frame {kind!r} in the stream of process {self.pid}")
            result = Exit.from_event(event)
        except BaseException:
            self._chan.close()
            raise
        self._handed_on = True  # the connection is no longer this stream's
        (self._completed or Channel.close)(self._chan)
        return result

    async def wait(self) -> Exit:
        """Skip the remaining output and return the exit."""
        async for event in self:
            if isinstance(event, Exit):
                return event
        raise AgentError("internal", f"stream of process {self.pid} already consumed")

    async def close(self) -> None:
        self._done = True
        if not self._handed_on:
            await self._chan.aclose()

    async def __aenter__(self) -> ProcessStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class FileReader:
    """A file being read: `entry` once entered, then its bytes by iteration (not thread-safe)."""

    def __init__(self, client: AgentClient, request: dict[str, Any]) -> None:
        self._client = client
        self._request = request
        self._chan: Channel | None = None
        self._done = False
        self.entry: dict[str, Any] = {}

    async def __aenter__(self) -> FileReader:
        self._chan, reply = await self._client._open(self._request)
        self.entry = _field(reply, "entry", dict)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._chan is not None:
            await self._chan.aclose()

    def __aiter__(self) -> FileReader:
        return self

    async def __anext__(self) -> bytes:
        if self._chan is None:
            raise RuntimeError("use `async with client.read(path) as reader` before iterating")
        if self._done:
            raise StopAsyncIteration
        with _transport_errors(f"read of {self._request['path']}"):
            kind, payload = await self._chan.recv()
        if kind == DATA:
            return payload
        self._done = True
        if kind == END:
            raise StopAsyncIteration
        if kind == JSON:
            _check(decode_json(payload))  # a mid-stream error reply
        raise AgentError("internal", f"unexpected frame {kind!r} while reading {self._request['path']}")

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self])


class Watcher:
    """Events under a watched directory: dicts `{"event": "fs", "op": ..., "name": ...}`.

    Iteration stops when the agent ends the watch (the directory was removed) or the connection
    closes; leaving the `async with` block stops the watch.
    """

    def __init__(self, client: AgentClient, request: dict[str, Any]) -> None:
        self._client = client
        self._request = request
        self._chan: Channel | None = None

    async def __aenter__(self) -> Watcher:
        self._chan, _ = await self._client._open(self._request)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._chan is not None:
            await self._chan.aclose()

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._chan is None:
            raise RuntimeError("use `async with client.watch(path) as watcher` before iterating")
        try:
            kind, payload = await self._chan.recv()
        except (EOFError, ConnectionError):
            raise StopAsyncIteration from None
        event = decode_json(payload) if kind == JSON else {}
        if event.get("event") != "fs":
            raise AgentError("internal", f"unexpected frame in watch of {self._request['path']}")
        return event


async def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise EOFError("the agent closed the connection")
        data += chunk
    return data


class Donor:
    """The host end of an agent's control socket (``agent --control-fd``): each ``connect`` makes a
    socket pair and sends one end to the agent (SCM_RIGHTS), which serves it as an accepted
    connection. No path or address exists for anyone else to reach. The host never reads from it.
    Owned by one event loop; many clients may share one donor."""

    def __init__(self, control: socket.socket) -> None:
        control.setblocking(False)
        self.control = control
        self._waiting = asyncio.Lock()  # one writability waiter per fd and loop

    async def connect(self, timeout: float) -> Channel:
        mine = await self.connect_socket(timeout)
        try:
            reader, writer = await asyncio.open_unix_connection(sock=mine)
        except BaseException:
            mine.close()
            raise
        return Channel(reader, writer)

    async def connect_socket(self, timeout: float) -> socket.socket:
        """A donated connection as a raw non-blocking socket."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mine.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        socket.send_fds(self.control, [b"c"], [theirs.fileno()])
                        break
                    except (BlockingIOError, InterruptedError):
                        await self._writable()  # the agent is slow (or paused): queue full
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return mine

    async def _writable(self) -> None:
        async with self._waiting:
            loop = asyncio.get_running_loop()
            ready = loop.create_future()
            loop.add_writer(self.control, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_writer(self.control)

    def close(self) -> None:
        self.control.close()


class DonatedAgentClient(AgentClient):
    """An ``AgentClient`` whose connections are donated through a ``Donor`` (the gVisor backend)."""

    def __init__(self, donor: Donor, name: str, connect_timeout: float = 5.0, pool: ChannelPool | None = None) -> None:
        super().__init__(name, connect_timeout, pool)
        self.donor = donor

    async def _connect(self) -> Channel:
        try:
            return await self.donor.connect(self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise AgentUnavailable(f"cannot reach agent of {self.socket_path}: {exc!r}") from exc

    async def _connect_socket(self) -> socket.socket:
        try:
            return await self.donor.connect_socket(self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise AgentUnavailable(f"cannot reach agent of {self.socket_path}: {exc!r}") from exc
