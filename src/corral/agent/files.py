"""Filesystem operations for the agent: entries, listings, streamed reads and atomic writes.

Functions here block; the server runs every one of them through `creds.FileRunner`, on the
connection's thread while it holds the requesting user's filesystem credentials, so the kernel
checks permissions exactly as for that user, and what they create belongs to that user. Paths are
used exactly as given (the agent lives in the sandbox's mount namespace, so the kernel resolves
symlinks and `..` inside the sandbox). Every OSError leaves this module as an AgentError (see `protocol.error_from_os`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from . import accounts
from .protocol import AgentError, error_from_os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

READ_CHUNK = 256 * 1024
MAX_LIST_ENTRIES = 20_000
TEMP_PREFIX = ".corral-write-"  # temp files of in-flight writes; watches hide them


@contextlib.contextmanager
def os_errors(path: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise error_from_os(exc, path) from None


class _Names:
    """uid/gid → name, looked up once per operation (passwd may change under us between calls)."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        if uid not in self._users:
            found = accounts.user_by_id(uid)
            self._users[uid] = found.name if found else str(uid)
        return self._users[uid]

    def group(self, gid: int) -> str:
        if gid not in self._groups:
            found = accounts.group_by_id(gid)
            self._groups[gid] = found.name if found else str(gid)
        return self._groups[gid]


def entry(path: str, st: os.stat_result | None = None, names: _Names | None = None) -> dict[str, Any]:
    """The protocol's Entry for `path` (lstat unless `st` is given)."""
    with os_errors(path):
        st = st or os.lstat(path)
        target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    names = names or _Names()
    if stat.S_ISREG(st.st_mode):
        kind = "file"
    elif stat.S_ISDIR(st.st_mode):
        kind = "dir"
    elif stat.S_ISLNK(st.st_mode):
        kind = "symlink"
    else:
        kind = "other"
    return {
        "name": os.path.basename(path.rstrip("/")) or "/",
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "permissions": stat.filemode(st.st_mode),
        "owner": names.user(st.st_uid),
        "group": names.group(st.st_gid),
        "modified": st.st_mtime,
        "symlink_target": target,
    }


def list_entries(path: str, depth: int) -> list[dict[str, Any]]:
    """Entries under directory `path` down to `depth` levels, sorted by path; symlinks not followed."""
    with os_errors(path):
        if not stat.S_ISDIR(os.stat(path).st_mode):
            raise AgentError("not_dir", f"Not a directory: {path}")
    names, found = _Names(), []
    pending = [(path, 1)]
    while pending:
        directory, level = pending.pop()
        try:
            with os.scandir(directory) as it:
                children = list(it)
        except OSError as exc:
            if directory == path:
                raise error_from_os(exc, path) from None
            continue  # an unreadable subdirectory is listed but not descended into
        for child in children:
            child_path = os.path.join(directory, child.name)
            try:
                found.append(entry(child_path, child.stat(follow_symlinks=False), names))
            except (AgentError, OSError):
                continue  # removed while we listed
            if len(found) > MAX_LIST_ENTRIES:
                raise AgentError("too_large", f"more than {MAX_LIST_ENTRIES} entries under {path}")
            if level < depth and found[-1]["type"] == "dir":
                pending.append((child_path, level + 1))
    return sorted(found, key=lambda e: e["path"])


def open_for_read(path: str) -> tuple[int, dict[str, Any]]:
    """An fd on regular file `path` and its Entry; the caller closes the fd."""
    with os_errors(path):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)  # FIFOs: no hang
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise AgentError("is_dir", f"Is a directory: {path}")
            if not stat.S_ISREG(st.st_mode):
                raise AgentError("invalid", f"Not a regular file: {path}")
            os.set_blocking(fd, True)
            return fd, entry(path, st)
        except BaseException:
            os.close(fd)
            raise


def read_chunk(fd: int, path: str) -> bytes:
    with os_errors(path):
        return os.read(fd, READ_CHUNK)


def make_dirs(path: str, if_file: str = "exists") -> bool:
    """Create `path` and its missing parents. False if it already was a directory.

    A non-directory in the way is `not_dir` when it is a parent, and `if_file` when it is `path`.
    """
    missing: list[str] = []
    current = path.rstrip("/") or "/"
    with os_errors(path):
        while True:
            try:
                st = os.stat(current)
            except FileNotFoundError:
                missing.append(current)
                parent = os.path.dirname(current)
                if parent == current:
                    raise
                current = parent
                continue
            if not stat.S_ISDIR(st.st_mode):
                kind = "not_dir" if missing else if_file
                raise AgentError(kind, f"Exists and is not a directory: {current}")
            break
        for directory in reversed(missing):
            try:
                os.mkdir(directory, 0o755)
            except FileExistsError:
                if os.path.isdir(directory):
                    continue  # created concurrently, or a `..` step
                raise
    return bool(missing)


class FileWriter:
    """Writes a new version of a file next to it and renames it into place on `commit`.

    A symlink at the target is written through (its target is replaced), like open(O_TRUNC) would.
    """

    def __init__(self, path: str, mode: int | None) -> None:
        self.path = path
        with os_errors(path):
            target = os.path.realpath(path) if os.path.islink(path) else path
            make_dirs(os.path.dirname(target) or ".", if_file="not_dir")
            try:
                st = os.stat(target)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise AgentError("is_dir", f"Is a directory: {path}")
            self.mode = mode if mode is not None else stat.S_IMODE(st.st_mode) if st else 0o644
            self.target = target
            self.temp = os.path.join(os.path.dirname(target), TEMP_PREFIX + os.urandom(8).hex())
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
            self.fd: int | None = os.open(self.temp, flags, 0o600)

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        with os_errors(self.path):
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]

    def commit(self) -> dict[str, Any]:
        assert self.fd is not None
        try:
            with os_errors(self.path):
                os.fchmod(self.fd, self.mode)
                os.close(self.fd)
                self.fd = None
                os.rename(self.temp, self.target)
        except BaseException:
            self.abort()
            raise
        return entry(self.target)

    def abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        with contextlib.suppress(OSError):
            os.unlink(self.temp)


def load_shutil() -> None:
    """Import shutil for `remove` and `rename`, which use it: on first use (it costs the agent's
    start-up a few ms) and before switching credentials (a user may not be able to read the stdlib)."""
    import shutil  # noqa: F401


def remove(path: str) -> None:
    """Remove `path`; a directory goes with its whole tree, symlinks are removed, never followed."""
    with os_errors(path):
        if not os.path.islink(path) and os.path.realpath(path) == "/":
            raise AgentError("invalid", "refusing to remove /")
        if stat.S_ISDIR(os.lstat(path).st_mode):
            import shutil  # loaded by `load_shutil` already

            shutil.rmtree(path)
        else:
            os.unlink(path)


def rename(src: str, dst: str) -> dict[str, Any]:
    """Move `src` to `dst` (across filesystems too), creating `dst`'s missing parents."""
    with os_errors(src):
        os.lstat(src)
    make_dirs(os.path.dirname(dst.rstrip("/")) or ".", if_file="not_dir")
    with os_errors(dst):
        try:
            os.rename(src, dst)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # another mount: copy, then delete
                raise
            import shutil

            shutil.move(src, dst)
    return entry(dst)
