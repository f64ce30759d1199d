"""Who may use a sandbox's envd: its access token (or an API key allowed to use it, both checked by
``deps.sandbox_caller``), or for ``/files`` a URL signed with that token.

Signed URLs are what the SDK's ``download_url()`` / ``upload_url()`` build: ``signature`` =
``v1_`` + unpadded base64 of sha256 over ``path:operation:username:token[:expiration]``, with
``signature_expiration`` an absolute unix time. A request that carries a token is judged by the
token alone, as envd does. A sandbox that is unknown or gone raises `SandboxGone`, answered 502
like E2B's edge proxy (the SDKs then report the sandbox as not running).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time

from fastapi import Request

from corral.api.deps import SandboxCaller, Services, ServicesDep, sandbox_caller
from corral.api.e2b.gone import SandboxGone
from corral.service.errors import NotFound, Unauthorized, Unreachable


def sandbox_of(request: Request) -> str:
    target = request.scope.get("corral.sandbox")
    return target[0] if target else ""


async def caller(request: Request, svc: ServicesDep) -> SandboxCaller:
    """``deps.sandbox_caller``, with an unknown or ended sandbox raised as `SandboxGone`."""
    try:
        return await sandbox_caller(request, svc)
    except NotFound as exc:
        raise SandboxGone(sandbox_of(request)) from exc


def signature(path: str, operation: str, username: str, token: str, expiration: int | None) -> str:
    raw = f"{path}:{operation}:{username}:{token}" + ("" if expiration is None else f":{expiration}")
    digest = hashlib.sha256(raw.encode()).digest()
    return "v1_" + base64.b64encode(digest).rstrip(b"=").decode()


async def authorize(request: Request, services: Services, operation: str) -> str:
    """The sandbox id of an authorised ``/files`` request, for `operation` "read" or "write"."""
    query = request.query_params
    given = query.get("signature")
    if given is None or request.headers.get("x-access-token") or request.headers.get("x-api-key"):
        return (await caller(request, services)).sandbox_id
    sandbox_id = sandbox_of(request)
    token = services.sandboxes.access_token(sandbox_id)
    if token is None:
        raise SandboxGone(sandbox_id)
    if services.sandboxes.is_paused(sandbox_id):
        raise Unreachable(f"sandbox {sandbox_id} is paused; connect to resume it")
    raw_expiration = query.get("signature_expiration")
    digits = raw_expiration is not None and raw_expiration.isascii() and raw_expiration.isdigit()
    expiration = int(raw_expiration) if raw_expiration and digits else None
    if raw_expiration is None or expiration is not None:
        expected = signature(query.get("path", ""), operation, query.get("username", ""), token, expiration)
        # as bytes: compare_digest refuses str with non-ASCII characters (a query is any UTF-8 text)
        matches = secrets.compare_digest(expected.encode(), given.encode(errors="replace"))
        if matches and (expiration is None or expiration >= time.time()):
            return sandbox_id
    raise Unauthorized(f"sandbox {sandbox_id}: invalid or expired file URL signature")
