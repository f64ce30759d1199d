"""Unit tests for the seccomp filter: encoding, structure, syscall tables and, via a tiny BPF
interpreter, what the program returns for each rule and its allowed twin on both architectures."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
from pathlib import Path

import pytest

from corral.runtime import seccomp, seccomp_policy
from corral.runtime.seccomp import (
    JEQ_K,
    JSET_K,
    LD_W_ABS,
    RET_ALLOW,
    RET_ERRNO,
    RET_K,
    RET_KILL_PROCESS,
    Instruction,
    build_filter,
    decode,
)
from corral.runtime.seccomp_policy import (
    ARCHES,
    DELIBERATELY_ALLOWED,
    DENIED,
    NUMBERS,
    Action,
    syscall_number,
)

AUDIT = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
COMPAT_AUDIT = {"x86_64": 0x40000003, "aarch64": 0x40000028}  # i386, arm (32-bit)
EPERM = RET_ERRNO | errno.EPERM
ENOSYS = RET_ERRNO | errno.ENOSYS
EXPECTED = {Action.EPERM: EPERM, Action.ENOSYS: ENOSYS, Action.ALLOW: RET_ALLOW}
# Syscalls the generic (aarch64) table never had; every other rule must exist on both arches.
LEGACY_ONLY = {"iopl", "ioperm", "uselib", "ustat", "sysfs", "_sysctl", "fork"}


def run(program: list[Instruction], arch: str, nr: int, *args: int, audit: int | None = None) -> int:
    """Interpret `program` for one syscall the way the kernel would, returning its verdict."""
    padded = [*args, *[0] * (6 - len(args))]
    data = struct.pack("<II Q 6Q", nr & 0xFFFFFFFF, audit or AUDIT[arch], 0, *padded)
    acc, pc = 0, 0
    while True:
        ins = program[pc]
        if ins.code == LD_W_ABS:
            (acc,) = struct.unpack_from("<I", data, ins.k)
            pc += 1
        elif ins.code == JEQ_K:
            pc += 1 + (ins.jt if acc == ins.k else ins.jf)
        elif ins.code == JSET_K:
            pc += 1 + (ins.jt if acc & ins.k else ins.jf)
        elif ins.code == RET_K:
            return ins.k
        else:
            raise AssertionError(f"unexpected opcode {ins.code:#x} at {pc}")


@pytest.fixture(params=ARCHES)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def program(arch: str) -> list[Instruction]:
    return decode(build_filter(arch))


def nr(name: str, arch: str) -> int:
    number = syscall_number(name, arch)
    assert number is not None
    return number


# --- encoding and structure -------------------------------------------------------------------


def test_length_is_whole_instructions_within_kernel_limit(arch: str) -> None:
    raw = build_filter(arch)
    assert len(raw) % 8 == 0
    assert 20 < len(raw) // 8 <= 4096  # BPF_MAXINSNS


def test_decode_round_trips(arch: str) -> None:
    raw = build_filter(arch)
    again = b"".join(struct.pack("<HBBI", i.code, i.jt, i.jf, i.k) for i in decode(raw))
    assert again == raw
    assert decode(raw) == seccomp.assemble(arch)


def test_decode_rejects_partial_instruction() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        decode(b"\x00" * 12)


def test_first_instruction_checks_the_architecture(program: list[Instruction], arch: str) -> None:
    assert program[0] == Instruction(LD_W_ABS, 0, 0, 4)  # seccomp_data.arch
    check = program[1]
    assert (check.code, check.k, check.jt) == (JEQ_K, AUDIT[arch], 0)
    assert program[2 + check.jf] == Instruction(RET_K, 0, 0, RET_KILL_PROCESS)


def test_jumps_land_inside_and_program_ends_with_return(program: list[Instruction]) -> None:
    for pc, ins in enumerate(program):
        if ins.code in (JEQ_K, JSET_K):
            assert pc + 1 + max(ins.jt, ins.jf) < len(program)
    assert program[-1].code == RET_K


def test_only_known_opcodes_and_argument_loads(program: list[Instruction]) -> None:
    assert {i.code for i in program} <= {LD_W_ABS, JEQ_K, JSET_K, RET_K}
    loads = {i.k for i in program if i.code == LD_W_ABS}
    assert loads <= {0, 4, *(16 + 8 * n for n in range(6))}  # nr, arch, low words of args


def test_default_arch_is_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "arm64")
    assert build_filter() == build_filter("aarch64")


def test_unsupported_arch_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        build_filter("riscv64")


def test_out_of_range_jump_is_refused() -> None:
    asm = seccomp._Assembler()
    asm.jeq(1, jt="far")
    for _ in range(300):
        asm.ret(RET_ALLOW)
    asm.label("far")
    asm.ret(EPERM)
    with pytest.raises(ValueError, match="out of range"):
        asm.assemble()


def test_open_filter_fd_holds_the_program() -> None:
    fd = seccomp.open_filter_fd("x86_64")
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert os.read(fd, 1 << 16) == build_filter("x86_64")
    finally:
        os.close(fd)


# --- policy data ------------------------------------------------------------------------------


def test_one_rule_per_syscall_with_a_one_line_reason() -> None:
    names = [r.syscall for r in DENIED + DELIBERATELY_ALLOWED]
    assert len(names) == len(set(names))
    for rule in DENIED + DELIBERATELY_ALLOWED:
        assert rule.reason.strip() and "\n" not in rule.reason, rule.syscall
    assert all(r.action is not Action.ALLOW for r in DENIED)
    assert all(r.action is Action.ALLOW and r.when is None for r in DELIBERATELY_ALLOWED)


def test_every_rule_has_numbers_unless_legacy(arch: str) -> None:
    for rule in DENIED + DELIBERATELY_ALLOWED:
        number = syscall_number(rule.syscall, arch)
        if arch == "aarch64" and rule.syscall in LEGACY_ONLY:
            assert number is None, rule.syscall
        else:
            assert isinstance(number, int), (rule.syscall, arch)
    assert {n for n, (x86, _) in NUMBERS.items() if x86 is None} == set()
    assert {n for n, (_, arm) in NUMBERS.items() if arm is None} == LEGACY_ONLY


def test_numbers_are_unique_per_arch(arch: str) -> None:
    numbers = [syscall_number(n, arch) for n in NUMBERS]
    present = [n for n in numbers if n is not None]
    assert len(present) == len(set(present))


def _header_numbers(path: Path, prefix: str) -> dict[str, int]:
    found = re.findall(rf"#define {prefix}(\w+)\s+(\d+)\b", path.read_text())
    return {name: int(value) for name, value in found}


HEADERS = {
    "x86_64": (Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"), "__NR_"),
    "aarch64": (Path("/usr/include/asm-generic/unistd.h"), "__NR(?:3264)?_"),
}


def test_numbers_match_kernel_headers(arch: str) -> None:
    path, prefix = HEADERS[arch]
    if not path.exists():
        pytest.skip(f"{path} not installed")
    table = _header_numbers(path, prefix)
    for name in NUMBERS:
        assert table.get(name) == syscall_number(name, arch), (name, arch)


# --- verdicts (interpreted) -------------------------------------------------------------------

# Common syscalls no rule mentions: name -> (x86_64, aarch64).
ORDINARY = {"read": (0, 63), "write": (1, 64), "getpid": (39, 172), "execve": (59, 221)}


def _present(names: dict[str, tuple[int | None, int | None]]) -> list[tuple[str, str, int]]:
    """(arch, name, number) for every name that exists on each arch."""
    return [
        (arch, name, numbers[i])
        for i, arch in enumerate(ARCHES)
        for name, numbers in names.items()
        if numbers[i] is not None
    ]


@pytest.mark.parametrize(
    ("arch", "name", "number"),
    _present({r.syscall: NUMBERS[r.syscall] for r in DENIED if r.when is None}),
)
def test_denied_syscall_gets_its_action(arch: str, name: str, number: int) -> None:
    (rule,) = (r for r in DENIED if r.syscall == name)
    assert run(decode(build_filter(arch)), arch, number) == EXPECTED[rule.action]


@pytest.mark.parametrize(
    ("arch", "name", "number"),
    _present({**{r.syscall: NUMBERS[r.syscall] for r in DELIBERATELY_ALLOWED}, **ORDINARY}),
)
def test_allowed_twins_pass(arch: str, name: str, number: int) -> None:
    assert run(decode(build_filter(arch)), arch, number) == RET_ALLOW


def test_foreign_abi_is_killed(program: list[Instruction], arch: str) -> None:
    getpid = ORDINARY["getpid"][ARCHES.index(arch)]
    assert getpid is not None
    assert run(program, arch, getpid, audit=COMPAT_AUDIT[arch]) == RET_KILL_PROCESS
    assert run(program, arch, getpid) == RET_ALLOW  # twin: the same call on the native ABI


def test_x32_abi_is_denied_on_x86_64() -> None:
    program = decode(build_filter("x86_64"))
    assert run(program, "x86_64", 0x40000000 | 39) == EPERM  # x32 getpid
    assert run(program, "x86_64", 0x40000000 | 165) == EPERM  # x32 mount must not dodge the list
    assert run(program, "x86_64", 39) == RET_ALLOW


SIGCHLD = 17
THREAD_FLAGS = 0x003D0F00  # what glibc's pthread_create passes (CLONE_VM|FS|FILES|SIGHAND|THREAD|...)
NAMESPACE_FLAGS = [
    seccomp_policy.CLONE_NEWNS,
    seccomp_policy.CLONE_NEWUTS,
    seccomp_policy.CLONE_NEWIPC,
    seccomp_policy.CLONE_NEWUSER,
    seccomp_policy.CLONE_NEWPID,
    seccomp_policy.CLONE_NEWNET,
    seccomp_policy.CLONE_NEWCGROUP,
    seccomp_policy.CLONE_NEWTIME,
]


@pytest.mark.parametrize("flag", NAMESPACE_FLAGS, ids=hex)
def test_clone_with_namespace_flag_is_denied(flag: int, program: list[Instruction], arch: str) -> None:
    assert run(program, arch, nr("clone", arch), flag | SIGCHLD) == EPERM


@pytest.mark.parametrize("flags", [SIGCHLD, THREAD_FLAGS, 0x01200000 | SIGCHLD], ids=hex)
def test_clone_without_namespace_flags_is_allowed(flags: int, program: list[Instruction], arch: str) -> None:
    assert run(program, arch, nr("clone", arch), flags) == RET_ALLOW


def test_clone3_reports_enosys(program: list[Instruction], arch: str) -> None:
    assert run(program, arch, nr("clone3", arch)) == ENOSYS


TIOCGWINSZ = 0x5413


@pytest.mark.parametrize("cmd", [seccomp_policy.TIOCSTI, seccomp_policy.TIOCLINUX, (1 << 32) | 0x5412])
def test_ioctl_terminal_injection_is_denied(cmd: int, program: list[Instruction], arch: str) -> None:
    # The kernel truncates cmd to 32 bits, so high garbage must not hide TIOCSTI.
    assert run(program, arch, nr("ioctl", arch), 0, cmd) == EPERM


@pytest.mark.parametrize("cmd", [TIOCGWINSZ, 0x5401, 0x541B])  # TIOCGWINSZ, TCGETS, FIONREAD
def test_ioctl_other_commands_are_allowed(cmd: int, program: list[Instruction], arch: str) -> None:
    assert run(program, arch, nr("ioctl", arch), 0, cmd) == RET_ALLOW
    assert run(program, arch, nr("ioctl", arch), seccomp_policy.TIOCSTI, cmd) == RET_ALLOW  # fd, not cmd


@pytest.mark.parametrize("persona", seccomp_policy.PERSONALITY_ALLOWED, ids=hex)
def test_personality_allowed_values(persona: int, program: list[Instruction], arch: str) -> None:
    assert run(program, arch, nr("personality", arch), persona) == RET_ALLOW


@pytest.mark.parametrize("persona", [0x0040000, 0x0400000, 0x0200000, 0x1], ids=hex)
def test_personality_other_values_are_denied(persona: int, program: list[Instruction], arch: str) -> None:
    # ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, MMAP_PAGE_ZERO, PER_SVR4
    assert run(program, arch, nr("personality", arch), persona) == EPERM
