"""Request dependencies: the service objects and the caller's identity."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from corral.config import Settings
from corral.service.auth import Auth, Principal
from corral.service.errors import Forbidden, Unavailable
from corral.service.sandboxes import SandboxService


@dataclass
class Services:
    settings: Settings
    auth: Auth
    sandboxes: SandboxService


def services(request: Request) -> Services:
    svc: Services | None = getattr(request.app.state, "services", None)
    if svc is None:
        raise Unavailable("server is starting; try again shortly")
    return svc


async def principal(
    svc: Annotated[Services, Depends(services)],
    x_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    key = x_api_key
    if not key and authorization and authorization.lower().startswith("bearer "):
        key = authorization[7:]
    return await asyncio.to_thread(svc.auth.check, key)


async def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if not who.admin:
        raise Forbidden("this call needs the admin API key")
    return who


ServicesDep = Annotated[Services, Depends(services)]
PrincipalDep = Annotated[Principal, Depends(principal)]
AdminDep = Annotated[Principal, Depends(admin)]
