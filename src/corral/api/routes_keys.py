"""``/v1/keys``: API keys (admin only). A new key is shown once; only its hash is kept."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from corral.api.deps import AdminDep, ServicesDep
from corral.service.auth import new_key
from corral.store.repo import iso as _iso

router = APIRouter(prefix="/v1/keys", tags=["keys"])


class KeyBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)


@router.post("", status_code=201)
async def create(body: KeyBody, svc: ServicesDep, _: AdminDep) -> dict[str, Any]:
    key = new_key()
    row = await asyncio.to_thread(svc.auth.add, key, body.name)
    return {"id": row.id, "name": row.name, "key": key, "created_at": _iso(row.created_at)}


@router.get("")
async def list_(svc: ServicesDep, _: AdminDep) -> list[dict[str, Any]]:
    rows = await asyncio.to_thread(svc.auth.store.keys)
    return [
        {"id": r.id, "name": r.name, "prefix": r.prefix, "created_at": _iso(r.created_at),
         "revoked_at": _iso(r.revoked_at), "admin": r.admin}
        for r in rows
    ]


@router.delete("/{key_id}", status_code=204)
async def revoke(key_id: str, svc: ServicesDep, _: AdminDep) -> Response:
    await asyncio.to_thread(svc.auth.revoke, key_id)
    return Response(status_code=204)
