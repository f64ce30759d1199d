"""E2B control-plane shapes: sandbox records and usage as E2B's JSON, template aliases, list paging.

Pure functions, no I/O, unit-tested (tests/unit/test_e2b_models.py); the handlers in
``corral.api.e2b.control`` call the service and serialise through these. Field names and formats
follow the E2B API as the official SDKs parse it (docs/e2b-compatibility.md).
"""

from __future__ import annotations

import base64
import binascii
import math
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from corral.runtime.backend import SandboxUsage
from corral.service.errors import InvalidRequest
from corral.store.models import SandboxRow
from corral.store.repo import iso as _iso
from corral.store.repo import utc

ENVD_VERSION = "0.5.7"
"""The envd version we advertise: it switches SDK features on (default user from the server,
CloseStdin, octet-stream uploads) and must not claim what our envd emulation lacks (0.6.x)."""
CLIENT_ID = "corral"
TEMPLATE_ALIASES = {"code-interpreter-v1": "code-interpreter"}
"""E2B's default template names → ours. ``base`` is ``base`` in both."""
STATES = ("running", "paused")
MAX_PAGE = 100

Order = Literal["asc", "desc"]


def template_name(template_id: str) -> str:
    """Our template for an E2B ``templateID``: aliases mapped, a ``:default``/``:latest`` tag dropped."""
    name = template_id.strip()
    for tag in (":default", ":latest"):
        name = name.removesuffix(tag)
    return TEMPLATE_ALIASES.get(name, name)


def template_alias(name: str) -> str | None:
    """The E2B alias of one of our templates, if it has one."""
    return next((alias for alias, ours in TEMPLATE_ALIASES.items() if ours == name), None)


def state(row: SandboxRow) -> str:
    """E2B knows two states of a live sandbox."""
    return "paused" if row.state == "paused" else "running"


def sandbox(row: SandboxRow, token: str | None) -> dict[str, Any]:
    """The ``Sandbox`` object answered by create and connect (the SDK keeps the token and domain)."""
    out: dict[str, Any] = {
        "templateID": row.template, "sandboxID": row.id, "clientID": CLIENT_ID, "envdVersion": ENVD_VERSION,
        "envdAccessToken": token, "trafficAccessToken": token, "domain": None,
    }
    alias = template_alias(row.template)
    if alias:
        out["alias"] = alias
    return out


def listed(row: SandboxRow) -> dict[str, Any]:
    """A ``ListedSandbox`` (one item of ``GET /v2/sandboxes``)."""
    out: dict[str, Any] = {
        "templateID": row.template, "sandboxID": row.id, "clientID": CLIENT_ID,
        "startedAt": _iso(row.created_at), "endAt": _iso(row.expires_at),
        "cpuCount": cpu_count(row), "memoryMB": row.memory_mb, "diskSizeMB": row.disk_mb,
        "state": state(row), "envdVersion": ENVD_VERSION, "metadata": dict(row.meta or {}),
    }
    alias = template_alias(row.template)
    if alias:
        out["alias"] = alias
    return out


def detail(row: SandboxRow, token: str | None, net: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``SandboxDetail`` (``GET /sandboxes/{id}``); ``net`` is the runtime's network description."""
    out = {
        **listed(row), "envdAccessToken": token, "domain": None,
        "lifecycle": {"autoResume": False, "onTimeout": "kill"},
    }
    if net is not None:
        out.update(network_fields(net))
    return out


def network_fields(net: dict[str, Any]) -> dict[str, Any]:
    """Our policy as E2B's ``allowInternetAccess`` + ``network`` (an allow-list is "deny all, allow ...")."""
    mode = net.get("mode", "none")
    deny = list(net.get("deny_out") or [])
    if mode != "internet":
        deny = ["0.0.0.0/0", *deny]
    return {
        "allowInternetAccess": mode == "internet",
        "network": {"allowOut": list(net.get("allow_out") or []), "denyOut": deny},
    }


def cpu_count(row: SandboxRow) -> int:
    return max(1, math.ceil(row.cpu))


def metric(row: SandboxRow, use: SandboxUsage, at: datetime) -> dict[str, Any]:
    """One ``SandboxMetric`` sampled at ``at``. ``cpuUsedPct`` is the average since the sandbox
    started (of its CPU quota); ``memCache`` is not measured (0)."""
    started = utc(row.created_at) or at
    elapsed = max((at - started).total_seconds(), 1e-3)
    pct = 100.0 * use.cpu_seconds / (elapsed * max(row.cpu, 1e-3))
    return {
        "timestamp": _iso(at), "timestampUnix": int(at.timestamp()), "cpuCount": cpu_count(row),
        "cpuUsedPct": round(min(max(pct, 0.0), 100.0), 2), "memUsed": use.memory_bytes,
        "memTotal": use.memory_limit_bytes, "memCache": 0, "diskUsed": use.disk_bytes,
        "diskTotal": use.disk_limit_bytes,
    }


@dataclass(frozen=True)
class ListQuery:
    """The filters and page of ``GET /v2/sandboxes``, parsed and checked."""

    metadata: dict[str, str] = field(default_factory=dict)
    states: frozenset[str] = frozenset(STATES)
    order: Order = "desc"
    started_after: datetime | None = None
    template: str | None = None
    limit: int = MAX_PAGE
    after: tuple[str, str] | None = None  # (startedAt, sandbox id) of the last item of the previous page


def metadata_filter(text: str | None) -> dict[str, str]:
    """``metadata`` as the SDKs send it: ``urlencode`` of percent-encoded keys and values."""
    if not text:
        return {}
    pairs = urllib.parse.parse_qsl(text, keep_blank_values=True)
    return {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in pairs}


def list_query(
    metadata: str | None = None, states: Sequence[str] | None = None, order: str | None = None,
    started_after: datetime | None = None, template: str | None = None, limit: int | None = None,
    next_token: str | None = None,
) -> ListQuery:
    wanted = {s.strip() for item in states or () for s in item.split(",") if s.strip()}
    unknown = wanted - set(STATES)
    if unknown:
        raise InvalidRequest(f"state: unknown {', '.join(sorted(unknown))} (expected running, paused)")
    if order not in (None, "asc", "desc"):
        raise InvalidRequest(f"order: expected 'asc' or 'desc', got {order!r}")
    if limit is not None and not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit: must be between 1 and {MAX_PAGE}, got {limit}")
    return ListQuery(
        metadata=metadata_filter(metadata), states=frozenset(wanted or STATES),
        order="asc" if order == "asc" else "desc", started_after=utc(started_after),
        template=template_name(template) if template else None, limit=limit or MAX_PAGE,
        after=_decode_token(next_token) if next_token else None,
    )


def _key(row: SandboxRow) -> tuple[str, str]:
    started = utc(row.created_at)
    return (started.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if started else "", row.id)  # fixed width: sorts as text


def _encode_token(key: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(f"{key[0]}|{key[1]}".encode()).decode().rstrip("=")


def _decode_token(token: str) -> tuple[str, str]:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    started, sep, sandbox_id = text.partition("|")
    if not sep or not sandbox_id:
        raise InvalidRequest("nextToken: not a token this server issued")
    return started, sandbox_id


def select(rows: Iterable[SandboxRow], q: ListQuery) -> list[SandboxRow]:
    """The rows matching the filters, ordered by start time (then id); no paging."""
    chosen = [
        r for r in rows
        if state(r) in q.states
        and all((r.meta or {}).get(k) == v for k, v in q.metadata.items())
        and (q.template is None or r.template == q.template)
        and (q.started_after is None or (utc(r.created_at) or q.started_after) >= q.started_after)
    ]
    chosen.sort(key=_key, reverse=q.order == "desc")
    return chosen


def page(rows: Iterable[SandboxRow], q: ListQuery) -> tuple[list[SandboxRow], str | None]:
    """One page of ``select`` and the next token (None on the last page). The cursor is the last
    item's key, so a page never repeats or skips a sandbox that existed when the listing started."""
    chosen = select(rows, q)
    if q.after is not None:
        after = q.after
        chosen = [r for r in chosen if (_key(r) > after if q.order == "asc" else _key(r) < after)]
    items = chosen[: q.limit]
    more = len(chosen) > q.limit
    return items, _encode_token(_key(items[-1])) if more and items else None
