"""Request building and answer parsing for every endpoint, without I/O."""

import json
from typing import Any

import pytest

from corral import (
    EntryInfo,
    FileType,
    InvalidArgumentException,
    NotFoundException,
    ProcessInfo,
    SandboxInfo,
    ServerException,
)
from corral.sdk import _calls
from corral.sdk._core import Call

SANDBOX = {
    "id": "sbx_1",
    "template": "base",
    "state": "running",
    "created_at": "2026-11-29T10:00:00Z",
    "expires_at": "2026-11-29T10:05:00Z",
    "ended_at": None,
    "end_reason": None,
    "metadata": {"k": "v"},
    "cpu": 1.0,
    "memory_mb": 512,
    "disk_mb": 2048,
}
ENTRY = {
    "name": "a.txt",
    "path": "/home/user/a.txt",
    "type": "file",
    "size": 3,
    "mode": 0o644,
    "permissions": "-rw-r--r--",
    "owner": "user",
    "group": "user",
    "modified": "2026-11-29T10:00:00Z",
    "symlink_target": None,
}


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def shape(call: Call[Any]) -> tuple[str, str, tuple[tuple[str, str], ...], Any]:
    return call.method, call.path, call.params, call.json


def test_create_sends_only_given_fields() -> None:
    call = _calls.create_sandbox(
        template="base", timeout=300, envs={"A": "1"}, metadata=None, cpu=None, memory_mb=512, disk_mb=None
    )
    assert shape(call) == (
        "POST",
        "/v1/sandboxes",
        (),
        {"template": "base", "timeout": 300, "envs": {"A": "1"}, "memory_mb": 512},
    )
    info = call.result(201, body(SANDBOX))
    assert isinstance(info, SandboxInfo)
    assert info.sandbox_id == "sbx_1" and info.template_id == "base" and info.memory_mb == 512


def test_list_sandboxes_query() -> None:
    call = _calls.list_sandboxes("all", {"k1": "v1", "k2": "v=2"})
    assert shape(call) == (
        "GET",
        "/v1/sandboxes",
        (("state", "all"), ("metadata", "k1=v1"), ("metadata", "k2=v=2")),
        None,
    )
    assert [i.sandbox_id for i in call.result(200, body([SANDBOX, SANDBOX]))] == ["sbx_1", "sbx_1"]


def test_sandbox_id_is_quoted_into_the_path() -> None:
    assert _calls.get_sandbox("a/b c").path == "/v1/sandboxes/a%2Fb%20c"


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (_calls.get_sandbox("s"), ("GET", "/v1/sandboxes/s", (), None)),
        (_calls.kill_sandbox("s"), ("DELETE", "/v1/sandboxes/s", (), None)),
        (_calls.set_timeout("s", 60), ("POST", "/v1/sandboxes/s/timeout", (), {"timeout": 60})),
        (_calls.get_metrics("s"), ("GET", "/v1/sandboxes/s/metrics", (), None)),
        (_calls.list_commands("s"), ("GET", "/v1/sandboxes/s/commands", (), None)),
        (_calls.attach_command("s", 7), ("GET", "/v1/sandboxes/s/commands/7/stream", (), None)),
        (
            _calls.send_stdin("s", 7, b"hi\n"),
            ("POST", "/v1/sandboxes/s/commands/7/stdin", (), {"data": "hi\n", "eof": False}),
        ),
        (
            _calls.send_stdin("s", 7, "", eof=True),
            ("POST", "/v1/sandboxes/s/commands/7/stdin", (), {"data": "", "eof": True}),
        ),
        (
            _calls.signal_command("s", 7),
            ("POST", "/v1/sandboxes/s/commands/7/signal", (), {"signal": "SIGKILL"}),
        ),
        (_calls.read_file("s", "/a b"), ("GET", "/v1/sandboxes/s/files", (("path", "/a b"),), None)),
        (
            _calls.read_file("s", "x", user="root"),
            ("GET", "/v1/sandboxes/s/files", (("path", "x"), ("user", "root")), None),
        ),
        (_calls.write_file("s", "x"), ("PUT", "/v1/sandboxes/s/files", (("path", "x"),), None)),
        (_calls.remove_file("s", "x"), ("DELETE", "/v1/sandboxes/s/files", (("path", "x"),), None)),
        (
            _calls.list_dir("s", "/d", 2),
            ("GET", "/v1/sandboxes/s/files/list", (("path", "/d"), ("depth", "2")), None),
        ),
        (_calls.stat("s", "x"), ("GET", "/v1/sandboxes/s/files/stat", (("path", "x"),), None)),
        (_calls.exists("s", "x"), ("GET", "/v1/sandboxes/s/files/stat", (("path", "x"),), None)),
        (_calls.make_dir("s", "/d"), ("POST", "/v1/sandboxes/s/files/mkdir", (), {"path": "/d"})),
        (
            _calls.rename("s", "a", "b", user="u"),
            ("POST", "/v1/sandboxes/s/files/move", (), {"src": "a", "dst": "b", "user": "u"}),
        ),
        (_calls.create_key("ci"), ("POST", "/v1/keys", (), {"name": "ci"})),
        (_calls.list_keys(), ("GET", "/v1/keys", (), None)),
        (_calls.revoke_key("k1"), ("DELETE", "/v1/keys/k1", (), None)),
    ],
    ids=lambda v: v.operation if isinstance(v, Call) else "",
)
def test_request_shapes(call: Call[Any], expected: tuple[Any, ...]) -> None:
    assert shape(call) == expected


def test_run_command_body_and_stream_headers() -> None:
    call = _calls.run_command("s", "echo $A", envs={"A": "1"}, user=None, cwd="/tmp", timeout=0, stdin=True)
    assert call.method == "POST" and call.path == "/v1/sandboxes/s/commands"
    assert call.json == {"cmd": "echo $A", "envs": {"A": "1"}, "cwd": "/tmp", "timeout": 0, "stdin": True}
    assert call.headers["Accept"] == "application/x-ndjson"
    assert _calls.run_command("s", "x", timeout=None).json["timeout"] == 0
    assert _calls.run_command("s", "x").json == {"cmd": "x", "timeout": 60, "stdin": False}


def test_write_file_sends_content_length_when_known() -> None:
    assert _calls.write_file("s", "x", size=10).headers["Content-Length"] == "10"
    assert "Content-Length" not in _calls.write_file("s", "x").headers


def test_kill_and_signal_answer_false_for_unknown() -> None:
    assert _calls.kill_sandbox("s").result(204, b"") is True
    assert _calls.kill_sandbox("s").result(404, body({"code": 404, "message": "no"})) is False
    assert _calls.signal_command("s", 1).result(204, b"") is True
    assert _calls.signal_command("s", 1).result(404, b"") is False


def test_is_running_and_exists() -> None:
    assert _calls.is_running("sbx_1").result(200, body(SANDBOX)) is True
    assert _calls.is_running("sbx_1").result(200, body({**SANDBOX, "state": "ended"})) is False
    assert _calls.is_running("sbx_1").result(404, b"") is False
    assert _calls.exists("s", "x").result(200, body(ENTRY)) is True
    assert _calls.exists("s", "x").result(404, b"") is False
    with pytest.raises(InvalidArgumentException):
        _calls.exists("s", "x").result(400, body({"code": 400, "message": "bad path"}))


def test_entry_and_list_parsing() -> None:
    entry = _calls.stat("s", "x").result(200, body(ENTRY))
    assert isinstance(entry, EntryInfo)
    assert entry.type is FileType.FILE and entry.mode == 0o644 and entry.modified_time.tzinfo is not None
    entries = _calls.list_dir("s", "/").result(200, body([ENTRY, {**ENTRY, "type": "dir"}, {**ENTRY, "type": "?"}]))
    assert [e.type for e in entries] == [FileType.FILE, FileType.DIR, FileType.OTHER]


def test_make_dir_and_processes() -> None:
    assert _calls.make_dir("s", "/d").result(200, body({"created": False})) is False
    procs = _calls.list_commands("s").result(
        200, body([{"pid": 3, "cmd": "sleep 1", "tag": None, "cwd": "/", "user": "user"}])
    )
    assert procs == [ProcessInfo(pid=3, cmd="sleep 1", tag=None, cwd="/", user="user")]


def test_metrics_and_e2b_aliases() -> None:
    metrics = _calls.get_metrics("s").result(
        200,
        body(
            {
                "cpu_seconds": 1.5,
                "cpu_count": 2,
                "memory_bytes": 10,
                "memory_limit_bytes": 20,
                "disk_bytes": 30,
                "disk_limit_bytes": 40,
                "pids": 3,
                "oom_kills": 0,
            }
        ),
    )
    assert (metrics.mem_used, metrics.mem_total, metrics.disk_used, metrics.disk_total) == (10, 20, 30, 40)


def test_keys_parsing_keeps_secret_out_of_repr() -> None:
    key = _calls.create_key("ci").result(
        201, body({"id": "k1", "name": "ci", "key": "e2b_" + "a" * 40, "created_at": "2026-11-29T10:00:00"})
    )
    assert key.key == "e2b_" + "a" * 40
    assert "e2b_" not in repr(key)
    assert key.created_at.tzinfo is not None  # naive times are UTC


def test_malformed_answers_are_server_exceptions_naming_the_sandbox() -> None:
    with pytest.raises(ServerException, match="sandbox s: get info: the server's answer is not JSON"):
        _calls.get_sandbox("s").result(200, b"<html>")
    with pytest.raises(ServerException, match="lacks"):
        _calls.get_sandbox("s").result(200, body({"id": "s"}))
    with pytest.raises(ServerException, match="expected a list"):
        _calls.list_dir("s", "/").result(200, body({"not": "a list"}))
    with pytest.raises(ServerException, match="cannot read"):
        _calls.get_sandbox("s").result(200, body({**SANDBOX, "created_at": "yesterday"}))


def test_error_status_maps_even_for_accepting_calls() -> None:
    with pytest.raises(NotFoundException, match=r"sandbox s: read '/x': no such file \(HTTP 404\)"):
        _calls.read_file("s", "/x").result(404, body({"code": 404, "message": "no such file"}))


# --- code interpreter ------------------------------------------------------------------------------


def test_run_code_body_like_docs_api() -> None:
    call = _calls.run_code("s", "x + 1")
    assert shape(call) == (
        "POST",
        "/v1/sandboxes/s/code",
        (),
        {"code": "x + 1", "language": None, "context_id": None, "envs": {}, "timeout": 300},
    )
    assert call.headers["Accept"] == "application/x-ndjson" and call.accept == frozenset({200})
    full = _calls.run_code("s", "echo $A", language="bash", envs={"A": "1"}, timeout=0)
    assert full.json == {"code": "echo $A", "language": "bash", "context_id": None, "envs": {"A": "1"}, "timeout": 0}
    assert _calls.run_code("s", "1", context_id="c/1", timeout=2.5).json["context_id"] == "c/1"
    assert full.operation == "run code (bash)"


def test_run_code_refuses_language_and_context_together() -> None:
    with pytest.raises(InvalidArgumentException, match=r"^sandbox s: run code: give either language or context"):
        _calls.run_code("s", "1", language="python", context_id="c1")


def test_run_code_errors_map_by_status() -> None:
    call = _calls.run_code("s", "1", context_id="c1")
    with pytest.raises(NotFoundException, match=r"^sandbox s: run code in context 'c1': context c1 not found"):
        call.check(404, body({"code": 404, "message": "context c1 not found"}))
    with pytest.raises(InvalidArgumentException, match=r"\(HTTP 400\)$"):
        call.check(400, body({"code": 400, "message": "give either language or context_id, not both"}))


CONTEXT = {"id": "c1", "language": "javascript", "cwd": "/home/user"}


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (_calls.create_context("s"), ("POST", "/v1/sandboxes/s/contexts", (), {})),
        (
            _calls.create_context("s", language="javascript", cwd="/home/user"),
            ("POST", "/v1/sandboxes/s/contexts", (), {"language": "javascript", "cwd": "/home/user"}),
        ),
        (_calls.list_contexts("s"), ("GET", "/v1/sandboxes/s/contexts", (), None)),
        (_calls.restart_context("s", "c 1"), ("POST", "/v1/sandboxes/s/contexts/c%201/restart", (), None)),
        (_calls.remove_context("s", "c1"), ("DELETE", "/v1/sandboxes/s/contexts/c1", (), None)),
    ],
    ids=lambda v: v.operation if isinstance(v, Call) else "",
)
def test_context_request_shapes(call: Call[Any], expected: tuple[Any, ...]) -> None:
    assert shape(call) == expected


def test_context_answers() -> None:
    ctx = _calls.create_context("s", language="javascript").result(201, body(CONTEXT))
    assert (ctx.id, ctx.language, ctx.cwd) == ("c1", "javascript", "/home/user")
    assert [c.id for c in _calls.list_contexts("s").result(200, body([CONTEXT, {**CONTEXT, "id": "c2"}]))] == [
        "c1",
        "c2",
    ]
    assert _calls.restart_context("s", "c1").result(200, body(CONTEXT)) is None
    assert _calls.remove_context("s", "c1").result(204, b"") is None
    with pytest.raises(NotFoundException, match=r"^sandbox s: remove context 'c9'"):
        _calls.remove_context("s", "c9").result(404, body({"code": 404, "message": "context c9 not found"}))
    with pytest.raises(InvalidArgumentException, match="cobol"):
        _calls.create_context("s", language="cobol").result(400, body({"code": 400, "message": "unknown cobol"}))
