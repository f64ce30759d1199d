"""Classic-BPF seccomp filter for sandboxed processes, in the format bubblewrap's `--seccomp FD` reads.

`build_filter()` compiles the policy in `corral.runtime.seccomp_policy` into a raw `struct sock_filter[]`
(8 bytes per instruction: u16 code, u8 jt, u8 jf, u32 k, little-endian like both supported targets).
bwrap installs it just before it execs the sandbox's first process, so it applies to every process in
the sandbox, the agent included, and is inherited by all their children; it cannot be removed.

The program:
  1. kills the process if `seccomp_data.arch` is not the native ABI (i386 via int 0x80, arm32 compat);
  2. on x86_64, fails x32-ABI calls (bit 0x40000000 in the number), which would dodge every rule below;
  3. compares the syscall number against each rule in a linear chain, jumping to a shared return;
  4. for argument-filtered rules, loads the low 32 bits of one argument and tests it;
  5. allows everything else.

Limits: this is a deny-list, not an allow-list — new syscalls are allowed until listed. Seccomp sees
register values only, so it cannot inspect pointed-to memory (hence clone3 gets ENOSYS). It reduces
kernel attack surface; namespaces, capabilities, cgroups and the read-only rootfs do the isolating.
Pure code: no privileges and no I/O except `open_filter_fd`.
"""

from __future__ import annotations

import errno
import os
import platform
import struct
from dataclasses import dataclass

from corral.runtime.seccomp_policy import DENIED, Action, ArgTest, Rule, syscall_number

__all__ = [
    "DENIED",
    "Action",
    "Instruction",
    "Rule",
    "assemble",
    "build_filter",
    "decode",
    "open_filter_fd",
    "program_fd",
]

# Opcodes (linux/bpf_common.h): the only four instruction shapes this filter needs.
LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = u32 at offset k of seccomp_data
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
RET_K = 0x06  # BPF_RET | BPF_K

# Return values (linux/seccomp.h).
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

# struct seccomp_data offsets: int nr; u32 arch; u64 ip; u64 args[6].
OFF_NR = 0
OFF_ARCH = 4
OFF_ARGS = 16

X32_SYSCALL_BIT = 0x40000000

_INSN = struct.Struct("<HBBI")


@dataclass(frozen=True)
class _Arch:
    audit_arch: int
    has_x32: bool


_ARCHES = {
    "x86_64": _Arch(audit_arch=0xC000003E, has_x32=True),  # AUDIT_ARCH_X86_64
    "aarch64": _Arch(audit_arch=0xC00000B7, has_x32=False),  # AUDIT_ARCH_AARCH64
}
_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}

_RETURNS = {
    Action.ALLOW: RET_ALLOW,
    Action.EPERM: RET_ERRNO | errno.EPERM,
    Action.ENOSYS: RET_ERRNO | errno.ENOSYS,
}


@dataclass(frozen=True)
class Instruction:
    """One `struct sock_filter`."""

    code: int
    jt: int
    jf: int
    k: int


class _Assembler:
    """Emits instructions with forward jumps to named labels, resolved (and range-checked) at the end."""

    def __init__(self) -> None:
        self._items: list[tuple[int, str | None, str | None, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._items)

    def load(self, offset: int) -> None:
        self._items.append((LD_W_ABS, None, None, offset))

    def jeq(self, k: int, jt: str | None = None, jf: str | None = None) -> None:
        """If A == k go to `jt` else `jf` (None: the next instruction)."""
        self._items.append((JEQ_K, jt, jf, k))

    def jset(self, k: int, jt: str | None = None, jf: str | None = None) -> None:
        """If A & k go to `jt` else `jf` (None: the next instruction)."""
        self._items.append((JSET_K, jt, jf, k))

    def ret(self, k: int) -> None:
        self._items.append((RET_K, None, None, k))

    def assemble(self) -> list[Instruction]:
        out = []
        for pc, (code, jt, jf, k) in enumerate(self._items):
            out.append(Instruction(code, self._offset(pc, jt), self._offset(pc, jf), k))
        return out

    def _offset(self, pc: int, target: str | None) -> int:
        if target is None:
            return 0
        offset = self._labels[target] - (pc + 1)
        if not 0 <= offset <= 255:
            raise ValueError(f"jump from {pc} to {target!r} out of range ({offset})")
        return offset


def _normalise_arch(arch: str | None) -> str:
    name = arch or platform.machine()
    name = _ALIASES.get(name, name)
    if name not in _ARCHES:
        raise ValueError(f"unsupported seccomp architecture {name!r} (supported: {', '.join(_ARCHES)})")
    return name


def _emit_arg_test(asm: _Assembler, test: ArgTest, hit: str) -> None:
    """Jump to `hit` when `test` matches, else to the shared allow."""
    asm.load(OFF_ARGS + 8 * test.index)  # low word: both targets are little-endian
    if test.op == "any_bit":
        asm.jset(test.values[0], jt=hit, jf="allow")
        return
    *head, last = test.values
    for value in head:
        asm.jeq(value, jt=hit if test.op == "in" else "allow")
    if test.op == "in":
        asm.jeq(last, jt=hit, jf="allow")
    else:
        asm.jeq(last, jt="allow", jf=hit)


def assemble(arch: str | None = None, rules: tuple[Rule, ...] = DENIED) -> list[Instruction]:
    """The filter for `arch` (default: this machine) as instructions; rules absent on `arch` are skipped."""
    name = _normalise_arch(arch)
    spec = _ARCHES[name]
    present = [(r, nr) for r in rules if (nr := syscall_number(r.syscall, name)) is not None]
    if len({r.syscall for r, _ in present}) != len(present):
        raise ValueError("one rule per syscall")

    asm = _Assembler()
    asm.load(OFF_ARCH)
    asm.jeq(spec.audit_arch, jf="kill")
    asm.load(OFF_NR)
    if spec.has_x32:
        asm.jset(X32_SYSCALL_BIT, jt="eperm")
    # Argument-filtered rules first: they include ioctl, the hottest syscall on the list.
    filtered = [(r, r.when, nr) for r, nr in present if r.when is not None]
    for rule, _, nr in filtered:
        asm.jeq(nr, jt=f"args:{rule.syscall}")
    for rule, nr in present:
        if rule.when is None:
            asm.jeq(nr, jt=rule.action.value)
    asm.ret(RET_ALLOW)
    for rule, test, _ in filtered:
        asm.label(f"args:{rule.syscall}")
        _emit_arg_test(asm, test, rule.action.value)
    # Shared returns, after every jump that targets them (BPF jumps only go forward).
    for action in (Action.ALLOW, Action.EPERM, Action.ENOSYS):
        asm.label(action.value)
        asm.ret(_RETURNS[action])
    asm.label("kill")
    asm.ret(RET_KILL_PROCESS)
    return asm.assemble()


def build_filter(arch: str | None = None) -> bytes:
    """The raw `struct sock_filter[]` for `arch` (x86_64 or aarch64; default: this machine)."""
    return b"".join(_INSN.pack(i.code, i.jt, i.jf, i.k) for i in assemble(arch))


def decode(program: bytes) -> list[Instruction]:
    """Parse a raw filter back into instructions (for tests and debugging)."""
    if len(program) % _INSN.size:
        raise ValueError(f"filter length {len(program)} is not a multiple of {_INSN.size}")
    return [Instruction(*fields) for fields in _INSN.iter_unpack(program)]


def open_filter_fd(arch: str | None = None) -> int:
    """A close-on-exec memfd holding the filter, positioned at 0, for `bwrap --seccomp FD`.

    The caller owns the fd: pass it with `subprocess.Popen(pass_fds=...)` and close it afterwards.
    bwrap reads it to EOF, so use a fresh fd per bwrap invocation.
    """
    return program_fd(build_filter(arch))


def program_fd(program: bytes) -> int:
    """A close-on-exec memfd holding an already built ``program``, positioned at 0 (the caller
    closes it)."""
    fd = os.memfd_create("corral-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
