"""The few libc calls the stdlib lacks (inotify, prctl), through ctypes: the agent's only ctypes use."""

from __future__ import annotations

import ctypes
import os

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
PR_SET_CHILD_SUBREAPER = 36

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        _libc = lib
    return _libc


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", path)
    return result


def inotify_init() -> int:
    """A new non-blocking, close-on-exec inotify fd."""
    return _check(_lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    return _check(_lib().inotify_add_watch(fd, os.fsencode(path), mask), "inotify_add_watch", path)


def inotify_rm_watch(fd: int, wd: int) -> None:
    _lib().inotify_rm_watch(fd, wd)  # fails harmlessly when the kernel already dropped the watch


def set_child_subreaper() -> bool:
    """Adopt orphaned descendants so that the agent reaps them (True if the kernel agreed)."""
    try:
        return _lib().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
