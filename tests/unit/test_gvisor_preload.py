"""gVisor's stat fix-up: the library builds and loads anywhere glibc runs, a template's own
/etc/ld.so.preload is left alone, and its mount point never reaches a committed layer."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from corral.runtime import gvisor_preload

AT_NO_AUTOMOUNT = 0x800


def test_the_library_builds_and_loads_into_any_program(tmp_path: Path) -> None:
    fixup = gvisor_preload.build(tmp_path / "preload")
    assert fixup is not None
    assert fixup.list_file.read_text() == "/.corral/preload/statx.so\n"
    for path in (fixup.dir, fixup.dir / "statx.so", fixup.list_file):  # runsc's gofer reads them as a mapped id
        assert path.stat().st_mode & 0o005 == (0o005 if path.is_dir() else 0o004)
    # Loaded into a real program, it answers the stat family as before, errno included. (The host's
    # kernel accepts the flag either way: that the sentry gets it cleared is shown in gVisor sandboxes,
    # test_commands.py's test_the_everyday_file_tools_work.)
    probe = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "st = ctypes.create_string_buffer(256)\n"
        f"assert libc.statx(-100, b'/', {AT_NO_AUTOMOUNT}, 0xfff, st) == 0\n"
        f"assert libc.fstatat(-100, b'/etc', st, {AT_NO_AUTOMOUNT}) == 0\n"
        "assert libc.statx(-100, b'/nonexistent', 0, 0xfff, st) == -1 and ctypes.get_errno() == 2\n"
        "print('ok')\n"
    )
    env = {**os.environ, "LD_PRELOAD": str(fixup.dir / "statx.so"), "LD_BIND_NOW": "1"}
    done = subprocess.run(["python3", "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")
    ls = subprocess.run(["ls", "-l", "/"], env=env, capture_output=True, text=True, timeout=60)
    assert ls.returncode == 0 and ls.stderr == ""
    exported = subprocess.run(["nm", "-D", "--defined-only", str(fixup.dir / "statx.so")],
                              capture_output=True, text=True, timeout=60).stdout
    assert {line.split()[-1] for line in exported.splitlines()} == {"statx", "fstatat", "fstatat64"}


def test_without_a_compiler_sandboxes_start_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(gvisor_preload.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING):
        assert gvisor_preload.build(tmp_path / "preload") is None
    assert "install gcc" in caplog.text


def test_a_failed_build_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gvisor_preload.shutil, "which", lambda name: "/bin/false")
    assert gvisor_preload.build(tmp_path / "preload") is None
    assert list((tmp_path / "preload").iterdir()) == []


def test_a_template_with_its_own_list_or_an_odd_etc_keeps_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert not gvisor_preload.template_has_own(root)  # no /etc at all: runsc makes the mount point
    (root / "etc").mkdir()
    assert not gvisor_preload.template_has_own(root)
    (root / "etc" / "ld.so.preload").touch()  # names nothing (or a crash's leftover mount point)
    assert not gvisor_preload.template_has_own(root)
    (root / "etc" / "ld.so.preload").write_text("/usr/lib/libjemalloc.so.2\n")
    assert gvisor_preload.template_has_own(root)
    (root / "etc" / "ld.so.preload").unlink()
    (root / "etc" / "ld.so.preload").symlink_to("/host/elsewhere")
    assert gvisor_preload.template_has_own(root)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "etc").symlink_to(tmp_path / "root" / "etc")  # never followed: left alone
    assert gvisor_preload.template_has_own(linked)


def test_only_the_empty_mount_point_leaves_a_committed_layer(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "ld.so.preload").touch()
    (layer / "etc" / "hosts").write_text("x\n")
    gvisor_preload.drop_mount_point(layer)
    assert sorted(p.name for p in (layer / "etc").iterdir()) == ["hosts"]

    (layer / "etc" / "ld.so.preload").write_text("/usr/lib/mine.so\n")  # not the mount point
    gvisor_preload.drop_mount_point(layer)
    assert (layer / "etc" / "ld.so.preload").exists()

    outside = tmp_path / "outside"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc" / "ld.so.preload").touch()
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "etc").symlink_to(outside / "etc")
    gvisor_preload.drop_mount_point(linked)  # a link in the layer is not followed
    assert (outside / "etc" / "ld.so.preload").exists()


@pytest.mark.parametrize(("version", "needed"), [
    ("runsc version 0.0~20221219.0\nspec: 1.0.2-dev\n", True),  # Debian 12's own
    ("runsc version 0.0~20240729.0\nspec: 1.0.2-dev\n", False),  # bookworm-backports'
    ("runsc version release-20251110.0\nspec: 1.1.0\n", False),  # upstream's release builds
    ("runsc version VERSION_MISSING\n", True),  # no date: kept
    ("", True),
])
def test_only_a_runsc_older_than_the_fix_gets_the_fixup(version: str, needed: bool) -> None:
    assert gvisor_preload.needed(version) is needed


def test_the_runsc_on_the_path_is_asked(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text("#!/bin/sh\necho 'runsc version 0.0~20221219.0'\n")
    new.write_text("#!/bin/sh\necho 'runsc version 0.0~20240729.0'\n")
    for script in (old, new):
        script.chmod(0o755)
    assert gvisor_preload.runsc_needs_it(str(old)) and not gvisor_preload.runsc_needs_it(str(new))
    assert gvisor_preload.runsc_needs_it(str(tmp_path / "missing"))
