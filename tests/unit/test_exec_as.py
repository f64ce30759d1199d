"""The exec-as helper (corral.agent.exec_as, exec_as.c): commands as another user, started with vfork."""

from __future__ import annotations

import os
import pty
import pwd
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import corral.agent
from corral.agent import exec_as
from corral.agent.processes import ProcessTable, Spec
from corral.agent.protocol import AgentError
from corral.agent.users import User
from corral.runtime import exec_helper

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
    built = exec_helper.build(AGENT_SRC)
    assert built is not None, "the helper did not build (gcc and libc6-dev are make serve's packages)"
    assert exec_as.find(str(AGENT_SRC)) == str(built)
    return str(built)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A root-owned 0755 dir the other user can reach (pytest's tmp_path lies under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="corral-exec-as-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=True)


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


def test_a_helper_that_neither_runs_the_command_nor_reports_is_killed(
    shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped between its id change and its exec (sandbox code may signal it), the helper keeps the
    report pipe open: the agent gives up after START_TIMEOUT, kills it, and says so."""
    stuck = shared / "stuck"
    stuck.write_text("#!/bin/sh\nexec sleep 60\n")  # keeps the inherited report fd open
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


def test_the_agent_starts_another_users_command_through_the_helper_with_vfork(
    helper: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Popen forks when it must change ids or run a preexec_fn; through the helper it needs neither
    (and without the helper the agent still starts the command, forking)."""
    calls: list[tuple[list[str], dict[str, object]]] = []
    real_popen = subprocess.Popen

    def recording(cmd: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        calls.append((cmd, kwargs))
        return real_popen(cmd, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(subprocess, "Popen", recording)
    user = other_user()
    for table_helper, via_helper in ((helper, True), (None, False)):
        calls.clear()
        table = ProcessTable(spawners=False, helper=table_helper)
        for terminal in (None, (80, 24)):
            process = table.spawn(Spec(["true"], {}, "/", user, False, terminal, None, 0.0))
            assert os.waitpid(process.pid, 0)[1] == 0
            for fd in process._outputs:  # never pumped: its output fds are closed here
                os.close(fd)
        for cmd, kwargs in calls:
            forking = {"user", "group", "extra_groups"} & set(kwargs) or kwargs.get("preexec_fn") is not None
            assert (cmd[0] == helper) == via_helper and bool(forking) != via_helper, (cmd, kwargs)
        assert len(calls) == 2


def test_find_names_the_helper_of_this_source_only(tmp_path: Path) -> None:
    (tmp_path / exec_as.SOURCE).write_bytes(b"int main(void) { return 0; }\n")
    assert exec_as.find(str(tmp_path)) is None  # not built
    built = tmp_path / "__pycache__" / exec_as.file_name(b"int main(void) { return 0; }\n")
    built.parent.mkdir()
    built.write_bytes(b"")
    assert exec_as.find(str(tmp_path)) is None  # not executable
    built.chmod(0o755)
    assert exec_as.find(str(tmp_path)) == str(built)
    (tmp_path / exec_as.SOURCE).write_bytes(b"int main(void) { return 1; }\n")
    assert exec_as.find(str(tmp_path)) is None  # another source: another name


def test_the_server_builds_the_helper_once_per_source_and_goes_without_it_when_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    package = tmp_path / "corral_agent"
    package.mkdir()
    (package / exec_as.SOURCE).write_bytes((AGENT_SRC / exec_as.SOURCE).read_bytes())
    stale = package / "__pycache__" / "exec-as-00000000"
    stale.parent.mkdir()
    stale.write_bytes(b"")
    os.utime(stale, (0, 0))  # another source's helper, unused for long
    built = exec_helper._build(package)
    assert built is not None and str(built) == exec_as.find(str(package))
    assert built.stat().st_mode & 0o777 == 0o755 and not stale.exists()
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # no partial file left
    os.utime(built, (1000, 1000))
    assert exec_helper._build(package) == built  # there already: not compiled again, marked as in use
    assert built.stat().st_mtime > 1000

    (package / exec_as.SOURCE).write_bytes(b"int main(void) { return 0; }\n")
    monkeypatch.setattr(exec_helper.shutil, "which", lambda name: None)
    with caplog.at_level("WARNING"):
        assert exec_helper._build(package) is None
    assert "no C compiler" in caplog.text and "fork the agent" in caplog.text
    assert exec_as.find(str(package)) is None
