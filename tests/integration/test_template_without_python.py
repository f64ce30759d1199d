"""The agent brings its own interpreter: a template with no Python at all still works."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import SUBID_BASE, TEMPLATES, run_command
from corral.runtime.rootfs import MARKER, shift_ids


def copy_with_libraries(binary: str, root: Path) -> None:
    """Copy a host binary and the shared libraries it needs into ``root``, at the same paths."""
    paths = [binary]
    for line in subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout.splitlines():
        parts = line.split()
        paths += [p for p in parts if p.startswith("/")]
    for path in paths:
        real = Path(path).resolve()
        for target in {Path(path), real}:
            dest = root / str(target).lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                shutil.copy2(real, dest)


@pytest.fixture
def bare_template() -> Iterator[str]:
    name = f"test-bare-{secrets.token_hex(4)}"
    root = TEMPLATES / name / "rootfs"
    for directory in ("home/user", "tmp", "etc", "usr/bin", "lib", ".corral/rt", ".corral/lib/corral_agent"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    copy_with_libraries("/bin/bash", root)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\nuser:x:1000:\n")
    (root / "tmp").chmod(0o1777)
    shift_ids(root, SUBID_BASE)
    os.chown(root / "home/user", SUBID_BASE + 1000, SUBID_BASE + 1000)
    (root / MARKER).write_text(name + "\n")
    try:
        yield name
    finally:
        shutil.rmtree(TEMPLATES / name)


def test_sandbox_without_python_runs_commands_and_files(api: httpx.Client, bare_template: str) -> None:
    assert not list((TEMPLATES / bare_template / "rootfs").rglob("python*"))
    r = api.post("/v1/sandboxes", json={"template": bare_template, "timeout": 60})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    try:
        ran = run_command(api, sid, "echo hi from $0; type python3 || echo no python here")
        assert ran.stdout.splitlines()[0] == "hi from /bin/bash"
        assert ran.stdout.splitlines()[-1] == "no python here"
        api.put(f"/v1/sandboxes/{sid}/files", params={"path": "/home/user/f.txt"}, content=b"data")
        assert api.get(f"/v1/sandboxes/{sid}/files", params={"path": "/home/user/f.txt"}).content == b"data"
    finally:
        api.delete(f"/v1/sandboxes/{sid}")
