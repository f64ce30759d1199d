"""Per-sandbox filesystems (privileged: mkfs, loop and overlay mounts on the host).

Layout under ``<data>/sandboxes/<id>/``::

    disk.img   sparse ext4 image, size = the sandbox's disk limit (real disk, not RAM)
    disk/      the image mounted (loop): upper/ and work/ of the overlay live here
    root/      overlay(lower = template layers, upper = disk/upper): the sandbox's /

Writes inside the sandbox land in ``disk/upper`` and stop at the image size (ENOSPC), so a full
disk never eats host RAM or the host's free space beyond the limit.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import subprocess
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
MNT_DETACH = 2


class MountError(RuntimeError):
    """A mount step failed; the message names the step and the path."""


def _mount(source: str, target: Path, fstype: str, options: str) -> None:
    rc = _libc.mount(source.encode(), str(target).encode(), fstype.encode(), 0, options.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(f"mount {fstype} on {target} failed: {os.strerror(err)}")


def _umount(target: Path) -> None:
    if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (22, 2):  # EINVAL: not a mount point; ENOENT: gone
            raise MountError(f"umount {target} failed: {os.strerror(err)}")


def create_disk(sandbox_dir: Path, size_mb: int, owner: int) -> Path:
    """Make and mount the sandbox's writable disk; return the overlay upper dir (owned by ``owner``)."""
    image = sandbox_dir / "disk.img"
    mountpoint = sandbox_dir / "disk"
    mountpoint.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "nodiscard", str(image)])
    _run(["mount", "-o", "loop,noatime", str(image), str(mountpoint)])
    upper = mountpoint / "upper"
    upper.mkdir()
    (mountpoint / "work").mkdir()
    os.chown(upper, owner, owner)
    return upper


def mount_root(sandbox_dir: Path, lowers: list[Path]) -> Path:
    """Mount the sandbox's root overlay: read-only template layers under the writable disk."""
    root = sandbox_dir / "root"
    root.mkdir()
    disk = sandbox_dir / "disk"
    lower = ":".join(str(p) for p in lowers)
    _mount("overlay", root, "overlay", f"lowerdir={lower},upperdir={disk}/upper,workdir={disk}/work,volatile")
    return root


def destroy(sandbox_dir: Path) -> None:
    """Unmount and delete everything of one sandbox. Idempotent; safe on half-built sandboxes."""
    for name in ("root", "disk"):
        path = sandbox_dir / name
        if path.exists():
            _umount(path)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(sandbox_dir)


def mounted_under(base: Path) -> list[Path]:
    """Mount points below ``base`` (to find leftovers of a crash)."""
    prefix = str(base).rstrip("/") + "/"
    out: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                out.append(Path(point))
    return out


def disk_usage(sandbox_dir: Path) -> tuple[int, int]:
    """(used, total) bytes of the sandbox's writable disk."""
    st = os.statvfs(sandbox_dir / "disk")
    total = st.f_blocks * st.f_frsize
    return total - st.f_bfree * st.f_frsize, total


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MountError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
