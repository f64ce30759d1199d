"""The launch plan is pure: what a sandbox gets can be checked without root."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.runtime.backend import SandboxSpec
from corral.runtime.plan import AGENT_CAPS, AgentRuntime, Fds, plan


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "usr/bin").mkdir(parents=True)
    for name in ("python3.11", "python3.11-config", "python3"):
        (tmp_path / "usr/bin" / name).touch()
    return tmp_path


def make(rootfs: Path) -> list[str]:
    spec = SandboxSpec(sandbox_id="abc123", layers=(rootfs,), cpu=0.5, memory_mb=256, disk_mb=128)
    p = plan(
        spec,
        sandboxes_dir=Path("/data/sandboxes"),
        mounts_dir=Path("/run/corral/x"),
        runtime=AgentRuntime.find(rootfs, "x86_64"),
        agent_src=Path("/src/agent"),
        id_offset=1_000_000,
    )
    assert p.limits.memory_bytes == 256 << 20 and p.limits.cpu == 0.5 and p.limits.pids == 1024
    assert p.ro_binds() == [
        (rootfs, "/.corral/rt"),
        (Path("/src/agent"), "/.corral/lib/corral_agent"),
        (Path("/src/interpreter"), "/.corral/lib/corral_interp"),
    ]
    assert p.sandbox_dir == Path("/data/sandboxes/abc123")
    return p.argv(Fds(block=10, info=11, seccomp=12, listen=13))


def test_every_namespace_is_unshared(rootfs: Path) -> None:
    argv = make(rootfs)
    for ns in ("user", "ipc", "pid", "net", "uts", "cgroup"):
        assert f"--unshare-{ns}" in argv
    assert "--share-net" not in argv


def test_capabilities_are_dropped_then_a_small_set_added(rootfs: Path) -> None:
    argv = make(rootfs)
    assert argv.index("--cap-drop") < argv.index("--cap-add")
    added = [argv[i + 1] for i, a in enumerate(argv) if a == "--cap-add"]
    assert added == list(AGENT_CAPS)
    assert "CAP_SYS_ADMIN" not in added and "CAP_NET_ADMIN" not in added and "CAP_SYS_PTRACE" not in added


def test_root_is_the_overlay_and_agent_runtime_is_read_only(rootfs: Path) -> None:
    argv = make(rootfs)
    i = argv.index("--bind")
    assert argv[i + 1 : i + 3] == ["/run/corral/x/abc123", "/"]
    assert argv.count("--bind") == 1 and "--ro-bind" not in argv
    assert argv[argv.index("--seccomp") + 1] == "12" and "--die-with-parent" in argv
    assert "--clearenv" in argv


def test_agent_runs_on_the_runtime_loader(rootfs: Path) -> None:
    argv = make(rootfs)
    cmd = argv[argv.index("--") + 1 :]
    assert cmd[0] == "/.corral/rt/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert "/.corral/rt/usr/bin/python3.11" in cmd and cmd[-2:] == ["--listen-fd", "13"]


def test_missing_interpreter_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="python3"):
        AgentRuntime.find(tmp_path, "x86_64")
