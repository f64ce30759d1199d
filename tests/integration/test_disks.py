"""Sandbox disks (mounts_priv.create_disk): copies of a cached pristine image, each its own
filesystem, full at its size, rebuilt from scratch when the cached image is damaged, and gone
without a trace (mount, loop device) after destroy."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_data_dir, spare_dirs
from corral.config import Settings
from corral.runtime import mounts_priv
from corral.runtime.spares import DiskSpares

OWNER = 1_000_000


@pytest.fixture
def sandboxes() -> Iterator[Path]:
    data = make_data_dir()
    (data / "sandboxes").mkdir()
    yield data / "sandboxes"
    for d in (data / "sandboxes").iterdir():
        mounts_priv.destroy(d, data / "no-root")
    assert mounts_priv.mounted_under(data) == []
    assert str(data) not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    shutil.rmtree(data)


def new_disk(sandboxes: Path, name: str, size_mb: int = 64) -> Path:
    d = sandboxes / name
    d.mkdir()
    mounts_priv.create_disk(d, size_mb, owner=OWNER)
    return d


def blkid(image: Path, tag: str) -> str:
    probe = subprocess.run(["blkid", "-p", "-o", "value", "-s", tag, str(image)], capture_output=True, text=True)
    return probe.stdout.strip()


def test_disks_are_separate_filesystems_with_their_own_uuid(sandboxes: Path) -> None:
    a, b = new_disk(sandboxes, "a"), new_disk(sandboxes, "b")
    assert blkid(a / "disk.img", "UUID") != blkid(b / "disk.img", "UUID") != ""
    assert os.statvfs(a / "disk").f_fsid != os.statvfs(b / "disk").f_fsid
    check = subprocess.run(["e2fsck", "-fn", str(a / "disk.img")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr  # checksums still match after the UUID change
    upper = a / "disk" / "upper"
    assert upper.stat().st_uid == OWNER and (a / "disk" / "work").is_dir()
    (upper / "mine").write_text("a")
    assert not (b / "disk" / "upper" / "mine").exists()
    used, total = mounts_priv.disk_usage(a / "disk")
    assert 56 << 20 < total <= 64 << 20 and 0 < used < 8 << 20  # less ext4 metadata
    # the copy is sparse: far less allocated than its size
    assert os.stat(a / "disk.img").st_blocks * 512 < 8 << 20


def test_a_disk_of_the_default_size_writes_little_to_the_host_now_and_later(sandboxes: Path) -> None:
    cache = sandboxes.parent / mounts_priv.DISK_CACHE
    cache.mkdir()
    stale = cache / "ext4-2048m.img"  # an earlier release's image (other mkfs options)
    stale.write_bytes(b"old")
    d = new_disk(sandboxes, "a", size_mb=Settings().default_disk_mb)
    assert not stale.exists()  # replaced by one of this release's options, not used
    # only the filesystem's own metadata is copied: no blocks kept for growing it online
    assert os.stat(d / "disk.img").st_blocks * 512 < 512 << 10
    # every inode table is marked zeroed (its holes read as zeros): the kernel never writes them
    dump = subprocess.run(["dumpe2fs", str(d / "disk.img")], capture_output=True, text=True).stdout
    groups = [line for line in dump.splitlines() if re.match(r"Group \d+:", line)]
    assert len(groups) == 16 and all("ITABLE_ZEROED" in g for g in groups), groups
    assert "noinit_itable" in Path("/proc/self/mountinfo").read_text().split(str(d / "disk"))[1].splitlines()[0]


def test_a_disk_is_full_at_its_size(sandboxes: Path) -> None:
    d = new_disk(sandboxes, "full", size_mb=64)
    with open(d / "disk" / "upper" / "big", "wb") as f, pytest.raises(OSError, match="No space"):
        for _ in range(80):
            f.write(b"\0" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())
    assert os.stat(d / "disk.img").st_size == 64 << 20


def test_a_damaged_or_unverifiable_cached_image_is_rebuilt(sandboxes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    new_disk(sandboxes, "first")
    cached = mounts_priv.cached_image(sandboxes.parent / mounts_priv.DISK_CACHE, 64)
    assert blkid(cached, "TYPE") == "ext4"
    with open(cached, "rb+") as f:  # scribbled over in place, after this process checked its digest
        f.seek(1024)
        f.write(b"\xff" * 256)
    assert blkid(cached, "TYPE") == ""
    assert (new_disk(sandboxes, "second") / "disk" / "upper").is_dir()  # its copy did not mount: rebuilt
    assert blkid(cached, "TYPE") == "ext4"
    replaced = cached.with_name("replaced")  # a new file without the digest xattr: not trusted
    digest = os.getxattr(cached, "user.corral.sha256")
    shutil.copyfile(cached, replaced)
    os.rename(replaced, cached)
    st = cached.stat()
    inode = st.st_ino
    # even when it reuses the inode number of the image this process checked (ext4 reuses freed ones)
    monkeypatch.setitem(mounts_priv._checked, cached, (st.st_dev, inode, digest))
    assert (new_disk(sandboxes, "third") / "disk" / "upper").is_dir()
    assert cached.stat().st_ino != inode and os.getxattr(cached, "user.corral.sha256")
    cached.unlink()  # missing: built again
    assert (new_disk(sandboxes, "fourth") / "disk" / "upper").is_dir() and cached.is_file()


def test_without_user_xattrs_the_image_is_trusted_by_its_builder_only(
    sandboxes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*_: object) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", unsupported)
    new_disk(sandboxes, "a")
    cached = mounts_priv.cached_image(sandboxes.parent / mounts_priv.DISK_CACHE, 64)
    built = cached.stat().st_ino
    new_disk(sandboxes, "b")
    assert cached.stat().st_ino == built  # this process built it: reused
    monkeypatch.setattr(mounts_priv, "_checked", {})  # another server process
    new_disk(sandboxes, "c")
    assert cached.stat().st_ino != built  # no digest to check it against: built again


def test_spare_disks_are_made_ahead_taken_once_and_removed(sandboxes: Path) -> None:
    async def body() -> None:
        leftover = mounts_priv.make_spare(sandboxes, 64, OWNER)
        os.close(leftover.mount)  # a crashed server's: its disk went with its fds
        spares = DiskSpares(sandboxes, OWNER, 64, 2)
        assert spares.take(64) is None  # not started: nothing made yet
        await spares.start()
        assert not leftover.path.exists()
        while spares.ready < 2:
            await asyncio.sleep(0.01)  # waits for the background fill, asserted next (not a timing)
        assert len(spare_dirs(sandboxes.parent)) == 2
        assert mounts_priv.mounted_under(sandboxes.parent) == []  # detached: in no namespace
        taken = spares.take(64)
        assert taken is not None and sorted(os.listdir(taken.path)) == ["disk", "disk.img"]
        assert spares.take(128) is None  # only the default size is made ahead
        mine = sandboxes / "sbx1"
        assert mounts_priv.take_spare(taken, mine)  # how a sandbox takes it (launch_priv.make_dir)
        assert not taken.path.exists() and os.path.ismount(mine / "disk")
        assert (mine / "disk" / "upper").stat().st_uid == OWNER and not os.listdir(mine / "disk" / "upper")
        other = spares.take(64)
        assert other is not None and mounts_priv.take_spare(other, sandboxes / "sbx2")
        assert os.statvfs(sandboxes / "sbx2" / "disk").f_fsid != os.statvfs(mine / "disk").f_fsid
        spares.refill()  # as a create does once it is done
        await spares.close()  # the ones made since are removed; taken ones are their sandboxes'
        assert spare_dirs(sandboxes.parent) == []
        assert spares.take(64) is None
        spares.refill()  # closed: nothing is made
        await asyncio.sleep(0)
        assert spare_dirs(sandboxes.parent) == []

    asyncio.run(body())


@pytest.mark.parametrize("planted", ["absolute symlink", "relative symlink", "file"])
def test_a_templates_own_corral_entry_never_leads_the_hosts_mounts_out_of_the_root(
    sandboxes: Path, planted: str
) -> None:
    """An image may carry ``/.corral`` as a symlink to a host path: the host (root) mounts the
    runtime there and makes mount points, and must do both inside the sandbox's root (gVisor's
    roots are mounted in the host's own namespace). Twin: the runtime is there, read-only."""
    data = sandboxes.parent
    victim, lower, source, root = data / "victim", data / "layer", data / "rt", data / "root"
    for d in (victim, lower, source):
        d.mkdir()
    (victim / "keep").write_text("host")
    (source / "tool").write_text("runtime")
    link = lower / ".corral"
    if planted == "absolute symlink":
        link.symlink_to(victim)
    elif planted == "relative symlink":
        link.symlink_to("../victim")  # relative to the root, which is a sibling of victim
    else:
        link.write_text("not a dir")
    disk = new_disk(sandboxes, "a")
    try:
        mounts_priv.mount_root(root, disk / "disk", [lower], [(source, "/.corral/rt")], ("/.corral/lib/corral_agent",))
        assert os.listdir(victim) == ["keep"] and not os.path.ismount(victim)
        assert (root / ".corral" / "rt" / "tool").read_text() == "runtime"
        assert (root / ".corral" / "lib" / "corral_agent").is_dir()
        with pytest.raises(OSError, match="Read-only"):
            (root / ".corral" / "lib" / "shutil.py").write_text("planted")
        assert os.path.lexists(link) and os.listdir(victim) == ["keep"]  # the template layer is unchanged
        other = new_disk(sandboxes, "b")
        with pytest.raises(mounts_priv.MountError, match=r"not under /\.corral/"):  # nowhere else, ever
            mounts_priv.mount_root(data / "root2", other / "disk", [lower], [(source, "/etc")])
    finally:
        for path in (root, data / "root2"):
            mounts_priv._umount(path)
    assert mounts_priv.mounted_under(root) == []
