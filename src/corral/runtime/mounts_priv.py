"""Per-sandbox filesystems (privileged: mkfs, loop and overlay mounts on the host).

Layout: ``<data>/sandboxes/<id>/`` (0700) holds::

    disk.img   sparse ext4 image, size = the sandbox's disk limit (real disk, not RAM)
    disk/      the image mounted (loop): upper/ and work/ of the overlay live here

and ``<mounts dir>/<id>`` is the overlay (lower = template layers, upper = disk/upper), the
sandbox's ``/``, with the agent's runtime and code bound read-only under ``/.corral``.

Writes inside the sandbox land in ``disk/upper`` and stop at the image size (ENOSPC), so a full
disk never eats host RAM or the host's free space beyond the limit.

No ``mkfs`` or ``mount`` process per sandbox: ``<data>/disk-images/`` holds one pristine empty image
per size (built once, atomically; checked against its digest once per process and rebuilt when
missing or corrupt). Each sandbox gets a sparse copy of it (only its data extents; reflinked where
the filesystem can) with a fresh ext4 UUID, attached with the loop-control ioctls and mounted
detached (``fsmount``), then moved into the mount namespace that needs it (a bwrap sandbox's own,
``mountns_priv``; the host's for gVisor).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import os
import re
import shutil
import struct
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
MNT_DETACH = 2
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096


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
FSOPEN_CLOEXEC = FSMOUNT_CLOEXEC = 1
MOVE_MOUNT_F_EMPTY_PATH, AT_FDCWD = 4, -100
MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOATIME = 0x2, 0x4, 0x10


def _syscall(name: str, *args: object) -> int:
    rc = int(_libc.syscall(_SYS[name], *args))
    if rc < 0:
        err = ctypes.get_errno()
        raise MountError(f"{name} failed: {os.strerror(err)}")
    return rc


def _mount_overlay_fsconfig(root: Path, lowers: list[Path], disk: Path) -> None:
    """Mount an overlay with any number of lower dirs (``lowerdir+``, Linux 6.8+)."""
    fs = _syscall("fsopen", b"overlay", FSOPEN_CLOEXEC)
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
    """Make the sandbox's writable disk and mount it at ``sandbox_dir/disk`` (in this thread's mount
    namespace); return the overlay upper dir (owned by ``owner``)."""
    attach_disk(new_disk(sandbox_dir, size_mb, owner), sandbox_dir)
    return sandbox_dir / "disk" / "upper"


def new_disk(sandbox_dir: Path, size_mb: int, owner: int) -> int:
    """Make ``sandbox_dir/disk.img`` with its overlay dirs (``upper`` owned by ``owner``) and the
    ``disk`` dir to mount it on; returns the disk as a detached mount (an fd, in no namespace until
    ``attach_disk``; closing it unmounts)."""
    image = sandbox_dir / "disk.img"
    (sandbox_dir / "disk").mkdir()
    cache = sandbox_dir.parent.parent / DISK_CACHE
    for attempt in range(2):
        pristine = _pristine(cache, size_mb)
        _sparse_copy(pristine, image)
        try:
            _set_uuid(image)
            mount = _mount_loop(image)
            break
        except MountError:
            if attempt:
                raise
            _forget(pristine)  # a corrupt cached image: build it again, once
            image.unlink()
    try:
        os.mkdir("upper", dir_fd=mount)
        os.mkdir("work", dir_fd=mount)
        os.chown("upper", owner, owner, dir_fd=mount)
    except BaseException:
        os.close(mount)
        raise
    return mount


def attach_disk(mount: int, sandbox_dir: Path) -> None:
    """Mount a disk of ``new_disk`` at ``sandbox_dir/disk`` in this thread's mount namespace; closes ``mount``."""
    try:
        _syscall("move_mount", mount, b"", AT_FDCWD, str(sandbox_dir / "disk").encode(), MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(mount)


SPARE_PREFIX = ".spare-"  # in the sandboxes dir; never a sandbox id (those are lowercase alphanumerics)


@dataclass
class Spare:
    """A sandbox dir whose disk is made ahead: ``path`` holds its image, ``mount`` is the disk as a
    detached mount (``new_disk``), attached wherever the sandbox that takes it is mounted."""

    path: Path
    mount: int


def make_spare(sandboxes_dir: Path, size_mb: int, owner: int) -> Spare:
    """An empty sandbox dir with its disk made ahead of any sandbox (``runtime/spares.py``): a
    sandbox takes it by renaming it to its own dir and attaching the disk (``take_spare``)."""
    d = sandboxes_dir / f"{SPARE_PREFIX}{size_mb}m-{uuid.uuid4().hex[:16]}"
    d.mkdir(mode=0o700)
    try:
        return Spare(d, new_disk(d, size_mb, owner))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(d)
        raise


def take_spare(spare: Spare, sandbox_dir: Path) -> bool:
    """Make ``spare`` the sandbox dir ``sandbox_dir``, its disk mounted there (in this thread's mount
    namespace). The spare is used up either way; False: it could not be renamed (and is deleted)."""
    try:
        os.rename(spare.path, sandbox_dir)
    except OSError:
        destroy_spare(spare)
        return False
    mount, spare.mount = spare.mount, -1
    attach_disk(mount, sandbox_dir)
    return True


def destroy_spare(spare: Spare) -> None:
    """Unmount (close) and delete a spare. Idempotent."""
    if spare.mount >= 0:
        os.close(spare.mount)
        spare.mount = -1
    destroy(spare.path, spare.path / "root")


# --- the pristine image cache -------------------------------------------------------------------

DISK_CACHE = "disk-images"  # in the data dir, beside sandboxes/
MAX_CACHED = 8  # image sizes kept; callers choose sizes, so the cache is bounded
# No journal (the disk is thrown away with its sandbox); no blocks reserved for growing it online
# (``resize_inode``: ~1 MiB of a 2 GiB image that every copy would write); "discard" punches the
# file's holes, so its inode tables are marked zeroed and the kernel does not zero them later.
_MKFS = ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal,^resize_inode,metadata_csum_seed", "-E", "discard"]
_FLAVOUR = hashlib.sha256(" ".join(_MKFS).encode()).hexdigest()[:8]  # images of other options: rebuilt
_DIGEST_XATTR = "user.corral.sha256"
_lock = threading.Lock()
# Each cached image whose digest matched, by path: the file it was (device, inode, recorded digest).
# The digest tells a new file apart from a deleted one whose inode number it reuses.
_checked: dict[Path, tuple[int, int, bytes]] = {}


def _identity(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    try:
        digest = os.getxattr(path, _DIGEST_XATTR)
    except OSError:  # none (a file system without user xattrs: trusted by its builder only)
        digest = b""
    return st.st_dev, st.st_ino, digest


def cached_image(cache: Path, size_mb: int) -> Path:
    """Where the pristine empty image of this size is kept."""
    return cache / f"ext4-{size_mb}m-{_FLAVOUR}.img"


def _pristine(cache: Path, size_mb: int) -> Path:
    """The cached empty image of this size, built (or rebuilt) if missing or corrupt."""
    path = cached_image(cache, size_mb)
    with _lock:
        try:
            known = _identity(path)
            if _checked.get(path) != known:
                if not known[2] or path.stat().st_size != size_mb << 20 or _digest(path) != known[2].decode():
                    raise ValueError(f"{path} does not match its digest")
                _checked[path] = known
            os.utime(path)  # most recently used: evicted last
            return path
        except (OSError, ValueError):
            pass
        cache.mkdir(mode=0o700, exist_ok=True)
        tmp = cache / f".build-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.truncate(size_mb << 20)
            _run([*_MKFS, str(tmp)])
            with contextlib.suppress(OSError):  # no user xattrs here: trusted by this process only
                os.setxattr(tmp, _DIGEST_XATTR, _digest(tmp).encode())
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.rename(tmp, path)  # atomic: readers see the whole image or none
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _checked[path] = _identity(path)
        _evict(cache, keep=path)
        return path


def _forget(path: Path) -> None:
    with _lock, contextlib.suppress(FileNotFoundError):
        _checked.pop(path, None)
        path.unlink()


def _evict(cache: Path, keep: Path) -> None:
    images = sorted(cache.glob("ext4-*.img"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    stale = [p for p in images if not p.name.endswith(f"-{_FLAVOUR}.img")]
    current = [p for p in images if p != keep and p not in stale]
    for old in stale + current[MAX_CACHED - 1:]:
        with contextlib.suppress(FileNotFoundError):
            _checked.pop(old, None)
            old.unlink()


def _extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the data extents of a sparse file."""
    out: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        offset = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, offset - start))
    return out


def _digest(path: Path) -> str:
    """sha256 over the data extents and their offsets (holes read as zeros: not hashed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(struct.pack("<Q", size))
        for start, length in _extents(f.fileno(), size):
            h.update(struct.pack("<QQ", start, length))
            h.update(os.pread(f.fileno(), length, start))
    return h.hexdigest()


def _sparse_copy(src: Path, dst: Path) -> None:
    """Copy only the data extents (copy_file_range: in-kernel, a reflink on XFS/btrfs)."""
    with open(src, "rb") as s, open(dst, "xb") as d:
        size = os.fstat(s.fileno()).st_size
        d.truncate(size)
        for start, length in _extents(s.fileno(), size):
            done = 0
            while done < length:
                n = os.copy_file_range(s.fileno(), d.fileno(), length - done, start + done, start + done)
                if n == 0:
                    raise MountError(f"copying {src}: unexpected end of file")
                done += n


# --- ext4 superblock: a fresh UUID per copy -----------------------------------------------------

_SB, _SB_LEN = 1024, 1024
_SB_MAGIC, _SB_INCOMPAT, _SB_UUID, _SB_CSUM = 0x38, 0x60, 0x68, 0x3FC  # ro_compat follows incompat
_RO_COMPAT_METADATA_CSUM, _INCOMPAT_CSUM_SEED = 0x400, 0x2000


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c_raw(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """CRC32C without the final inversion (as ext4 stores it)."""
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _set_uuid(image: Path) -> None:
    """Give a copy its own filesystem UUID (statfs's f_fsid and the kernel's messages derive from
    it; identical ones would make every sandbox's disk look like one filesystem). The image's
    metadata checksums use the stored seed (``metadata_csum_seed``), so only the superblock's own
    checksum changes. The backup superblocks keep the pristine UUID, as after a kernel-side change."""
    with open(image, "rb+") as f:
        sb = bytearray(os.pread(f.fileno(), _SB_LEN, _SB))
        incompat, ro_compat = struct.unpack_from("<II", sb, _SB_INCOMPAT)
        if sb[_SB_MAGIC:_SB_MAGIC + 2] != b"\x53\xef" or not incompat & _INCOMPAT_CSUM_SEED:
            raise MountError(f"{image}: not an ext4 image with a checksum seed")
        sb[_SB_UUID:_SB_UUID + 16] = uuid.uuid4().bytes
        if ro_compat & _RO_COMPAT_METADATA_CSUM:
            struct.pack_into("<I", sb, _SB_CSUM, crc32c_raw(bytes(sb[:_SB_CSUM])))
        os.pwrite(f.fileno(), sb, _SB)


# --- loop devices -------------------------------------------------------------------------------

LOOP_CTL_GET_FREE, LOOP_CONFIGURE, LO_FLAGS_AUTOCLEAR = 0x4C82, 0x4C0A, 4
_LOOP_INFO64 = struct.Struct("<5Q4I64s64s32s2Q")  # struct loop_info64
_LOOP_CONFIG = struct.Struct(f"<II{_LOOP_INFO64.size}s64x")  # struct loop_config


def _mount_loop(image: Path) -> int:
    """Attach ``image`` to a free loop device (auto-cleared: it goes with its last user, the mount
    or, if we die first, our fd) and mount it; returns the mount, detached (an fd)."""
    with open(image, "rb+") as backing:
        for _ in range(64):  # another process may take the free device before we configure it
            with open("/dev/loop-control", "rb") as ctl:
                index = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            dev = f"/dev/loop{index}"
            fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
            try:
                info = _LOOP_INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, LO_FLAGS_AUTOCLEAR,
                                         str(image).encode()[:63], b"", b"", 0, 0)
                try:
                    fcntl.ioctl(fd, LOOP_CONFIGURE, _LOOP_CONFIG.pack(backing.fileno(), 0, info))
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        continue
                    raise MountError(f"attaching {image} to {dev} failed: {exc.strerror}") from exc
                # noinit_itable: the image's inode tables are holes, zero already; never write them
                return _detached_mount("ext4", dev, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOATIME,
                                       flags=(b"noinit_itable",))
            finally:
                os.close(fd)  # the mount holds the device now; without one it detaches here
    raise MountError(f"attaching {image}: no free loop device")


def _detached_mount(fstype: str, source: str, attrs: int, flags: tuple[bytes, ...] = ()) -> int:
    fs = _syscall("fsopen", fstype.encode(), FSOPEN_CLOEXEC)
    try:
        _syscall("fsconfig", fs, FSCONFIG_SET_STRING, b"source", source.encode(), 0)
        for flag in flags:
            _syscall("fsconfig", fs, FSCONFIG_SET_FLAG, flag, None, 0)
        _syscall("fsconfig", fs, FSCONFIG_CMD_CREATE, None, None, 0)
        return _syscall("fsmount", fs, FSMOUNT_CLOEXEC, attrs)
    finally:
        os.close(fs)


def mount_root(
    root: Path, disk: Path, lowers: list[Path], ro_binds: list[tuple[Path, str]], mount_points: tuple[str, ...] = (),
) -> None:
    """Mount the sandbox's root overlay (read-only template layers under the writable disk) at
    ``root``, then bind each host dir of ``ro_binds`` read-only at its path inside it. The dirs of
    ``mount_points`` (paths inside) are made for binds bwrap makes later: as the sandbox's root it
    could not create them in an image whose directories belong to someone else.

    Every path inside is under ``/.corral`` (``RUNTIME_DIR``): a read-only bind of the host's own
    empty skeleton of it (``SKELETON``, beside the root) over whatever the template has there. An
    image's ``/.corral`` may be a symlink (``-> /etc``), which this process, host root, would
    otherwise follow out of the root for its ``mkdir`` and binds; and a sandbox's root can write
    nothing under it (no module for the agent's lazy imports in ``/.corral/lib``)."""
    root.mkdir(mode=0o755)
    lower = ":".join(str(p) for p in lowers)
    options = f"lowerdir={lower},upperdir={disk}/upper,workdir={disk}/work,volatile"
    if len(options) < MOUNT_DATA_LIMIT:
        _mount("overlay", root, "overlay", options)
    else:  # a deep template: mount(2) takes one page of options; the new mount API adds lowers one by one
        _mount_overlay_fsconfig(root, lowers, disk)
    runtime = _runtime_dir(root, [_under_runtime_dir(inside) for inside in (*mount_points, *(i for _, i in ro_binds))])
    for source, inside in ro_binds:
        target = runtime / _under_runtime_dir(inside)
        _mount(str(source), target, "", "", MS_BIND)
        _mount("", target, "", "", MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


RUNTIME_DIR = "/.corral"  # the one dir of a sandbox's root the host mounts into
SKELETON = ".skeleton"  # beside the roots (the mounts dir): RUNTIME_DIR's empty dirs, the host's own


def _under_runtime_dir(inside: str) -> str:
    """``inside`` relative to ``RUNTIME_DIR``; anything else is refused (the host mounts nowhere else)."""
    rel = os.path.relpath(os.path.normpath(inside), RUNTIME_DIR)
    if not inside.startswith(RUNTIME_DIR + "/") or rel.startswith("..") or rel == ".":
        raise MountError(f"mount point {inside!r} is not under {RUNTIME_DIR}/")
    return rel


def _runtime_dir(root: Path, mount_points: list[str]) -> Path:
    """``root/.corral`` made a plain directory (whatever the image has there) with the skeleton bound
    read-only over it; the skeleton gets the ``mount_points`` (relative) it lacks. A bind of one
    directory: 0.16 ms per sandbox, against 0.5-0.9 for a tmpfs of its own."""
    skeleton = root.parent / SKELETON
    skeleton.mkdir(mode=0o755, exist_ok=True)
    for rel in mount_points:
        (skeleton / rel).mkdir(mode=0o755, parents=True, exist_ok=True)
    path = root / RUNTIME_DIR.lstrip("/")
    if os.path.islink(path) or (os.path.lexists(path) and not path.is_dir()):
        path.unlink()  # in the overlay: a whiteout in this sandbox's upper, the template is unchanged
    path.mkdir(mode=0o755, exist_ok=True)
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)  # certainly a directory now
    try:
        _mount(str(skeleton), Path(f"/proc/self/fd/{fd}"), "", "", MS_BIND)
    finally:
        os.close(fd)
    _mount("", path, "", "", MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    return path


def remove_skeleton(mounts_dir: Path) -> None:
    """Delete the skeleton (empty dirs only) when the server stops (binds of it keep their dirs)."""
    with contextlib.suppress(OSError):
        shutil.rmtree(mounts_dir / SKELETON)


def mount_shared(where: Path, binds: list[tuple[Path, str]]) -> None:
    """Bind each host dir of ``binds`` read-only (nosuid, nodev) at ``where/<last part of its path
    inside>``, once for all sandboxes (``LaunchPlan.runtime_binds``); a previous process's binds
    there are replaced."""
    if where.exists():
        _umount(where)  # recursive and lazy: a crashed server's binds
    where.mkdir(mode=0o755, exist_ok=True)
    _mount("corral-runtime", where, "tmpfs", "mode=755,size=16k", MS_NOSUID | MS_NODEV)
    for source, inside in binds:
        target = where / Path(inside).name
        target.mkdir()
        _mount(str(source), target, "", "", MS_BIND)
        _mount("", target, "", "", MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def unmount_shared(where: Path) -> None:
    if where.exists():
        _umount(where)
        where.rmdir()


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


def capture_upper(disk: Path, dest: Path) -> None:
    """Copy the sandbox's overlay upper dir (its changes: files, whiteout devices, opaque xattrs,
    owners) to ``dest`` as a template layer, minus ``/.corral`` (the runtime's reserved mount points).
    The sandbox's processes must be gone. ``dest`` must not exist; its parent must."""
    upper = disk / "upper"
    if not upper.is_dir():
        raise MountError(f"{upper} is missing; nothing to capture")
    _run(["cp", "-a", "--no-target-directory", str(upper), str(dest)])
    reserved = dest / ".corral"
    if reserved.is_symlink() or reserved.is_file():
        reserved.unlink()
    elif reserved.exists():
        shutil.rmtree(reserved)


_ESCAPED = re.compile(r"\\([0-7]{3})")


def mountinfo_path(field: str) -> str:
    """A path field of ``/proc/*/mountinfo``, where the kernel writes space, tab, newline and
    backslash as ``\\ooo``."""
    return _ESCAPED.sub(lambda m: chr(int(m[1], 8)), field)


def mounted_under(base: Path) -> list[Path]:
    """Mount points below ``base`` (to find leftovers of a crash)."""
    prefix = str(base).rstrip("/") + "/"
    out: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = mountinfo_path(line.split()[4])
            if point.startswith(prefix):
                out.append(Path(point))
    return out


def disk_usage(disk: Path) -> tuple[int, int]:
    """(used, total) bytes of the sandbox's writable disk (mounted at, or reached through, ``disk``)."""
    st = os.statvfs(disk)
    total = st.f_blocks * st.f_frsize
    return total - st.f_bfree * st.f_frsize, total


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MountError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
