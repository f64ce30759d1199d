"""The gVisor launch is pure too: its OCI config and runsc flags are checked without root or runsc."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.runtime import oci_spec
from corral.runtime.backend import SandboxSpec
from corral.runtime.gvisor_preload import Preload
from corral.runtime.plan import AGENT_CAPS, AgentRuntime, LaunchPlan, plan


@pytest.fixture
def launch(tmp_path: Path) -> LaunchPlan:
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/python3.11").touch()
    spec = SandboxSpec(sandbox_id="abc123", layers=(tmp_path,), cpu=0.5, memory_mb=256, disk_mb=128, pids=100)
    return plan(
        spec, sandboxes_dir=Path("/data/sandboxes"), mounts_dir=Path("/run/corral/x"),
        runtime=AgentRuntime.find(tmp_path, "x86_64"), agent_src=Path("/src/agent"), id_offset=1_000_000,
    )


def test_root_is_the_premounted_overlay_and_ids_are_shifted_like_bwrap(launch: LaunchPlan) -> None:
    config = oci_spec.config(launch)
    assert config["root"] == {"path": "/run/corral/x/abc123", "readonly": False}
    shifted = [{"containerID": 0, "hostID": 1_000_000, "size": 65536}]
    assert config["linux"]["uidMappings"] == shifted and config["linux"]["gidMappings"] == shifted
    assert {n["type"] for n in config["linux"]["namespaces"]} == {"pid", "ipc", "uts", "mount", "network", "user"}
    assert [m["destination"] for m in config["mounts"]] == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/.corral"]
    corral = config["mounts"][-1]  # a mount of the sentry's own: gVisor refuses to rename it
    assert corral["source"] == "/run/corral/x/abc123/.corral" and {"rbind", "ro"} <= set(corral["options"])
    assert config["hostname"] == "abc123"


def test_the_agent_is_the_only_process_with_its_small_capability_set(launch: LaunchPlan) -> None:
    process = oci_spec.config(launch)["process"]
    assert process["user"] == {"uid": 0, "gid": 0} and process["noNewPrivileges"] is True
    assert process["args"][0] == "/.corral/rt/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert process["args"][-2:] == ["--control-fd", "0"]  # the control socket is its stdin
    for kind in ("bounding", "effective", "permitted"):
        assert process["capabilities"][kind] == list(AGENT_CAPS)
    assert "CAP_SYS_ADMIN" not in process["capabilities"]["bounding"]
    assert "PYTHONPATH=/.corral/lib" in process["env"]


def test_runsc_has_no_network_no_host_sockets_and_leaves_cgroups_and_the_root_overlay_to_us() -> None:
    flags = oci_spec.runsc_flags(Path("/run/corral/runsc/x"))
    assert flags[0] == "runsc" and "--root=/run/corral/runsc/x" in flags
    for flag in ("--platform=ptrace", "--network=none", "--ignore-cgroups", "--host-uds=none", "--host-fifo=none",
                 "--overlay2=none"):
        assert flag in flags


def test_limits_leave_room_for_the_sentry(launch: LaunchPlan) -> None:
    assert oci_spec.memory_limit_bytes(launch) == (256 + oci_spec.SENTRY_OVERHEAD_MB) << 20
    assert oci_spec.pids_limit(launch) == 100 + oci_spec.SENTRY_THREADS


def test_a_networked_sandbox_joins_the_netns_the_server_plugged(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/python3.11").touch()
    spec = SandboxSpec(sandbox_id="net1", layers=(tmp_path,), cpu=0.5, memory_mb=256, disk_mb=128)
    launch = plan(
        spec, sandboxes_dir=Path("/data/sandboxes"), mounts_dir=Path("/run/corral/x"),
        runtime=AgentRuntime.find(tmp_path, "x86_64"), agent_src=Path("/src/agent"), id_offset=1_000_000,
        net_files=((Path("/run/corral-net/x/resolv.conf"), "/etc/resolv.conf"),),
    )
    config = oci_spec.config(launch, "/proc/42/fd/7")
    assert {"type": "network", "path": "/proc/42/fd/7"} in config["linux"]["namespaces"]
    resolv = config["mounts"][-1]
    assert resolv == {"destination": "/etc/resolv.conf", "type": "bind", "source": "/run/corral-net/x/resolv.conf",
                      "options": ["rbind", "ro"]}
    assert "--network=sandbox" in oci_spec.runsc_flags(Path("/r"), networked=True)
    assert "--network=none" in oci_spec.runsc_flags(Path("/r"))
    # without a netns runsc makes an empty one (network "none")
    assert {"type": "network"} in oci_spec.config(launch)["linux"]["namespaces"]


def test_the_stat_fixup_is_bound_read_only_with_the_list_naming_it(launch: LaunchPlan) -> None:
    config = oci_spec.config(launch, preload=Preload(Path("/run/corral/runsc/x.preload")))
    fixup = config["mounts"][-2:]
    assert [(m["destination"], m["source"]) for m in fixup] == [
        ("/.corral/preload", "/run/corral/runsc/x.preload"),
        ("/etc/ld.so.preload", "/run/corral/runsc/x.preload/ld.so.preload"),
    ]
    assert all(m["type"] == "bind" and {"ro", "nosuid", "nodev"} <= set(m["options"]) for m in fixup)
