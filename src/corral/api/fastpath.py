"""The calls on a create's and a command's way, answered without FastAPI's request machinery.

From a request's last byte to its route's first line FastAPI takes ~0.5 ms on this host when the
server has been idle a moment (its middleware stack, routing over every route, dependency solving:
docs/performance.md, "The create's two requests"). The calls a create → first output goes through
are taken here instead, running the routes' own functions:

- ``POST /v1/sandboxes``, ``POST /v1/sandboxes/{id}/commands`` and E2B's ``POST /sandboxes`` (and
  ``/v2/sandboxes``) when the server has started, the API key is in the auth cache (when the headers
  arrive, and again once the body is in, when the app would judge it: a key revoked meanwhile is
  refused) and the body is JSON that validates (read as FastAPI reads it: ``json.loads``, then the
  model). Anything else — a key to look up, a bad, missing or too deeply nested body, another content
  type — goes on to the app with the body replayed, so those answers come from the one place that
  gives them; errors of the work itself are answered as the app's error handlers answer them
  (``errors``).
- envd's Connect calls (``POST /{service}/{method}`` on sandbox port 49983, the E2B SDKs' commands
  and file operations) when they carry the sandbox's access token and it is not paused: the same
  ``rpc.dispatch`` the envd app runs, which answers every outcome itself. Otherwise the envd app
  (nothing was read).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse, Response

from corral.api import errors
from corral.api.deps import Services, api_key
from corral.api.e2b import control
from corral.api.e2b.envd import SERVICES, rpc
from corral.api.routes_commands import RunBody, run_command
from corral.api.routes_sandboxes import CreateBody, create_sandbox
from corral.service.auth import Principal
from corral.service.errors import ServiceError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Work = Callable[[Services, Principal, Any, "re.Match[str]", Request], Awaitable[Response]]


async def _create(svc: Services, who: Principal, body: CreateBody, _: re.Match[str], __: Request) -> Response:
    return JSONResponse(await create_sandbox(svc, who, body), status_code=201)


async def _run(svc: Services, who: Principal, body: RunBody, path: re.Match[str], request: Request) -> Response:
    return await run_command(svc, who, path.group(1), body, request)


async def _e2b_create(svc: Services, who: Principal, body: control.NewSandbox, _: re.Match[str],
                      __: Request) -> Response:
    return JSONResponse(await control.create_sandbox(svc, who, body), status_code=201)


@dataclass(frozen=True)
class _Route:
    path: re.Pattern[str]
    body: type[BaseModel]
    work: Work


ROUTES = (  # each the twin of a route of the main app, which it calls too
    _Route(re.compile(r"/v1/sandboxes"), CreateBody, _create),
    _Route(re.compile(r"/v1/sandboxes/([^/]+)/commands"), RunBody, _run),
    _Route(re.compile(r"/(?:v2/)?sandboxes"), control.NewSandbox, _e2b_create),
)
_JSON = re.compile(r"application/json\s*(;|$)", re.IGNORECASE)
_RPC = re.compile(r"/([^/]+)/([^/]+)")


class FastPath:
    """Ahead of the main app and the envd app (``routing.SandboxRouter`` asks it first)."""

    def __init__(self, main: FastAPI, envd: FastAPI) -> None:
        self.main = main
        self.envd = envd

    async def main_call(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """A request for the main app: None if answered here; else the `receive` the app must use
        (it replays a body read here)."""
        taken = _route(scope)
        svc: Services | None = getattr(self.main.state, "services", None)
        if taken is None or svc is None:
            return receive
        if _caller(svc, scope) is None or not _is_json(scope):
            return receive
        body = await _body(receive)
        if body is None:
            return None  # the client went away: nobody to answer
        who = _caller(svc, scope)  # again: as the app, judge the key once the body is in (a revoke meanwhile)
        if who is None:
            return _replaying(body, receive)
        route, path = taken
        try:  # as FastAPI reads a body: json.loads, then the model validates the object
            fields = route.body.model_validate(json.loads(body))
        except Exception:  # not JSON, too deeply nested (RecursionError), or not the model: the app's answer
            return _replaying(body, receive)
        try:
            response = await route.work(svc, who, fields, path, Request(scope, receive))
        except ServiceError as exc:
            response = errors.error(exc.status, exc.message)
        except Exception as exc:
            response = errors.unexpected(scope["method"], scope["path"], exc)
        await response(scope, receive, send)  # the body was read: it waits for a disconnect
        return None

    async def envd_call(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """A request for a sandbox's envd (``scope["corral.sandbox"]`` set): whether it was answered
        here (else it is the envd app's, untouched)."""
        path = _RPC.fullmatch(scope["path"]) if scope["method"] == "POST" else None
        if path is None:
            return False
        method = SERVICES.get(path.group(1), {}).get(path.group(2))
        svc: Services | None = getattr(self.envd.state, "services", None)
        if method is None or svc is None:
            return False
        sandbox_id = scope["corral.sandbox"][0]
        if not svc.sandboxes.check_access_token(sandbox_id, _access_token(scope)):
            return False  # an API key, or no access: the app's `caller` answers
        if svc.sandboxes.is_paused(sandbox_id):
            return False  # the app's `caller` answers 502, as E2B's edge does
        request = Request(scope, receive)
        name = f"{path.group(1)}/{path.group(2)}"
        response = await rpc.dispatch(request, method, name, sandbox_id, svc, self.envd.state.envd)
        await response(scope, receive, send)
        return True


def _route(scope: Scope) -> tuple[_Route, re.Match[str]] | None:
    if scope["method"] != "POST":
        return None
    for route in ROUTES:
        found = route.path.fullmatch(scope["path"])
        if found is not None:
            return route, found
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower case), as the app's header parameters take it."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _caller(svc: Services, scope: Scope) -> Principal | None:
    """The caller if its key was checked lately (the cache); None: the app's route checks it."""
    return svc.auth.cached(api_key(_header(scope, b"x-api-key"), _header(scope, b"authorization")))


def _access_token(scope: Scope) -> str | None:
    """As ``deps.sandbox_caller`` reads it."""
    return _header(scope, b"x-access-token") or _header(scope, b"e2b-traffic-access-token")


def _is_json(scope: Scope) -> bool:
    kind = _header(scope, b"content-type")
    return kind is not None and _JSON.match(kind) is not None


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
