"""Directory watches: inotify events turned into create/write/remove/rename/chmod, optionally recursive.

Event names follow Go's fsnotify (which E2B's envd uses): a move out of a directory is `rename`,
a move into it is `create`. Recursive watches add a watch for each new subdirectory as its creation
is seen, and report what was already inside it as `create`, so nothing created in the gap is missed
(at the price of an occasional duplicate). Temp files of the agent's own writes are hidden.

All inotify and directory work runs through the `FileRunner` as the watching user, so a user can
only watch (and recursively discover) directories it may read; the server polls `Watch.fd` with the
connection's socket and calls `read_events` when it is readable.
"""

from __future__ import annotations

import errno
import os
import struct
import threading

from . import libc
from .files import TEMP_PREFIX, os_errors
from .log import log
from .protocol import error_from_os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000

MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
READ_SIZE = 64 * 1024


class Watch:
    """One inotify instance on a directory. Construct it and call `read_events` through the
    `FileRunner` as the watching user (a lock orders them against `close`); `ended` turns true when
    the directory itself goes away."""

    def __init__(self, path: str, recursive: bool) -> None:
        self.root = path
        self.recursive = recursive
        self.ended = False
        self._lock = threading.Lock()
        self._dirs: dict[int, str] = {}  # watch descriptor -> directory relative to root ("" = root)
        with os_errors(path):
            self._fd = libc.inotify_init()
        self.fd = self._fd  # to poll, until `close`
        try:
            with os_errors(path):
                self._root_wd = libc.inotify_add_watch(self._fd, path, MASK)
            self._dirs[self._root_wd] = ""
            if recursive:
                self._add_tree("", report=False)
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def read_events(self) -> list[dict[str, Any]]:
        """The events waiting now (empty if none, or once closed)."""
        with self._lock:
            if self._fd < 0:
                return []
            try:
                buf = os.read(self._fd, READ_SIZE)
            except BlockingIOError:
                return []
            events: list[dict[str, Any]] = []
            offset = 0
            while offset + EVENT.size <= len(buf):
                wd, mask, _cookie, length = EVENT.unpack_from(buf, offset)
                start = offset + EVENT.size
                name = os.fsdecode(buf[start : start + length].rstrip(b"\0"))
                offset = start + length
                events += self._translate(wd, mask, name)
            return events

    def _translate(self, wd: int, mask: int, name: str) -> list[dict[str, Any]]:
        if mask & IN_Q_OVERFLOW:
            log("WARNING", f"inotify queue overflow under {self.root}: events were lost")
            return []
        base = self._dirs.get(wd)
        if base is None:
            return []
        if mask & IN_IGNORED or (wd == self._root_wd and mask & (IN_DELETE_SELF | IN_MOVE_SELF)):
            if wd == self._root_wd:
                self.ended = True
            if mask & IN_IGNORED:
                del self._dirs[wd]
            return []
        if not name or name.startswith(TEMP_PREFIX):
            return []  # a subdirectory's own events: its parent reports them by name
        rel = os.path.join(base, name) if base else name
        is_dir = bool(mask & IN_ISDIR)
        events = []
        if mask & (IN_CREATE | IN_MOVED_TO):
            events.append(_event("create", rel))
            if is_dir and self.recursive:
                events += self._add_tree(rel, report=True)
        if mask & IN_MODIFY:
            events.append(_event("write", rel))
        if mask & IN_ATTRIB:
            events.append(_event("chmod", rel))
        if mask & IN_MOVED_FROM:
            events.append(_event("rename", rel))
            if is_dir and self.recursive:
                self._drop_tree(rel)
        if mask & IN_DELETE:
            events.append(_event("remove", rel))
        return events

    def _add_tree(self, rel: str, report: bool) -> list[dict[str, Any]]:
        """Watch `rel` and every directory under it; with `report`, list what is already there."""
        events = []
        pending = [rel]
        while pending:
            current = pending.pop()
            full = os.path.join(self.root, current) if current else self.root
            if current:
                try:
                    self._dirs[libc.inotify_add_watch(self._fd, full, MASK | IN_DONT_FOLLOW)] = current
                except OSError as exc:
                    if exc.errno == errno.ENOSPC and not report:  # the inotify watch limit
                        raise error_from_os(exc, full) from None
                    if exc.errno not in (errno.ENOENT, errno.EACCES, errno.EPERM):  # gone, or not the user's
                        log("WARNING", f"cannot watch {full}: {exc}")
                    continue
            try:
                with os.scandir(full) as it:
                    children = list(it)
            except OSError:
                continue  # gone again, or unreadable
            for child in children:
                if child.name.startswith(TEMP_PREFIX):
                    continue
                child_rel = os.path.join(current, child.name) if current else child.name
                if report:
                    events.append(_event("create", child_rel))
                try:
                    if child.is_dir(follow_symlinks=False):
                        pending.append(child_rel)
                except OSError:
                    continue
        return events

    def _drop_tree(self, rel: str) -> None:
        for wd, path in list(self._dirs.items()):
            if path == rel or path.startswith(rel + "/"):
                libc.inotify_rm_watch(self._fd, wd)
                del self._dirs[wd]


def _event(op: str, name: str) -> dict[str, Any]:
    return {"event": "fs", "op": op, "name": name}
