"""The sandbox's accounts, read from its own ``/etc/passwd`` and ``/etc/group``.

The files are parsed here, as runc and E2B's envd do, never through the C library's NSS: NSS
follows the sandbox's ``/etc/nsswitch.conf``, which the sandbox's root may edit to load a library
of its own into the agent. Lines that are not well-formed entries are skipped (NSS ``compat``
lines, ``+``/``-``, included); the first entry of a name or id wins.
"""

from __future__ import annotations

import os
import stat

from .protocol import Frozen

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


def _fields(path: str, count: int) -> list[list[str]]:
    """The lines of ``path`` with exactly ``count`` colon-separated fields (none if it is unreadable
    or not a regular file: a FIFO planted there must not block the agent)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_FILE)
    except OSError:
        return []
    finally:
        os.close(fd)
    rows = []
    for line in data.split(b"\n"):
        parts = line.split(b":")
        if len(parts) == count and parts[0] and parts[0][:1] not in (b"#", b"+", b"-"):
            rows.append([os.fsdecode(p) for p in parts])
    return rows


def _id(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and int(text) < 1 << 32 else None


class Accounts:
    """One reading of both files: look-ups by name and id."""

    def __init__(self, passwd: str | None = None, group: str | None = None) -> None:
        self.accounts: list[Account] = []
        for name, _pw, uid, gid, _gecos, home, shell in _fields(passwd or PASSWD, 7):
            u, g = _id(uid), _id(gid)
            if u is not None and g is not None:
                self.accounts.append(Account(name, u, g, home, shell))
        self.groups: list[Group] = []
        for name, _pw, gid, members in _fields(group or GROUP, 4):
            g = _id(gid)
            if g is not None:
                self.groups.append(Group(name, g, tuple(m for m in members.split(",") if m)))

    def user(self, name: str) -> Account | None:
        return next((a for a in self.accounts if a.name == name), None)

    def user_by_id(self, uid: int) -> Account | None:
        return next((a for a in self.accounts if a.uid == uid), None)

    def group(self, name: str) -> Group | None:
        return next((g for g in self.groups if g.name == name), None)

    def group_by_id(self, gid: int) -> Group | None:
        return next((g for g in self.groups if g.gid == gid), None)

    def group_ids(self, name: str, gid: int) -> tuple[int, ...]:
        """``gid`` first, then every group that lists ``name`` as a member (``getgrouplist``)."""
        ids = [gid]
        for g in self.groups:
            if name in g.members and g.gid not in ids:
                ids.append(g.gid)
        return tuple(ids)
