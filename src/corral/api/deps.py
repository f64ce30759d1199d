"""Request dependencies: the service objects and the caller's identity."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from corral.config import Settings
from corral.service.auth import Auth, Principal
from corral.service.builds import BuildService
from corral.service.e2b_templates import E2BTemplates
from corral.service.errors import Forbidden, NotFound, Unauthorized, Unavailable, Unreachable
from corral.service.sandboxes import SandboxService


@dataclass
class Services:
    settings: Settings
    auth: Auth
    sandboxes: SandboxService
    builds: BuildService
    e2b_templates: E2BTemplates


async def services(request: Request) -> Services:  # async: a plain def would hop to a worker thread
    svc: Services | None = getattr(request.app.state, "services", None)
    if svc is None:
        raise Unavailable("server is starting; try again shortly")
    return svc


async def principal(
    svc: Annotated[Services, Depends(services)],
    x_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    key = api_key(x_api_key, authorization)
    return svc.auth.cached(key) or await asyncio.to_thread(svc.auth.check, key)


def api_key(x_api_key: str | None, authorization: str | None) -> str | None:
    """The API key a request carries: ``X-API-Key``, else a bearer ``Authorization``."""
    if not x_api_key and authorization and authorization.lower().startswith("bearer "):
        return authorization[7:]
    return x_api_key


async def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if not who.admin:
        raise Forbidden("this call needs the admin API key")
    return who


@dataclass(frozen=True)
class SandboxCaller:
    """Who calls a sandbox port, and which sandbox: set by the router, checked here."""

    sandbox_id: str
    port: int


async def sandbox_caller(request: Request, svc: Annotated[Services, Depends(services)]) -> SandboxCaller:
    """Sandbox-port requests need that sandbox's access token (``X-Access-Token`` or
    ``E2B-Traffic-Access-Token``), or an API key that may use the sandbox. A paused sandbox's ports
    answer 502, like E2B's edge (so the SDK's ``is_running()`` is False)."""
    target = request.scope.get("corral.sandbox")
    if target is None:
        raise NotFound("not a sandbox request")
    sandbox_id, port = target
    token = request.headers.get("x-access-token") or request.headers.get("e2b-traffic-access-token")
    if svc.sandboxes.check_access_token(sandbox_id, token):
        return _unless_paused(svc, SandboxCaller(sandbox_id, port))
    key = request.headers.get("x-api-key")
    if key:
        who = svc.auth.cached(key) or await asyncio.to_thread(svc.auth.check, key)
        await svc.sandboxes.get(who, sandbox_id)
        return _unless_paused(svc, SandboxCaller(sandbox_id, port))
    row = await asyncio.to_thread(svc.sandboxes.store.sandbox, sandbox_id)
    if row is None or svc.sandboxes.access_token(sandbox_id) is None:
        raise NotFound(f"sandbox {sandbox_id} not found or not running")
    raise Unauthorized(f"sandbox {sandbox_id}: missing or wrong access token (X-Access-Token)")


def _unless_paused(svc: Services, caller: SandboxCaller) -> SandboxCaller:
    if svc.sandboxes.is_paused(caller.sandbox_id):
        raise Unreachable(f"sandbox {caller.sandbox_id} is paused; connect to resume it")
    return caller


ServicesDep = Annotated[Services, Depends(services)]
SandboxCallerDep = Annotated[SandboxCaller, Depends(sandbox_caller)]
PrincipalDep = Annotated[Principal, Depends(principal)]
AdminDep = Annotated[Principal, Depends(admin)]
