"""Pausing through cgroup2's freezer on a fake cgroupfs: which group, what is written, how it fails.

The kernel half (tasks really stop) is covered by tests/compat/test_e2b_control.py on a real host.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.runtime.cgroups_priv import CgroupUnavailable, HybridCgroups, V2Cgroups


def group(path: Path, frozen: int) -> Path:
    path.mkdir(parents=True)
    (path / "cgroup.procs").write_text("")
    (path / "cgroup.freeze").write_text("0")
    (path / "cgroup.events").write_text(f"populated 1\nfrozen {frozen}\n")
    return path


def test_v2_freezes_the_sandbox_group(tmp_path: Path) -> None:
    cg = group(tmp_path / "corral" / "i1" / "sbx", frozen=1)  # the kernel reports the state at once
    V2Cgroups(tmp_path, "i1").freeze("sbx")
    assert (cg / "cgroup.freeze").read_text() == "1"


def test_hybrid_freezes_in_the_unified_mount(tmp_path: Path) -> None:
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.procs").write_text("")
    cg = group(tmp_path / "unified" / "corral" / "i1" / "sbx", frozen=0)
    HybridCgroups(tmp_path, "i1").thaw("sbx")
    assert (cg / "cgroup.freeze").read_text() == "0"


def test_hybrid_without_cgroup2_cannot_pause(tmp_path: Path) -> None:
    with pytest.raises(CgroupUnavailable, match="cgroup2"):
        HybridCgroups(tmp_path, "i1").freeze("sbx")


def test_a_freeze_that_does_not_settle_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cg = group(tmp_path / "corral" / "i1" / "sbx", frozen=0)  # never reports frozen
    monkeypatch.setattr("corral.runtime.cgroups_priv.FREEZE_TIMEOUT", 0.05)
    with pytest.raises(TimeoutError, match="not frozen"):
        V2Cgroups(tmp_path, "i1").freeze("sbx")
    assert (cg / "cgroup.freeze").read_text() == "0"
