"""``/v1/sandboxes/{id}/files``: streamed read/write, list, stat, mkdir, move, remove.

Every path is handed to the sandbox's agent, which resolves it inside the sandbox."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from corral.api.deps import PrincipalDep, ServicesDep
from corral.api.streaming import file_body
from corral.service.agent_errors import translating
from corral.service.errors import InvalidRequest, TooLarge

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/files", tags=["files"])


class MkdirBody(BaseModel):
    path: str
    user: str = "user"


class MoveBody(BaseModel):
    src: str
    dst: str
    user: str = "user"


def entry(e: dict[str, Any]) -> dict[str, Any]:
    out = dict(e)
    modified = e.get("modified")
    if isinstance(modified, int | float):
        out["modified"] = datetime.fromtimestamp(modified, UTC).isoformat().replace("+00:00", "Z")
    return out


def _path(path: str) -> str:
    if not path or "\0" in path:
        raise InvalidRequest("path: must be a non-empty path without NUL bytes")
    return path


@router.get("")
async def read(
    sandbox_id: str, path: str, svc: ServicesDep, who: PrincipalDep, user: str = "user"
) -> StreamingResponse:
    agent = await svc.sandboxes.agent(who, sandbox_id)
    reader = agent.read(_path(path), user=user)

    async def close() -> None:
        await reader.__aexit__(None, None, None)

    with translating(sandbox_id):
        opened = await reader.__aenter__()
        content = await file_body(aiter(opened), opened.entry.get("size"), close)
    headers = {} if content.length is None else {"Content-Length": str(content.length)}
    return StreamingResponse(content.chunks, media_type="application/octet-stream", headers=headers)


@router.put("")
async def write(
    sandbox_id: str, path: str, request: Request, svc: ServicesDep, who: PrincipalDep, user: str = "user"
) -> dict[str, Any]:
    row = await svc.sandboxes.get(who, sandbox_id)
    length = request.headers.get("content-length")
    if length and length.isascii() and length.isdigit() and int(length) > row.disk_mb * 1024 * 1024:
        raise TooLarge(f"sandbox {sandbox_id}: upload of {length} bytes exceeds its {row.disk_mb} MiB disk")
    agent = await svc.sandboxes.agent(who, sandbox_id)
    with translating(sandbox_id):
        return entry(await agent.write(_path(path), request.stream(), user=user))


@router.delete("", status_code=204)
async def remove(sandbox_id: str, path: str, svc: ServicesDep, who: PrincipalDep, user: str = "user") -> Response:
    agent = await svc.sandboxes.agent(who, sandbox_id)
    with translating(sandbox_id):
        await agent.remove(_path(path), user=user)
    return Response(status_code=204)


@router.get("/list")
async def list_(
    sandbox_id: str, path: str, svc: ServicesDep, who: PrincipalDep, depth: int = 1, user: str = "user"
) -> list[dict[str, Any]]:
    if not 1 <= depth <= 32:
        raise InvalidRequest("depth: must be between 1 and 32")
    agent = await svc.sandboxes.agent(who, sandbox_id)
    with translating(sandbox_id):
        return [entry(e) for e in await agent.list(_path(path), depth=depth, user=user)]


@router.get("/stat")
async def stat(sandbox_id: str, path: str, svc: ServicesDep, who: PrincipalDep, user: str = "user") -> dict[str, Any]:
    agent = await svc.sandboxes.agent(who, sandbox_id)
    with translating(sandbox_id):
        return entry(await agent.stat(_path(path), user=user))


@router.post("/mkdir")
async def mkdir(sandbox_id: str, body: MkdirBody, svc: ServicesDep, who: PrincipalDep) -> dict[str, bool]:
    agent = await svc.sandboxes.agent(who, sandbox_id)
    with translating(sandbox_id):
        return {"created": await agent.mkdir(_path(body.path), user=body.user)}


@router.post("/move")
async def move(sandbox_id: str, body: MoveBody, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    agent = await svc.sandboxes.agent(who, sandbox_id)
    with translating(sandbox_id):
        return entry(await agent.rename(_path(body.src), _path(body.dst), user=body.user))
