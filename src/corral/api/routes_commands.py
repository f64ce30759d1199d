"""``/v1/sandboxes/{id}/commands``: run (streamed), list, attach, stdin, signal."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from corral.api.deps import PrincipalDep, Services, ServicesDep
from corral.api.streaming import event_response
from corral.service import commands
from corral.service.agent_errors import translating
from corral.service.auth import Principal
from corral.service.errors import InvalidRequest

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/commands", tags=["commands"])


class RunBody(BaseModel):
    cmd: str
    envs: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None  # default: the template's USER, else "user"
    timeout: float = 60
    stdin: bool = False
    tag: str | None = None


class StdinBody(BaseModel):
    data: str = ""
    data_base64: str | None = None
    eof: bool = False


class SignalBody(BaseModel):
    signal: str | int = "SIGKILL"


@router.post("")
async def run(
    sandbox_id: str, body: RunBody, request: Request, svc: ServicesDep, who: PrincipalDep
) -> StreamingResponse:
    return await run_command(svc, who, sandbox_id, body, request)


async def run_command(
    svc: Services, who: Principal, sandbox_id: str, body: RunBody, request: Request
) -> StreamingResponse:
    """The run route's work, also run by ``fastpath``."""
    agent = await svc.sandboxes.agent(who, sandbox_id)
    fields = body.model_dump()
    fields["user"] = body.user or svc.sandboxes.default_user(sandbox_id)
    fields["cwd"] = body.cwd or svc.sandboxes.default_cwd(sandbox_id)
    stream = await commands.start(
        agent, sandbox_id, commands.CommandRequest(**fields), svc.sandboxes.envs(sandbox_id)
    )
    events = commands.events(sandbox_id, stream, svc.sandboxes.oom_check(sandbox_id))
    return event_response(request, events, final=commands.is_exit)


@router.get("")
async def list_(sandbox_id: str, svc: ServicesDep, who: PrincipalDep) -> list[dict[str, Any]]:
    agent = await svc.sandboxes.agent(who, sandbox_id)
    with translating(sandbox_id):
        procs = await agent.processes()
    keys = ("pid", "cmd", "tag", "cwd", "user")
    return [{k: p.get(k) for k in keys} for p in procs]


@router.get("/{pid}/stream")
async def attach(sandbox_id: str, pid: int, request: Request, svc: ServicesDep, who: PrincipalDep) -> StreamingResponse:
    agent = await svc.sandboxes.agent(who, sandbox_id)
    with translating(sandbox_id):
        stream = await agent.attach(pid)
    events = commands.events(sandbox_id, stream, svc.sandboxes.oom_check(sandbox_id))
    return event_response(request, events, final=commands.is_exit)


@router.post("/{pid}/stdin", status_code=204)
async def stdin(sandbox_id: str, pid: int, body: StdinBody, svc: ServicesDep, who: PrincipalDep) -> Response:
    agent = await svc.sandboxes.agent(who, sandbox_id)
    try:
        data = base64.b64decode(body.data_base64) if body.data_base64 is not None else body.data.encode()
    except ValueError as exc:  # not base64 (binascii.Error, non-ASCII), or not UTF-8 text (lone surrogates)
        raise InvalidRequest(f"{'data' if body.data_base64 is None else 'data_base64'}: {exc}") from None
    with translating(sandbox_id):
        await agent.stdin(pid, data, eof=body.eof)
    return Response(status_code=204)


@router.post("/{pid}/signal", status_code=204)
async def signal(sandbox_id: str, pid: int, body: SignalBody, svc: ServicesDep, who: PrincipalDep) -> Response:
    agent = await svc.sandboxes.agent(who, sandbox_id)
    with translating(sandbox_id):
        await agent.signal(pid, commands.parse_signal(body.signal))
    return Response(status_code=204)
