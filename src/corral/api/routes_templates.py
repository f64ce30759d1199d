"""``/v1/templates`` and ``/v1/builds``: build templates from Dockerfiles, follow builds, list, delete.

A build is asynchronous: ``POST /v1/templates`` answers 202 with the build record; its log streams from
``GET /v1/builds/{id}/logs`` (NDJSON or SSE, ``follow`` until it ends); the record says how it ended.
With a build context, the request is ``multipart/form-data``: a ``build`` part (the JSON body) and a
``context`` part (a tar, optionally gzip/bzip2/xz-compressed). Without one, a plain JSON body.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from corral.api.deps import PrincipalDep, ServicesDep
from corral.api.streaming import event_response
from corral.service.builds import MAX_CONTEXT_BYTES, BuildRequest
from corral.service.errors import InvalidRequest, ServiceError
from corral.service.templates import TemplateInfo
from corral.store.models import BuildRow
from corral.store.repo import iso as _iso

router = APIRouter(tags=["templates"])
MAX_UPLOAD = MAX_CONTEXT_BYTES  # compressed; the unpacked size is checked too


class LengthRequired(ServiceError):
    status = 411


class BuildBody(BaseModel):
    name: str = Field(description="the template's name")
    dockerfile: str = Field(description="the Dockerfile's text")
    build_args: dict[str, str] = Field(default_factory=dict)
    cpu: float | None = Field(default=None, description="cores for the build, and the template's default")
    memory_mb: int | None = Field(default=None, description="memory for the build, and the template's default")
    disk_mb: int | None = Field(default=None, description="disk limit of each build step")
    no_cache: bool = False
    timeout: float | None = Field(default=None, description="seconds the whole build may take (default 1800)")
    start_cmd: str | None = Field(default=None, description="run (sh -c) when a sandbox starts; else CMD")
    ready_cmd: str | None = Field(default=None, description="create returns once this exits 0")
    ready_port: int | None = Field(default=None, description="create returns once this port accepts")
    public: bool = Field(default=False, description="visible to every API key (default: the builder's key)")
    isolation: str | None = Field(default=None, description="bwrap or gvisor: the default isolation of the "
                                  "template's sandboxes (a create's own isolation wins); default: the server's")


@router.post("/v1/templates", status_code=202)
async def build(request: Request, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        length = request.headers.get("content-length")
        if length is None:
            raise LengthRequired("a build upload needs a Content-Length")
        if not length.isdigit() or int(length) > MAX_UPLOAD:
            raise InvalidRequest(f"the build upload is larger than {MAX_UPLOAD >> 20} MiB")
        async with request.form(max_files=1, max_fields=4) as form:
            raw = form.get("build")
            context = form.get("context")
            if not isinstance(raw, str):
                raise InvalidRequest("multipart builds need a 'build' field holding the JSON options")
            if context is not None and not isinstance(context, UploadFile):
                raise InvalidRequest("'context' must be a file part (a tar archive)")
            body = _body(raw)
            row = await svc.builds.submit(who, BuildRequest(**body.model_dump()),
                                          context.file if context is not None else None)
    elif content_type == "application/json":
        body = _body((await request.body()).decode(errors="replace"))
        row = await svc.builds.submit(who, BuildRequest(**body.model_dump()), None)
    else:
        raise InvalidRequest("send the build as application/json, or multipart/form-data with a context")
    return describe_build(row)


def _body(raw: str) -> BuildBody:
    try:
        return BuildBody.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"build: not valid JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequest(f"build: {where}: {first['msg']}") from None


@router.get("/v1/templates")
async def list_(svc: ServicesDep, who: PrincipalDep) -> list[dict[str, Any]]:
    templates = svc.sandboxes.templates
    return [describe_template(t) for t in templates.all() if templates.visible(t, who)]


@router.get("/v1/templates/{name}")
async def get(name: str, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    info = svc.sandboxes.templates.for_caller(name, who)
    out = describe_template(info)
    out["builds"] = [describe_build(b) for b in await svc.builds.builds_of(who, name)]
    return out


@router.delete("/v1/templates/{name}", status_code=204)
async def delete(name: str, svc: ServicesDep, who: PrincipalDep) -> Response:
    await svc.builds.delete_template(who, name)
    return Response(status_code=204)


@router.get("/v1/builds/{build_id}")
async def get_build(build_id: str, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return describe_build(await svc.builds.get(who, build_id))


@router.get("/v1/builds/{build_id}/logs")
async def logs(build_id: str, request: Request, svc: ServicesDep, who: PrincipalDep,
               follow: bool = True) -> StreamingResponse:
    return event_response(request, await svc.builds.events(who, build_id, follow))


def describe_build(row: BuildRow) -> dict[str, Any]:
    return {
        "id": row.id, "template": row.template, "state": row.state, "created_at": _iso(row.created_at),
        "finished_at": _iso(row.finished_at), "error": row.error, "error_detail": row.error_detail,
        "steps": row.steps or [], "options": row.options or {},
    }


def describe_template(info: TemplateInfo) -> dict[str, Any]:
    return {
        "name": info.name, "builtin": info.builtin, "base": info.base, "layers": len(info.refs),
        "public": info.builtin or info.public, "build_id": info.build_id, "created_at": _iso(info.created_at),
        "updated_at": _iso(info.updated_at),
        "config": info.config.to_json(),
    }
