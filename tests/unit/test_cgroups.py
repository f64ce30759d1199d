"""cgroup drivers on a fake cgroupfs tree: the v2 path is covered even on this v1 host."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.runtime.cgroups_priv import (
    CgroupUnavailable,
    HybridCgroups,
    Limits,
    V2Cgroups,
    detect,
    favor_dynamic_changes,
    super_options,
)

LIMITS = Limits(memory_bytes=256 << 20, pids=100, cpu=0.5)


def v2_tree(root: Path, controllers: str = "cpuset cpu io memory pids") -> Path:
    root.mkdir(exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.procs").write_text("")
    return root


def fill_v2_group(path: Path) -> None:
    # what the kernel would create in a new cgroup dir
    for name, text in {"cgroup.procs": "", "cgroup.subtree_control": "", "memory.max": "max", "memory.swap.max": "max",
                       "pids.max": "max", "cpu.max": "max 100000", "memory.current": "1234",
                       "pids.current": "3", "cpu.stat": "usage_usec 2500000\nuser_usec 1\n",
                       "memory.events": "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n"}.items():
        (path / name).write_text(text)


def test_detect_prefers_v2_with_controllers(tmp_path: Path) -> None:
    assert isinstance(detect(v2_tree(tmp_path / "cg")), V2Cgroups)


def test_detect_names_missing_v2_controllers(tmp_path: Path) -> None:
    with pytest.raises(CgroupUnavailable, match="memory"):
        detect(v2_tree(tmp_path / "cg", "cpu pids"))


def test_detect_falls_back_to_v1_and_names_missing_hierarchies(tmp_path: Path) -> None:
    for c in ("memory", "pids", "cpu"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "cgroup.procs").write_text("")
    with pytest.raises(CgroupUnavailable, match="cpuacct"):
        detect(tmp_path)
    (tmp_path / "cpuacct").mkdir()
    (tmp_path / "cpuacct" / "cgroup.procs").write_text("")
    assert isinstance(detect(tmp_path), HybridCgroups)


def test_v2_limits_and_usage(tmp_path: Path) -> None:
    root = v2_tree(tmp_path / "cg")
    driver = V2Cgroups(root)
    group = root / "corral" / "default" / "sbx1"
    group.mkdir(parents=True)
    fill_v2_group(group)
    (root / "corral" / "cgroup.subtree_control").write_text("")
    (root / "corral" / "default" / "cgroup.subtree_control").write_text("")
    driver.create("sbx1", LIMITS)
    assert (group / "memory.max").read_text() == str(256 << 20)
    assert (group / "memory.swap.max").read_text() == "0"
    assert (group / "pids.max").read_text() == "100"
    assert (group / "cpu.max").read_text() == "50000 100000"
    assert "+memory" in (root / "corral" / "cgroup.subtree_control").read_text()
    use = driver.usage("sbx1")
    assert (use.cpu_seconds, use.memory_bytes, use.pids, use.oom_kills) == (2.5, 1234, 3, 1)
    assert driver.existing() == {"sbx1"}
    driver.attach("sbx1", 4242)
    assert (group / "cgroup.procs").read_text() == "4242"


MOUNTINFO = """\
25 30 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
33 25 0:28 / /sys/fs/cgroup/unified rw,nosuid,nodev shared:10 - cgroup2 cgroup2 rw,nsdelegate
40 25 0:35 / /sys/fs/cgroup/memory rw,nosuid shared:17 - cgroup cgroup rw,memory
"""


def test_super_options_are_the_filesystems_own() -> None:
    assert super_options(MOUNTINFO, Path("/sys/fs/cgroup/unified")) == {"rw", "nsdelegate"}
    assert super_options(MOUNTINFO, Path("/sys/fs/cgroup/memory")) == {"rw", "memory"}
    assert super_options(MOUNTINFO, Path("/sys/fs/cgroup/pids")) is None


def test_favordynmods_is_left_alone_where_the_kernel_lacks_it(tmp_path: Path) -> None:
    features = tmp_path / "features"
    features.write_text("nsdelegate\nmemory_localevents\n")
    assert favor_dynamic_changes(tmp_path, features) == "not available in this kernel"
    assert favor_dynamic_changes(tmp_path, tmp_path / "missing").startswith("not available")


def test_favordynmods_needs_a_cgroup2_mount(tmp_path: Path) -> None:
    features = tmp_path / "features"
    features.write_text("nsdelegate\nfavordynmods\n")
    assert favor_dynamic_changes(tmp_path / "nothing-here", features) == (
        f"not available: nothing mounted at {tmp_path / 'nothing-here'}")
