"""Sandbox users: the protocol's user names resolved against the sandbox's own /etc/passwd."""

from __future__ import annotations

import os

from . import accounts
from .accounts import GROUP, PASSWD, Account
from .protocol import AgentError, Frozen

DEFAULT_UID = 1000  # the protocol's "user" when no passwd entry is named "user"
ACCOUNT_FILES = (PASSWD, GROUP)
CACHED_USERS = 64


class User(Frozen):
    """Who a process runs as, or who owns the files an operation creates."""

    __match_args__ = ("name", "uid", "gid", "home", "shell", "groups")
    __slots__ = __match_args__
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...]

    def __init__(self, name: str, uid: int, gid: int, home: str, shell: str, groups: tuple[int, ...]) -> None:
        super().__init__(name, uid, gid, home, shell, groups)

    def resolve(self, path: str) -> str:
        """A caller's path as the kernel should see it: relative paths start at the home directory."""
        return path if os.path.isabs(path) else os.path.join(self.home, path)


_cache: dict[str, tuple[tuple[tuple[int, ...] | None, ...], User]] = {}


def resolve_user(name: str) -> User:
    """Look `name` up in passwd: "root" is uid 0, "user" is the entry named user or else uid 1000.
    Answers are kept while passwd and group stay the same files, unchanged (a look-up reads both,
    ~0.1 ms; their stat ~0.01)."""
    stamp = tuple(_stamp(path) for path in ACCOUNT_FILES)
    cached = _cache.get(name)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    user = _resolve(name)
    if len(_cache) >= CACHED_USERS:
        _cache.clear()
    _cache[name] = (stamp, user)
    return user


def _stamp(path: str) -> tuple[int, ...] | None:
    """What changes whenever the file is edited or replaced (ctime can't be set back)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _resolve(name: str) -> User:
    entry = _lookup(name)
    if entry is not None:
        groups = accounts.group_ids(entry.name, entry.gid)
        return User(entry.name, entry.uid, entry.gid, entry.home or "/", entry.shell or "/bin/sh", groups)
    if name == "root":
        return User("root", 0, 0, "/root", "/bin/sh", (0,))
    if name == "user":
        return User("user", DEFAULT_UID, DEFAULT_UID, "/home/user", "/bin/sh", (DEFAULT_UID,))
    # USER 1000 in an image with no passwd entry, as Docker allows (ASCII digits: int() refuses "²")
    if name.isascii() and name.isdigit() and int(name) < 65536:
        return User(name, int(name), int(name), "/", "/bin/sh", (int(name),))
    raise AgentError("not_found", f"unknown user {name!r:.100}")


def _lookup(name: str) -> Account | None:
    if not name or "\0" in name:
        raise AgentError("invalid", "user name must be a non-empty string")
    if name.isascii() and name.isdigit():
        return accounts.user_by_id(int(name))
    entry = accounts.user(name)
    if entry is None and name == "user":
        entry = accounts.user_by_id(DEFAULT_UID)
    return entry
