"""``/v1/sandboxes/{id}/code`` and ``/contexts``: stateful code execution (E2B ``/execute`` shapes)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from corral.api.deps import PrincipalDep, ServicesDep
from corral.api.streaming import event_response
from corral.service.errors import InvalidRequest

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}", tags=["code"])


class CodeBody(BaseModel):
    code: str
    language: str | None = None
    context_id: str | None = None
    envs: dict[str, str] | None = None
    timeout: float = Field(default=300, ge=0)


class ContextBody(BaseModel):
    language: str | None = None
    cwd: str | None = None
    user: str = "user"


@router.post("/code")
async def run_code(
    sandbox_id: str, body: CodeBody, request: Request, svc: ServicesDep, who: PrincipalDep
) -> StreamingResponse:
    if body.language and body.context_id:
        raise InvalidRequest("give either language or context_id, not both")
    agent = await svc.sandboxes.agent(who, sandbox_id)
    contexts = svc.sandboxes.contexts
    envs = svc.sandboxes.envs(sandbox_id)
    if body.context_id:
        ctx = contexts.get(sandbox_id, body.context_id)
    else:
        ctx = await contexts.default(agent, sandbox_id, body.language, envs)
    events = contexts.execute(agent, ctx, body.code, body.envs or {}, body.timeout)
    return event_response(request, events, final=lambda event: event.get("type") == "end_of_execution")


@router.post("/contexts", status_code=201)
async def create_context(sandbox_id: str, body: ContextBody, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    agent = await svc.sandboxes.agent(who, sandbox_id)
    ctx = await svc.sandboxes.contexts.create(
        agent, sandbox_id, body.language, body.cwd, body.user, svc.sandboxes.envs(sandbox_id)
    )
    return ctx.describe()


@router.get("/contexts")
async def list_contexts(sandbox_id: str, svc: ServicesDep, who: PrincipalDep) -> list[dict[str, Any]]:
    await svc.sandboxes.get(who, sandbox_id)
    return [c.describe() for c in svc.sandboxes.contexts.list(sandbox_id)]


@router.post("/contexts/{context_id}/restart")
async def restart_context(sandbox_id: str, context_id: str, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    agent = await svc.sandboxes.agent(who, sandbox_id)
    ctx = svc.sandboxes.contexts.get(sandbox_id, context_id)
    await svc.sandboxes.contexts.restart(agent, ctx)
    return ctx.describe()


@router.delete("/contexts/{context_id}", status_code=204)
async def remove_context(sandbox_id: str, context_id: str, svc: ServicesDep, who: PrincipalDep) -> Response:
    agent = await svc.sandboxes.agent(who, sandbox_id)
    await svc.sandboxes.contexts.remove(agent, svc.sandboxes.contexts.get(sandbox_id, context_id))
    return Response(status_code=204)
