"""Translate agent errors into service errors that name the sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from corral.agent.protocol import AgentError, AgentUnavailable
from corral.service.errors import Conflict, InvalidRequest, NoSpace, NotFound, ServiceError, TooLarge, Unavailable

_BY_KIND: dict[str, type[ServiceError]] = {
    "not_found": NotFound,
    "exists": Conflict,
    "not_dir": InvalidRequest,
    "is_dir": InvalidRequest,
    "permission": InvalidRequest,
    "invalid": InvalidRequest,
    "no_space": NoSpace,
    "too_large": TooLarge,
}


def translate(exc: AgentError, sandbox_id: str) -> ServiceError:
    if isinstance(exc, AgentUnavailable):
        return Unavailable(f"sandbox {sandbox_id}: its agent is not reachable ({exc})")
    kind = getattr(exc, "kind", "internal")
    message = getattr(exc, "message", str(exc))
    if kind == "permission":
        message = f"permission denied: {message}"
    return _BY_KIND.get(kind, Unavailable)(f"sandbox {sandbox_id}: {message}")


@contextmanager
def translating(sandbox_id: str) -> Iterator[None]:
    """Turn any ``AgentError`` raised in the block into the matching service error."""
    try:
        yield
    except AgentError as exc:
        raise translate(exc, sandbox_id) from exc
