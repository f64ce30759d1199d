"""E2B control plane (the API at ``E2B_API_URL``): sandboxes, timeouts, metrics, connect."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["e2b"], include_in_schema=False)
