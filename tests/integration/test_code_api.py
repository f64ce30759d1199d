"""Stateful code execution through the REST API: contexts, serialisation, timeouts, death, floods."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Server, main_text, run_code


@pytest.fixture(scope="module")
def ci_sandbox(server: Server) -> Iterator[str]:
    with server.client() as api:
        r = api.post("/v1/sandboxes", json={"template": "code-interpreter", "timeout": 600, "envs": {"SBX": "on"}})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        yield sid
        api.delete(f"/v1/sandboxes/{sid}")


def test_python_state_output_and_result(api: httpx.Client, ci_sandbox: str) -> None:
    run_code(api, ci_sandbox, "x = 41")
    events = run_code(api, ci_sandbox, "print('hi'); x + 1")
    assert [e["text"] for e in events if e["type"] == "stdout"] == ["hi\n"]
    assert main_text(events) == "42"
    assert any(e["type"] == "number_of_executions" for e in events)


def test_errors_are_data(api: httpx.Client, ci_sandbox: str) -> None:
    error = next(e for e in run_code(api, ci_sandbox, "1/0") if e["type"] == "error")
    assert error["name"] == "ZeroDivisionError" and "division by zero" in str(error["traceback"])
    syntax = next(e for e in run_code(api, ci_sandbox, "def (:") if e["type"] == "error")
    assert syntax["name"] == "SyntaxError"


def test_sandbox_and_call_envs(api: httpx.Client, ci_sandbox: str) -> None:
    code = "import os; (os.environ.get('SBX'), os.environ.get('CALL'))"
    assert main_text(run_code(api, ci_sandbox, code, envs={"CALL": "x"})) == "('on', 'x')"
    assert main_text(run_code(api, ci_sandbox, code)) == "('on', None)"


def test_context_crud_and_errors(api: httpx.Client, ci_sandbox: str) -> None:
    base = f"/v1/sandboxes/{ci_sandbox}/contexts"
    ctx = api.post(base, json={"language": "python", "cwd": "/tmp"}).json()
    assert ctx["language"] == "python" and ctx["cwd"] == "/tmp"
    assert ctx["id"] in [c["id"] for c in api.get(base).json()]
    assert main_text(run_code(api, ci_sandbox, "import os; y = 1; os.getcwd()", context_id=ctx["id"])) == "/tmp"
    assert api.post(f"{base}/{ctx['id']}/restart").status_code == 200
    after = run_code(api, ci_sandbox, "y", context_id=ctx["id"])
    assert next(e for e in after if e["type"] == "error")["name"] == "NameError"
    assert api.delete(f"{base}/{ctx['id']}").status_code == 204
    r = api.post(f"/v1/sandboxes/{ci_sandbox}/code", json={"code": "1", "context_id": ctx["id"]})
    assert r.status_code == 404 and ctx["id"] in r.json()["message"]
    r = api.post(f"/v1/sandboxes/{ci_sandbox}/code", json={"code": "1", "context_id": "x", "language": "python"})
    assert r.status_code == 400
    assert api.post(base, json={"language": "cobol"}).status_code == 400


def test_timeout_interrupts_and_keeps_state(api: httpx.Client, ci_sandbox: str) -> None:
    ctx = api.post(f"/v1/sandboxes/{ci_sandbox}/contexts", json={"language": "python"}).json()["id"]
    run_code(api, ci_sandbox, "kept = 7", context_id=ctx)
    started = time.monotonic()
    events = run_code(api, ci_sandbox, "while True: pass", context_id=ctx, timeout=2)
    assert time.monotonic() - started < 15
    assert next(e for e in events if e["type"] == "error")["name"] == "ExecutionTimeout"
    assert main_text(run_code(api, ci_sandbox, "kept", context_id=ctx)) == "7"


def test_kernel_death_is_reported_then_recovered(api: httpx.Client, ci_sandbox: str) -> None:
    ctx = api.post(f"/v1/sandboxes/{ci_sandbox}/contexts", json={"language": "python"}).json()["id"]
    events = run_code(api, ci_sandbox, "import os; os._exit(1)", context_id=ctx)
    assert next(e for e in events if e["type"] == "error")["name"] == "KernelDied"
    assert main_text(run_code(api, ci_sandbox, "1 + 1", context_id=ctx)) == "2"


def test_one_context_serialises_and_contexts_run_in_parallel(server: Server, ci_sandbox: str) -> None:
    with server.client() as api:
        ctxs = [api.post(f"/v1/sandboxes/{ci_sandbox}/contexts", json={"language": "python"}).json()["id"]
                for _ in range(2)]
    spans: dict[str, list[tuple[float, float]]] = {c: [] for c in ctxs}

    def cell(ctx: str) -> None:
        with server.client() as api:
            started = time.monotonic()
            run_code(api, ci_sandbox, "import time; time.sleep(1)", context_id=ctx)
            spans[ctx].append((started, time.monotonic()))

    threads = [threading.Thread(target=cell, args=(c,)) for c in (ctxs[0], ctxs[0], ctxs[1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first, second = sorted(spans[ctxs[0]], key=lambda span: span[1])
    other = spans[ctxs[1]][0]
    assert second[1] - first[1] >= 0.9  # the second cell of one context ran only after the first ended
    assert other[1] < second[1] - 0.3  # the other context ran alongside, not queued behind the first one


def test_huge_output_streams_with_bounded_server_memory(api: httpx.Client, server: Server, ci_sandbox: str) -> None:
    def peak_kib() -> int:
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])

    before = peak_kib()
    total = 0
    code = "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))\n"
    with api.stream("POST", f"/v1/sandboxes/{ci_sandbox}/code", json={"code": code}, timeout=300) as r:
        for line in r.iter_lines():
            event = json.loads(line)
            if event["type"] == "stdout":
                total += len(event["text"])
    assert total == 100 << 20
    assert (peak_kib() - before) / 1024 < 48


def test_a_template_without_the_interpreter_is_a_conflict(api: httpx.Client) -> None:
    """`base` has python3 but no Jupyter kernel: running code there is the caller's mismatch (409, naming
    what is missing), not a server outage (503); the sandbox keeps working."""
    sid = api.post("/v1/sandboxes", json={"template": "base", "timeout": 120}).json()["id"]
    try:
        r = api.post(f"/v1/sandboxes/{sid}/code", json={"code": "1 + 1", "language": "python"})
        assert r.status_code == 409, r.text
        assert "cannot run python code" in r.json()["message"] and "No module named" in r.json()["message"]
        r = api.post(f"/v1/sandboxes/{sid}/contexts", json={"language": "python"})
        assert r.status_code == 409, r.text
        r = api.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "echo still here"})
        assert r.status_code == 200 and "still here" in r.text
    finally:
        api.delete(f"/v1/sandboxes/{sid}")
