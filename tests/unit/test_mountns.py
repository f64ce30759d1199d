"""The sandbox's own mount namespace (``mountns_priv``): made fresh, trimmed of the kernel
filesystems nothing launched there uses, and always left again."""

from __future__ import annotations

import os
import threading

from corral.runtime import mountns_priv
from corral.runtime.mounts_priv import mountinfo_path


def mount_types(path: str) -> dict[str, str]:
    """mount point -> filesystem type, of the mount namespace ``path`` names a process view of."""
    found = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            found[mountinfo_path(fields[4])] = fields[fields.index("-") + 1]
    return found


def test_trim_detaches_unused_kernel_filesystems_in_the_fresh_namespace_only() -> None:
    host = mount_types("/proc/self/mountinfo")
    seen: dict[str, object] = {}

    def work() -> None:  # on a thread of its own, as the server's workers do
        with mountns_priv.fresh():
            seen["detached"] = mountns_priv.trim()
            seen["inside"] = mount_types("/proc/thread-self/mountinfo")
        seen["after"] = os.readlink("/proc/thread-self/ns/mnt")

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    inside = seen["inside"]
    assert isinstance(inside, dict)
    assert not set(inside.values()) & mountns_priv.UNUSED_TYPES, inside
    assert {"/", "/proc", "/dev"} <= set(inside), inside  # what bwrap needs stays
    unused = [point for point, kind in host.items() if kind in mountns_priv.UNUSED_TYPES]
    assert isinstance(seen["detached"], int) and 0 < seen["detached"] <= len(unused)  # /sys takes what is below it
    assert seen["after"] == os.readlink("/proc/self/ns/mnt")  # the thread went back to the host's
    assert mount_types("/proc/self/mountinfo") == host  # and the host's table is untouched


def test_mountinfo_paths_are_unescaped() -> None:
    assert mountinfo_path(r"/var/tmp/a\040b\011c\134d") == "/var/tmp/a b\tc\\d"
    assert mountinfo_path("/plain") == "/plain"
    assert mountinfo_path(r"/odd\04") == r"/odd\04"  # not three digits: kept as it is
