"""E2B's network fields through the unmodified official SDK: ``allow_internet_access``,
``network={"allow_out", "deny_out"}`` (allow beats deny there) and ``update_network``."""

from __future__ import annotations

import json

import pytest
from e2b import ALL_TRAFFIC, Sandbox, SandboxException

from conftest import (
    Server,
    corral_cgroups,
    make_data_dir,
    mounts_under,
    remove_data_dir,
    sandbox_processes,
    start_server,
)
from netlab import PUBLIC_A, PUBLIC_B, PUBLIC_C

FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().strip())"


def point_sdk_at(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """The unmodified SDK finds its API and sandboxes through these variables."""
    monkeypatch.setenv("E2B_API_URL", server.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", server.url)
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    return server


@pytest.fixture
def e2b_net(netserver: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    return point_sdk_at(netserver, monkeypatch)


def reaches(sbx: Sandbox, url: str) -> bool:
    r = sbx.commands.run(f"python3 -c {json.dumps(FETCH)} {url} || true", timeout=20)
    return r.stdout.startswith("hello from")


def test_allow_out_with_deny_all_and_update_network(e2b_net: Server) -> None:
    sbx = Sandbox.create(timeout=120, network={"allow_out": [PUBLIC_A, "files.example.com"], "deny_out": [ALL_TRAFFIC]})
    try:
        assert reaches(sbx, f"http://{PUBLIC_A}/") and reaches(sbx, "http://files.example.com/")
        assert not reaches(sbx, f"http://{PUBLIC_B}/")
        info = sbx.get_info()
        assert info.allow_internet_access is False

        sbx.update_network({"allow_out": [PUBLIC_B], "deny_out": [ALL_TRAFFIC]})
        assert reaches(sbx, f"http://{PUBLIC_B}/") and not reaches(sbx, f"http://{PUBLIC_A}/")
        sbx.update_network({})  # omitted fields are cleared: open again
        assert reaches(sbx, f"http://{PUBLIC_C}/") and reaches(sbx, f"http://{PUBLIC_A}/")
        assert sbx.get_info().allow_internet_access is True
    finally:
        sbx.kill()


def test_allow_internet_access_false_and_allow_beating_deny(e2b_net: Server) -> None:
    closed = Sandbox.create(timeout=120, allow_internet_access=False)
    partial = Sandbox.create(timeout=120, network={"deny_out": ["198.51.100.0/24"], "allow_out": [PUBLIC_B]})
    try:
        assert not reaches(closed, f"http://{PUBLIC_A}/")
        assert closed.commands.run("getent hosts files.example.com || echo refused").stdout.strip() == "refused"
        assert reaches(partial, f"http://{PUBLIC_B}/")  # E2B: allow entries win over deny entries
        assert not reaches(partial, f"http://{PUBLIC_A}/")
    finally:
        closed.kill()
        partial.kill()


def test_a_server_without_networking_gives_every_sandbox_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``CORRAL_NETWORK=off``: the SDK's default create (which asks for internet access) still
    works; the sandbox has only ``lo``, says so, and cannot be opened later."""
    data = make_data_dir()
    srv = start_server(data, CORRAL_NETWORK="off")
    try:
        point_sdk_at(srv, monkeypatch)
        sbx = Sandbox.create(timeout=120)
        try:
            devices = sbx.commands.run("tail -n +3 /proc/net/dev").stdout.splitlines()
            assert [line.split(":")[0].strip() for line in devices] == ["lo"]
            assert sbx.get_info().allow_internet_access is False
            with pytest.raises(SandboxException, match="networking is disabled on this server"):
                sbx.update_network({})
        finally:
            sbx.kill()
        with srv.client() as api:
            r = api.post("/v1/sandboxes", json={"timeout": 60, "network": "internet"})
            assert r.status_code == 201, r.text
            assert api.get(f"/v1/sandboxes/{r.json()['id']}/network").json()["mode"] == "none"
            assert api.delete(f"/v1/sandboxes/{r.json()['id']}").status_code == 204
    finally:
        srv.stop()
        assert mounts_under(data) == [] and corral_cgroups(data) == [] and sandbox_processes(data) == []
        remove_data_dir(data)
