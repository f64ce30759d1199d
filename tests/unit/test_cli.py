"""The ``corral`` CLI: argument parsing, help, and error output, with the SDK faked (no server)."""

from __future__ import annotations

import sys
import types
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from corral import CommandResult, EntryInfo, FileType, NotFoundException, SandboxInfo
from corral.cli import files, keys, main, sandbox
from corral.sdk._models import KeyInfo

runner = CliRunner()
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
INFO = SandboxInfo("sbx_1", "base", "running", NOW, NOW, {"k": "v"}, 1.0, 512, None)


def invoke(*args: str, **kwargs: Any) -> Any:
    return runner.invoke(main.app, list(args), **kwargs)


class FakeHandle:
    pid = 5

    def __init__(self, on_stdout: Any, on_stderr: Any, result: CommandResult) -> None:
        self._out, self._err, self._result = on_stdout, on_stderr, result

    def wait(self) -> CommandResult:
        self._out("hello\n")
        self._err("oops\n")
        return self._result

    def kill(self) -> bool:
        return True


class FakeSandbox:
    calls: ClassVar[list[tuple[str, Any]]] = []
    result = CommandResult("hello\n", "oops\n", 0, None)

    def __init__(self, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id
        self.commands = self
        self.files = self

    @classmethod
    def connect(cls, sandbox_id: str, **kw: Any) -> FakeSandbox:
        cls.calls.append(("connect", (sandbox_id, kw)))
        return cls(sandbox_id)

    @classmethod
    def create(cls, **kw: Any) -> FakeSandbox:
        cls.calls.append(("create", kw))
        return cls("sbx_new")

    @classmethod
    def list(cls, **kw: Any) -> list[SandboxInfo]:
        cls.calls.append(("list", kw))
        return [INFO]

    @classmethod
    def get_info(cls, sandbox_id: str, **kw: Any) -> SandboxInfo:
        if sandbox_id == "gone":
            raise NotFoundException("sandbox gone: get info: ended at 10:00 (HTTP 404)", sandbox_id="gone")
        return INFO

    @classmethod
    def kill(cls, sandbox_id: str, **kw: Any) -> bool:
        return sandbox_id != "never"

    def run(self, cmd: str, **kw: Any) -> FakeHandle:
        self.calls.append(("run", (cmd, kw)))
        return FakeHandle(kw["on_stdout"], kw["on_stderr"], self.result)

    def read(self, path: str, fmt: str, user: Any = None) -> Any:
        return iter([b"\x00bin", b"ary"])

    def list_entries(self, path: str, **kw: Any) -> list[EntryInfo]:
        return [EntryInfo("d", FileType.DIR, "/d", 0, 0o755, "drwxr-xr-x", "user", "user", NOW)]

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def no_server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests describe the CLI's own defaults, whatever the caller's shell exports."""
    for name in ("CORRAL_API_URL", "CORRAL_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeSandbox]:
    FakeSandbox.calls = []
    FakeSandbox.result = CommandResult("hello\n", "oops\n", 0, None)
    for module in (main, sandbox, files):
        monkeypatch.setattr(module, "Sandbox", FakeSandbox)
    monkeypatch.setattr(FakeSandbox, "list", FakeSandbox.list)
    return FakeSandbox


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["sandbox", "--help"],
        ["files", "--help"],
        ["keys", "--help"],
        ["exec", "--help"],
        ["serve", "--help"],
        ["sandbox", "create", "--help"],
        ["files", "put", "--help"],
    ],
)
def test_help(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 0 and "Usage" in result.output


@pytest.mark.parametrize("args", [[], ["sandbox"], ["files"], ["keys"]])
def test_groups_without_a_command_show_help(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2 and "Usage" in result.output


def test_top_level_lists_commands() -> None:
    result = invoke("--help")
    for name in ("serve", "exec", "sandbox", "files", "keys"):
        assert name in result.output


def test_unreachable_server_is_one_red_line_without_traceback() -> None:
    result = invoke("--api-url", "http://127.0.0.1:1", "sandbox", "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: list sandboxes: cannot talk to the Corral server at http://127.0.0.1:1")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_env_var_configures_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_API_URL", "http://127.0.0.1:1")
    result = invoke("sandbox", "info", "sbx_1")
    assert result.exit_code == 1 and "sandbox sbx_1: get info" in result.stderr and "127.0.0.1:1" in result.stderr


def test_exec_joins_argv_streams_and_exits_with_the_code(fake: type[FakeSandbox]) -> None:
    fake.result = CommandResult("hello\n", "oops\n", 3, None)
    result = invoke("--api-key", "e2b_k", "exec", "--env", "A=1", "--cwd", "/tmp", "sbx_1", "--", "ls", "-l", "my dir")
    assert result.exit_code == 3
    assert result.stdout == "hello\n" and result.stderr == "oops\n"
    (_, (sandbox_id, kw)), (_, (cmd, run_kw)) = fake.calls
    assert sandbox_id == "sbx_1" and kw == {"api_url": None, "api_key": "e2b_k"}
    assert cmd == "ls -l 'my dir'"
    assert run_kw["envs"] == {"A": "1"} and run_kw["cwd"] == "/tmp" and run_kw["timeout"] == 0
    assert run_kw["background"] is True and run_kw["check"] is False


def test_exec_single_word_is_a_shell_line(fake: type[FakeSandbox]) -> None:
    result = invoke("exec", "sbx_1", "--", "echo $HOME | wc -c")
    assert result.exit_code == 0
    assert fake.calls[-1][1][0] == "echo $HOME | wc -c"


def test_exec_reports_command_errors_and_signals(fake: type[FakeSandbox]) -> None:
    fake.result = CommandResult("", "", -9, "command timed out after 5s")
    result = invoke("exec", "sbx_1", "--", "sleep", "10")
    assert result.exit_code == 137
    assert "error: sandbox sbx_1: command timed out after 5s" in result.stderr


def test_exec_usage_errors(fake: type[FakeSandbox]) -> None:
    assert invoke("exec", "sbx_1").exit_code == 2
    bad = invoke("exec", "--env", "NOEQUALS", "sbx_1", "--", "true")
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


def test_sandbox_create_prints_only_the_id(fake: type[FakeSandbox]) -> None:
    result = invoke("sandbox", "create", "--timeout", "60", "--cpu", "0.5", "-e", "A=1", "-m", "team=x")
    assert result.exit_code == 0 and result.stdout == "sbx_new\n"
    kw = fake.calls[0][1]
    assert kw["timeout"] == 60 and kw["cpu"] == 0.5 and kw["envs"] == {"A": "1"} and kw["metadata"] == {"team": "x"}
    assert kw["template"] == "base" and kw["memory_mb"] is None


def test_sandbox_list_info_kill(fake: type[FakeSandbox]) -> None:
    listed = invoke("sandbox", "list", "--all", "-m", "k=v")
    assert listed.exit_code == 0 and "sbx_1" in listed.stdout and "k=v" in listed.stdout
    assert fake.calls[-1] == ("list", {"state": "all", "metadata": {"k": "v"}, "api_url": None, "api_key": None})
    info = invoke("sandbox", "info", "sbx_1")
    assert info.exit_code == 0 and '"sandbox_id": "sbx_1"' in info.stdout
    gone = invoke("sandbox", "info", "gone")
    assert gone.exit_code == 1 and gone.stderr == "error: sandbox gone: get info: ended at 10:00 (HTTP 404)\n"
    assert invoke("sandbox", "kill", "sbx_1").stdout == "killed sbx_1\n"
    never = invoke("sandbox", "kill", "never")
    assert never.exit_code == 1 and "no such sandbox" in never.stderr


def test_files_get_to_stdout_is_binary_safe(fake: type[FakeSandbox]) -> None:
    result = invoke("files", "get", "sbx_1", "/bin/x", "-")
    assert result.exit_code == 0 and result.stdout_bytes == b"\x00binary"


def test_files_put_missing_local_file_is_a_clean_error(fake: type[FakeSandbox], tmp_path: Any) -> None:
    missing = tmp_path / "nope"

    def upload(local: str, remote: str, user: Any = None) -> None:
        open(local, "rb")  # noqa: SIM115 - raises FileNotFoundError like the SDK would

    fake.upload = staticmethod(upload)  # type: ignore[attr-defined]
    result = invoke("files", "put", "sbx_1", str(missing), "/x")
    assert result.exit_code == 1 and result.stderr == f"error: {missing}: No such file or directory\n"


def test_files_ls_table(fake: type[FakeSandbox], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeSandbox, "list", lambda self, path, **kw: self.list_entries(path, **kw))
    result = invoke("files", "ls", "sbx_1", "/")
    assert result.exit_code == 0 and "/d/" in result.stdout and "drwxr-xr-x" in result.stdout


def test_keys_create_prints_the_key_once(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeKeys:
        def __init__(self, **kw: Any) -> None:
            pass

        def __enter__(self) -> FakeKeys:
            return self

        def __exit__(self, *a: object) -> None:
            pass

        def create(self, name: str) -> KeyInfo:
            return KeyInfo("k1", name, NOW, key="e2b_" + "0" * 40)

        def list(self) -> list[KeyInfo]:
            return [KeyInfo("k1", "ci", NOW, prefix="e2b_0000", admin=True)]

        def revoke(self, key_id: str) -> None:
            pass

    monkeypatch.setattr(keys, "ApiKeys", FakeKeys)
    created = invoke("keys", "create", "ci")
    assert created.exit_code == 0 and created.stdout == "e2b_" + "0" * 40 + "\n"
    assert "not shown again" in created.stderr
    listed = invoke("keys", "list")
    assert "e2b_0000" in listed.stdout and "e2b_" + "0" * 40 not in listed.stdout
    assert invoke("keys", "revoke", "k1").stdout == "revoked k1\n"


def test_serve_sets_environment_and_calls_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CORRAL_HOST", "CORRAL_PORT", "CORRAL_DATA_DIR"):
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    seen: dict[str, str | None] = {}
    fake_server = types.ModuleType("corral.api.server")

    def serve() -> None:
        import os

        seen.update({k: os.environ.get(k) for k in ("CORRAL_HOST", "CORRAL_PORT", "CORRAL_DATA_DIR")})

    fake_server.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "corral.api.server", fake_server)
    result = invoke("serve", "--host", "0.0.0.0", "--port", "3999")
    assert result.exit_code == 0, result.output
    assert seen == {"CORRAL_HOST": "0.0.0.0", "CORRAL_PORT": "3999", "CORRAL_DATA_DIR": None}


def test_serve_without_server_module_is_a_clean_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "corral.api.server", None)  # import raises ImportError
    result = invoke("serve")
    assert result.exit_code == 1 and result.stderr.startswith("error: the server is not available")
