"""corral-tools (the agent package's tools.c, built by corral.runtime.static_tools): commands as another
user started with vfork (``exec-as``), a sandbox's pid 1 (``pid1``), bwrap's start (``launch``)."""

from __future__ import annotations

import os
import pty
import pwd
import resource
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from test_agent_harness import shared

import corral.agent
from corral.agent import exec_as, tools
from corral.agent.processes import ProcessTable, Spec
from corral.agent.protocol import AgentError
from corral.agent.users import User
from corral.runtime import launch_priv, static_tools
from corral.runtime.backend import SandboxSpec
from corral.runtime.host import sandbox_nofile
from corral.runtime.plan import AgentRuntime, plan

__all__ = ["shared"]  # the fixture, imported from the harness
AGENT_SRC = Path(corral.agent.__file__).parent


def other_user() -> User:
    """The host's uid 1000 (what the agent's "user" means), or nobody if there is none."""
    try:
        entry = pwd.getpwuid(1000)
    except KeyError:
        entry = pwd.getpwnam("nobody")
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return User(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell, groups)


@pytest.fixture(scope="module")
def helper() -> str:
    """The built corral-tools."""
    built = static_tools.build(AGENT_SRC)
    assert built is not None, "corral-tools did not build (gcc and libc6-dev are make serve's packages)"
    assert tools.find(str(AGENT_SRC)) == str(built)
    return str(built)


def start(helper: str, cmd: list[str], tty: bool = False, **kwargs: object) -> subprocess.Popen[bytes]:
    options: dict[str, object] = {"stdout": subprocess.PIPE, "start_new_session": True, "close_fds": True}
    return exec_as.start(helper, other_user(), cmd, tty, subprocess.Popen, **{**options, **kwargs})


def test_the_command_runs_with_the_users_ids_groups_and_no_capabilities(helper: str) -> None:
    base = other_user()
    user = User(base.name, base.uid, base.gid, base.home, base.shell, (base.gid, 4242, 4343))  # not the caller's
    script = "id -u; id -g; id -G; grep -E '^(Uid|Gid|CapEff|CapPrm|CapAmb):' /proc/self/status; pwd"
    process = exec_as.start(helper, user, ["sh", "-c", script], False, subprocess.Popen, cwd="/",
                            env={"PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, start_new_session=True)
    out = process.communicate(timeout=10)[0].decode().splitlines()
    assert process.returncode == 0
    assert out[:3] == [str(user.uid), str(user.gid), f"{user.gid} 4242 4343"]
    status = dict(line.split(":", 1) for line in out[3:-1])
    assert status["Uid"].split() == [str(user.uid)] * 4 and status["Gid"].split() == [str(user.gid)] * 4
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == int(status["CapAmb"], 16) == 0
    assert out[-1] == "/"


def test_the_path_is_searched_as_pythons_subprocess_searches_it(helper: str, shared: Path) -> None:
    """Each $PATH entry in turn: a file there that can't be executed does not stop the search."""
    blocked, good = shared / "blocked", shared / "good"
    for folder in (blocked, good):
        folder.mkdir(mode=0o755)
    (blocked / "hello").write_text("#!/bin/sh\necho blocked\n")  # not executable
    (good / "hello").write_text("#!/bin/sh\necho good\n")
    (good / "hello").chmod(0o755)
    process = start(helper, ["hello"], env={"PATH": f"/definitely/missing:{blocked}:{good}"})
    assert process.communicate(timeout=10)[0] == b"good\n"
    with pytest.raises(PermissionError) as err:
        start(helper, ["hello"], env={"PATH": f"/definitely/missing:{blocked}"})
    assert err.value.filename == "hello"


def test_a_command_that_cannot_start_raises_what_popen_as_the_user_raises(helper: str, shared: Path) -> None:
    user = other_user()
    script = shared / "script"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o700)  # root's alone
    cases: list[tuple[list[str], dict[str, object]]] = [
        (["definitely-not-a-command"], {}),
        ([str(shared / "missing")], {}),
        ([str(shared)], {}),  # a dir
        ([str(script)], {}),  # not the user's to run
        (["true"], {"cwd": str(shared / "missing")}),
    ]
    for cmd, options in cases:
        with pytest.raises(OSError) as expected:
            subprocess.Popen(cmd, user=user.uid, group=user.gid, extra_groups=list(user.groups), **options)  # type: ignore[call-overload]
        with pytest.raises(OSError) as got:
            start(helper, cmd, **options)
        assert (got.value.errno, got.value.filename) == (expected.value.errno, expected.value.filename), cmd


def test_the_cwd_is_entered_as_the_user(helper: str, shared: Path) -> None:
    """As from the user's spawner (and E2B's envd): a directory only root may enter is refused, naming
    it; ``Popen(user=...)`` alone would enter it as root first."""
    private = shared / "private"
    private.mkdir(mode=0o700)  # root's
    with pytest.raises(PermissionError) as refused:
        start(helper, ["touch", str(shared / "ran")], cwd=str(private))
    assert refused.value.filename == str(private)
    assert not (shared / "ran").exists()
    process = start(helper, ["pwd"], cwd=str(shared))
    assert process.communicate(timeout=10)[0].decode().strip() == str(shared)


def test_on_a_terminal_the_command_has_it_as_its_controlling_terminal(helper: str) -> None:
    master, slave = pty.openpty()
    try:
        os.fchown(slave, other_user().uid, -1)
        process = start(helper, ["sh", "-c", "tty; ps -o tty= -p $$"], tty=True, stdin=slave, stdout=slave,
                        stderr=slave)
        os.close(slave)
        slave = -1
        out = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's last other end closed
                break
            if not chunk:
                break
            out += chunk
        assert process.wait(timeout=10) == 0
        name, controlling = out.decode().split()
        assert name.startswith("/dev/pts/") and controlling == name.removeprefix("/dev/")
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_an_exec_as_that_neither_runs_the_command_nor_reports_is_killed(
    shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped between its id change and its exec (sandbox code may signal it), exec-as keeps the
    report pipe open: the agent gives up after START_TIMEOUT, kills it, and says so."""
    stuck = shared / "stuck"
    stuck.write_text("#!/bin/sh\nexec sleep 60\n")  # stands in for corral-tools: keeps the report fd open
    stuck.chmod(0o755)
    monkeypatch.setattr(exec_as, "START_TIMEOUT", 0.3)
    started: list[subprocess.Popen[bytes]] = []

    def popen(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen(*args, **kwargs))  # type: ignore[call-overload]
        return started[-1]

    with pytest.raises(AgentError) as err:
        exec_as.start(str(stuck), other_user(), ["true"], False, popen, close_fds=True)
    assert err.value.kind == "internal" and "did not start within 0.3 s" in err.value.message
    assert started[0].returncode == -9


def test_the_agent_starts_another_users_command_through_exec_as_with_vfork(
    helper: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Popen forks when it must change ids or run a preexec_fn; through exec-as it needs neither
    (and without corral-tools the agent still starts the command, forking)."""
    calls: list[tuple[list[str], dict[str, object]]] = []
    real_popen = subprocess.Popen

    def recording(cmd: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        calls.append((cmd, kwargs))
        return real_popen(cmd, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(subprocess, "Popen", recording)
    user = other_user()
    for table_helper, via_helper in ((helper, True), (None, False)):
        calls.clear()
        table = ProcessTable(spawners=False, tools=table_helper)
        for terminal in (None, (80, 24)):
            process = table.spawn(Spec(["true"], {}, "/", user, False, terminal, None, 0.0))
            assert os.waitpid(process.pid, 0)[1] == 0
            for fd in process._outputs:  # never pumped: its output fds are closed here
                os.close(fd)
        for cmd, kwargs in calls:
            forking = {"user", "group", "extra_groups"} & set(kwargs) or kwargs.get("preexec_fn") is not None
            assert (cmd[0] == helper) == via_helper and bool(forking) != via_helper, (cmd, kwargs)
        assert len(calls) == 2


def test_find_names_the_build_of_this_source_only(tmp_path: Path) -> None:
    (tmp_path / tools.SOURCE).write_bytes(b"int main(void) { return 0; }\n")
    assert tools.find(str(tmp_path)) is None  # not built
    built = tmp_path / "__pycache__" / tools.file_name(b"int main(void) { return 0; }\n")
    built.parent.mkdir()
    built.write_bytes(b"")
    assert tools.find(str(tmp_path)) is None  # not executable
    built.chmod(0o755)
    assert tools.find(str(tmp_path)) == str(built)
    (tmp_path / tools.SOURCE).write_bytes(b"int main(void) { return 1; }\n")
    assert tools.find(str(tmp_path)) is None  # another source: another name


def test_the_server_builds_it_once_per_source_and_goes_without_it_when_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    package = tmp_path / "corral_agent"
    package.mkdir()
    (package / tools.SOURCE).write_bytes((AGENT_SRC / tools.SOURCE).read_bytes())
    stale = package / "__pycache__" / "corral-tools-00000000"
    stale.parent.mkdir()
    stale.write_bytes(b"")
    os.utime(stale, (0, 0))  # another source's helper, unused for long
    built = static_tools._build(package)
    assert built is not None and str(built) == tools.find(str(package))
    assert built.stat().st_mode & 0o777 == 0o755 and not stale.exists()
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # no partial file left
    os.utime(built, (1000, 1000))
    assert static_tools._build(package) == built  # there already: not compiled again, marked as in use
    assert built.stat().st_mtime > 1000

    (package / tools.SOURCE).write_bytes(b"int main(void) { return 0; }\n")
    monkeypatch.setattr(static_tools.shutil, "which", lambda name: None)
    with caplog.at_level("WARNING"):
        assert static_tools._build(package) is None
    assert "no C compiler" in caplog.text and "slower stand-ins" in caplog.text
    assert tools.find(str(package)) is None


def test_it_is_built_with_musl_whose_start_up_asks_the_cpu_nothing(helper: str) -> None:
    """glibc's static start-up reads the CPU's cache sizes with ~100 CPUID instructions, each a trap
    to the hypervisor on a virtual machine (~0.65 ms per exec here); musl's does not. make serve
    installs musl-tools, so the server builds with it."""
    assert static_tools.compilers()[0] == shutil.which("musl-gcc"), "musl-gcc (Debian's musl-tools) is not installed"
    program = Path(helper).read_bytes()
    assert b"glibc" not in program and b"GNU C Library" not in program


def test_a_compiler_that_fails_gives_way_to_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "musl-gcc"
    broken.write_text("#!/bin/sh\necho 'musl-gcc: broken install' >&2\nexit 1\n")
    broken.chmod(0o755)
    real = shutil.which
    monkeypatch.setattr(static_tools.shutil, "which", lambda name: str(broken) if name == "musl-gcc" else real(name))
    package = tmp_path / "corral_agent"
    package.mkdir()
    (package / tools.SOURCE).write_bytes((AGENT_SRC / tools.SOURCE).read_bytes())
    with caplog.at_level("WARNING"):
        built = static_tools._build(package)
    assert built is not None and os.access(built, os.X_OK)
    assert "musl-gcc: broken install" in caplog.text and "trying the next compiler" in caplog.text
    assert subprocess.run([str(built)], capture_output=True).returncode == 2  # its usage: it runs


def _read_to_end(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    os.close(fd)
    return data


def test_pid1_says_it_runs_then_holds_nothing_but_dev_null_and_waits(helper: str) -> None:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    extra_r, extra_w = os.pipe()  # stands in for the fds bwrap leaves its command
    process = subprocess.Popen([helper, "pid1", str(extra_w)], stdin=subprocess.DEVNULL, stdout=out_w,
                               stderr=err_w, pass_fds=(extra_w,))
    try:
        for fd in (out_w, err_w, extra_w):
            os.close(fd)
        # each pipe ends once pid 1 let go of its end: then it holds only what it keeps
        assert (_read_to_end(out_r), _read_to_end(err_r), _read_to_end(extra_r)) == (b".", b"", b"")
        held = {int(fd): os.readlink(f"/proc/{process.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{process.pid}/fd")}
        assert held == {0: "/dev/null", 1: "/dev/null", 2: "/dev/null"}
        assert process.poll() is None  # it waits for ever
    finally:
        process.kill()
        process.wait()


def test_launch_waits_for_its_release_then_becomes_the_program_as_the_sandbox_uid(helper: str) -> None:
    uid = 1234567
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    script = "ulimit -Sn; ulimit -Hn; id -u; id -G; grep -E '^Cap(Eff|Prm|Amb):' /proc/self/status; cat; echo end"
    process = subprocess.Popen([helper, "launch", "777", str(uid), "--", "/bin/sh", "-c", script],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    assert process.stdin is not None
    assert os.readlink(f"/proc/{process.pid}/exe") == helper  # waiting for its line, not started yet
    process.stdin.write(b"go\n")
    process.stdin.flush()  # stdin stays open: the program gets /dev/null instead, so `cat` ends
    out, err = process.communicate(timeout=10)
    lines = out.decode().splitlines()
    assert (process.returncode, err) == (0, b"")
    assert lines[:4] == ["777", str(hard) if hard != resource.RLIM_INFINITY else "unlimited", str(uid), str(uid)]
    assert [int(line.split()[1], 16) for line in lines[4:7]] == [0, 0, 0]
    assert lines[7:] == ["end"]

    gone = subprocess.Popen([helper, "launch", "777", str(uid), "--", "/bin/true"], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert gone.communicate(b"no newline: the server went away", timeout=10) == (None, b"")
    assert gone.returncode == 1


def _cgroup2() -> Path:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return Path(fields[1])
    pytest.fail("no cgroup2 mount on this host")


def test_launch_given_cgroup_fds_joins_those_cgroups_itself_before_it_becomes_the_program(helper: str) -> None:
    """The server hands the stub the sandbox's cgroup.procs files instead of moving it: bwrap, and so
    everything in the sandbox, starts inside them."""
    group = _cgroup2() / f"corral-test-{os.getpid()}"
    group.mkdir()
    procs = os.open(group / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
    try:
        process = subprocess.Popen(
            [helper, "launch", "777", str(1234567), "--cgroup-fds", str(procs), "--", "/bin/cat", "/proc/self/cgroup"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(procs,),
        )
        out, err = process.communicate(b"go\n", timeout=10)
        assert (process.returncode, err) == (0, b"")
        assert f"0::/{group.name}" in out.decode().splitlines()
        bad = subprocess.run([helper, "launch", "777", "1234567", "--cgroup-fds", "999", "--", "/bin/true"],
                             input=b"go\n", capture_output=True, timeout=10)
        assert bad.returncode == 1 and b"joining the sandbox's cgroups" in bad.stderr  # never runs outside them
    finally:
        os.close(procs)
        group.rmdir()


def test_bwrap_starts_through_launch_when_built_and_through_sh_and_setpriv_without(tmp_path: Path) -> None:
    spec = SandboxSpec(sandbox_id="abc123", layers=(tmp_path,), cpu=0.5, memory_mb=256, disk_mb=128)
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/python3.11").touch()
    runtime = AgentRuntime.find(tmp_path, "x86_64")
    kwargs = {"sandboxes_dir": tmp_path / "s", "mounts_dir": tmp_path / "m", "agent_src": AGENT_SRC, "id_offset": 7}
    built = plan(spec, runtime=replace(runtime, tools="corral-tools-0a1b2c3d"), **kwargs)  # type: ignore[arg-type]
    argv = launch_priv._stub(built, ["bwrap", "--unshare-all", "true"])
    tools_path = str(AGENT_SRC / "__pycache__/corral-tools-0a1b2c3d")
    assert argv[:5] == [tools_path, "launch", str(sandbox_nofile()), "7", "--"]
    assert Path(argv[5]).is_absolute() and argv[5].endswith("/bwrap") and argv[6:] == ["--unshare-all", "true"]
    joining = launch_priv._stub(built, ["bwrap", "true"], [11, 12])
    assert joining[4:7] == ["--cgroup-fds", "11,12", "--"]
    stand_in = launch_priv._stub(plan(spec, runtime=runtime, **kwargs), ["bwrap", "true"])  # type: ignore[arg-type]
    assert stand_in[:2] == ["/bin/sh", "-c"] and "--reuid=7" in stand_in and stand_in[-1] == "true"
