"""The machinery both faces share, without I/O: ``Call`` (one request and how to read its answer).

A request builder (``_calls``) returns a ``Call``; the sync and async faces only send it and hand
``call.result(status, body)`` the answer, so what is sent and how answers are read is written
once and unit-tested without a server. Also here: upload bodies, stream timeouts and
``dualmethod`` (methods callable on an instance or on the class).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Generic, TypeVar

from ._errors import ServerException, error_for_status, prefix

T = TypeVar("T")

CHUNK_SIZE = 256 * 1024
STREAM_MARGIN = 30.0
"""Seconds a command stream may stay silent beyond the command's own timeout before the SDK gives up."""
NDJSON = "application/x-ndjson"
_OK = frozenset({200, 201, 204})


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request and how to read its answer."""

    method: str
    path: str
    operation: str
    """What the call does, for messages: ``"get info"``, ``"read '/etc/hosts'"``."""
    sandbox_id: str | None
    parse: Callable[[int, bytes], T]
    params: tuple[tuple[str, str], ...] = ()
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    accept: frozenset[int] = _OK

    def result(self, status: int, body: bytes) -> T:
        """The value of an answer, or raise the mapped SDK exception."""
        self.check(status, body)
        return self.parse(status, body)

    def check(self, status: int, body: bytes = b"") -> None:
        """Raise the mapped SDK exception unless ``status`` is accepted (streams read ``body`` only then)."""
        if status not in self.accept:
            raise error_for_status(status, body, sandbox_id=self.sandbox_id, operation=self.operation)

    def failed(self, status: int) -> bool:
        return status not in self.accept


def decode_json(body: bytes, sandbox_id: str | None, operation: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ServerException(
            f"{prefix(sandbox_id)}{operation}: the server's answer is not JSON: {body[:200]!r}",
            sandbox_id=sandbox_id,
        ) from exc


def stream_read_timeout(timeout: float | None) -> float | None:
    """HTTP read timeout for a command stream: none for a command without limit, else limit + margin."""
    return timeout + STREAM_MARGIN if timeout else None


# --- upload bodies ---------------------------------------------------------------------------------


def content(data: str | bytes | bytearray | memoryview | IO[Any]) -> bytes | IO[Any]:
    """What to upload: text is UTF-8 encoded, bytes pass through, a file object is streamed by the face."""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if hasattr(data, "read"):
        return data
    raise TypeError(f"cannot upload {type(data).__name__}: pass str, bytes or a readable file object")


def file_chunks(fileobj: IO[Any]) -> Iterator[bytes]:
    """Read a file object in ``CHUNK_SIZE`` pieces (text files are UTF-8 encoded)."""
    while chunk := fileobj.read(CHUNK_SIZE):
        yield chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)


# --- methods callable on an instance or on the class -----------------------------------------------


class dualmethod(Generic[T]):
    """A method that works on an instance (``sbx.kill()``) and on the class (``Sandbox.kill(id)``).

    Decorate the instance variant, then register the class variant with ``@<name>.classvariant``,
    as E2B allows both spellings. Each variant keeps its own signature for ``inspect``.
    """

    def __init__(self, instance_fn: Callable[..., Any]) -> None:
        self._instance_fn = instance_fn
        self._class_fn: Callable[..., Any] | None = None
        self.__doc__ = instance_fn.__doc__

    def classvariant(self, class_fn: Callable[..., Any]) -> dualmethod[T]:
        if class_fn.__doc__ is None:
            class_fn.__doc__ = (
                f"{self._instance_fn.__doc__}\n\nClass-level call: the sandbox is named by ``sandbox_id``."
            )
        self._class_fn = class_fn
        return self

    def __get__(self, obj: object | None, owner: type | None = None) -> Callable[..., Any]:
        if obj is not None:
            return self._instance_fn.__get__(obj, owner)
        assert self._class_fn is not None, "dualmethod without a class variant"
        return self._class_fn.__get__(owner, owner)
