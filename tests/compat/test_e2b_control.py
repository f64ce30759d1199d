"""The E2B control plane, driven by the unmodified official Python SDKs against a real server.

Create (``base`` and the code interpreter's ``code-interpreter-v1`` alias), info, timeouts, list with
metadata filters and paging, connect, kill, metrics, pause/resume, and the error types the SDK
raises for our error answers.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from e2b import (
    AuthenticationException,
    NotFoundException,
    RateLimitException,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    SandboxQuery,
    SandboxState,
)
from e2b_code_interpreter import Sandbox as CodeSandbox

from conftest import (
    Server,
    corral_cgroups,
    make_data_dir,
    mounts_under,
    remove_data_dir,
    sandbox_mounts,
    sandbox_processes,
    start_server,
)
from corral.config import Settings


@pytest.fixture
def sbx(e2b_env: Server) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(timeout=120)
    yield sandbox
    Sandbox.kill(sandbox.sandbox_id)


def close_to(when: datetime, expected: datetime, slack: float = 30) -> bool:
    return abs((when - expected).total_seconds()) < slack


def freezer_state(server: Server, sandbox_id: str) -> str:
    """``frozen 0|1`` of the sandbox's cgroup2 group (the unified mount on hybrid hosts)."""
    instance = Settings(data_dir=server.data_dir).instance
    for root in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        events = root / "corral" / instance / sandbox_id / "cgroup.events"
        if events.exists():
            return next(line for line in events.read_text().splitlines() if line.startswith("frozen"))
    raise AssertionError(f"no cgroup2 group for {sandbox_id}")


def test_create_info_timeout_kill(e2b_env: Server) -> None:
    sandbox = Sandbox.create(timeout=120, metadata={"owner": "compat"}, envs={"GREETING": "hi"})
    assert len(sandbox.sandbox_id) == 20 and sandbox.sandbox_id.isalnum()
    info = sandbox.get_info()
    assert (info.sandbox_id, info.template_id, info.state) == (sandbox.sandbox_id, "base", SandboxState.RUNNING)
    assert info.metadata == {"owner": "compat"}
    assert info.cpu_count >= 1 and info.memory_mb == 512 and info.envd_version == "0.5.7"
    assert close_to(info.end_at, info.started_at + timedelta(seconds=120))
    assert sandbox.is_running()

    sandbox.set_timeout(600)
    assert close_to(sandbox.get_info().end_at, datetime.now(UTC) + timedelta(seconds=600))
    Sandbox.set_timeout(sandbox.sandbox_id, 60)  # the class form; the deadline may also move earlier
    assert close_to(Sandbox.get_info(sandbox.sandbox_id).end_at, datetime.now(UTC) + timedelta(seconds=60))

    assert sandbox.kill() is True
    assert sandbox.kill() is False
    assert Sandbox.kill(sandbox.sandbox_id) is False
    with pytest.raises(SandboxNotFoundException):
        sandbox.get_info()
    with pytest.raises(SandboxNotFoundException):
        sandbox.set_timeout(60)


def test_default_timeout_is_300_seconds(e2b_env: Server) -> None:
    sandbox = Sandbox.create()  # the SDK omits "timeout" then
    try:
        info = sandbox.get_info()
        assert close_to(info.end_at, info.started_at + timedelta(seconds=300))
    finally:
        assert Sandbox.kill(sandbox.sandbox_id) is True


def test_code_interpreter_template_alias(e2b_env: Server) -> None:
    sandbox = CodeSandbox.create(timeout=120)  # templateID "code-interpreter-v1"
    try:
        info = sandbox.get_info()
        assert info.template_id == "code-interpreter" and info.name == "code-interpreter-v1"
        assert info.state == SandboxState.RUNNING
    finally:
        assert sandbox.kill() is True


def test_list_filters_by_metadata_and_pages(e2b_env: Server, sbx: Sandbox) -> None:
    tag = secrets.token_hex(4)
    mine = [Sandbox.create(timeout=120, metadata={"suite": tag, "n": str(i), "odd key": "a&b=c"}) for i in range(3)]
    try:
        paginator = Sandbox.list(query=SandboxQuery(metadata={"suite": tag}), limit=2)
        first = paginator.next_items()
        assert len(first) == 2 and paginator.has_next
        second = paginator.next_items()
        assert len(second) == 1 and not paginator.has_next
        seen = [s.sandbox_id for s in first + second]
        assert sorted(seen) == sorted(s.sandbox_id for s in mine)  # no repeats, none left out
        assert [s.metadata["n"] for s in first + second] == ["2", "1", "0"]  # newest first by default
        assert all(s.state == SandboxState.RUNNING and s.template_id == "base" for s in first + second)

        odd = Sandbox.list(query=SandboxQuery(metadata={"odd key": "a&b=c", "n": "1"})).next_items()
        assert [s.sandbox_id for s in odd] == [mine[1].sandbox_id]
        ascending = Sandbox.list(query=SandboxQuery(metadata={"suite": tag}), order="asc").next_items()
        assert [s.metadata["n"] for s in ascending] == ["0", "1", "2"]
        hour = timedelta(hours=1)
        recent = SandboxQuery(metadata={"suite": tag}, started_after=datetime.now(UTC) - hour, template="base")
        assert len(Sandbox.list(query=recent).next_items()) == 3
        future = SandboxQuery(metadata={"suite": tag}, started_after=datetime.now(UTC) + hour)
        assert Sandbox.list(query=future).next_items() == []
        everyone = {s.sandbox_id for s in Sandbox.list().next_items()}
        assert sbx.sandbox_id in everyone and {s.sandbox_id for s in mine} <= everyone
    finally:
        for each in mine:
            each.kill()
    assert Sandbox.list(query=SandboxQuery(metadata={"suite": tag})).next_items() == []


def test_connect_returns_a_working_handle_and_only_extends(e2b_env: Server) -> None:
    sandbox = Sandbox.create(timeout=60)
    try:
        same = Sandbox.connect(sandbox.sandbox_id, timeout=600)
        assert same.sandbox_id == sandbox.sandbox_id and same.is_running()
        later = same.get_info().end_at
        assert close_to(later, datetime.now(UTC) + timedelta(seconds=600))
        sandbox.connect(timeout=10)  # instance form: a running sandbox's deadline never moves earlier
        assert sandbox.get_info().end_at == later
    finally:
        sandbox.kill()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sandbox.sandbox_id)


def test_metrics(sbx: Sandbox) -> None:
    metrics = sbx.get_metrics()
    assert len(metrics) >= 1
    m = metrics[-1]
    assert m.cpu_count >= 1 and 0 <= m.cpu_used_pct <= 100
    assert 0 < m.mem_used <= m.mem_total == 512 << 20
    assert 0 < m.disk_used < m.disk_total
    assert close_to(m.timestamp, datetime.now(UTC))
    assert Sandbox.get_metrics(sbx.sandbox_id, start=datetime.now(UTC) - timedelta(minutes=5))


def test_pause_freezes_and_connect_resumes(e2b_env: Server, sbx: Sandbox) -> None:
    native = e2b_env.client()
    base = f"/v1/sandboxes/{sbx.sandbox_id}"
    assert native.put(f"{base}/files", params={"path": "kept.txt"}, content=b"state").status_code == 200

    assert sbx.pause() is True
    assert freezer_state(e2b_env, sbx.sandbox_id) == "frozen 1"
    assert sbx.get_info().state == SandboxState.PAUSED
    assert sbx.pause() is False  # 409: already paused
    paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
    assert sbx.sandbox_id in [s.sandbox_id for s in paused]
    running = Sandbox.list(query=SandboxQuery(state=[SandboxState.RUNNING])).next_items()
    assert sbx.sandbox_id not in [s.sandbox_id for s in running]
    r = native.post(f"{base}/commands", json={"cmd": "true"})
    assert r.status_code == 409 and "paused" in r.json()["message"]
    with pytest.raises(SandboxException, match="409"):
        sbx.set_timeout(60)  # a paused sandbox has no deadline: resume it with one

    resumed = Sandbox.connect(sbx.sandbox_id, timeout=200)
    assert freezer_state(e2b_env, sbx.sandbox_id) == "frozen 0"
    info = resumed.get_info()
    assert info.state == SandboxState.RUNNING
    assert close_to(info.end_at, datetime.now(UTC) + timedelta(seconds=200))
    assert native.get(f"{base}/files", params={"path": "kept.txt"}).content == b"state"
    assert resumed.pause() is True
    assert Sandbox.kill(sbx.sandbox_id) is True  # a paused sandbox can be killed
    assert native.get(base).status_code == 404


def wait_until_gone(sandbox_id: str, seconds: float = 30) -> None:
    """Poll the API until the sandbox is gone (a timer on the server, not in this process, ends it)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            Sandbox.get_info(sandbox_id)
        except SandboxNotFoundException:
            return
        assert time.monotonic() < deadline, f"sandbox {sandbox_id} outlived its timeout"
        time.sleep(0.1)


def test_paused_sandbox_outlives_its_deadline(e2b_env: Server) -> None:
    paused = Sandbox.create(timeout=120)
    witness = Sandbox.create(timeout=120)
    try:
        paused.set_timeout(2)
        witness.set_timeout(2)  # expires after the paused one's old deadline
        assert paused.pause() is True
        wait_until_gone(witness.sandbox_id)
        assert paused.get_info().state == SandboxState.PAUSED
        paused.connect(timeout=120)
        assert paused.get_info().state == SandboxState.RUNNING
    finally:
        paused.kill()
        witness.kill()


def test_paused_sandboxes_leave_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server crashing with a paused (frozen) sandbox, and one stopping cleanly with one."""
    data = make_data_dir()
    try:
        first = start_server(data)
        monkeypatch.setenv("E2B_API_URL", first.url)
        monkeypatch.setenv("E2B_API_KEY", first.api_key)
        assert Sandbox.create(timeout=300).pause() is True
        first.stop(signal.SIGKILL)  # no cleanup code runs
        second = start_server(data, api_key=first.api_key)
        try:
            assert (sandbox_mounts(data), corral_cgroups(data), sandbox_processes(data)) == ([], [], [])
            monkeypatch.setenv("E2B_API_URL", second.url)
            assert Sandbox.list().next_items() == []
            assert Sandbox.create(timeout=300).pause() is True
        finally:
            second.stop()
        assert (mounts_under(data), corral_cgroups(data), sandbox_processes(data)) == ([], [], [])
    finally:
        remove_data_dir(data)


def test_sandbox_limit_is_a_rate_limit_and_counts_paused_sandboxes(monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_data_dir()
    try:
        srv = start_server(data, CORRAL_MAX_SANDBOXES="1")
        try:
            monkeypatch.setenv("E2B_API_URL", srv.url)
            monkeypatch.setenv("E2B_API_KEY", srv.api_key)
            only = Sandbox.create(timeout=60)
            with pytest.raises(RateLimitException, match="at most 1"):
                Sandbox.create(timeout=60)
            assert only.pause() is True
            with pytest.raises(RateLimitException):  # a paused sandbox still holds its memory and disk
                Sandbox.create(timeout=60)
            assert only.kill() is True
            assert Sandbox.create(timeout=60).kill() is True
        finally:
            srv.stop()
    finally:
        remove_data_dir(data)


def test_pause_unknown_sandbox(e2b_env: Server) -> None:
    with pytest.raises(SandboxNotFoundException):
        Sandbox.pause("nosuchsandbox0000000")


def test_wrong_key_is_an_authentication_error(e2b_env: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2B_API_KEY", "e2b_" + "0" * 40)
    with pytest.raises(AuthenticationException):
        Sandbox.create()
    with pytest.raises(AuthenticationException):
        Sandbox.list().next_items()
    with pytest.raises(AuthenticationException):
        Sandbox.kill("nosuchsandbox0000000")


def test_unknown_sandbox_is_not_found(e2b_env: Server) -> None:
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info("nosuchsandbox0000000")
    with pytest.raises(NotFoundException):
        Sandbox.get_metrics("nosuchsandbox0000000")
    assert Sandbox.kill("nosuchsandbox0000000") is False


def test_unknown_template_and_bad_timeout(e2b_env: Server) -> None:
    with pytest.raises(SandboxException, match=r"404.*template"):
        Sandbox.create(template="no-such-template")
    with pytest.raises(SandboxException, match=r"400.*timeout"):
        Sandbox.create(timeout=10**7)


def test_unsupported_features_answer_501(e2b_env: Server, sbx: Sandbox) -> None:
    with pytest.raises(SandboxException, match=r"501.*not supported by Corral yet"):
        sbx.create_snapshot()
    headers = {"X-API-KEY": e2b_env.api_key}
    for method, path in [("POST", f"/sandboxes/{sbx.sandbox_id}/fork"), ("POST", "/templates"),
                         ("GET", "/volumes"), ("GET", "/templates/base"), ("POST", "/templates/tags"),
                         ("DELETE", "/templates/tags")]:
        r = httpx.request(method, e2b_env.url + path, headers=headers, json={})
        assert r.status_code == 501 and r.json() == {"code": 501, "message": r.json()["message"]}
    assert httpx.post(e2b_env.url + "/templates").status_code == 401  # the key is checked first


def test_v1_paths_of_older_sdks(e2b_env: Server) -> None:
    """``POST /sandboxes`` and ``/sandboxes/{id}/connect`` as Python ≤2.50 and older JS send them."""
    with httpx.Client(base_url=e2b_env.url, headers={"X-API-KEY": e2b_env.api_key}) as api:
        r = api.post("/sandboxes", json={"templateID": "base", "timeout": 60, "secure": True, "autoPause": False,
                                         "allow_internet_access": True, "metadata": {}, "envVars": {}})
        assert r.status_code == 201, r.text
        created = r.json()
        sid = created["sandboxID"]
        assert created["envdAccessToken"] == created["trafficAccessToken"] and created["domain"] is None
        assert created["clientID"] and created["envdVersion"] == "0.5.7" and created["templateID"] == "base"
        r = api.post(f"/sandboxes/{sid}/connect", json={"timeout": 120})
        assert r.status_code == 200 and r.json()["envdAccessToken"] == created["envdAccessToken"]
        assert sid in [s["sandboxID"] for s in api.get("/sandboxes").json()]
        assert api.post(f"/sandboxes/{sid}/resume", json={"timeout": 60}).status_code == 409  # it runs
        assert api.post(f"/sandboxes/{sid}/pause").status_code == 204
        assert sid not in [s["sandboxID"] for s in api.get("/sandboxes").json()]  # v1 lists running only
        r = api.post(f"/v2/sandboxes/{sid}/connect")  # no body at all: the default timeout
        assert r.status_code == 201 and r.json()["sandboxID"] == sid
        assert api.delete(f"/sandboxes/{sid}").status_code == 204
        assert api.delete(f"/sandboxes/{sid}").status_code == 404
