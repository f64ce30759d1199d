"""Per-sandbox filesystems (privileged: mkfs, loop and overlay mounts on the host).

Layout: ``<data>/sandboxes/<id>/`` (0700) holds::

    disk.img   sparse ext4 image, size = the sandbox's disk limit (real disk, not RAM)
    disk/      the image mounted (loop): upper/ and work/ of the overlay live here

and ``<mounts dir>/<id>`` is the overlay (lower = template layers, upper = disk/upper), the
sandbox's ``/``, with the agent's runtime and code bound read-only under ``/.corral``.

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
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND = 1, 2, 4, 32, 4096


class MountError(RuntimeError):
    """A mount step failed; the message names the step and the path."""


def _mount(source: str, target: Path, fstype: str, options: str, flags: int = 0) -> None:
    rc = _libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags, options.encode())
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(f"mount {fstype} on {target} failed: {os.strerror(err)}")


MOUNT_DATA_LIMIT = 3500  # mount(2) copies at most one page (4096 bytes) of options
_SYS = {"fsopen": 430, "fsconfig": 431, "fsmount": 432, "move_mount": 429}  # same on x86_64 and aarch64
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
FSMOUNT_CLOEXEC, MOVE_MOUNT_F_EMPTY_PATH, AT_FDCWD = 1, 4, -100


def _syscall(name: str, *args: object) -> int:
    rc = int(_libc.syscall(_SYS[name], *args))
    if rc < 0:
        err = ctypes.get_errno()
        raise MountError(f"{name} failed: {os.strerror(err)}")
    return rc


def _mount_overlay_fsconfig(root: Path, lowers: list[Path], disk: Path) -> None:
    """Mount an overlay with any number of lower dirs (``lowerdir+``, Linux 6.8+)."""
    fs = _syscall("fsopen", b"overlay", 0)
    try:
        def set_string(key: str, value: str) -> None:
            _syscall("fsconfig", fs, FSCONFIG_SET_STRING, key.encode(), value.encode(), 0)

        for lower in lowers:
            set_string("lowerdir+", str(lower))
        set_string("upperdir", f"{disk}/upper")
        set_string("workdir", f"{disk}/work")
        _syscall("fsconfig", fs, FSCONFIG_SET_FLAG, b"volatile", None, 0)
        _syscall("fsconfig", fs, FSCONFIG_CMD_CREATE, None, None, 0)
        mnt = _syscall("fsmount", fs, FSMOUNT_CLOEXEC, 0)
        try:
            _syscall("move_mount", mnt, b"", AT_FDCWD, str(root).encode(), MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            os.close(mnt)
    finally:
        os.close(fs)


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


def mount_root(root: Path, disk: Path, lowers: list[Path], ro_binds: list[tuple[Path, str]]) -> None:
    """Mount the sandbox's root overlay (read-only template layers under the writable disk) at
    ``root``, then bind each host dir of ``ro_binds`` read-only at its path inside it."""
    root.mkdir(mode=0o755)
    lower = ":".join(str(p) for p in lowers)
    options = f"lowerdir={lower},upperdir={disk}/upper,workdir={disk}/work,volatile"
    if len(options) < MOUNT_DATA_LIMIT:
        _mount("overlay", root, "overlay", options)
    else:  # a deep template: mount(2) takes one page of options; the new mount API adds lowers one by one
        _mount_overlay_fsconfig(root, lowers, disk)
    for source, inside in ro_binds:
        target = root / inside.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        _mount(str(source), target, "", "", MS_BIND)
        _mount("", target, "", "", MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def destroy(sandbox_dir: Path, root: Path) -> None:
    """Unmount and delete everything of one sandbox. Idempotent; safe on half-built sandboxes.
    Never deletes through a mount: a mount point that is still mounted is left for the next try."""
    for path in (root, sandbox_dir / "disk"):
        if path.exists():
            _umount(path)  # lazy and recursive: the root's runtime binds go with it
    if root.exists() and not os.path.ismount(root):
        root.rmdir()
    disk = sandbox_dir / "disk"
    if disk.exists() and os.path.ismount(disk):
        raise MountError(f"{disk} is still mounted; not deleting {sandbox_dir}")
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(sandbox_dir)


def capture_upper(sandbox_dir: Path, dest: Path) -> None:
    """Copy the sandbox's overlay upper dir (its changes: files, whiteout devices, opaque xattrs,
    owners) to ``dest`` as a template layer, minus ``/.corral`` (the runtime's reserved mount points).
    The sandbox's processes must be gone. ``dest`` must not exist; its parent must."""
    upper = sandbox_dir / "disk" / "upper"
    if not upper.is_dir():
        raise MountError(f"{upper} is missing; nothing to capture")
    _run(["cp", "-a", "--no-target-directory", str(upper), str(dest)])
    reserved = dest / ".corral"
    if reserved.is_symlink() or reserved.is_file():
        reserved.unlink()
    elif reserved.exists():
        shutil.rmtree(reserved)


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
