"""The warm pool: creates served from ready sandboxes that are as fresh as cold ones."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import (
    TEST_BACKEND,
    Server,
    corral_cgroups,
    main_text,
    make_data_dir,
    mounts_under,
    remove_data_dir,
    run_code,
    run_command,
    sandbox_mounts,
    sandbox_processes,
    start_server,
)

POOL_DEADLINE = 60.0


@pytest.fixture(scope="module")
def srv() -> Iterator[Server]:
    data = make_data_dir()
    server = start_server(data, CORRAL_POOL="base=2")
    yield server
    server.stop()
    assert mounts_under(data) == [] and corral_cgroups(data) == [] and sandbox_processes(data) == []
    remove_data_dir(data)


@pytest.fixture
def api(srv: Server) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


def pool_ready(api: httpx.Client, template: str = "base") -> int:
    pools = api.get("/v1/pool").json()["pools"]
    return sum(p["ready"] for p in pools if p["template"] == template)


def wait_pool(api: httpx.Client, at_least: int, template: str = "base") -> None:
    """Wait (bounded) until the background refill has ``at_least`` ready sandboxes."""
    deadline = time.monotonic() + POOL_DEADLINE
    while pool_ready(api, template) < at_least:
        assert time.monotonic() < deadline, api.get("/v1/pool").json()
        time.sleep(0.05)  # polling another process's background work, not test synchronisation


def create(api: httpx.Client, **fields: object) -> dict[str, object]:
    r = api.post("/v1/sandboxes", json={"timeout": 120, **fields})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_creates_come_from_the_pool_and_it_refills(api: httpx.Client) -> None:
    wait_pool(api, 2)
    first = create(api)
    assert first["pooled"] is True and pool_ready(api) <= 1
    second = create(api)
    assert second["pooled"] is True
    wait_pool(api, 2)  # refilled in the background
    for sb in (first, second):
        assert api.delete(f"/v1/sandboxes/{sb['id']}").status_code == 204


def test_a_pooled_sandbox_is_as_fresh_as_a_cold_one(api: httpx.Client) -> None:
    """Nothing one tenant does in a pooled sandbox reaches the next: every sandbox is used once."""
    wait_pool(api, 2)
    used = create(api)
    sid = str(used["id"])
    assert run_command(api, sid, "echo secret > /tmp/left && echo root-secret > /etc/left-too && "
                                  "(nohup sleep 300 >/dev/null 2>&1 &)", user="root").exit_code == 0
    assert api.delete(f"/v1/sandboxes/{sid}").status_code == 204
    wait_pool(api, 1)
    fresh = create(api, envs={"ONLY_MINE": "yes"}, metadata={"who": "next"})
    assert fresh["pooled"] is True and fresh["id"] != sid
    fid = str(fresh["id"])
    ran = run_command(api, fid, "test -e /tmp/left && echo LEAK; test -e /etc/left-too && echo LEAK; "
                                "pgrep -c sleep; hostname; echo $ONLY_MINE")
    assert ran.stdout.split("\n") == ["0", fid, "yes", ""]
    assert api.get(f"/v1/sandboxes/{fid}").json()["metadata"] == {"who": "next"}
    assert api.delete(f"/v1/sandboxes/{fid}").status_code == 204


def test_requests_the_pool_cannot_serve_start_cold(api: httpx.Client) -> None:
    wait_pool(api, 2)
    odd = create(api, memory_mb=300)
    assert odd["pooled"] is False and odd["memory_mb"] == 300
    assert run_command(api, str(odd["id"]), "true").exit_code == 0
    assert pool_ready(api) == 2
    api.delete(f"/v1/sandboxes/{odd['id']}")


@pytest.mark.skipif(shutil.which("runsc") is None, reason="runsc (gVisor) is not installed")
def test_a_create_of_the_other_isolation_starts_cold(api: httpx.Client) -> None:
    """The pool holds sandboxes of the server's default isolation; asking for the other one starts cold."""
    wait_pool(api, 2)
    other = "bwrap" if TEST_BACKEND == "gvisor" else "gvisor"
    odd = create(api, isolation=other)
    assert odd["pooled"] is False
    kernel = run_command(api, str(odd["id"]), "dmesg 2>/dev/null | head -1", user="root").stdout
    assert ("gVisor" in kernel) == (other == "gvisor")
    assert pool_ready(api) == 2
    api.delete(f"/v1/sandboxes/{odd['id']}")


def test_pooled_sandbox_timeout_counts_from_the_create(api: httpx.Client) -> None:
    wait_pool(api, 1)
    sb = create(api, timeout=2)
    assert sb["pooled"] is True
    deadline = time.monotonic() + 30
    while api.get(f"/v1/sandboxes/{sb['id']}").status_code == 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)  # waiting for the server's timer, not synchronising with it
    assert "timeout" in api.get(f"/v1/sandboxes/{sb['id']}").json()["message"]


def test_demand_grows_a_pool_for_a_built_template(api: httpx.Client) -> None:
    """A template nobody configured gets a pool once it is asked for; a rebuild replaces its pool."""
    def build(text: str) -> None:
        r = api.post("/v1/templates", json={"name": "pooled-tpl", "dockerfile": text})
        assert r.status_code == 202, r.text
        with api.stream("GET", f"/v1/builds/{r.json()['id']}/logs") as s:
            assert [line for line in s.iter_lines() if line][-1].find('"ready"') > 0

    build("FROM base\nRUN echo v1 > /version\n")
    cold = create(api, template="pooled-tpl")
    assert cold["pooled"] is False
    wait_pool(api, 1, "pooled-tpl")
    warm = create(api, template="pooled-tpl")
    assert warm["pooled"] is True
    assert run_command(api, str(warm["id"]), "cat /version").stdout == "v1\n"
    build("FROM base\nRUN echo v2 > /version\n")
    after = create(api, template="pooled-tpl")
    assert run_command(api, str(after["id"]), "cat /version").stdout == "v2\n"  # never the old build
    for sb in (cold, warm, after):
        api.delete(f"/v1/sandboxes/{sb['id']}")


def main_result(api: httpx.Client, sid: str, code: str) -> tuple[str | None, object]:
    """The cell's main result and execution count."""
    events = run_code(api, sid, code)
    return main_text(events), next((e["execution_count"] for e in events if e["type"] == "number_of_executions"), None)


def _languages(api: httpx.Client, sid: str) -> list[str]:
    return [c["language"] for c in api.get(f"/v1/sandboxes/{sid}/contexts").json()]


def test_a_pooled_code_interpreter_sandbox_has_its_kernel_running(api: httpx.Client) -> None:
    """Like E2B's, whose kernel runs from boot: the first cell does not wait for the kernel to start.
    The kernel is as fresh as the sandbox. A caller's own envs are added to the running kernel (and
    the processes it starts); envs python reads only when it starts get a kernel started with them."""
    cold = create(api, template="code-interpreter")
    assert cold["pooled"] is False
    assert _languages(api, str(cold["id"])) == []  # a cold one starts it on demand
    wait_pool(api, 1, "code-interpreter")
    warm = create(api, template="code-interpreter")
    wid = str(warm["id"])
    assert warm["pooled"] is True and _languages(api, wid) == ["python"]
    code = ("import os, socket, subprocess, sys; (socket.gethostname(), os.environ.get('ONLY_MINE'), "
            "subprocess.run('echo $ONLY_MINE', shell=True, capture_output=True, text=True).stdout, "
            "sys.flags.hash_randomization)")
    assert main_result(api, wid, code) == (repr((wid, None, "\n", 1)), 1)  # its first cell, in its own sandbox

    wait_pool(api, 1, "code-interpreter")
    mine = create(api, template="code-interpreter", envs={"ONLY_MINE": "yes"})
    mid = str(mine["id"])
    assert mine["pooled"] is True and _languages(api, mid) == ["python"]  # the kernel started ahead, kept
    assert main_result(api, mid, code) == (repr((mid, "yes", "yes\n", 1)), 1)

    wait_pool(api, 1, "code-interpreter")
    seeded = create(api, template="code-interpreter", envs={"ONLY_MINE": "too", "PYTHONHASHSEED": "0"})
    sid = str(seeded["id"])
    assert seeded["pooled"] is True and _languages(api, sid) == []  # read at start: a new kernel, with them
    assert main_result(api, sid, code) == (repr((sid, "too", "too\n", 0)), 1)
    assert _languages(api, sid) == ["python"]
    for sb in (cold, warm, mine, seeded):
        assert api.delete(f"/v1/sandboxes/{sb['id']}").status_code == 204


def test_a_code_interpreter_template_whose_kernel_cannot_start_still_pools(api: httpx.Client) -> None:
    """No `user` to run the kernel as: the pool serves the sandbox as a cold one would be, and the
    first cell says why (it did not retry the sandbox forever)."""
    dockerfile = "FROM code-interpreter\nRUN userdel -r user\n"
    r = api.post("/v1/templates", json={"name": "ci-nouser", "dockerfile": dockerfile})
    assert r.status_code == 202, r.text
    with api.stream("GET", f"/v1/builds/{r.json()['id']}/logs") as s:
        assert [line for line in s.iter_lines() if line][-1].find('"ready"') > 0
    api.delete(f"/v1/sandboxes/{create(api, template='ci-nouser')['id']}")  # demand for its pool
    wait_pool(api, 1, "ci-nouser")
    sb = create(api, template="ci-nouser")
    assert sb["pooled"] is True and api.get(f"/v1/sandboxes/{sb['id']}/contexts").json() == []
    r = api.post(f"/v1/sandboxes/{sb['id']}/code", json={"code": "1"})
    assert r.status_code == 404 and "user" in r.json()["message"], r.text
    api.delete(f"/v1/sandboxes/{sb['id']}")


def test_e2b_sdk_creates_are_served_from_the_pool(srv: Server, api: httpx.Client,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The official SDK asks for the internet with E2B's rule order (allow beats deny) and no rules:
    the default network, so the pool serves it (it did not, before) — with the kernel running, and
    the create's envs in it."""
    from e2b_code_interpreter import Sandbox

    for name, value in (("E2B_API_KEY", srv.api_key), ("E2B_API_URL", srv.url), ("E2B_SANDBOX_URL", srv.url)):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    api.delete(f"/v1/sandboxes/{create(api, template='code-interpreter')['id']}")  # demand for its pool
    wait_pool(api, 1, "code-interpreter")
    sbx = Sandbox.create(timeout=120, envs={"FROM_SDK": "yes"})
    try:
        assert [c["language"] for c in api.get(f"/v1/sandboxes/{sbx.sandbox_id}/contexts").json()] == ["python"]
        assert sbx.run_code("import os; 6 * 7, os.environ['FROM_SDK']").text == "(42, 'yes')"
    finally:
        sbx.kill()


def test_pool_is_reconciled_after_a_crash() -> None:
    data = make_data_dir()
    server = start_server(data, CORRAL_POOL="base=2")
    try:
        with server.client() as api:
            wait_pool(api, 2)
        server.stop(9)
        server = start_server(data, CORRAL_POOL="off")
        with server.client() as api:
            assert api.get("/v1/sandboxes").json() == []
        assert sandbox_processes(data) == [] and not [m for m in sandbox_mounts(data) if "/sandboxes/" in m]
    finally:
        server.stop()
        assert mounts_under(data) == [] and corral_cgroups(data) == [] and sandbox_processes(data) == []
        remove_data_dir(data)
