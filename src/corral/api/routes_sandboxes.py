"""``/v1/sandboxes``: create, list, get, kill, timeout, metrics, network policy."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from corral.api.deps import AdminDep, PrincipalDep, Services, ServicesDep
from corral.service import network
from corral.service.auth import Principal
from corral.service.errors import InvalidRequest
from corral.service.sandboxes import CreateRequest, describe

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])


class CreateBody(BaseModel):
    template: str = "base"
    timeout: int | None = Field(default=None, description="seconds until the sandbox is destroyed")
    envs: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict)
    cpu: float | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    network: str | None = Field(default=None, description="'internet' (default) or 'none' (loopback only)")
    allow_out: list[str] | None = Field(
        default=None, description="allow-list of IPv4/CIDR/domain[:port] rules; given (even empty), all else is denied"
    )
    deny_out: list[str] | None = Field(default=None, description="rules always denied (deny beats allow)")
    isolation: str | None = Field(
        default=None, description="bwrap (namespaces) or gvisor (user-space kernel); default: the server's",
    )


class NetworkBody(BaseModel):
    network: str | None = None
    allow_out: list[str] | None = None
    deny_out: list[str] | None = None


class TimeoutBody(BaseModel):
    timeout: int


@router.post("", status_code=201)
async def create(body: CreateBody, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return await create_sandbox(svc, who, body)


async def create_sandbox(svc: Services, who: Principal, body: CreateBody) -> dict[str, Any]:
    """The create route's work, also run by ``fastpath``."""
    fields = body.model_dump(exclude={"network", "allow_out", "deny_out"})
    policy = network.native(body.network, body.allow_out, body.deny_out)
    row = await svc.sandboxes.create(who, CreateRequest(**fields, network=policy))
    return {**describe(row), "access_token": svc.sandboxes.access_token(row.id),
            "pooled": svc.sandboxes.was_pooled(row.id)}


@router.get("")
async def list_(
    svc: ServicesDep, who: PrincipalDep, state: str = "running",
    metadata: Annotated[list[str] | None, Query()] = None,
) -> list[dict[str, Any]]:
    if state not in ("running", "all"):
        raise InvalidRequest("state: must be 'running' or 'all'")
    wanted: dict[str, str] = {}
    for item in metadata or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"metadata: expected key=value, got {item!r}")
        wanted[key] = value
    rows = await svc.sandboxes.list(who, live_only=state == "running", metadata=wanted)
    return [describe(r) for r in rows]


@router.get("/{sandbox_id}")
async def get(sandbox_id: str, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return describe(await svc.sandboxes.get(who, sandbox_id))


@router.delete("/{sandbox_id}", status_code=204)
async def kill(sandbox_id: str, svc: ServicesDep, who: PrincipalDep) -> Response:
    await svc.sandboxes.kill(who, sandbox_id)
    return Response(status_code=204)


@router.post("/{sandbox_id}/timeout")
async def set_timeout(sandbox_id: str, body: TimeoutBody, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return describe(await svc.sandboxes.set_timeout(who, sandbox_id, body.timeout))


@router.get("/{sandbox_id}/metrics")
async def metrics(sandbox_id: str, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    use = await svc.sandboxes.metrics(who, sandbox_id)
    row = await svc.sandboxes.get(who, sandbox_id)
    return {
        "cpu_seconds": use.cpu_seconds, "cpu_count": row.cpu, "memory_bytes": use.memory_bytes,
        "memory_limit_bytes": use.memory_limit_bytes, "disk_bytes": use.disk_bytes,
        "disk_limit_bytes": use.disk_limit_bytes, "pids": use.pids, "oom_kills": use.oom_kills,
    }


@router.get("/{sandbox_id}/network")
async def get_network(sandbox_id: str, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """The sandbox's egress policy, its address and the DNS questions it asked (latest 256)."""
    return await svc.sandboxes.network_info(who, sandbox_id)


@router.put("/{sandbox_id}/network")
async def put_network(sandbox_id: str, body: NetworkBody, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """Replace the egress policy of a running sandbox; flows it no longer allows are cut."""
    policy = network.native(body.network, body.allow_out, body.deny_out)
    return await svc.sandboxes.update_network(who, sandbox_id, policy)


pool_router = APIRouter(prefix="/v1/pool", tags=["sandboxes"])


@pool_router.get("")
async def pool_status(svc: ServicesDep, _: AdminDep) -> dict[str, Any]:
    """The warm pool: ready sandboxes per template and default resources (admin key only)."""
    pool = svc.sandboxes.pool
    return {"enabled": pool is not None, "pools": pool.status() if pool is not None else []}
