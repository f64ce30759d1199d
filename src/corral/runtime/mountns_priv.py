"""A mount namespace per bwrap sandbox (privileged: unshare and setns of the calling thread).

A sandbox's disk and root are mounted in a namespace of its own, never in the host's: every
mount in a namespace is copied by each new one (bwrap's) and formatted into each read of its
``/proc/self/mountinfo`` (bwrap reads it once per bind), so host mounts per live sandbox made
every create slower (docs/performance.md, "A mount namespace per sandbox").

The server enters a namespace on one thread only, for a few syscalls, and always returns to the
host's: ``fresh()`` makes one (a copy of the host's with private propagation: nothing mounted in
it reaches the host, nor the host's later mounts it — not slaves, or every gVisor sandbox's mounts
would be copied into every bwrap sandbox's namespace; a host dir deleted while it is a mount point
there is detached from it), ``entered(fd)`` goes back into one to start bwrap there. A thread
that has left the process's shared filesystem context (``unshare(CLONE_FS)``, done here first) may switch;
its working directory is restored after.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
from collections.abc import Iterator

from corral.runtime.mounts_priv import mountinfo_path

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
CLONE_FS, CLONE_NEWNS = 0x200, 0x20000
MS_REC, MS_PRIVATE = 0x4000, 0x40000


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


@functools.cache
def _host() -> int:
    """The host's mount namespace: the process's main thread never leaves it."""
    return os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def _switched() -> Iterator[None]:
    host = _host()
    cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_FS), "unshare(CLONE_FS)")
        try:
            yield
        finally:
            # Never continue in a sandbox's namespace: a failure here would leave later work of
            # this thread (another sandbox's mounts) in the wrong one.
            if _libc.setns(host, CLONE_NEWNS) != 0:
                os.abort()
            os.fchdir(cwd)
    finally:
        os.close(cwd)


@contextlib.contextmanager
def fresh() -> Iterator[int]:
    """Run the block in a new mount namespace; yields an fd of it (closed after the block: keep a
    ``dup`` to enter it again)."""
    with _switched():
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making the mounts private")
        ns = os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield ns
        finally:
            os.close(ns)


@contextlib.contextmanager
def entered(ns: int) -> Iterator[None]:
    """Run the block in the mount namespace ``ns`` (children started there stay in it)."""
    with _switched():
        _check(_libc.setns(ns, CLONE_NEWNS), "setns(mount namespace)")
        yield


# Kernel filesystems nothing started in a sandbox's namespace uses (bwrap mounts its own proc,
# tmpfs, devpts and mqueue; the server passes cgroups and network namespaces as fds).
UNUSED_TYPES = frozenset({
    "sysfs", "cgroup", "cgroup2", "nsfs", "tracefs", "debugfs", "securityfs", "pstore", "bpf", "configfs",
    "fusectl", "binfmt_misc", "efivarfs", "hugetlbfs", "mqueue", "rpc_pipefs",
})
MNT_DETACH = 2


def trim() -> int:
    """Detach, in the calling thread's namespace (one ``fresh`` made), every mount of a type in
    ``UNUSED_TYPES``: bwrap copies each mount of the namespace it starts in and reads them all once
    per bind, so ``/sys`` and its cgroup hierarchies alone (13 of the 22 on a Debian host) cost
    every create ~0.5 ms. Returns how many were detached."""
    with open("/proc/thread-self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().splitlines()
    points: list[str] = []
    for line in lines:
        fields = line.split(" ")
        try:
            fstype = fields[fields.index("-") + 1]
        except (ValueError, IndexError):
            continue
        if fstype in UNUSED_TYPES:
            points.append(mountinfo_path(fields[4]))
    detached = 0
    done: list[str] = []
    for point in sorted(points, key=len):  # a parent first: its detach takes the mounts below it
        if any(point == d or point.startswith(d.rstrip("/") + "/") for d in done):
            continue
        if _libc.umount2(os.fsencode(point), MNT_DETACH) == 0:
            detached += 1
            done.append(point)
    return detached
