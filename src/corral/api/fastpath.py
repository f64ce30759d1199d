"""The two calls on a cold create's way, answered without FastAPI's request machinery.

``POST /v1/sandboxes`` and ``POST /v1/sandboxes/{id}/commands`` cost ~0.5 ms each on this host
between the request's last byte and the route's first line when the server has been idle a moment
(its middleware stack, routing over every route, dependency solving: docs/performance.md, "The
create's two requests"). Here they run the routes' own functions (``create_sandbox``,
``run_command``) straight from the ASGI call, in the plain case only: a server that has started, an
API key its auth cache holds, a JSON body that validates. Anything else — a key to look up, a
missing or bad field, another content type — goes on to the FastAPI route with the body replayed, so
those answers come from the one place that gives them. Errors the routes' work raises are answered
as the app's error handlers answer them (``errors``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from corral.api import errors
from corral.api.deps import Services, api_key
from corral.api.routes_commands import RunBody, run_command
from corral.api.routes_sandboxes import CreateBody, create_sandbox
from corral.service.auth import Principal
from corral.service.errors import ServiceError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_COMMANDS = re.compile(r"^/v1/sandboxes/([^/]+)/commands$")
_JSON = re.compile(rb"^application/json\s*(;|$)", re.IGNORECASE)


class FastPath:
    """In front of the main app (``routing.SandboxRouter``): for a request it `takes`, `__call__`
    either answers it or hands back the `receive` the app must use instead."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def takes(self, scope: Scope) -> bool:
        """Cheap: a POST to one of the two paths."""
        if scope["method"] != "POST":
            return False
        path = scope["path"]
        return path == "/v1/sandboxes" or (path.endswith("/commands") and _COMMANDS.match(path) is not None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """None if answered here; else a `receive` for the app (it replays the body read here)."""
        svc: Services | None = getattr(self.app.state, "services", None)
        if svc is None:
            return receive
        who = _caller(svc, scope)
        if who is None or not _is_json(scope):
            return receive
        body = await _body(receive)
        if body is None:
            return None  # the client went away: nobody to answer
        try:  # as FastAPI reads a body: json.loads, then the model validates the object
            response = await _answer(svc, who, scope, receive, json.loads(body))
        except (ValueError, ValidationError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return _replaying(body, receive)
        await response(scope, receive, send)  # the body was read: it waits for a disconnect
        return None


async def _answer(svc: Services, who: Principal, scope: Scope, receive: Receive, fields: object) -> Response:
    """The route's answer; ValidationError (before any work) if ``fields`` do not make its body."""
    sandbox = _COMMANDS.match(scope["path"])
    if sandbox is None:
        create = CreateBody.model_validate(fields)
    else:
        command = RunBody.model_validate(fields)
    try:
        if sandbox is None:
            return JSONResponse(await create_sandbox(svc, who, create), status_code=201)
        return await run_command(svc, who, sandbox.group(1), command, Request(scope, receive))
    except ServiceError as exc:
        return errors.error(exc.status, exc.message)
    except Exception as exc:
        return errors.unexpected(scope["method"], scope["path"], exc)


def _caller(svc: Services, scope: Scope) -> Principal | None:
    """The caller if its key was checked lately (the cache); None: the app's route checks it."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:  # the first of each, as the app's header parameters take
        if name in (b"x-api-key", b"authorization") and name not in found:
            found[name] = value.decode("latin-1")
    return svc.auth.cached(api_key(found.get(b"x-api-key"), found.get(b"authorization")))


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return _JSON.match(value) is not None
    return False


async def _body(receive: Receive) -> bytes | None:
    """The whole request body; None if the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` first, then whatever `receive` gives (a disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
