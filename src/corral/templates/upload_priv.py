"""Unpack an uploaded build context (a tar, optionally compressed) on the host, as root (privileged).

The archive is hostile, so each member is checked before it is written (tarfile's own ``filter`` is
missing from Debian 12's Python 3.11.2): names must be relative with no ``..``; only files, dirs,
symlinks and hard links (to a file already unpacked here) are accepted; nothing is ever written
through a symlink (each parent is checked with ``lstat``, files are created with ``O_NOFOLLOW`` and
``O_EXCL``); set-id bits are dropped; the entry count and unpacked size are capped before anything is
written. Everything unpacked is then owned by the sandbox's root id (host ``id_offset``), so build
sandboxes read it as their root and it never belongs to host root. Symlink *targets* are kept as
written: the build context refuses a COPY that resolves outside it.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


class UploadError(ValueError):
    """The context archive can't be used; the message says why."""


@dataclass
class Budget:
    """What the archives being unpacked may still add: bytes (unpacked) and entries."""

    max_bytes: int
    max_entries: int
    bytes: int = 0
    entries: int = 0


def unpack_context(archive: BinaryIO, dest: Path, owner: int, max_bytes: int, max_entries: int = 100_000) -> int:
    """Unpack the tar in ``archive`` (seekable) into the new directory ``dest``; returns the entry count."""
    dest.mkdir(mode=0o755)
    count = _unpack_into(archive, dest, Budget(max_bytes, max_entries))
    _own(dest, owner)
    return count


def unpack_archives(paths: list[Path], dest: Path, owner: int, max_bytes: int, max_entries: int = 100_000) -> int:
    """Unpack the tars at ``paths``, in order, into the new directory ``dest`` (an entry replaces what an
    earlier archive put there; nothing goes through an earlier archive's symlink); the caps hold for
    all of them together. Returns the entry count."""
    dest.mkdir(mode=0o755)
    budget = Budget(max_bytes, max_entries)
    count = 0
    for path in paths:
        try:
            archive = open(path, "rb")  # noqa: SIM115 - closed below; an open that fails is the caller's to hear
        except OSError as exc:
            raise UploadError(f"an uploaded archive can't be read ({exc.strerror}): upload the files again") from None
        with archive:
            count += _unpack_into(archive, dest, budget)
    _own(dest, owner)
    return count


def _unpack_into(archive: BinaryIO, dest: Path, budget: Budget) -> int:
    try:
        with tarfile.open(fileobj=archive, mode="r:*") as tar:
            members = _members(tar, budget)
            for member in members:
                _unpack(tar, member, dest)
    except UploadError:
        raise
    except OSError as exc:
        if exc.errno is None:  # bz2's "Invalid data stream" and the like
            raise UploadError(f"the build context is not a readable tar archive: {exc}") from None
        raise UploadError(f"the build context could not be unpacked here: {exc.strerror}") from None
    except Exception as exc:  # tarfile's errors, and its decompressors' (zlib, lzma) on a corrupt stream
        raise UploadError(f"the build context is not a readable tar archive: {exc}") from None
    return len(members)


def _own(dest: Path, owner: int) -> None:
    os.lchown(dest, owner, owner)
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), owner, owner)


def _members(tar: tarfile.TarFile, budget: Budget) -> list[tarfile.TarInfo]:
    members = []
    for member in tar:
        members.append(member)
        budget.entries += 1
        budget.bytes += max(member.size, 0)
        if budget.entries > budget.max_entries:
            raise UploadError(f"the build context has more than {budget.max_entries} entries")
        if budget.bytes > budget.max_bytes:
            raise UploadError(f"the build context is larger than {budget.max_bytes >> 20} MiB unpacked")
        _name(member.name)
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise UploadError(f"refused entry {member.name!r}: only files, directories and links can be sent")
        if member.islnk():
            _name(member.linkname)
    return members


def _name(name: str) -> str:
    clean = posixpath.normpath(name or ".")  # "./a/" → "a"
    if name.startswith("/") or clean == ".." or clean.startswith("../") or "\0" in name:
        raise UploadError(f"refused entry {name!r}: it leaves the build context")
    return clean


def _parent(dest: Path, rel: str) -> Path:
    """The real directory ``rel``'s parent is in, made if missing; refuses any symlink on the way."""
    here = dest
    for part in rel.split("/")[:-1]:
        here = here / part
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            os.mkdir(here, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UploadError(f"refused entry {rel!r}: its parent {part!r} is not a directory")
    return here


def _unpack(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    rel = _name(member.name)
    if rel == ".":
        return
    target = _parent(dest, rel) / rel.split("/")[-1]
    existing = _lstat(target)
    if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
        if stat.S_ISDIR(existing.st_mode):
            shutil.rmtree(target)
        else:
            os.unlink(target)
    mode = member.mode & 0o777
    if member.isdir():
        if existing is None or not stat.S_ISDIR(existing.st_mode):
            os.mkdir(target, 0o755)
        os.chmod(target, mode | 0o700)
    elif member.isreg():
        source = tar.extractfile(member)
        assert source is not None
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with source, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
            os.fchmod(out.fileno(), mode)
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
    elif member.issym():
        os.symlink(member.linkname, target)
    else:  # a hard link: only to a regular file this archive already unpacked
        link_rel = _name(member.linkname)
        source_path = _parent(dest, link_rel) / link_rel.split("/")[-1]
        st = _lstat(source_path)
        if st is None or not stat.S_ISREG(st.st_mode):
            raise UploadError(f"refused entry {member.name!r}: a hard link to {member.linkname!r}, "
                              "which is not a file of this archive")
        os.link(source_path, target, follow_symlinks=False)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
