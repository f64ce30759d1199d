"""Every error the SDK raises, and the mapping from HTTP answers to them.

Callers catch by what they can do about it::

    SandboxException                 anything the SDK raises
     ├── AuthenticationException     401/403: no, unknown or revoked API key
     ├── InvalidArgumentException    400/422: a bad value; the message names the field
     ├── NotFoundException           404: unknown or ended sandbox, missing file or process
     ├── ConflictException           409: the resource is in the wrong state
     ├── NotEnoughSpaceException     413/507: the sandbox's disk is full
     ├── RateLimitException          429: too many sandboxes or requests
     ├── TimeoutException            a request or a command ran out of time
     ├── CommandExitException        a command exited non-zero (carries its output)
     ├── BuildException              a template build failed (carries the step, exit code, output)
     └── ServerException             5xx, unreachable server, or a reply the SDK cannot read

Every exception has ``sandbox_id`` (``None`` for calls not about one sandbox, e.g. templates) and ``status``
(the HTTP status, ``None`` when there was no HTTP answer); its message names the sandbox.
No httpx or OS exception reaches the caller: they are mapped here, with ``raise ... from``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

__all__ = [
    "AuthenticationException",
    "BuildException",
    "CommandExitException",
    "ConflictException",
    "InvalidArgumentException",
    "NotEnoughSpaceException",
    "NotFoundException",
    "RateLimitException",
    "SandboxException",
    "ServerException",
    "TimeoutException",
    "error_for_status",
    "mapped_transport_errors",
    "prefix",
]


class SandboxException(Exception):
    """Base of every error the Corral SDK raises."""

    def __init__(self, message: str, *, sandbox_id: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sandbox_id = sandbox_id
        self.status = status

    def __reduce__(self) -> tuple[object, ...]:
        # Pickle (e.g. across multiprocessing) with every attribute, whatever the subclass's __init__.
        return (_restore, (type(self), self.args, self.__dict__))


class AuthenticationException(SandboxException):
    """The server refused the API key (401/403)."""


class InvalidArgumentException(SandboxException):
    """The server rejected a value (400/422); the message names the field."""


class NotFoundException(SandboxException):
    """The sandbox, file or process does not exist, or the sandbox has ended (404)."""


class ConflictException(SandboxException):
    """The request conflicts with the current state of the resource (409)."""


class NotEnoughSpaceException(SandboxException):
    """The sandbox's disk cannot hold the data (413/507)."""


class RateLimitException(SandboxException):
    """Too many sandboxes or requests (429)."""


class TimeoutException(SandboxException):
    """A request to the server, or a command in the sandbox, ran out of time."""


class ServerException(SandboxException):
    """The server failed (5xx), could not be reached, or sent a reply the SDK cannot read."""


class CommandExitException(SandboxException):
    """A command exited with a non-zero code. Carries the whole result, like ``CommandResult``."""

    def __init__(
        self,
        message: str,
        *,
        sandbox_id: str | None,
        exit_code: int,
        stdout: str,
        stderr: str,
        error: str | None,
    ) -> None:
        super().__init__(message, sandbox_id=sandbox_id)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.error = error


class BuildException(SandboxException):
    """A template build failed. ``step``/``line`` name the failed Dockerfile step (``None`` when the
    build failed outside a step, e.g. a missing base), ``exit_code`` is its RUN's exit code and
    ``output_tail`` the last lines it printed."""

    def __init__(
        self,
        message: str,
        *,
        build_id: str,
        template: str,
        error: str | None,
        step: int | None = None,
        line: int | None = None,
        exit_code: int | None = None,
        output_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.build_id = build_id
        self.template = template
        self.error = error
        self.step = step
        self.line = line
        self.exit_code = exit_code
        self.output_tail = output_tail


def _restore(cls: type[SandboxException], args: tuple[object, ...], state: dict[str, object]) -> SandboxException:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


_BY_STATUS: dict[int, type[SandboxException]] = {
    400: InvalidArgumentException,
    401: AuthenticationException,
    403: AuthenticationException,
    404: NotFoundException,
    408: TimeoutException,
    409: ConflictException,
    413: NotEnoughSpaceException,
    422: InvalidArgumentException,
    429: RateLimitException,
    504: TimeoutException,
    507: NotEnoughSpaceException,
}


def prefix(sandbox_id: str | None) -> str:
    """The start of every message about one sandbox: ``"sandbox <id>: "`` (empty without one)."""
    return f"sandbox {sandbox_id}: " if sandbox_id else ""


def _server_message(status: int, body: bytes) -> str:
    """The ``message`` of a ``{"code", "message"}`` error body, or a short excerpt of any other body."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        message = data.get("message", data.get("detail"))
        if isinstance(message, str) and message:
            return message
        if message is not None:
            return json.dumps(message)
    text = body.decode("utf-8", "replace").strip()
    if text:
        return text[:300] + ("…" if len(text) > 300 else "")
    return f"HTTP {status} with an empty body"


def error_for_status(status: int, body: bytes, *, sandbox_id: str | None, operation: str) -> SandboxException:
    """The exception for a non-success HTTP answer (the caller raises it)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerException if status >= 500 else SandboxException
    message = f"{prefix(sandbox_id)}{operation}: {_server_message(status, body)} (HTTP {status})"
    return cls(message, sandbox_id=sandbox_id, status=status)


@contextmanager
def mapped_transport_errors(api_url: str, *, sandbox_id: str | None, operation: str) -> Iterator[None]:
    """Turn httpx transport failures inside the block into SDK exceptions, ``raise ... from`` them."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise TimeoutException(
            f"{prefix(sandbox_id)}{operation}: no answer from {api_url} in time ({type(exc).__name__})",
            sandbox_id=sandbox_id,
        ) from exc
    except httpx.HTTPError as exc:
        raise ServerException(
            f"{prefix(sandbox_id)}{operation}: cannot talk to the Corral server at {api_url}: "
            f"{exc or type(exc).__name__}",
            sandbox_id=sandbox_id,
        ) from exc
    except httpx.InvalidURL as exc:
        raise ServerException(
            f"{prefix(sandbox_id)}{operation}: invalid server URL {api_url!r}: {exc}", sandbox_id=sandbox_id
        ) from exc
