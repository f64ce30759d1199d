"""E2B template builds at ``E2B_API_URL``: what the SDKs' ``Template.build()`` calls.

``POST /v3/templates`` announces a build; ``GET /templates/{id}/files/{hash}`` says whether a COPY's
files are here and gives a signed upload link (``PUT /e2b-uploads/…``, which the SDK calls without
its API key: the signature is the credential); ``POST /v2/templates/{id}/builds/{buildID}`` starts it;
``GET /templates/{id}/builds/{buildID}/status`` is polled for the state and log entries;
``GET /templates/aliases/{alias}`` answers ``Template.exists()``; ``GET /templates`` lists, ``DELETE
/templates/{id}`` deletes (the SDKs' ``delete_snapshot`` too: E2B's snapshots are templates). The work
is in ``corral.service.e2b_templates``; the rest of E2B's templates API answers 501 (``control``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from corral.api.deps import PrincipalDep, ServicesDep
from corral.service.errors import InvalidRequest, ServiceError, TooLarge

router = APIRouter(tags=["e2b"], include_in_schema=False)
MAX_BODY = 4 << 20  # a build's steps (1,000 at most) with their commands


class NotSupported(ServiceError):
    status = 501


async def _json(request: Request) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise TooLarge(f"the request body is larger than {MAX_BODY >> 10} KiB")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise TooLarge(f"the request body is larger than {MAX_BODY >> 10} KiB")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, a number of too many digits, deep nesting
        raise InvalidRequest(f"body: not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body: must be a JSON object")
    return body


@router.get("/templates/aliases/{alias}")
async def alias(alias: str, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return svc.e2b_templates.alias(who, alias)


@router.post("/v3/templates", status_code=202)
async def request_build(request: Request, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return svc.e2b_templates.request(who, await _json(request))


@router.get("/templates/{template_id}/files/{files_hash}", status_code=201)
async def file_link(template_id: str, files_hash: str, request: Request, svc: ServicesDep,
                    who: PrincipalDep) -> dict[str, Any]:
    return svc.e2b_templates.file_link(who, template_id, files_hash, str(request.base_url))


@router.put("/e2b-uploads/{key_id}/{files_hash}/{expires}/{signature}")
async def upload(key_id: str, files_hash: str, expires: int, signature: str, request: Request,
                 svc: ServicesDep) -> Response:
    """No API key: the SDKs send none with the upload; the signed link is the credential."""
    length = request.headers.get("content-length")
    await svc.e2b_templates.receive(key_id, files_hash, expires, signature,
                                    int(length) if length and length.isdigit() else None, request.stream())
    return Response(status_code=200)


@router.post("/v2/templates/{template_id}/builds/{build_id}", status_code=202)
async def start_build(template_id: str, build_id: str, request: Request, svc: ServicesDep,
                      who: PrincipalDep) -> Response:
    await svc.e2b_templates.start(who, template_id, build_id, await _json(request))
    return Response(status_code=202)


@router.get("/templates/{template_id}/builds/{build_id}/status")
async def build_status(
    template_id: str, build_id: str, svc: ServicesDep, who: PrincipalDep,
    logs_offset: Annotated[int, Query(alias="logsOffset", ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 100,
) -> dict[str, Any]:
    return await svc.e2b_templates.status(who, template_id, build_id, logs_offset, limit)


@router.get("/templates")
async def list_templates(svc: ServicesDep, who: PrincipalDep) -> list[dict[str, Any]]:
    settings = svc.settings
    return svc.e2b_templates.listed(who, settings.default_cpu, settings.default_memory_mb, settings.default_disk_mb)


@router.api_route("/templates/tags", methods=["POST", "DELETE"])
async def tags(who: PrincipalDep) -> Response:
    raise NotSupported("template tags are not supported by Corral (a template has one build)")


@router.delete("/templates/{template_id}", status_code=204)
async def delete_template(template_id: str, svc: ServicesDep, who: PrincipalDep) -> Response:
    await svc.e2b_templates.delete(who, template_id)
    return Response(status_code=204)
