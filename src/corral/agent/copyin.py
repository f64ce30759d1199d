"""COPY/ADD of a template build, carried out inside the sandbox (as its root).

The builder binds the checked build context read-only under ``/.corral/build`` and sends a flat list of
items: each a source under that bind and a destination path. Destinations are resolved by the kernel
in the sandbox's own mount namespace, so a symlink in the image (``/app -> /etc``) is followed inside
the sandbox, as Docker does, and can never reach the host. Blocks; imported on first use (tarfile
and shutil are not on the agent's start path).
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile

from . import accounts
from .protocol import AgentError, error_from_os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

SOURCE_ROOT = "/.corral/build/"


def owner_ids(chown: str | None) -> tuple[int, int]:
    """``user[:group]`` (names from the image's passwd/group, or numbers) → ids; default root."""
    if not chown:
        return 0, 0
    user, _, group = chown.partition(":")
    uid = _id(user, lambda n: getattr(accounts.user(n), "uid", None), "user")
    if group:
        gid = _id(group, lambda n: getattr(accounts.group(n), "gid", None), "group")
    elif user.isascii() and user.isdigit():
        gid = uid
    else:
        entry = accounts.user(user)
        assert entry is not None  # found by _id above
        gid = entry.gid
    return uid, gid


def _id(name: str, lookup: Callable[[str], int | None], what: str) -> int:
    if name.isascii() and name.isdigit():  # not str.isdigit() alone: int() refuses "²"
        value = int(name)
    else:
        found = lookup(name)
        if found is None:
            raise AgentError("not_found", f"--chown: no {what} named {name!r:.100} in the image")
        value = found
    if not 0 <= value < 65536:
        raise AgentError("invalid", f"--chown: {what} id {value} is out of range 0..65535")
    return value


def copy_in(items: list[dict[str, Any]], chown: str | None, chmod: int | None) -> int:
    """Apply the items in order; returns how many paths were written."""
    uid, gid = owner_ids(chown)
    written = 0
    for item in items:
        src, dst, kind = str(item["src"]), str(item["dst"]), str(item["kind"])
        if not src.startswith(SOURCE_ROOT) or ".." in src.split("/") or not os.path.isabs(dst):
            raise AgentError("invalid", f"copy: bad item {src!r:.200} -> {dst!r:.200}")
        try:
            if item.get("into_dir") and os.path.isdir(dst):
                dst = os.path.join(dst, os.path.basename(src))
            _parents(dst, uid, gid)
            if kind == "dir":
                _dir(dst, int(item["mode"]) if chmod is None else chmod, uid, gid)
            elif kind == "file":
                _file(src, dst, int(item["mode"]) if chmod is None else chmod, uid, gid)
            elif kind == "symlink":
                _replace(dst)
                os.symlink(str(item["target"]), dst)
                os.lchown(dst, uid, gid)
            elif kind == "archive":
                _extract(src, dst, None if not chown else (uid, gid))
            else:
                raise AgentError("invalid", f"copy: unknown kind {kind!r:.50}")
        except OSError as exc:
            raise error_from_os(exc, dst) from None
        written += 1
    return written


def _parents(dst: str, uid: int, gid: int) -> None:
    """Create the missing parent dirs of ``dst`` (0755, owned by the COPY's owner, as BuildKit does)."""
    missing = []
    parent = os.path.dirname(dst.rstrip("/")) or "/"
    while not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for path in reversed(missing):
        os.mkdir(path, 0o755)
        os.chown(path, uid, gid)


def _dir(dst: str, mode: int, uid: int, gid: int) -> None:
    if os.path.isdir(dst):  # merging into an existing dir keeps its own metadata
        return
    _replace(dst)
    os.mkdir(dst)
    os.chown(dst, uid, gid)
    os.chmod(dst, stat.S_IMODE(mode))


def _file(src: str, dst: str, mode: int, uid: int, gid: int) -> None:
    if os.path.isdir(dst) and not os.path.islink(dst):
        raise AgentError("is_dir", f"copy: {dst!r:.200} is a directory; end the destination with / to copy into it")
    _replace(dst)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        os.fchown(fout.fileno(), uid, gid)
        os.fchmod(fout.fileno(), stat.S_IMODE(mode))
    st = os.stat(src)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _replace(dst: str) -> None:
    """Remove a non-directory at ``dst`` (a COPY replaces files and symlinks, never follows them)."""
    try:
        st = os.lstat(dst)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(dst)


def _extract(src: str, dst: str, owner: tuple[int, int] | None) -> None:
    """ADD of a local tar archive: unpack into ``dst`` (Docker's rule). Members named absolute or with
    ``..`` are refused. (This runs inside the sandbox: whatever the archive does stays in it.)"""
    os.makedirs(dst, exist_ok=True)
    try:
        with tarfile.open(src) as archive:
            for member in archive:
                name = member.name.lstrip("/")
                if not name or ".." in name.split("/"):
                    raise AgentError("invalid", f"ADD: archive member {member.name!r:.200} leaves the destination")
                member.name = name
                if owner is not None:
                    member.uid, member.gid = owner
                    member.uname = member.gname = ""
                archive.extract(member, dst, numeric_owner=True)
    except (tarfile.TarError, EOFError) as exc:
        raise AgentError("invalid", f"ADD: {os.path.basename(src)!r:.100} is not a readable archive: {exc}") from None
