"""Unpack one OCI layer tar into a fresh directory (privileged: chown to shifted ids, mknod, trusted xattrs).

Every byte of the tar is hostile. The rules, in the order they are applied to each entry:

- the name is made relative (a leading ``./`` is dropped); absolute names and ``..`` components
  reject the whole layer;
- parents are walked one component at a time with ``O_NOFOLLOW`` directory fds, so nothing is ever
  written through a symlink (a tar may create ``a -> /etc`` and then ``a/passwd``); missing parents
  are created (0755, sandbox root);
- uids/gids must be below 65536 and are shifted by ``id_offset``; modes are kept (setuid too: it is
  inert inside the sandbox's user namespace, and the store is root-only on the host);
- ``.wh.NAME`` becomes an overlayfs whiteout (char device 0:0 named NAME), ``.wh..wh..opq`` sets
  ``trusted.overlay.opaque=y`` on its directory; other ``.wh..wh.*`` names (aufs metadata) are skipped;
- hard links must point at a regular file unpacked earlier in the same layer;
- device nodes are dropped (sandboxes get their own /dev); tar xattrs are not applied;
- mtimes are set, directories' last (writing into a directory changes its mtime).

Not thread-safe per destination; one call owns ``dest`` until it returns.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

ID_RANGE = 65536
MAX_ENTRIES = 1_000_000
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnpackError(ValueError):
    """The layer breaks a safety rule or cannot be unpacked; the message names the entry."""


def unpack_layer(stream: BinaryIO, dest: Path, *, id_offset: int, stop: threading.Event | None = None) -> None:
    """Unpack the uncompressed tar ``stream`` into the empty directory ``dest`` (see the module rules).

    ``stop``, when set by another thread, ends the unpack early with ``UnpackError``. ``dest`` is left
    partly filled on any error; the caller owns removing it.
    """
    if any(dest.iterdir()):
        raise UnpackError(f"{dest} is not empty")
    root = os.open(dest, _DIR_FLAGS)
    try:
        _Unpacker(root, id_offset, stop).run(stream)
    finally:
        os.close(root)


class _Unpacker:
    def __init__(self, root: int, id_offset: int, stop: threading.Event | None) -> None:
        self.root = root
        self.offset = id_offset
        self.stop = stop
        self.files: set[tuple[str, ...]] = set()  # regular files written by this layer (hard link targets)
        self.dirs: dict[tuple[str, ...], int] = {}  # dir -> mtime in ns, applied at the end
        os.fchown(root, id_offset, id_offset)

    def run(self, stream: BinaryIO) -> None:
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for count, member in enumerate(tar):
                    if count >= MAX_ENTRIES:
                        raise UnpackError(f"more than {MAX_ENTRIES} entries")
                    if self.stop is not None and self.stop.is_set():
                        raise UnpackError("stopped")
                    self._entry(tar, member)
        except tarfile.TarError as e:
            raise UnpackError(f"bad tar: {e}") from e
        for parts, mtime in self.dirs.items():
            with contextlib.suppress(FileNotFoundError, UnpackError), self._open_dir(parts, create=False) as fd:
                _set_mtime(fd, None, mtime)  # a dir replaced later in the layer is skipped

    def _entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = _parts(m.name)
        uid, gid = self._ids(m)
        if not parts:  # the layer root itself
            if m.isdir():
                self._meta(self.root, None, uid, gid, m)
                self.dirs[()] = _ns(m.mtime)
            return
        *parent, name = parts
        if any(p.startswith(WHITEOUT + WHITEOUT) for p in parent):
            return  # inside aufs metadata (.wh..wh.plnk/…)
        try:
            with self._open_dir(tuple(parent), create=True) as pfd:
                self._place(tar, m, pfd, tuple(parts), name, uid, gid)
        except (OSError, ValueError) as e:
            if isinstance(e, UnpackError):
                raise
            raise UnpackError(f"{m.name!r}: {e}") from e

    def _place(self, tar: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, parts: tuple[str, ...],
               name: str, uid: int, gid: int) -> None:
        if name == OPAQUE:
            os.setxattr(pfd, "trusted.overlay.opaque", b"y")
            return
        if name.startswith(WHITEOUT + WHITEOUT):
            return  # other aufs metadata
        if name.startswith(WHITEOUT):
            target = name[len(WHITEOUT):]
            if target in ("", ".", ".."):
                raise UnpackError(f"{m.name!r}: bad whiteout")
            self._clear(pfd, target, keep_dir=False)
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
            os.chown(target, uid, gid, dir_fd=pfd, follow_symlinks=False)
            self.files.discard((*parts[:-1], target))
            return
        if m.isdir():
            if not self._clear(pfd, name, keep_dir=True):
                os.mkdir(name, 0o700, dir_fd=pfd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            try:
                self._meta(fd, None, uid, gid, m)
            finally:
                os.close(fd)
            self.dirs[parts] = _ns(m.mtime)
            return
        self._clear(pfd, name, keep_dir=False)
        self.files.discard(parts)
        if m.isreg():
            self._file(tar, m, pfd, name, uid, gid)
            self.files.add(parts)
        elif m.issym():
            os.symlink(m.linkname, name, dir_fd=pfd)
            os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
            _set_mtime(pfd, name, _ns(m.mtime))
        elif m.islnk():
            self._link(m, pfd, name)
            self.files.add(parts)
        elif m.isfifo():
            os.mkfifo(name, 0o600, dir_fd=pfd)
            os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
            os.chmod(name, m.mode & 0o7777, dir_fd=pfd, follow_symlinks=False)
            _set_mtime(pfd, name, _ns(m.mtime))
        # device nodes and unknown types are dropped

    def _file(self, tar: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, name: str, uid: int, gid: int) -> None:
        src = tar.extractfile(m)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        try:
            if src is not None:
                while chunk := src.read(_CHUNK):
                    _write_all(fd, chunk)
            self._meta(fd, None, uid, gid, m)
        finally:
            os.close(fd)

    def _link(self, m: tarfile.TarInfo, pfd: int, name: str) -> None:
        target = _parts(m.linkname)
        if not target or target not in self.files:
            raise UnpackError(f"{m.name!r}: hard link to {m.linkname!r}, not a file of this layer")
        *tparent, tname = target
        with self._open_dir(tuple(tparent), create=False) as tfd:
            if not stat.S_ISREG(os.stat(tname, dir_fd=tfd, follow_symlinks=False).st_mode):
                raise UnpackError(f"{m.name!r}: hard link to {m.linkname!r}, not a regular file")
            os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)

    def _meta(self, fd: int, name: str | None, uid: int, gid: int, m: tarfile.TarInfo) -> None:
        os.fchown(fd, uid, gid)  # before chmod: chown clears setuid/setgid
        os.fchmod(fd, m.mode & 0o7777)
        if not m.isdir():
            _set_mtime(fd, name, _ns(m.mtime))

    def _ids(self, m: tarfile.TarInfo) -> tuple[int, int]:
        if not (0 <= m.uid < ID_RANGE and 0 <= m.gid < ID_RANGE):
            raise UnpackError(f"{m.name!r}: owner {m.uid}:{m.gid} is outside 0..{ID_RANGE - 1}")
        return self.offset + m.uid, self.offset + m.gid

    def _clear(self, pfd: int, name: str, *, keep_dir: bool) -> bool:
        """Remove an earlier entry called ``name`` (later entries win); True if a directory is kept."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            shutil.rmtree(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
        return False

    @contextlib.contextmanager
    def _open_dir(self, parts: tuple[str, ...], *, create: bool) -> Iterator[int]:
        """An fd of ``root/parts``, walked without following any symlink; ELOOP/ENOTDIR reject the entry."""
        fd = os.dup(self.root)
        try:
            for i, part in enumerate(parts):
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    os.chown(part, self.offset, self.offset, dir_fd=fd, follow_symlinks=False)
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    where = "/".join(parts[: i + 1])
                    raise UnpackError(f"{where!r} is a symlink or not a directory ({e.strerror})") from e
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)


def _parts(name: str) -> tuple[str, ...]:
    if name.startswith("/"):
        raise UnpackError(f"{name!r}: absolute name")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnpackError(f"{name!r}: '..' in name")
    return parts


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _ns(mtime: float) -> int:
    try:
        return max(0, min(int(mtime * 1_000_000_000), 2**62))
    except (OverflowError, ValueError):
        return 0


def _set_mtime(fd: int, name: str | None, ns: int) -> None:
    if name is None:
        os.utime(fd, ns=(ns, ns))
    else:
        os.utime(name, ns=(ns, ns), dir_fd=fd, follow_symlinks=False)
