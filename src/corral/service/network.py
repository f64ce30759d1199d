"""Sandbox network policies from API fields: the native model and E2B's, checked into one type."""

from __future__ import annotations

from collections.abc import Sequence

from corral.runtime import netpolicy
from corral.runtime.netpolicy import NetworkPolicy, PolicyError
from corral.service.errors import InvalidRequest


def native(
    network: str | None, allow_out: Sequence[str] | None, deny_out: Sequence[str] | None
) -> NetworkPolicy:
    """``network`` = ``none`` | ``internet``; an ``allow_out`` list makes an allow-list; deny beats allow."""
    try:
        return netpolicy.parse_policy(network, allow_out, deny_out)
    except PolicyError as exc:
        raise InvalidRequest(str(exc)) from exc


def e2b(
    allow_internet_access: bool | None, allow_out: Sequence[str] | None, deny_out: Sequence[str] | None
) -> NetworkPolicy:
    """E2B's ``allow_internet_access`` and ``network.allowOut/denyOut`` (allow beats deny there)."""
    try:
        return netpolicy.from_e2b(allow_internet_access, allow_out, deny_out)
    except PolicyError as exc:
        raise InvalidRequest(str(exc)) from exc
