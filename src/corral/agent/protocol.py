"""Wire protocol shared by the agent and its client: frames, operations, errors and events.

This module is the authoritative list of agent operations (`OPS`) and error kinds (`ERROR_KINDS`);
docs/agent-protocol.md describes the same thing in prose. Stdlib only: it runs inside the sandbox.

Exceptions::

    AgentError(kind, message)      a reply with ok=false, or a malformed frame/request
     └── AgentUnavailable          host side only: the agent can't be reached, or the connection
                                   dropped mid-operation (kind "unavailable", never on the wire)

Nothing here imports more than json/struct/errno/math: the agent starts with it (see the server's
docstring), and the host-side asyncio channel lives in client.py.

Details the prose leaves open, as implemented:
- A JSON null field means "absent" (the default applies). Replies are frames too, so a reply over
  1 MiB (e.g. a huge `list`) fails with `too_large`; `list` also stops at 20000 entries.
- `read`: an error after the first reply arrives as a JSON error frame in place of END.
- `write`: an early error reply may come before the client finished sending; the agent then drops
  frames up to END (clients should stop sending once a reply arrived). A symlink at the target is
  written through. `write`, `mkdir`, `rename` create missing parents owned by `user`.
- `stdin` with eof on a PTY sends ^D instead of closing the terminal.
- `watch` ends (the agent closes the stream) when the watched directory itself is removed or moved;
  a directory moved out of a recursive watch stops being watched; temp files of writes are hidden.
- `remove` accepts an optional `user` (for relative paths) and refuses to remove `/`.
- A connection whose exchange completed (`REUSABLE`) may carry another request; the agent closes
  one that stays idle for 15 s (`KEEP_IDLE` in the server).
"""

from __future__ import annotations

import errno
import json
import math
import socket
import struct

TYPE_CHECKING = False  # typing is not imported at run time: the agent's start-up cost
if TYPE_CHECKING:
    from typing import Any, Literal

VERSION = 1
MAX_PAYLOAD = 1 << 20
HEADER = struct.Struct(">Ic")

# Frame kinds (one byte after the length).
JSON = b"J"
STDOUT = b"O"
STDERR = b"E"
DATA = b"D"
END = b"Z"
KINDS = frozenset({JSON, STDOUT, STDERR, DATA, END})

OPS: dict[str, str] = {
    "ping": "Liveness check; replies with the protocol version.",
    "exec": "Start a process on pipes or a PTY; streams its output, then its exit event.",
    "attach": "Stream a running process's output from now on (no replay), or a finished one's exit.",
    "stdin": "Write base64 bytes to a process's stdin; eof closes it (sends ^D on a PTY).",
    "signal": "Send a signal to a process's whole process group.",
    "resize": "Set a PTY process's window size (the kernel sends SIGWINCH).",
    "processes": "List the running processes the agent started.",
    "stat": "Describe one path without following a final symlink.",
    "list": "List a directory's entries down to a depth, without following symlinks.",
    "read": "Stream a regular file's bytes as DATA frames ended by END.",
    "write": "Atomically replace a file with the DATA frames that follow the request.",
    "mkdir": "Create a directory and its missing parents, owned by the user.",
    "remove": "Remove a file, symlink or directory tree (never following symlinks).",
    "rename": "Move a path, creating the destination's missing parents.",
    "watch": "Stream create/write/remove/rename/chmod events under a directory.",
    "copy_in": "Template builds: copy staged files from /.corral/build into the image as root (COPY/ADD).",
    "port_open": "Whether something accepts TCP connections on a loopback port (template readiness).",
    "relay": "Connect to a loopback port inside; after the ok reply the connection carries its raw bytes.",
}

# Ops whose exchange is one request and one reply. After such a reply (an error reply too), and after
# exec's or attach's exit event, the connection may carry the next request; read, write, watch and
# relay end theirs.
REUSABLE = frozenset(OPS) - {"exec", "attach", "read", "write", "watch", "relay"}

ERROR_KINDS = (
    "not_found",
    "exists",
    "not_dir",
    "is_dir",
    "permission",
    "invalid",
    "no_space",
    "too_large",
    "internal",
)

_ERRNO_KINDS = {
    errno.ENOENT: "not_found",
    errno.ESRCH: "not_found",
    errno.EEXIST: "exists",
    errno.ENOTEMPTY: "exists",
    errno.ENOTDIR: "not_dir",
    errno.EISDIR: "is_dir",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EROFS: "permission",
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EFBIG: "too_large",
    errno.ENAMETOOLONG: "invalid",
    errno.ELOOP: "invalid",
    errno.EINVAL: "invalid",
    errno.EXDEV: "invalid",
    errno.EBUSY: "invalid",
}


def recv_fds(sock: socket.socket, bufsize: int, maxfds: int) -> tuple[bytes, list[int]]:
    """A message and the descriptors passed with it (up to ``maxfds``), close-on-exec. CPython 3.11's
    ``socket.recv_fds`` drops its flags argument: MSG_CMSG_CLOEXEC given there was lost, and each
    descriptor stayed inheritable by whatever the receiver started next."""
    space = socket.CMSG_SPACE(maxfds * 4) if maxfds else 0
    msg, ancdata, _, _ = sock.recvmsg(bufsize, space, socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4])
    return msg, fds


class AgentError(Exception):
    """A failed operation, carrying one of `ERROR_KINDS` and a human-readable message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message

    def to_reply(self) -> dict[str, Any]:
        return {"ok": False, "error": {"kind": self.kind, "message": self.message}}


class AgentUnavailable(AgentError):
    """The agent could not be reached, or its connection dropped before the operation ended."""

    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


def error_from_os(exc: OSError, path: str | None = None) -> AgentError:
    """Map an OSError to the protocol's error kinds (ENOSPC and EDQUOT become no_space)."""
    kind = _ERRNO_KINDS.get(exc.errno or 0, "internal")
    where = path if path is not None else exc.filename
    reason = exc.strerror or str(exc)
    return AgentError(kind, f"{reason}: {where}" if where is not None else reason)


class Frozen:
    """A small immutable record: its fields are the subclass's __match_args__ (and __slots__), set
    in that order by __init__ (not `dataclasses`: it imports `inspect`, which costs the agent's
    start-up more than all of this)."""

    __match_args__: tuple[str, ...] = ()
    __slots__ = ()

    def __init__(self, *values: object) -> None:
        for name, value in zip(self.__match_args__, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__match_args__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__)
        return f"{type(self).__name__}({fields})"


class Output(Frozen):
    """A chunk of process output, exactly as produced (PTY output is reported as stdout)."""

    __match_args__ = ("stream", "data")
    __slots__ = __match_args__
    stream: Literal["stdout", "stderr"]
    data: bytes

    def __init__(self, stream: Literal["stdout", "stderr"], data: bytes) -> None:
        super().__init__(stream, data)


class Exit(Frozen):
    """How a process ended: exit_code is 128+signal for signal deaths, like a shell's $?."""

    __match_args__ = ("exit_code", "signal", "error")
    __slots__ = __match_args__
    exit_code: int
    signal: int | None
    error: str | None

    def __init__(self, exit_code: int, signal: int | None, error: str | None) -> None:
        super().__init__(exit_code, signal, error)

    def to_event(self) -> dict[str, Any]:
        return {"event": "exit", "exit_code": self.exit_code, "signal": self.signal, "error": self.error}

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> Exit:
        code, sig, error = event.get("exit_code"), event.get("signal"), event.get("error")
        if not _is_int(code) or not (sig is None or _is_int(sig)) or not (error is None or isinstance(error, str)):
            raise AgentError("internal", f"malformed exit event from agent: {event!r:.200}")
        return cls(code, sig, error)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_unicode(text: str) -> bool:
    """Whether `text` is valid Unicode. JSON's escapes can spell lone surrogates ("\\ud800"), which
    parse into a str that no path, argument or environment variable can be encoded from."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def decode_json(payload: bytes) -> dict[str, Any]:
    """Parse one JSON object payload; anything else is an `invalid` AgentError."""
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise AgentError("invalid", f"frame is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise AgentError("invalid", "JSON frame must hold an object")
    return value


def parse_header(header: bytes) -> tuple[int, bytes]:
    """(payload length, kind) of a frame header; AgentError if it is malformed (both sides use it)."""
    length, kind = HEADER.unpack(header)
    if kind not in KINDS:
        raise AgentError("invalid", f"unknown frame kind {kind!r}")
    if length > MAX_PAYLOAD:
        raise AgentError("too_large", f"frame length {length} exceeds {MAX_PAYLOAD}")
    if kind == END and length:
        raise AgentError("invalid", "END frame must be empty")
    return length, kind


class SyncChannel:
    """The agent's side of one framed connection: a blocking socket, served by one thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = False  # whether any frame went out yet

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: bytes, payload: bytes = b"") -> None:
        if len(payload) > MAX_PAYLOAD:
            raise AgentError("too_large", f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
        self.sent = True
        header = HEADER.pack(len(payload), kind)
        if len(payload) < 65536:
            self.sock.sendall(header + payload)
        else:  # no copy of a large payload
            self.sock.sendall(header)
            self.sock.sendall(payload)

    def send_json(self, message: dict[str, Any]) -> None:
        self.send(JSON, json.dumps(message, separators=(",", ":")).encode())

    def recv(self) -> tuple[bytes, bytes]:
        """Next frame; raises EOFError at end of stream, AgentError if malformed."""
        length, kind = parse_header(self._exactly(HEADER.size))
        return kind, self._exactly(length) if length else b""

    def recv_json(self) -> dict[str, Any]:
        kind, payload = self.recv()
        if kind != JSON:
            raise AgentError("invalid", f"expected a JSON frame, got {kind!r}")
        return decode_json(payload)

    def discard(self) -> bool:
        """Read and drop what the peer sent (call when readable); False once it closed its side."""
        return bool(self.sock.recv(65536))

    def discard_until_end(self) -> None:
        """Drop frames up to an END frame, so closing leaves nothing unread (no ECONNRESET)."""
        try:
            while self.recv()[0] != END:
                pass
        except (AgentError, EOFError, ConnectionError):
            pass

    def close(self) -> None:
        """Close, first dropping what the peer already sent: closing a unix socket with unread data
        resets the connection, and the peer could lose the reply it has not read yet."""
        try:
            for _ in range(64):  # bounded: a peer that keeps sending is just reset
                if not self.sock.recv(65536, socket.MSG_DONTWAIT):
                    break
        except OSError:  # nothing more (EAGAIN), or the connection is gone already
            pass
        self.sock.close()

    def _exactly(self, size: int) -> bytes:
        """`size` bytes (at most one header or MAX_PAYLOAD: checked before), or EOFError."""
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = self.sock.recv_into(view[got:])
            if not n:
                raise EOFError(f"connection closed after {got} of {size} bytes")
            got += n
        return bytes(buf)


class Request:
    """Typed, validating access to a request's fields; a bad field is an `invalid` AgentError."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        op = fields.get("op")
        if not isinstance(op, str) or op not in OPS:
            raise AgentError("invalid", f"unknown op {op!r:.100}")
        self.op = op

    def _get(self, name: str, default: Any, types: tuple[type, ...], what: str) -> Any:
        value = self.fields.get(name)
        if value is None:  # absent and null both mean "use the default"
            if default is _REQUIRED:
                raise AgentError("invalid", f"{self.op}: field {name!r} is required")
            return default
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise AgentError("invalid", f"{self.op}: field {name!r} must be {what}")
        return value

    def text(self, name: str, default: str | None = None) -> str:
        value = self._get(name, _REQUIRED if default is None else default, (str,), "a string")
        if "\0" in value:
            raise AgentError("invalid", f"{self.op}: field {name!r} contains a NUL byte")
        if not is_unicode(value):
            raise AgentError("invalid", f"{self.op}: field {name!r} is not valid Unicode (a lone surrogate)")
        return value

    def optional_text(self, name: str) -> str | None:
        if self.fields.get(name) is None:
            return None
        return self.text(name)

    def path(self, name: str = "path") -> str:
        value = self.text(name)
        if not value:
            raise AgentError("invalid", f"{self.op}: field {name!r} must not be empty")
        return value

    def integer(self, name: str, default: int | None = None) -> int:
        return self._get(name, _REQUIRED if default is None else default, (int,), "an integer")

    def number(self, name: str, default: float) -> float:
        value = self._get(name, default, (int, float), "a number")
        try:
            value = float(value)
        except OverflowError:  # a JSON integer beyond a float's range
            value = math.inf
        if not math.isfinite(value):
            raise AgentError("invalid", f"{self.op}: field {name!r} must be finite")
        return value

    def flag(self, name: str, default: bool) -> bool:
        return self._get(name, default, (bool,), "a boolean")

    def texts(self, name: str) -> list[str]:
        value = self._get(name, _REQUIRED, (list,), "a list of strings")
        if not all(isinstance(item, str) and "\0" not in item and is_unicode(item) for item in value):
            raise AgentError("invalid", f"{self.op}: field {name!r} must be a list of strings without NUL")
        return value

    def text_map(self, name: str) -> dict[str, str]:
        value = self.fields.get(name)
        if value is None:
            return {}
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v and is_unicode(k + v)
            for k, v in value.items()
        )
        if not ok:
            raise AgentError("invalid", f"{self.op}: field {name!r} must map names to strings")
        return value

    def optional_object(self, name: str) -> dict[str, Any] | None:
        value = self.fields.get(name)
        if value is not None and not isinstance(value, dict):
            raise AgentError("invalid", f"{self.op}: field {name!r} must be an object or null")
        return value


_REQUIRED: Any = object()
