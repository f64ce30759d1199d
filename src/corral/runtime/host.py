"""Start-up checks: is this host able to run sandboxes? Each failure names what is missing."""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path

from corral.runtime.cgroups_priv import CgroupUnavailable, detect


class HostUnsupported(RuntimeError):
    """The host lacks something Corral needs; the message says what and how to fix it."""


def check_host() -> None:
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append(
            "Corral's server must run as root (it creates namespaces, cgroups and mounts); "
            "start it with sudo, e.g. `sudo make serve`"
        )
    for tool, package in (("bwrap", "bubblewrap"), ("mkfs.ext4", "e2fsprogs"), ("mount", "mount")):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` not found: install the Debian package {package}")
    if "overlay" not in Path("/proc/filesystems").read_text():
        problems.append("the kernel has no overlayfs (try `modprobe overlay`)")
    userns = Path("/proc/sys/user/max_user_namespaces")
    if userns.exists() and userns.read_text().strip() == "0":
        problems.append("user namespaces are disabled (sysctl user.max_user_namespaces=0)")
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    if clone.exists() and clone.read_text().strip() == "0":
        problems.append("unprivileged user namespaces are off (sysctl kernel.unprivileged_userns_clone=1)")
    if not Path("/dev/loop-control").exists():
        problems.append("no loop device support (/dev/loop-control missing; `modprobe loop`)")
    try:
        detect()
    except CgroupUnavailable as exc:
        problems.append(str(exc))
    if problems:
        raise HostUnsupported("this host cannot run Corral sandboxes:\n  - " + "\n  - ".join(problems))



_sandbox_nofile: int | None = None


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft limit of open files to its hard limit: each sandbox holds a few
    fds in the server (pidfds, its disk, agent connections), so the usual soft limit of 1024 ends
    at ~250 sandboxes. Sandboxes keep the limit the server was started with (``sandbox_nofile``).
    Returns (before, after)."""
    global _sandbox_nofile
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if _sandbox_nofile is None:
        _sandbox_nofile = soft
    try:
        ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        ceiling = 1 << 20
    target = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, max(soft, target)


# Shell that sets the soft limit of open files to its first argument, drops it and goes on (after
# ``&& exec "$@"``): how bwrap's stub and the zygote give sandboxes ``sandbox_nofile``.
SET_SANDBOX_NOFILE = 'ulimit -S -n "$1" && shift'


def sandbox_nofile() -> int:
    """The soft limit of open files sandboxes start with: the server's own before ``raise_fd_limit``."""
    return _sandbox_nofile if _sandbox_nofile is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[0]
