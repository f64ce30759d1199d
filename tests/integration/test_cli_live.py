"""The `corral` CLI against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import Server


def corral(server: Server, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "CORRAL_API_URL": server.url, "CORRAL_API_KEY": server.api_key}
    exe = Path(sys.executable).parent / "corral"  # the venv's entry point
    return subprocess.run([str(exe), *args], env=env, input=stdin, capture_output=True, timeout=120)


def test_create_exec_files_kill(server: Server, tmp_path: Path) -> None:
    created = corral(server, "sandbox", "create", "--timeout", "60")
    assert created.returncode == 0, created.stderr
    sid = created.stdout.decode().strip().split()[-1]
    try:
        r = corral(server, "exec", sid, "--", "sh", "-c", "echo out; echo err >&2; exit 5")
        assert (r.returncode, r.stdout, r.stderr) == (5, b"out\n", b"err\n")
        local = tmp_path / "in.txt"
        local.write_text("payload")
        assert corral(server, "files", "put", sid, str(local), "/home/user/in.txt").returncode == 0
        assert b"in.txt" in corral(server, "files", "ls", sid, "/home/user").stdout
        got = corral(server, "files", "get", sid, "/home/user/in.txt", "-")
        assert got.stdout == b"payload"
        assert sid in corral(server, "sandbox", "list").stdout.decode()
        assert sid in corral(server, "sandbox", "info", sid).stdout.decode()
    finally:
        assert corral(server, "sandbox", "kill", sid).returncode == 0
    missing = corral(server, "sandbox", "info", sid)
    assert missing.returncode == 1 and b"Traceback" not in missing.stderr and sid.encode() in missing.stderr


def test_keys(server: Server) -> None:
    created = corral(server, "keys", "create", "cli-test")
    assert created.returncode == 0, created.stderr
    assert "e2b_" in created.stdout.decode()
    listing = corral(server, "keys", "list").stdout.decode()
    assert "cli-test" in listing
