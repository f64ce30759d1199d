"""Crash safety: a server killed with sandboxes running leaves nothing behind after a restart."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from conftest import (
    corral_cgroups,
    make_data_dir,
    mounts_under,
    net_leftovers,
    remove_data_dir,
    run_command,
    sandbox_mounts,
    sandbox_processes,
    spare_dirs,
    start_server,
)
from corral.config import Settings


def veths(data_dir: Path) -> set[str]:
    """This server's veths on the host, each as ``ifindex:name`` (a new link never reuses an index)."""
    prefix = f"crl{Settings(data_dir=data_dir).instance[:8]}"
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout.splitlines()
    named = [(line.split(":")[0], line.split(":")[1].strip().split("@")[0]) for line in links]
    return {f"{index}:{name}" for index, name in named if name.startswith(prefix)}


def test_restart_after_crash_cleans_up_and_closes_records() -> None:
    data = make_data_dir()
    try:
        first = start_server(data)
        with first.client() as api:
            ids = [api.post("/v1/sandboxes", json={"timeout": 300}).json()["id"] for _ in range(2)]
            assert run_command(api, ids[0], "echo up").stdout == "up\n"
        # spare disks (runtime/spares.py) and network namespaces (runtime/netspares.py) are made
        # again in the background once a create is done: wait (bounded) until both are there
        deadline = time.monotonic() + 30
        while not spare_dirs(data) or len(veths(data)) <= len(ids):
            assert time.monotonic() < deadline, "expected the server to keep spare disks and network namespaces"
            time.sleep(0.05)  # polling another process's background work, not test synchronisation
        first_spares = spare_dirs(data)  # empty disks made ahead, mounted
        first_veths = veths(data)  # the sandboxes' and the spare network namespaces'
        first.stop(signal.SIGKILL)  # no cleanup code runs
        assert mounts_under(data), "expected the crash to leave mounts for the restart to clean"
        assert net_leftovers(data), "expected the crash to leave its nftables table"

        second = start_server(data, api_key=first.api_key)
        try:
            assert sandbox_mounts(data) == []
            assert not [p for p in first_spares if p.exists()], "the crashed server's spare disks survived"
            assert corral_cgroups(data) == []
            assert sandbox_processes(data) == []
            assert not first_veths & veths(data)  # no veth of a dead sandbox or spare (the new server has its own)
            with second.client() as api:
                for sid in ids:
                    r = api.get(f"/v1/sandboxes/{sid}")
                    assert r.status_code == 404 and "server restarted" in r.json()["message"]
                assert api.get("/v1/sandboxes").json() == []
                sid = api.post("/v1/sandboxes", json={"timeout": 30}).json()["id"]
                assert run_command(api, sid, "echo fresh").stdout == "fresh\n"
        finally:
            second.stop()
        assert mounts_under(data) == []
        assert net_leftovers(data) == []
    finally:
        remove_data_dir(data)
