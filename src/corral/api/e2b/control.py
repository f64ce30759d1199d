"""E2B control plane (the API at ``E2B_API_URL``): sandboxes, timeouts, connect, pause, metrics.

Served at root paths next to the native ``/v1`` API. v1 and v2 paths share one handler (Python
SDK ≤2.50 and older JS use ``POST /sandboxes`` and ``/sandboxes/{id}/connect``; newer ones the
``/v2`` forms). Auth is the ``X-API-KEY`` header. Shapes come from ``corral.service.e2b_models``;
every error is JSON ``{"code", "message"}`` so the SDKs raise their typed exceptions. Features we
lack (snapshots, fork, templates, volumes, ...) answer 501 naming what is missing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from corral.api.deps import PrincipalDep, Services, ServicesDep
from corral.runtime.netpolicy import NetworkPolicy
from corral.service import e2b_models as e2b
from corral.service import network
from corral.service.auth import Principal
from corral.service.errors import Conflict, InvalidRequest, NotFound, ServiceError
from corral.service.sandboxes import CreateRequest
from corral.store.repo import now

router = APIRouter(tags=["e2b"], include_in_schema=False)


class NotSupported(ServiceError):
    status = 501


class NetworkConfig(BaseModel):
    """``SandboxNetworkConfig``/``SandboxNetworkUpdateConfig``: ``allowOut``/``denyOut`` are enforced;
    ``dnsServers`` is ignored (sandboxes resolve through Corral's forwarder); proxies and transform
    rules are not supported; sandbox ports always need the access token (``allowPublicTraffic``)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    allow_out: list[str] | None = Field(default=None, alias="allowOut")
    deny_out: list[str] | None = Field(default=None, alias="denyOut")
    egress_proxy: dict[str, Any] | None = Field(default=None, alias="egressProxy")
    rules: dict[str, Any] | None = None
    allow_internet_access: bool | None = None  # only in the update body

    def policy(self, allow_internet_access: bool | None) -> NetworkPolicy:
        if self.egress_proxy:
            raise NotSupported("egress proxies are not supported by Corral")
        if self.rules:
            raise NotSupported("network transform rules are not supported by Corral")
        return network.e2b(allow_internet_access, self.allow_out, self.deny_out)


class NewSandbox(BaseModel):
    """``NewSandbox`` (v1) and ``NewSandboxV2``: what we use; the rest is accepted and ignored
    (``autoPause``, ``secure``, ``mcp``, ``iam``...)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    template_id: str = Field(default="base", alias="templateID")
    timeout: int | None = None
    metadata: dict[str, str] | None = None
    env_vars: dict[str, str] | None = Field(default=None, alias="envVars")
    volume_mounts: list[dict[str, Any]] | None = Field(default=None, alias="volumeMounts")
    allow_internet_access: bool | None = None
    network: NetworkConfig | None = None


class Timeout(BaseModel):
    model_config = ConfigDict(extra="ignore")
    timeout: int


class Connect(BaseModel):
    """``ConnectSandbox``/``ConnectSandboxV2``/``ResumedSandbox``; ``memory`` and ``autoPause`` are
    accepted and ignored (a frozen sandbox always resumes with its memory)."""

    model_config = ConfigDict(extra="ignore")
    timeout: int | None = None


@router.post("/sandboxes", status_code=201)
@router.post("/v2/sandboxes", status_code=201)
async def create(body: NewSandbox, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return await create_sandbox(svc, who, body)


async def create_sandbox(svc: Services, who: Principal, body: NewSandbox) -> dict[str, Any]:
    """The create route's work, also run by ``api.fastpath``."""
    if body.volume_mounts:
        raise NotSupported("volume mounts are not supported by Corral yet")
    policy = (body.network or NetworkConfig()).policy(body.allow_internet_access)
    req = CreateRequest(
        template=e2b.template_name(body.template_id), timeout=body.timeout, envs=body.env_vars or {},
        metadata=body.metadata or {}, network=policy,
    )
    row = await svc.sandboxes.create(who, req)
    return e2b.sandbox(row, svc.sandboxes.access_token(row.id))


@router.get("/sandboxes")
async def list_running(
    svc: ServicesDep, who: PrincipalDep, metadata: str | None = None,
) -> list[dict[str, Any]]:
    """The deprecated v1 listing: running sandboxes only, no paging."""
    rows = await svc.sandboxes.list(who)
    return [e2b.listed(r) for r in e2b.select(rows, e2b.list_query(metadata=metadata, states=["running"]))]


@router.get("/v2/sandboxes")
async def list_v2(
    svc: ServicesDep, who: PrincipalDep, response: Response,
    metadata: str | None = None, state: Annotated[list[str] | None, Query()] = None,
    order: str | None = None, started_after: Annotated[datetime | None, Query(alias="startedAfter")] = None,
    template: str | None = None, limit: int | None = None,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
) -> list[dict[str, Any]]:
    query = e2b.list_query(metadata, state, order, started_after, template, limit, next_token)
    rows, token = e2b.page(await svc.sandboxes.list(who), query)
    if token:
        response.headers["X-Next-Token"] = token
    return [e2b.listed(r) for r in rows]


@router.get("/sandboxes/metrics")
async def metrics_many(
    svc: ServicesDep, who: PrincipalDep, sandbox_ids: str = "",
) -> dict[str, Any]:
    ids = [i for i in (s.strip() for s in sandbox_ids.split(",")) if i]
    if len(ids) > e2b.MAX_PAGE:
        raise InvalidRequest(f"sandbox_ids: at most {e2b.MAX_PAGE}")
    out: dict[str, Any] = {}
    for sandbox_id in ids:
        try:
            out[sandbox_id] = await _metric(svc, who, sandbox_id)
        except NotFound:
            continue
    return {"sandboxes": out}


@router.get("/sandboxes/{sandbox_id}")
async def get(sandbox_id: str, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    row = await svc.sandboxes.get(who, sandbox_id)
    net = await svc.sandboxes.network_info(who, sandbox_id)
    return e2b.detail(row, svc.sandboxes.access_token(sandbox_id), net)


@router.put("/sandboxes/{sandbox_id}/network", status_code=204)
async def update_network(sandbox_id: str, body: NetworkConfig, svc: ServicesDep, who: PrincipalDep) -> Response:
    """Replace the sandbox's egress rules (fields left out are cleared, as in E2B)."""
    await svc.sandboxes.update_network(who, sandbox_id, body.policy(body.allow_internet_access))
    return Response(status_code=204)


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
async def kill(sandbox_id: str, svc: ServicesDep, who: PrincipalDep) -> Response:
    await svc.sandboxes.get(who, sandbox_id)  # an ended sandbox is 404, so the SDK's kill() is False
    await svc.sandboxes.kill(who, sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204)
async def set_timeout(sandbox_id: str, body: Timeout, svc: ServicesDep, who: PrincipalDep) -> Response:
    await svc.sandboxes.set_timeout(who, sandbox_id, body.timeout)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/connect")
@router.post("/v2/sandboxes/{sandbox_id}/connect")
async def connect(
    sandbox_id: str, svc: ServicesDep, who: PrincipalDep, body: Connect | None = None,
) -> JSONResponse:
    """200 with the sandbox if it was running (its deadline only ever moves later), 201 if it was
    paused and is now resumed with a new deadline."""
    row, resumed = await svc.sandboxes.resume(who, sandbox_id, body.timeout if body else None)
    answer = e2b.sandbox(row, svc.sandboxes.access_token(sandbox_id))
    return JSONResponse(answer, status_code=201 if resumed else 200)


@router.post("/sandboxes/{sandbox_id}/resume", status_code=201)
async def resume(
    sandbox_id: str, svc: ServicesDep, who: PrincipalDep, body: Connect | None = None,
) -> dict[str, Any]:
    """The deprecated resume: only for a paused sandbox (409 if it runs)."""
    await svc.sandboxes.get(who, sandbox_id)
    if not svc.sandboxes.is_paused(sandbox_id):
        raise Conflict(f"sandbox {sandbox_id} is already running")
    row, _ = await svc.sandboxes.resume(who, sandbox_id, body.timeout if body else None)
    return e2b.sandbox(row, svc.sandboxes.access_token(sandbox_id))


@router.post("/sandboxes/{sandbox_id}/pause", status_code=204)
async def pause(sandbox_id: str, svc: ServicesDep, who: PrincipalDep) -> Response:
    """Freeze the sandbox in place (204); 409 if it is already paused."""
    await svc.sandboxes.pause(who, sandbox_id)
    return Response(status_code=204)


@router.get("/sandboxes/{sandbox_id}/metrics")
async def metrics(
    sandbox_id: str, svc: ServicesDep, who: PrincipalDep, start: int | None = None, end: int | None = None,
) -> list[dict[str, Any]]:
    """One sample taken now (``start``/``end`` are accepted; there is no stored history)."""
    return [await _metric(svc, who, sandbox_id)]


async def _metric(svc: Services, who: Principal, sandbox_id: str) -> dict[str, Any]:
    use = await svc.sandboxes.metrics(who, sandbox_id)
    row = await svc.sandboxes.get(who, sandbox_id)
    return e2b.metric(row, use, now())


# What the SDKs can call but Corral does not offer (yet): a clear 501 after the key check.
_UNSUPPORTED: list[tuple[str, list[str], str]] = [
    ("/sandboxes/{sandbox_id}/fork", ["POST"], "forking sandboxes"),
    ("/sandboxes/{sandbox_id}/snapshots", ["POST"], "snapshots"),
    ("/snapshots", ["GET"], "snapshots"),
    ("/sandboxes/{sandbox_id}/refreshes", ["POST"], "refreshes (use POST /sandboxes/{id}/timeout)"),
    ("/sandboxes/{sandbox_id}/logs", ["GET"], "sandbox logs"),
    ("/v2/sandboxes/{sandbox_id}/logs", ["GET"], "sandbox logs"),
    ("/templates", ["GET", "POST"], "the templates API"),
    ("/templates/{rest:path}", ["GET", "POST", "PATCH", "DELETE"], "the templates API"),
    ("/v2/templates", ["GET", "POST"], "the templates API"),
    ("/v2/templates/{rest:path}", ["GET", "POST", "PATCH", "DELETE"], "the templates API"),
    ("/default-templates", ["GET"], "the templates API"),
    ("/volumes", ["GET", "POST"], "volumes"),
    ("/volumes/{rest:path}", ["GET", "POST", "PUT", "PATCH", "DELETE"], "volumes"),
    ("/secrets", ["GET", "POST"], "secrets"),
    ("/secrets/{rest:path}", ["GET", "POST", "DELETE"], "secrets"),
]


def _unsupported(what: str) -> Any:
    async def handler(who: PrincipalDep) -> Response:
        raise NotSupported(f"{what} is not supported by Corral yet")

    return handler


for _path, _methods, _what in _UNSUPPORTED:
    router.add_api_route(_path, _unsupported(_what), methods=_methods)
