"""The few libc calls the stdlib lacks (inotify, prctl, per-thread credentials), through ctypes.

This is the agent's only ctypes use. The credential calls are raw `syscall(2)`s on purpose: the
kernel keeps credentials per thread, but glibc's own wrappers for setgroups and friends apply the
change to every thread of the process, and the agent must switch just the calling worker thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading

TYPE_CHECKING = False  # typing is not imported at run time (its heap would be every agent's)

if TYPE_CHECKING:
    from collections.abc import Callable

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
SECCOMP_MODE_FILTER = 2
CAP_LAST_POSSIBLE = 63
LINUX_CAPABILITY_VERSION_3 = 0x20080522

# Syscall numbers of the credential calls (32-bit ids on both), by `uname -m`.
_X86_64 = {
    "getgroups": 115, "setgroups": 116, "setfsuid": 122, "setfsgid": 123, "capget": 125, "capset": 126,
    "setresuid": 117, "getresuid": 118, "setresgid": 119, "getresgid": 120,
}
_AARCH64 = {
    "getgroups": 158, "setgroups": 159, "setfsuid": 151, "setfsgid": 152, "capget": 90, "capset": 91,
    "setresuid": 147, "getresuid": 148, "setresgid": 149, "getresgid": 150,
}
SYSCALLS = {"x86_64": _X86_64, "aarch64": _AARCH64, "arm64": _AARCH64}


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        lib.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.syscall.restype = ctypes.c_long  # variadic: arguments are passed as explicit ctypes values
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


def set_name(name: str) -> None:
    """The calling thread's name (``comm``, at most 15 bytes): what ``ps -o comm`` and ``top`` show."""
    buffer = ctypes.create_string_buffer(name.encode()[:15])
    _lib().prctl(PR_SET_NAME, ctypes.addressof(buffer), 0, 0, 0)


def set_parent_death_signal(signum: int) -> None:
    """Have the kernel send ``signum`` to the calling process when its parent exits."""
    _check(_lib().prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def set_not_dumpable() -> None:
    """Make the calling process non-dumpable: sandbox processes, root included (it lacks
    CAP_SYS_PTRACE), can then no longer open its /proc/<pid>/mem, fds or environment."""
    _check(_lib().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")


def malloc_trim() -> None:
    """Give free heap memory back to the kernel (glibc; elsewhere nothing happens)."""
    with contextlib.suppress(AttributeError):
        _lib().malloc_trim(0)


_fork: Callable[[], int] | None = None


def fork_bare() -> int:
    """``fork(2)`` without CPython's after-fork work in the child (its locks and thread states made
    anew, the ``os.register_at_fork`` hooks: ~145 page faults and ~0.4 ms of CPU per fork of the
    zygote's heap, docs/performance.md). Only for a process with one thread, which holds the GIL
    through the call (``PyDLL``), so no other thread can hold a lock the child inherits; the child
    must not need those hooks (``random`` is not reseeded: nothing here uses it). Returns as
    ``os.fork``."""
    global _fork
    if threading.active_count() != 1:
        raise RuntimeError("fork_bare() in a process with more than one thread")
    if _fork is None:
        fork = ctypes.PyDLL(None, use_errno=True).fork  # PyDLL: the GIL stays held
        fork.restype = ctypes.c_int
        _fork = fork
    pid = int(_fork())
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fork: {os.strerror(err)}")
    return pid


def setns(fd: int, nstype: int) -> None:
    """Join the namespaces of ``fd`` (a pidfd with several CLONE_NEW* flags joins them all at once)."""
    _check(_lib().setns(fd, nstype), "setns")


def limit_capabilities(mask: int) -> None:
    """Keep exactly the capabilities in ``mask``: bounding, permitted, effective, inheritable and
    ambient sets all equal to it afterwards (what bwrap's --cap-drop ALL --cap-add ... leaves its
    command). Needs CAP_SETPCAP for the bounding set, which ``mask`` itself may leave out."""
    lib = _lib()
    for cap in range(CAP_LAST_POSSIBLE + 1):
        if not mask >> cap & 1 and lib.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == errno.EINVAL:  # past the kernel's last capability
                break
            _check(-1, f"prctl(PR_CAPBSET_DROP, {cap})")
    capset(mask, mask, mask)
    for cap in range(CAP_LAST_POSSIBLE + 1):
        if mask >> cap & 1:
            _check(lib.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0), f"ambient raise {cap}")


def install_seccomp(program: bytes) -> None:
    """Set no_new_privs and install ``program`` (a raw ``struct sock_filter[]``) as a seccomp filter
    of the calling thread; inherited by every child and never removed."""
    if not program or len(program) % 8 or len(program) // 8 > 0xFFFF:
        raise ValueError("a seccomp program is a non-empty array of 8-byte instructions")
    lib = _lib()
    _check(lib.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    _check(lib.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "prctl(PR_SET_SECCOMP)")


# -- per-thread credentials (raw syscalls: they change the calling thread only) -----------------


def _syscall(name: str, *args: object) -> int:
    table = SYSCALLS.get(os.uname().machine)
    if table is None:
        raise OSError(errno.ENOSYS, f"{name}: unsupported architecture {os.uname().machine}")
    ctypes.set_errno(0)
    return _check(_lib().syscall(ctypes.c_long(table[name]), *args), name)


def setfsuid(uid: int) -> int:
    """Set the calling thread's filesystem uid; returns the previous one and never fails visibly.

    An invalid id (-1) changes nothing, which makes `setfsuid(-1)` a query of the current fsuid. The
    kernel drops the filesystem capabilities (DAC_OVERRIDE, FOWNER, CHOWN...) from the effective set
    when the fsuid goes from 0 to non-zero, and raises them again from the permitted set on the way back.
    """
    return _set_fs_id("uid", uid)


def setfsgid(gid: int) -> int:
    """Like `setfsuid`, for the filesystem gid (`setfsgid(-1)` queries it)."""
    return _set_fs_id("gid", gid)


def _set_fs_id(kind: str, value: int) -> int:
    """setfsuid/setfsgid; where the kernel lacks them (gVisor), the thread's effective id instead,
    which the filesystem id follows (the real and saved ids stay 0, so the thread can switch back)."""
    try:
        return _syscall(f"setfs{kind}", ctypes.c_long(value)) & 0xFFFFFFFF
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
    ids = (ctypes.c_uint32 * 3)()
    _syscall(f"getres{kind}", ctypes.byref(ids, 0), ctypes.byref(ids, 4), ctypes.byref(ids, 8))
    if value != -1:
        _syscall(f"setres{kind}", ctypes.c_long(-1), ctypes.c_long(value), ctypes.c_long(-1))
    return ids[1]


def fsuid() -> int:
    return setfsuid(-1)


def fsgid() -> int:
    return setfsgid(-1)


def getgroups() -> tuple[int, ...]:
    """The calling thread's supplementary groups."""
    while True:
        count = _syscall("getgroups", ctypes.c_long(0), None)
        buf = (ctypes.c_uint32 * max(count, 1))()
        try:
            got = _syscall("getgroups", ctypes.c_long(count), buf)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # the list grew in between
                continue
            raise
        return tuple(buf[:got])


def setgroups(groups: tuple[int, ...] | list[int]) -> None:
    """Set the calling thread's supplementary groups (needs CAP_SETGID)."""
    buf = (ctypes.c_uint32 * max(len(groups), 1))(*groups)
    _syscall("setgroups", ctypes.c_long(len(groups)), buf)


def capget() -> tuple[int, int, int]:
    """The calling thread's (effective, permitted, inheritable) capability sets as bit masks."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _syscall("capget", ctypes.byref(header), data)
    low, high = data
    return (
        low.effective | high.effective << 32,
        low.permitted | high.permitted << 32,
        low.inheritable | high.inheritable << 32,
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's capability sets (effective must stay within permitted)."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for index in (0, 1):
        shift = 32 * index
        data[index].effective = effective >> shift & 0xFFFFFFFF
        data[index].permitted = permitted >> shift & 0xFFFFFFFF
        data[index].inheritable = inheritable >> shift & 0xFFFFFFFF
    _syscall("capset", ctypes.byref(header), data)
