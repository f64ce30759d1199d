"""Helpers of the adversarial tests: run probe scripts inside a sandbox, look at it from the host.

Everything goes through the real server: files are uploaded with the files API and probes run as
commands. Host-side views (pids, cgroup membership, the sandbox's disk) read what the runtime made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from conftest import Ran, Server, run_command, sandbox_disk

ENVD_PORT = "49983"


def put(api: httpx.Client, sandbox_id: str, path: str, data: bytes | str, user: str = "root") -> None:
    body = data.encode() if isinstance(data, str) else data
    r = api.put(f"/v1/sandboxes/{sandbox_id}/files", params={"path": path, "user": user}, content=body)
    assert r.status_code == 200, r.text


def run_python(api: httpx.Client, sandbox_id: str, code: str, user: str = "user", timeout: int = 60,
               args: str = "") -> Ran:
    """Upload `code` (dedented) and run it with the sandbox's python3 as `user`."""
    path = f"/tmp/probe-{secrets.token_hex(4)}.py"
    put(api, sandbox_id, path, textwrap.dedent(code), user="root")
    return run_command(api, sandbox_id, f"python3 {path} {args}", user=user, timeout=timeout)


def probe_json(api: httpx.Client, sandbox_id: str, code: str, user: str = "user", timeout: int = 60) -> Any:
    """Run a probe whose last stdout line is JSON; return it parsed."""
    ran = run_python(api, sandbox_id, code, user=user, timeout=timeout)
    assert ran.exit_code == 0, ran.stderr + ran.stdout
    return json.loads(ran.stdout.strip().splitlines()[-1])


def new_sandbox(api: httpx.Client, **fields: object) -> str:
    r = api.post("/v1/sandboxes", json={"timeout": 300, **fields})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@contextmanager
def sandboxes(api: httpx.Client, count: int, **fields: object) -> Iterator[list[str]]:
    """`count` fresh sandboxes, killed afterwards."""
    made: list[str] = []
    try:
        for _ in range(count):
            made.append(new_sandbox(api, **fields))
        yield made
    finally:
        for sandbox_id in made:
            api.delete(f"/v1/sandboxes/{sandbox_id}")


def cgroup_procs(sandbox_id: str) -> Path:
    """The sandbox's ``cgroup.procs`` in the pids hierarchy (v1) or the unified one (v2)."""
    root = Path("/sys/fs/cgroup")
    found = [*root.glob(f"pids/corral/*/{sandbox_id}/cgroup.procs"), *root.glob(f"corral/*/{sandbox_id}/cgroup.procs")]
    assert found, f"no cgroup for sandbox {sandbox_id}"
    return found[0]


def host_pids(sandbox_id: str) -> list[int]:
    """Host pids of every process of the sandbox (its cgroup's members)."""
    return [int(p) for p in cgroup_procs(sandbox_id).read_text().split()]


def settled_pids(api: httpx.Client, sandbox_id: str) -> list[int]:
    """`host_pids` of a sandbox done starting: its agent answered a command, and the zygote's joiner
    (a fork named corral-zygote that enters the sandbox, forks the agent and exits) is gone."""
    assert run_command(api, sandbox_id, "true").exit_code == 0
    deadline = time.monotonic() + 10
    while True:
        pids = host_pids(sandbox_id)
        names = []
        for pid in pids:
            with contextlib.suppress(OSError):
                names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        if "corral-zygote" not in names:
            return pids
        assert time.monotonic() < deadline, f"sandbox {sandbox_id} still starting: {names}"
        time.sleep(0.01)  # polls a separate process's exit, not test synchronisation


def sandbox_dir(server: Server, sandbox_id: str) -> Path:
    return server.data_dir / "sandboxes" / sandbox_id


def disk_mount(server: Server, sandbox_id: str) -> Path:
    """The sandbox's ext4 disk as the host reaches it (the overlay's upper dir lives there)."""
    return sandbox_disk(server.data_dir, sandbox_id)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def envd(server: Server, sandbox_id: str, **headers: str) -> httpx.Client:
    """Plain HTTP to a sandbox's envd port, routed by headers like the E2B SDKs do."""
    routing = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": ENVD_PORT, **headers}
    return httpx.Client(base_url=server.url, headers=routing, timeout=60)


def e2b_sandbox(api: httpx.Client) -> tuple[str, str]:
    """A sandbox created through the E2B control plane: (id, envd access token)."""
    r = api.post("/sandboxes", json={"templateID": "base", "timeout": 300})
    assert r.status_code == 201, r.text
    return r.json()["sandboxID"], r.json()["envdAccessToken"]


@contextmanager
def host_file(directory: str, content: str) -> Iterator[Path]:
    """A uniquely named host file that sandboxes must never see or change; removed afterwards."""
    path = Path(directory) / f"corral-host-{secrets.token_hex(6)}"
    path.write_text(content)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def host_absent(directory: str) -> Iterator[Path]:
    """A unique host path that must still not exist when the block ends (and is removed if it does)."""
    path = Path(directory) / f"corral-absent-{secrets.token_hex(6)}"
    try:
        yield path
    finally:
        existed = path.exists() or path.is_symlink()
        if existed:
            if path.is_dir() and not path.is_symlink():
                os.rmdir(path)
            else:
                path.unlink()
        assert not existed, f"a sandbox created the host path {path}"
