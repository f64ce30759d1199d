"""The seccomp filter on the real kernel: installed directly with prctl, and through bubblewrap.

Every denied probe has two twins: the same probe run without the filter must not fail the same way
(so the probe really tests the filter), and an allowed neighbour must keep working under it.
All probes run in a throwaway mount namespace (`unshare --mount --propagation private`, or bwrap's
own), so an unfiltered `mount` as host root can never hide host directories.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corral.runtime.seccomp import build_filter, open_filter_fd
from corral.runtime.seccomp_policy import syscall_number

ARCH = platform.machine()
pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="seccomp is Linux-only"),
    pytest.mark.skipif(ARCH not in ("x86_64", "aarch64"), reason=f"no filter for {ARCH}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="probes need root (mount, ptrace, namespaces)"),
]

# Runs in a fresh interpreter: optionally installs the filter, then runs each probe in a forked
# child (so side effects such as unshare or PTRACE_TRACEME stay there) and prints {probe: errno}.
CHILD = r"""
import ctypes, json, os, sys

cfg = json.loads(sys.argv[1])
NR, target = cfg["nr"], cfg["mount_target"]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]

class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

def install(program):
    fprog = SockFprog(len(program) // 8, program)
    if libc.prctl(38, 1, None, 0, 0):  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0):  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")

def sc(nr, *args):
    # Raw syscall; returns 0 or the errno. A raw clone's child (return value 0) exits at once.
    result = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    if result == -1:
        return ctypes.get_errno()
    if nr == NR["clone"] and result > 0:
        os.waitpid(result, 0)
    elif nr == NR["clone"]:
        os._exit(0)
    return 0

def pty():
    master, slave = os.openpty()
    return slave

def addr(obj):
    return ctypes.addressof(obj)

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

def spawn():
    pid = os.posix_spawn("/bin/true", ["true"], {})  # glibc tries clone3 first, then clone
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

SIGCHLD, NEWUSER, NEWNET = 17, 0x10000000, 0x40000000
TIOCSTI, TIOCLINUX, TIOCGWINSZ = 0x5412, 0x541C, 0x5413
byte, winsize, root = ctypes.c_char(b"x"), ctypes.create_string_buffer(8), ctypes.create_string_buffer(b"/")
PROBES = {
    "unshare_user": lambda: sc(NR["unshare"], NEWUSER),
    "mount_tmpfs": lambda: libc.mount(b"none", target.encode(), b"tmpfs", 0, None) and ctypes.get_errno(),
    "setns_net": lambda: sc(NR["setns"], os.open("/proc/self/ns/net", os.O_RDONLY), NEWNET),
    "ptrace_traceme": lambda: sc(NR["ptrace"], 0, 0, 0, 0),
    "bpf": lambda: sc(NR["bpf"], 0, 0, 0),
    "keyctl": lambda: sc(NR["keyctl"], 0, -3, 0),  # KEYCTL_GET_KEYRING_ID, session keyring
    "perf_event_open": lambda: sc(NR["perf_event_open"], 0, 0, -1, -1, 0),
    "userfaultfd": lambda: sc(NR["userfaultfd"], 0),
    "io_uring_setup": lambda: sc(NR["io_uring_setup"], 1, 0),
    "ioctl_tiocsti": lambda: sc(NR["ioctl"], pty(), TIOCSTI, addr(byte)),
    "ioctl_tiocsti_high_bits": lambda: sc(NR["ioctl"], pty(), (1 << 32) | TIOCSTI, addr(byte)),
    "ioctl_tioclinux": lambda: sc(NR["ioctl"], pty(), TIOCLINUX, addr(byte)),
    "clone_newnet": lambda: sc(NR["clone"], NEWNET | SIGCHLD, 0, 0, 0, 0),
    "clone_newuser": lambda: sc(NR["clone"], NEWUSER | SIGCHLD, 0, 0, 0, 0),
    "clone3": lambda: sc(NR["clone3"], 0, 0),
    "personality_no_aslr": lambda: sc(NR["personality"], 0x0040000),
    "x32_getpid": lambda: sc(0x40000000 | NR["getpid"]),
    "getpid": lambda: sc(NR["getpid"]),
    "fork": fork,
    "clone_plain": lambda: sc(NR["clone"], SIGCHLD, 0, 0, 0, 0),
    "posix_spawn": spawn,
    "ioctl_tiocgwinsz": lambda: sc(NR["ioctl"], pty(), TIOCGWINSZ, addr(winsize)),
    "personality_query": lambda: sc(NR["personality"], 0xFFFFFFFF),
    "socket_inet": lambda: sc(NR["socket"], 2, 1, 0),  # AF_INET, SOCK_STREAM
    "chroot_root": lambda: sc(NR["chroot"], addr(root)),
}

if cfg["filter"]:
    install(bytes.fromhex(cfg["filter"]))
results = {}
for name in cfg["probes"]:
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(min(PROBES[name]() or 0, 255))
        except BaseException:
            os._exit(254)
    results[name] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(results))
"""

# Denied probe -> the errno the filter must produce.
DENIED = {
    "unshare_user": errno.EPERM,
    "mount_tmpfs": errno.EPERM,
    "setns_net": errno.EPERM,
    "ptrace_traceme": errno.EPERM,
    "bpf": errno.EPERM,
    "keyctl": errno.EPERM,
    "perf_event_open": errno.EPERM,
    "userfaultfd": errno.EPERM,
    "io_uring_setup": errno.EPERM,
    "ioctl_tiocsti": errno.EPERM,
    "ioctl_tiocsti_high_bits": errno.EPERM,
    "ioctl_tioclinux": errno.EPERM,
    "clone_newnet": errno.EPERM,
    "clone_newuser": errno.EPERM,
    "clone3": errno.ENOSYS,
    "personality_no_aslr": errno.EPERM,
}
if ARCH == "x86_64":
    DENIED["x32_getpid"] = errno.EPERM
# Allowed neighbours: must succeed (0) under the filter.
ALLOWED = [
    "getpid",
    "fork",
    "clone_plain",
    "posix_spawn",
    "ioctl_tiocgwinsz",
    "personality_query",
    "socket_inet",
    "chroot_root",
]


def _probe(with_filter: bool, mount_target: Path) -> dict[str, int]:
    names = ("unshare", "setns", "ptrace", "bpf", "keyctl", "perf_event_open", "userfaultfd")
    names += ("io_uring_setup", "ioctl", "clone", "clone3", "personality", "socket", "chroot")
    nr = {name: syscall_number(name, ARCH) for name in names}
    nr["getpid"] = {"x86_64": 39, "aarch64": 172}[ARCH]
    cfg = {
        "nr": nr,
        "mount_target": str(mount_target),
        "filter": build_filter().hex() if with_filter else "",
        "probes": [*DENIED, *ALLOWED],
    }
    argv = ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", CHILD, json.dumps(cfg)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert not os.path.ismount(mount_target), "the probe mount leaked to the host"
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    return _probe(True, tmp_path_factory.mktemp("mnt"))


@pytest.fixture(scope="module")
def unfiltered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    return _probe(False, tmp_path_factory.mktemp("mnt"))


@pytest.mark.parametrize("probe", list(DENIED))
def test_denied_under_filter(probe: str, filtered: dict[str, int]) -> None:
    assert filtered[probe] == DENIED[probe], errno.errorcode.get(filtered[probe], filtered[probe])


@pytest.mark.parametrize("probe", list(DENIED))
def test_denied_probe_is_not_refused_that_way_without_filter(probe: str, unfiltered: dict[str, int]) -> None:
    assert unfiltered[probe] != DENIED[probe]


@pytest.mark.parametrize("probe", ALLOWED)
def test_allowed_under_filter(probe: str, filtered: dict[str, int]) -> None:
    assert filtered[probe] == 0, errno.errorcode.get(filtered[probe], filtered[probe])


# --- through bubblewrap -----------------------------------------------------------------------


def _bwrap(argv: list[str], with_filter: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `argv` in a bwrap sandbox (its own mount namespace), optionally under the filter."""
    fd = open_filter_fd() if with_filter else -1
    seccomp_args = ["--seccomp", str(fd)] if with_filter else []
    cmd = ["bwrap", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-all"]
    cmd += ["--die-with-parent", *seccomp_args, "--", *argv]
    try:
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            pass_fds=(fd,) if with_filter else (),
        )
    finally:
        if with_filter:
            os.close(fd)


needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not installed")


@needs_bwrap
def test_bwrap_runs_true_under_filter() -> None:
    done = _bwrap(["true"])
    assert done.returncode == 0, done.stderr


@needs_bwrap
def test_bwrap_unshare_user_denied() -> None:
    done = _bwrap(["unshare", "-U", "true"])
    assert done.returncode != 0
    assert "Operation not permitted" in done.stderr


@needs_bwrap
def test_bwrap_unshare_user_works_without_filter() -> None:
    done = _bwrap(["unshare", "-U", "true"], with_filter=False)
    assert done.returncode == 0, done.stderr


@needs_bwrap
def test_bwrap_mount_denied() -> None:
    done = _bwrap(["mount", "-t", "tmpfs", "none", "/mnt"])
    assert done.returncode != 0
    assert "permission denied" in done.stderr.lower()


@needs_bwrap
def test_bwrap_mount_works_without_filter() -> None:
    done = _bwrap(["mount", "-t", "tmpfs", "none", "/mnt"], with_filter=False)
    assert done.returncode == 0, done.stderr


@needs_bwrap
def test_bwrap_process_spawning_survives_clone3_enosys() -> None:
    code = "import os, subprocess; subprocess.run(['true'], check=True); os.system('sh -c true')"
    done = _bwrap([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr
