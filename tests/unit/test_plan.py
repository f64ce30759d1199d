"""The launch plan is pure: what a sandbox gets can be checked without root."""

from __future__ import annotations

from dataclasses import replace
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


def make(rootfs: Path, listen: int | None = 13, tools: str | None = None, joins_netns: bool = False) -> list[str]:
    spec = SandboxSpec(sandbox_id="abc123", layers=(rootfs,), cpu=0.5, memory_mb=256, disk_mb=128)
    p = plan(
        spec,
        sandboxes_dir=Path("/data/sandboxes"),
        mounts_dir=Path("/run/corral/x"),
        runtime=replace(AgentRuntime.find(rootfs, "x86_64"), tools=tools),
        agent_src=Path("/src/agent"),
        id_offset=1_000_000,
        joins_netns=joins_netns,
    )
    assert p.limits.memory_bytes == 256 << 20 and p.limits.cpu == 0.5 and p.limits.pids == 1024
    assert p.ro_binds() == [
        (rootfs, "/.corral/rt"),
        (Path("/src/agent"), "/.corral/lib/corral_agent"),
        (Path("/src/interpreter"), "/.corral/lib/corral_interp"),
    ]
    assert p.sandbox_dir == Path("/data/sandboxes/abc123")
    return p.argv(Fds(block=10, info=11, seccomp=12, listen=listen))


def test_every_namespace_is_unshared(rootfs: Path) -> None:
    argv = make(rootfs)
    for ns in ("user", "ipc", "pid", "net", "uts", "cgroup"):
        assert f"--unshare-{ns}" in argv
    assert "--share-net" not in argv


def test_a_sandbox_with_a_network_namespace_made_for_it_unshares_every_other(rootfs: Path) -> None:
    argv = make(rootfs, joins_netns=True)  # bwrap starts in it (netspares), so it makes none of its own
    for ns in ("user", "ipc", "pid", "uts", "cgroup"):
        assert f"--unshare-{ns}" in argv
    assert "--unshare-net" not in argv and "--share-net" not in argv


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


def test_with_the_zygote_pid_1_only_waits_and_has_no_capabilities(rootfs: Path) -> None:
    argv = make(rootfs, listen=None, tools="corral-tools-0a1b2c3d")
    assert "--as-pid-1" in argv and "--cap-add" not in argv and argv[argv.index("--cap-drop") + 1] == "ALL"
    # corral-tools pid1, from the agent's code dir, closing the block and seccomp fds bwrap leaves it
    tools = "/.corral/lib/corral_agent/__pycache__/corral-tools-0a1b2c3d"
    assert argv[argv.index("--") + 1 :] == [tools, "pid1", "10", "12"]


def test_without_corral_tools_pid_1_is_the_runtimes_bash_then_sleep(rootfs: Path) -> None:
    argv = make(rootfs, listen=None)
    assert "--as-pid-1" in argv and "--cap-add" not in argv and argv[argv.index("--cap-drop") + 1] == "ALL"
    cmd = argv[argv.index("--") + 1 :]
    assert cmd[0] == "/.corral/rt/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" and "/.corral/rt/usr/bin/bash" in cmd
    script = cmd[-1]
    assert script.startswith("printf . && exec ") and "/.corral/rt/usr/bin/sleep infinity" in script
    assert " 10<&-" in script and " 12<&-" in script  # the block and seccomp fds bwrap leaves it
    assert "--listen-fd" not in argv and "python3.11" not in " ".join(cmd)


def test_missing_interpreter_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="python3"):
        AgentRuntime.find(tmp_path, "x86_64")


def test_bwrap_binds_the_shared_runtime_inside_the_sandbox(rootfs: Path) -> None:
    """With a shared runtime (bwrap) the launcher binds nothing of the runtime into the root on the
    host: bwrap binds the one shared host mount read-only at the same paths, in the sandbox's own
    mount namespace, after the root."""
    spec = SandboxSpec(sandbox_id="abc123", layers=(rootfs,), cpu=0.5, memory_mb=256, disk_mb=128)
    p = plan(spec, sandboxes_dir=Path("/data/sandboxes"), mounts_dir=Path("/run/corral/x"),
             runtime=AgentRuntime.find(rootfs, "x86_64"), agent_src=Path("/src/agent"), id_offset=1_000_000,
             shared_runtime=Path("/run/corral/x/.runtime"))
    assert p.ro_binds() == []
    argv = p.argv(Fds(block=10, info=11, seccomp=12, listen=None))
    binds = [argv[i + 1 : i + 3] for i, a in enumerate(argv) if a == "--ro-bind"]
    assert binds == [
        ["/run/corral/x/.runtime/rt", "/.corral/rt"],
        ["/run/corral/x/.runtime/corral_agent", "/.corral/lib/corral_agent"],
        ["/run/corral/x/.runtime/corral_interp", "/.corral/lib/corral_interp"],
    ]
    assert argv.index("--bind") < argv.index("--ro-bind")
