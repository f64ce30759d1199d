"""The native REST API: auth, sandbox lifecycle, errors, metrics."""

from __future__ import annotations

import re
import resource
import time
from pathlib import Path

import httpx

from conftest import (
    TEST_BACKEND,
    Server,
    leftovers_of,
    loop_devices_of,
    make_data_dir,
    remove_data_dir,
    run_command,
    sandbox_init,
    sandbox_mounts,
    start_server,
)
from corral.runtime.cgroups_priv import detect, super_options


def test_health_needs_no_key(server: Server) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}


def test_every_call_needs_a_valid_key(server: Server) -> None:
    r = httpx.get(f"{server.url}/v1/sandboxes")
    assert r.status_code == 401 and r.json()["code"] == 401 and "API key" in r.json()["message"]
    r = httpx.get(f"{server.url}/v1/sandboxes", headers={"X-API-Key": "e2b_" + "0" * 40})
    assert r.status_code == 401
    r = httpx.get(f"{server.url}/v1/sandboxes", headers={"Authorization": f"Bearer {server.api_key}"})
    assert r.status_code == 200


def test_openapi_document_is_served(server: Server) -> None:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/sandboxes" in doc["paths"] and "/v1/sandboxes/{sandbox_id}/commands" in doc["paths"]


def test_create_get_list_kill(api: httpx.Client) -> None:
    r = api.post("/v1/sandboxes", json={"metadata": {"suite": "api"}, "timeout": 60, "cpu": 0.5,
                                         "memory_mb": 256})
    assert r.status_code == 201, r.text
    sbx = r.json()
    assert re.fullmatch(r"[a-z0-9]{20}", sbx["id"])
    assert sbx["state"] == "running" and sbx["template"] == "base" and sbx["memory_mb"] == 256
    sid = sbx["id"]
    assert api.get(f"/v1/sandboxes/{sid}").json()["metadata"] == {"suite": "api"}
    listed = api.get("/v1/sandboxes", params={"metadata": "suite=api"}).json()
    assert [s["id"] for s in listed] == [sid]
    assert api.get("/v1/sandboxes", params={"metadata": "suite=other"}).json() == []
    assert api.delete(f"/v1/sandboxes/{sid}").status_code == 204
    gone = api.get(f"/v1/sandboxes/{sid}")
    assert gone.status_code == 404 and "no longer running" in gone.json()["message"]
    assert api.delete(f"/v1/sandboxes/{sid}").status_code == 204  # idempotent
    ended = [s for s in api.get("/v1/sandboxes", params={"state": "all"}).json() if s["id"] == sid]
    assert ended[0]["state"] == "ended" and ended[0]["end_reason"] == "killed by request"


def test_unknown_sandbox_is_404(api: httpx.Client) -> None:
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/metrics"), ("POST", "/timeout")):
        r = api.request(method, f"/v1/sandboxes/nosuchsandbox000000{path}", json={"timeout": 5})
        assert r.status_code == 404, (method, path, r.text)
        assert "nosuchsandbox000000" in r.json()["message"]


def test_bad_limits_name_the_field(api: httpx.Client) -> None:
    cases = [({"timeout": 0}, "timeout"), ({"timeout": 10**9}, "timeout"), ({"cpu": 0}, "cpu"),
             ({"memory_mb": 1}, "memory_mb"), ({"disk_mb": 1}, "disk_mb"), ({"template": "../x"}, "template")]
    for body, field in cases:
        r = api.post("/v1/sandboxes", json=body)
        assert r.status_code == 400, (body, r.text)
        assert field in r.json()["message"]
    r = api.post("/v1/sandboxes", json={"timeout": "soon"})
    assert r.status_code == 422 and "timeout" in r.json()["message"]
    r = api.post("/v1/sandboxes", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == 422
    r = api.post("/v1/sandboxes", json={"template": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["message"]


def test_timeout_destroys_the_sandbox(api: httpx.Client, server: Server) -> None:
    sid = api.post("/v1/sandboxes", json={"timeout": 1}).json()["id"]
    deadline = time.monotonic() + 15
    while api.get(f"/v1/sandboxes/{sid}").status_code == 200:
        assert time.monotonic() < deadline, "sandbox outlived its timeout"
        time.sleep(0.1)
    r = api.get(f"/v1/sandboxes/{sid}")
    assert r.status_code == 404 and "timeout" in r.json()["message"]
    while (server.data_dir / "sandboxes" / sid).exists():  # the record ends first, then the runtime goes
        assert time.monotonic() < deadline, "sandbox files outlived its timeout"
        time.sleep(0.05)


def test_set_timeout_moves_the_deadline(api: httpx.Client, sandbox: str) -> None:
    before = api.get(f"/v1/sandboxes/{sandbox}").json()["expires_at"]
    r = api.post(f"/v1/sandboxes/{sandbox}/timeout", json={"timeout": 600})
    assert r.status_code == 200 and r.json()["expires_at"] > before
    assert api.post(f"/v1/sandboxes/{sandbox}/timeout", json={"timeout": -1}).status_code == 400


def test_metrics_come_from_cgroups(api: httpx.Client, sandbox: str) -> None:
    m = api.get(f"/v1/sandboxes/{sandbox}/metrics").json()
    assert m["memory_limit_bytes"] == 512 * 1024 * 1024
    assert 0 < m["memory_bytes"] < m["memory_limit_bytes"]
    assert m["pids"] >= 2 and m["cpu_seconds"] > 0
    assert 0 < m["disk_bytes"] < m["disk_limit_bytes"]


def test_keys_can_be_created_used_and_revoked(api: httpx.Client, server: Server) -> None:
    created = api.post("/v1/keys", json={"name": "ci"}).json()
    assert re.fullmatch(r"e2b_[0-9a-f]{40}", created["key"])
    with server.client(created["key"]) as other:
        sid = other.post("/v1/sandboxes", json={"timeout": 30}).json()["id"]
        assert api.get(f"/v1/sandboxes/{sid}").status_code == 200  # admin sees all
        assert other.get("/v1/keys").status_code == 403  # not admin
        mine = api.post("/v1/sandboxes", json={"timeout": 30}).json()["id"]
        assert other.get(f"/v1/sandboxes/{mine}").status_code == 404  # others' sandboxes are invisible
        api.delete(f"/v1/sandboxes/{mine}")
        other.delete(f"/v1/sandboxes/{sid}")
        listed = {k["id"]: k for k in api.get("/v1/keys").json()}
        assert "key" not in listed[created["id"]] and listed[created["id"]]["prefix"] == created["key"][:8]
        assert api.delete(f"/v1/keys/{created['id']}").status_code == 204
        assert other.get("/v1/sandboxes").status_code == 401


def test_server_turns_on_fast_cgroup_moves(server: Server) -> None:
    """Every create moves processes into cgroups; with cgroup2's favordynmods a move no longer
    waits for an RCU grace period (docs/performance.md). The server turns it on where it can."""
    driver = detect()
    mount = driver.cgroup2_mount()
    features = Path("/sys/kernel/cgroup/features")
    if mount is None or not features.exists() or "favordynmods" not in features.read_text().split():
        assert driver.favor_migrations().startswith("not available")
        return
    options = super_options(Path("/proc/self/mountinfo").read_text(), mount)
    assert options is not None and "favordynmods" in options
    assert driver.favor_migrations() == "on (already)"


def test_a_deleted_sandbox_leaves_no_disk_behind(api: httpx.Client, server: Server) -> None:
    """While it runs its disk image backs a loop device; once deleted, the device is released and
    the sandbox's files are gone (bwrap: the disk was mounted in no namespace of the host's, it
    goes with the server's fd of it and the sandbox's processes)."""
    sid = api.post("/v1/sandboxes", json={"timeout": 60}).raise_for_status().json()["id"]
    sandbox_dir = server.data_dir / "sandboxes" / sid
    assert loop_devices_of(sandbox_dir, wait=0) == [f"{sandbox_dir}/disk.img"]
    assert api.delete(f"/v1/sandboxes/{sid}").status_code == 204
    assert leftovers_of(server, sid) == []  # the teardown after a kill runs in the background
    assert loop_devices_of(sandbox_dir) == []


def test_a_sandbox_mounts_nothing_in_the_hosts_table(api: httpx.Client, server: Server) -> None:
    """bwrap: its disk and root are mounted in a mount namespace of its own and the agent's runtime
    and the network's files are bound by bwrap inside the sandbox's (every mount on the host is
    copied by each later sandbox's new mount namespace and read by bwrap once per bind:
    docs/performance.md, "A mount namespace per sandbox"). gVisor's disk and root are on the host,
    with the runtime bound in (runsc's gofer serves the root), on a read-only skeleton at /.corral: 7."""
    before = set(sandbox_mounts(server.data_dir))
    sid = api.post("/v1/sandboxes", json={"timeout": 60}).raise_for_status().json()["id"]
    try:
        new = sorted(set(sandbox_mounts(server.data_dir)) - before)
        if TEST_BACKEND == "gvisor":
            assert len(new) == 7 and all(sid in m for m in new), new
            assert any(m.endswith(f"/{sid}/.corral") for m in new), new
            assert new[0].endswith(f"/{sid}") and new[-1].endswith(f"/sandboxes/{sid}/disk"), new
        else:
            assert new == []
            inside = [line.split() for line in Path(f"/proc/{sandbox_init(sid)}/mountinfo").read_text().splitlines()]
            root = next(fields for fields in inside if fields[4] == "/")
            assert root[root.index("-") + 1] == "overlay", root
            # the namespace bwrap started in (its monitor's, pid 1's parent) holds none of the host's
            # kernel filesystems it never uses: fewer mounts for bwrap to copy and read per bind
            monitor = Path(f"/proc/{sandbox_init(sid)}/status").read_text().split("PPid:")[1].split()[0]
            started_in = [line.split() for line in Path(f"/proc/{monitor}/mountinfo").read_text().splitlines()]
            types = {fields[fields.index("-") + 1] for fields in started_in}
            assert types.isdisjoint({"sysfs", "cgroup", "cgroup2", "nsfs", "tracefs"}), types
            assert {"proc", "devtmpfs", "overlay"} <= types, types
        r = run_command(api, sid, "touch /.corral/rt/x /.corral/certs/x", user="root")
        assert r.exit_code != 0 and r.stderr.count("Read-only file system") == 2, r.stderr
    finally:
        api.delete(f"/v1/sandboxes/{sid}")


def test_the_server_holds_many_sandboxes_under_a_low_open_files_limit() -> None:
    """Started with a soft limit of open files too low for its sandboxes' fds (Debian's usual 1024
    ends at ~250 sandboxes; 256 here, for ~60), the server raises its own to the hard limit and
    holds 100; sandboxes keep the limit it was started with, so programs in them see what they would
    on the host. (gVisor: 5, its sandboxes cost more to start and stop; the limit is in its OCI spec.)"""
    count = 5 if TEST_BACKEND == "gvisor" else 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        data = make_data_dir()
        srv = start_server(data)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limits = Path(f"/proc/{srv.process.pid}/limits").read_text()
        assert re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).group(1) != "256", limits  # type: ignore[union-attr]
        with srv.client() as api:
            ids = []
            for _ in range(count):
                r = api.post("/v1/sandboxes", json={"timeout": 120})
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])
            assert run_command(api, ids[-1], "ulimit -Sn").stdout == "256\n"
            for sid in ids:
                assert api.delete(f"/v1/sandboxes/{sid}").status_code == 204
    finally:
        srv.stop()
        remove_data_dir(data)
