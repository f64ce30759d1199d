"""Start-up checks: is this host able to run sandboxes? Each failure names what is missing."""

from __future__ import annotations

import os
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

