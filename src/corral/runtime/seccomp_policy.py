"""The sandbox seccomp policy as data: syscall numbers per architecture and one rule per syscall.

Every process in a sandbox runs under the same filter (see `corral.runtime.seccomp`). The policy is a
deny-list over "allow by default": it removes kernel surface an unprivileged sandboxed program has no
business using, or that has a history of container escapes. Each rule carries a one-line reason;
`DELIBERATELY_ALLOWED` records the syscalls we considered and kept, so a reviewer sees both sides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

ARCHES = ("x86_64", "aarch64")


class Action(enum.Enum):
    """What the filter does when a rule matches."""

    ALLOW = "allow"
    EPERM = "eperm"  # fail the call with EPERM; the program sees an ordinary permission error
    ENOSYS = "enosys"  # pretend the syscall does not exist; libc falls back to an older one


@dataclass(frozen=True)
class ArgTest:
    """A test on the low 32 bits of one syscall argument (all args we test are 32-bit in the kernel).

    `any_bit`: some bit of `values[0]` is set; `in`: equals one of `values`; `not_in`: equals none.
    """

    index: int
    op: Literal["any_bit", "in", "not_in"]
    values: tuple[int, ...]


@dataclass(frozen=True)
class Rule:
    """Apply `action` to `syscall` (only when `when` matches, if given; otherwise the call is allowed)."""

    syscall: str
    action: Action
    reason: str
    when: ArgTest | None = None


# Namespace flags shared by clone(2) and unshare(2) (linux/sched.h).
CLONE_NEWTIME = 0x00000080  # in clone(2)'s exit-signal byte, so there it only ever means an invalid signal
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NAMESPACES = (
    CLONE_NEWNS
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
    | CLONE_NEWCGROUP
    | CLONE_NEWTIME
)

TIOCSTI = 0x5412
TIOCLINUX = 0x541C

# personality(2) values Docker's default profile allows: PER_LINUX, PER_LINUX32, UNAME26 variants, query.
PERSONALITY_ALLOWED = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

_E = Action.EPERM

DENIED: tuple[Rule, ...] = (
    # Mounts and the filesystem view: the sandbox's mount tree is fixed by the launcher.
    Rule("mount", _E, "the mount tree is set up by the launcher; remounts could expose or hide paths"),
    Rule("umount2", _E, "unmounting could uncover what the launcher mounted over"),
    Rule("pivot_root", _E, "changing the root is the launcher's job"),
    Rule("move_mount", _E, "new mount API: same power as mount(2)"),
    Rule("open_tree", _E, "new mount API: clones mount trees"),
    Rule("fsopen", _E, "new mount API: creates filesystem contexts"),
    Rule("fsconfig", _E, "new mount API: configures filesystem contexts"),
    Rule("fsmount", _E, "new mount API: turns a context into a mount"),
    Rule("fspick", _E, "new mount API: reconfigures existing superblocks"),
    Rule("mount_setattr", _E, "new mount API: changes mount flags such as read-only"),
    Rule("open_by_handle_at", _E, "opens files by handle, bypassing the path walk (the 'shocker' escape)"),
    Rule("name_to_handle_at", _E, "companion of open_by_handle_at; leaks inode handles"),
    Rule("quotactl", _E, "filesystem quota administration"),
    Rule("quotactl_fd", _E, "filesystem quota administration"),
    Rule("swapon", _E, "host swap administration"),
    Rule("swapoff", _E, "host swap administration"),
    Rule("acct", _E, "process accounting writes host-wide records"),
    Rule("nfsservctl", _E, "removed NFS server control; nothing may use it"),
    Rule("lookup_dcookie", _E, "profiling helper (removed in 6.8); leaks host paths"),
    Rule("uselib", _E, "obsolete a.out loader with a history of bugs"),
    Rule("ustat", _E, "obsolete; reports host filesystem stats"),
    Rule("sysfs", _E, "obsolete; lists host filesystem types"),
    Rule("_sysctl", _E, "removed binary sysctl interface"),
    # Namespaces: the sandbox gets exactly the namespaces the launcher made.
    Rule("unshare", _E, "new namespaces (above all user namespaces) are the main kernel attack surface"),
    Rule("setns", _E, "joining other namespaces"),
    Rule(
        "clone",
        _E,
        "creating namespaces via clone flags; plain fork/thread creation stays allowed",
        ArgTest(0, "any_bit", (CLONE_NAMESPACES,)),
    ),
    Rule("clone3", Action.ENOSYS, "flags sit in memory a filter cannot read; libc falls back to clone"),
    # Other processes and the kernel itself.
    Rule("ptrace", _E, "tracing can escape filters on older kernels and reads other processes"),
    Rule("process_vm_readv", _E, "reads another process's memory"),
    Rule("process_vm_writev", _E, "writes another process's memory"),
    Rule("pidfd_getfd", _E, "steals file descriptors from another process"),
    Rule("kexec_load", _E, "loads a new kernel"),
    Rule("kexec_file_load", _E, "loads a new kernel"),
    Rule("init_module", _E, "loads kernel modules"),
    Rule("finit_module", _E, "loads kernel modules"),
    Rule("delete_module", _E, "unloads kernel modules"),
    Rule("bpf", _E, "eBPF verifier and maps: large attack surface"),
    Rule("perf_event_open", _E, "perf subsystem: large attack surface, leaks host activity"),
    Rule("userfaultfd", _E, "used to widen kernel race windows in exploits"),
    Rule("io_uring_setup", _E, "io_uring: large attack surface, bypasses syscall filtering"),
    Rule("io_uring_enter", _E, "io_uring: large attack surface, bypasses syscall filtering"),
    Rule("io_uring_register", _E, "io_uring: large attack surface, bypasses syscall filtering"),
    Rule("keyctl", _E, "the kernel keyring is not namespaced"),
    Rule("add_key", _E, "the kernel keyring is not namespaced"),
    Rule("request_key", _E, "the kernel keyring is not namespaced"),
    Rule("fanotify_init", _E, "filesystem-wide event monitoring"),
    Rule("syslog", _E, "reads the host kernel log (addresses, other tenants' messages)"),
    Rule("reboot", _E, "reboots the host or, in a pid namespace, kills the sandbox's init"),
    # Time is host-wide (no time namespace here).
    Rule("settimeofday", _E, "sets the host clock"),
    Rule("clock_settime", _E, "sets the host clock"),
    Rule("clock_adjtime", _E, "adjusts the host clock"),
    Rule("adjtimex", _E, "adjusts the host clock"),
    # Hardware and memory placement.
    Rule("iopl", _E, "raw I/O port access (x86 only)"),
    Rule("ioperm", _E, "raw I/O port access (x86 only)"),
    Rule("mbind", _E, "NUMA placement can starve other tenants' memory nodes"),
    Rule("set_mempolicy", _E, "NUMA placement can starve other tenants' memory nodes"),
    Rule("set_mempolicy_home_node", _E, "NUMA placement can starve other tenants' memory nodes"),
    Rule("migrate_pages", _E, "moves pages between NUMA nodes"),
    Rule("move_pages", _E, "moves pages between NUMA nodes"),
    # Argument-filtered calls.
    Rule(
        "ioctl",
        _E,
        "TIOCSTI/TIOCLINUX inject keystrokes into a terminal shared with the host",
        ArgTest(1, "in", (TIOCSTI, TIOCLINUX)),
    ),
    Rule(
        "personality",
        _E,
        "unusual personalities (e.g. READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE) weaken exploit mitigations",
        ArgTest(0, "not_in", PERSONALITY_ALLOWED),
    ),
)

DELIBERATELY_ALLOWED: tuple[Rule, ...] = (
    Rule("chroot", Action.ALLOW, "after pivot_root the sandbox root is the namespace root; tools need it"),
    Rule("sethostname", Action.ALLOW, "the hostname is per UTS namespace"),
    Rule("setdomainname", Action.ALLOW, "the domain name is per UTS namespace"),
    Rule("socket", Action.ALLOW, "netlink and packet sockets only see the sandbox's own network namespace"),
    Rule("kcmp", Action.ALLOW, "only compares the caller's own processes' resources; used by debuggers"),
    Rule("landlock_create_ruleset", Action.ALLOW, "self-sandboxing only ever reduces rights"),
    Rule("seccomp", Action.ALLOW, "filters stack: a program can only add restrictions"),
    Rule("fork", Action.ALLOW, "ordinary process creation (x86_64); namespaces need clone flags"),
)

# Syscall numbers: name -> (x86_64, aarch64). None marks a syscall the architecture never had
# (aarch64 uses the generic table, which dropped the legacy calls). Checked against kernel headers
# by tests/unit/test_seccomp.py where the headers are installed.
NUMBERS: dict[str, tuple[int | None, int | None]] = {
    "ioctl": (16, 29),
    "socket": (41, 198),
    "clone": (56, 220),
    "fork": (57, None),
    "ptrace": (101, 117),
    "syslog": (103, 116),
    "uselib": (134, None),
    "personality": (135, 92),
    "ustat": (136, None),
    "sysfs": (139, None),
    "pivot_root": (155, 41),
    "_sysctl": (156, None),
    "adjtimex": (159, 171),
    "chroot": (161, 51),
    "acct": (163, 89),
    "settimeofday": (164, 170),
    "mount": (165, 40),
    "umount2": (166, 39),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "iopl": (172, None),
    "ioperm": (173, None),
    "init_module": (175, 105),
    "delete_module": (176, 106),
    "quotactl": (179, 60),
    "nfsservctl": (180, 42),
    "lookup_dcookie": (212, 18),
    "clock_settime": (227, 112),
    "mbind": (237, 235),
    "set_mempolicy": (238, 237),
    "kexec_load": (246, 104),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "keyctl": (250, 219),
    "migrate_pages": (256, 238),
    "unshare": (272, 97),
    "move_pages": (279, 239),
    "perf_event_open": (298, 241),
    "fanotify_init": (300, 262),
    "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265),
    "clock_adjtime": (305, 266),
    "setns": (308, 268),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "kcmp": (312, 272),
    "finit_module": (313, 273),
    "seccomp": (317, 277),
    "kexec_file_load": (320, 294),
    "bpf": (321, 280),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "clone3": (435, 435),
    "pidfd_getfd": (438, 438),
    "mount_setattr": (442, 442),
    "quotactl_fd": (443, 443),
    "landlock_create_ruleset": (444, 444),
    "set_mempolicy_home_node": (450, 450),
}


def syscall_number(name: str, arch: str) -> int | None:
    """The number of `name` on `arch`, or None if that architecture has no such syscall."""
    return NUMBERS[name][ARCHES.index(arch)]
