"""E2B control-plane shapes: template aliases, JSON the SDK parses, list filters and paging."""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime, timedelta

import pytest
from e2b.api.client.models import ListedSandbox, Sandbox, SandboxDetail, SandboxMetric

from corral.runtime.backend import SandboxUsage
from corral.service import e2b_models as e2b
from corral.service.errors import InvalidRequest
from corral.store.models import SandboxRow

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def row(sandbox_id: str, minute: int = 0, state: str = "running", template: str = "base", **meta: str) -> SandboxRow:
    started = T0 + timedelta(minutes=minute)
    return SandboxRow(
        id=sandbox_id, template=template, state=state, owner_key_id="k", node="local", created_at=started,
        expires_at=started + timedelta(seconds=300), meta=meta, cpu=1.0, memory_mb=512, disk_mb=2048,
    )


def test_template_aliases() -> None:
    assert e2b.template_name("base") == "base"
    assert e2b.template_name("code-interpreter-v1") == "code-interpreter"
    assert e2b.template_name("code-interpreter-v1:latest") == "code-interpreter"
    assert e2b.template_alias("code-interpreter") == "code-interpreter-v1"
    assert e2b.template_alias("base") is None


def test_shapes_parse_with_the_sdks_models() -> None:
    r = row("a" * 20, template="code-interpreter", owner="me")
    assert "alias" not in e2b.sandbox(row("b" * 20), "tok")
    created = Sandbox.from_dict(e2b.sandbox(r, "tok"))
    assert (created.sandbox_id, created.envd_access_token, created.alias) == (r.id, "tok", "code-interpreter-v1")
    detail = SandboxDetail.from_dict(e2b.detail(r, "tok"))
    assert detail.started_at == T0 and detail.end_at == T0 + timedelta(seconds=300)
    assert detail.state.value == "running" and detail.metadata == {"owner": "me"}
    listed = ListedSandbox.from_dict(e2b.listed(row("b" * 20, state="paused")))
    assert listed.state.value == "paused" and listed.cpu_count == 1 and listed.disk_size_mb == 2048
    use = SandboxUsage(cpu_seconds=30.0, memory_bytes=10 << 20, memory_limit_bytes=512 << 20, disk_bytes=1 << 20,
                       disk_limit_bytes=2 << 30, pids=3, oom_kills=0)
    metric = SandboxMetric.from_dict(e2b.metric(r, use, T0 + timedelta(seconds=60)))
    assert metric.cpu_used_pct == 50.0 and metric.mem_total == 512 << 20 and metric.timestamp_unix == int(
        (T0 + timedelta(seconds=60)).timestamp())


def test_metadata_filter_decodes_what_the_sdk_encodes() -> None:
    wanted = {"odd key": "a&b=c", "ünï": "100%"}
    sent = urllib.parse.urlencode({urllib.parse.quote(k): urllib.parse.quote(v) for k, v in wanted.items()})
    assert e2b.metadata_filter(sent) == wanted
    assert e2b.metadata_filter(None) == {}


def test_states_orders_and_limits_are_checked() -> None:
    assert e2b.list_query().states == {"running", "paused"}
    assert e2b.list_query(states=["running,paused"]).states == {"running", "paused"}
    assert e2b.list_query(states=["paused"]).states == {"paused"}
    for bad in ({"states": ["killed"]}, {"order": "up"}, {"limit": 0}, {"limit": 101}, {"next_token": "!!"}):
        with pytest.raises(InvalidRequest):
            e2b.list_query(**bad)  # type: ignore[arg-type]


def test_paging_never_repeats_or_skips() -> None:
    rows = [row(f"s{i:019d}", minute=i % 3, suite="x") for i in range(7)] + [row("other0000000000000000")]
    for order in ("asc", "desc"):
        seen: list[str] = []
        token = None
        while True:
            items, token = e2b.page(rows, e2b.list_query(metadata="suite=x", order=order, limit=3, next_token=token))
            seen += [r.id for r in items]
            if token is None:
                break
        assert sorted(seen) == sorted(r.id for r in rows[:7]) and len(seen) == 7
        starts = [next(r.created_at for r in rows if r.id == s) for s in seen]
        assert starts == sorted(starts, reverse=order == "desc")


def test_filters_by_state_template_and_start() -> None:
    rows = [row("r" * 20), row("p" * 20, minute=5, state="paused"),
            row("c" * 20, minute=9, template="code-interpreter")]
    ids = lambda **kw: [r.id for r in e2b.page(rows, e2b.list_query(**kw))[0]]  # noqa: E731
    assert ids(states=["paused"]) == ["p" * 20]
    assert ids(template="code-interpreter-v1") == ["c" * 20]
    assert ids(started_after=T0 + timedelta(minutes=4), order="asc") == ["p" * 20, "c" * 20]
    many = [row(f"m{i:019d}", minute=i) for i in range(150)]
    assert len(e2b.select(many, e2b.list_query())) == 150  # the unpaged v1 listing
    assert len(e2b.page(many, e2b.list_query())[0]) == e2b.MAX_PAGE
