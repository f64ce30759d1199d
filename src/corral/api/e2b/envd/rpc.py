"""Dispatch of Connect calls to the envd service handlers, and the mapping of errors to Connect codes.

A handler receives a `Call` (the sandbox, its agent, the acting user, the deadline) and the request
message as a dict, and returns the response message (unary), an async iterator of messages
(server streaming), or consumes an async iterator of messages (client streaming). Handlers raise
`ConnectError` or `AgentError`; this module turns both, and anything unexpected, into the
protocol's error forms. Handlers run on the event loop and must not block.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response

from corral.agent.client import AgentClient
from corral.agent.protocol import AgentError, AgentUnavailable
from corral.api.deps import Services

from . import connect
from .connect import ConnectError
from .state import State

log = logging.getLogger("corral.envd")

DEFAULT_USER = "user"  # what a template built by the E2B SDK sets through envd's /init
DEFAULT_KEEPALIVE = 90.0  # envd's interval when the client sends no Keepalive-Ping-Interval

_AGENT_CODES = {
    "not_found": "not_found",
    "exists": "already_exists",
    "not_dir": "invalid_argument",
    "is_dir": "invalid_argument",
    "permission": "permission_denied",
    "invalid": "invalid_argument",
    "too_large": "failed_precondition",
}


@dataclass(frozen=True)
class Call:
    """One RPC: whose sandbox, acting as which user, until when (event-loop time, None = never)."""

    sandbox_id: str
    agent: AgentClient
    services: Services
    user: str
    timeout: float | None
    deadline: float | None
    keepalive: float
    state: State


Message = dict[str, Any]
Unary = Callable[[Call, Message], Awaitable[Message]]
ServerStream = Callable[[Call, Message], AsyncIterator[Message]]
ClientStream = Callable[[Call, AsyncIterator[Message]], Awaitable[Message]]


@dataclass(frozen=True)
class Method:
    kind: Literal["unary", "server_stream", "client_stream"]
    handler: Unary | ServerStream | ClientStream
    ping: Message | None = None  # the keepalive message of a server stream


def from_agent(exc: AgentError, sandbox_id: str) -> ConnectError:
    """An agent failure as the Connect error envd would answer with."""
    if isinstance(exc, AgentUnavailable):
        return ConnectError("unavailable", f"sandbox {sandbox_id}: its agent is not reachable ({exc.message})")
    if exc.kind == "not_found" and exc.message.startswith("unknown user"):
        return ConnectError("unauthenticated", f"sandbox {sandbox_id}: {exc.message}")
    if exc.kind == "no_space":
        # not resource_exhausted: the SDK reads that as a rate limit
        return ConnectError("internal", f"sandbox {sandbox_id}: not enough disk space: {exc.message}")
    return ConnectError(_AGENT_CODES.get(exc.kind, "internal"), f"sandbox {sandbox_id}: {exc.message}")


def basic_user(authorization: str | None) -> str:
    """The user named by ``Authorization: Basic base64("name:")`` (the password is ignored)."""
    if not authorization:
        return DEFAULT_USER
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return DEFAULT_USER
    try:
        name = base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        raise ConnectError("unauthenticated", "Authorization: malformed Basic credentials") from None
    return name or DEFAULT_USER


def make_call(request: Request, sandbox_id: str, services: Services, state: State) -> Call:
    timeout = connect.parse_timeout(request.headers.get("connect-timeout-ms"))
    loop = asyncio.get_running_loop()
    interval = request.headers.get("keepalive-ping-interval", "")
    digits = interval.isascii() and interval.isdigit()  # str.isdigit() alone takes "²", which int() refuses
    keepalive = float(interval) if digits and int(interval) > 0 else DEFAULT_KEEPALIVE
    return Call(
        sandbox_id=sandbox_id,
        agent=services.sandboxes.backend.agent(sandbox_id),
        services=services,
        user=basic_user(request.headers.get("authorization")),
        timeout=timeout,
        deadline=None if timeout is None else loop.time() + timeout,
        keepalive=keepalive,
        state=state,
    )


def _as_connect(exc: BaseException, call_name: str, sandbox_id: str) -> ConnectError:
    if isinstance(exc, ConnectError):
        return exc
    if isinstance(exc, AgentError):
        return from_agent(exc, sandbox_id)
    if isinstance(exc, TimeoutError):
        return ConnectError("deadline_exceeded", "the call's deadline (Connect-Timeout-Ms) passed")
    log.error("envd %s failed in sandbox %s", call_name, sandbox_id, exc_info=exc)
    return ConnectError("internal", f"sandbox {sandbox_id}: internal error ({type(exc).__name__})")


async def _translated(messages: AsyncIterator[Message], call_name: str, sandbox_id: str) -> AsyncIterator[Message]:
    try:
        async for message in messages:
            yield message
    except Exception as exc:
        raise _as_connect(exc, call_name, sandbox_id) from exc


async def _one(message: Message) -> AsyncIterator[Message]:
    yield message


async def _failed(error: ConnectError) -> AsyncIterator[Message]:
    raise error
    yield {}  # pragma: no cover  (makes this an async generator)


async def dispatch(
    request: Request, method: Method, call_name: str, sandbox_id: str, services: Services, state: State
) -> Response:
    """Run one call of `method` and answer in the protocol's form for its kind."""
    streaming = method.kind != "unary"
    try:
        connect.check_content_type(request, streaming)
        call = make_call(request, sandbox_id, services, state)
        if method.kind == "unary":
            message = await connect.read_unary(request)
            async with asyncio.timeout(call.timeout):
                return connect.unary_response(await method.handler(call, message))  # type: ignore[arg-type]
        if method.kind == "server_stream":
            message = await connect.read_single(request)
            messages = method.handler(call, message)  # type: ignore[arg-type]
            paced = connect.paced(messages, call.deadline, call.keepalive, method.ping or {})  # type: ignore[arg-type]
            return connect.stream_response(_translated(paced, call_name, sandbox_id))
        async with asyncio.timeout(call.timeout):
            reply = await method.handler(call, connect.read_stream(request))  # type: ignore[arg-type]
        return connect.stream_response(_one(reply))
    except Exception as exc:
        error = _as_connect(exc, call_name, sandbox_id)
        return connect.stream_response(_failed(error)) if streaming else connect.error_response(error)
