"""The sandbox's accounts, read from its own ``/etc/passwd`` and ``/etc/group``.

The files are parsed here, as runc and E2B's envd do, never through the C library's NSS: NSS
follows the sandbox's ``/etc/nsswitch.conf``, which the sandbox's root may edit to load a library
of its own into the agent. Lines that are not well-formed entries are skipped (NSS ``compat``
lines, ``+``/``-``, included); the first entry of a name or id wins. Each look-up reads its file
once and builds only the entry it returns.
"""

from __future__ import annotations

import os
import stat

from .protocol import Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

PASSWD, GROUP = "/etc/passwd", "/etc/group"
MAX_FILE = 16 << 20  # bytes read of either file: a larger one is read in part, never all


class Account(Frozen):
    __match_args__ = ("name", "uid", "gid", "home", "shell")
    __slots__ = __match_args__
    name: str
    uid: int
    gid: int
    home: str
    shell: str

    def __init__(self, name: str, uid: int, gid: int, home: str, shell: str) -> None:
        super().__init__(name, uid, gid, home, shell)


class Group(Frozen):
    __match_args__ = ("name", "gid", "members")
    __slots__ = __match_args__
    name: str
    gid: int
    members: tuple[str, ...]

    def __init__(self, name: str, gid: int, members: tuple[str, ...]) -> None:
        super().__init__(name, gid, members)


def _read(path: str) -> bytes:
    """The file's bytes; none if it is unreadable or not a regular file (a FIFO planted there
    must not block the agent)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        chunks, left = [], MAX_FILE
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _entries(path: str, count: int) -> Iterator[list[bytes]]:
    """The lines of ``path`` with exactly ``count`` colon-separated fields and a plain name."""
    for line in _read(path).split(b"\n"):
        parts = line.split(b":")
        if len(parts) == count and parts[0] and parts[0][:1] not in b"#+-":
            yield parts


def _id(field: bytes) -> int | None:
    return int(field) if field.isdigit() and len(field) <= 10 and int(field) < 1 << 32 else None


def _account(parts: list[bytes]) -> Account | None:
    name, _pw, uid, gid, _gecos, home, shell = parts
    u, g = _id(uid), _id(gid)
    if u is None or g is None:
        return None
    return Account(os.fsdecode(name), u, g, os.fsdecode(home), os.fsdecode(shell))


def _group(parts: list[bytes]) -> Group | None:
    name, _pw, gid, members = parts
    g = _id(gid)
    if g is None:
        return None
    return Group(os.fsdecode(name), g, tuple(os.fsdecode(m) for m in members.split(b",") if m))


def user(name: str, passwd: str | None = None) -> Account | None:
    wanted = os.fsencode(name)
    return next((a for p in _entries(passwd or PASSWD, 7) if p[0] == wanted and (a := _account(p))), None)


def user_by_id(uid: int, passwd: str | None = None) -> Account | None:
    return next((a for p in _entries(passwd or PASSWD, 7) if _id(p[2]) == uid and (a := _account(p))), None)


def group(name: str, group: str | None = None) -> Group | None:
    wanted = os.fsencode(name)
    return next((g for p in _entries(group or GROUP, 4) if p[0] == wanted and (g := _group(p))), None)


def group_by_id(gid: int, group: str | None = None) -> Group | None:
    return next((g for p in _entries(group or GROUP, 4) if _id(p[2]) == gid and (g := _group(p))), None)


def group_ids(name: str, gid: int, group: str | None = None) -> tuple[int, ...]:
    """``gid`` first, then every group that lists ``name`` as a member (``getgrouplist``)."""
    ids = [gid]
    member = os.fsencode(name)
    for _name, _pw, field, members in _entries(group or GROUP, 4):
        g = _id(field)
        if g is not None and g not in ids and member in members.split(b","):
            ids.append(g)
    return tuple(ids)
