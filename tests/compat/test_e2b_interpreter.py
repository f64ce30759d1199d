"""E2B code interpreter (sandbox port 49999) against the official ``e2b_code_interpreter`` SDK, unmodified.

The SDK reaches the server through ``E2B_API_URL`` / ``E2B_SANDBOX_URL`` (one port, header routing).
The first tests speak the wire protocol directly (status codes, plain-text error bodies, the NDJSON
stream), on a sandbox made through the native API; the rest drive the SDK, whose sandboxes come
from the E2B control plane (template ``code-interpreter-v1``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
from e2b import InvalidArgumentException, NotFoundException, TimeoutException
from e2b_code_interpreter import AsyncSandbox, Context, OutputMessage, Result, Sandbox

from conftest import Server

PORT = "49999"


# -- the wire protocol, spoken directly -------------------------------------------------------------

@pytest.fixture(scope="module")
def native_sandbox(server: Server) -> Iterator[str]:
    with server.client() as api:
        r = api.post("/v1/sandboxes", json={"template": "code-interpreter", "timeout": 600})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        yield sid
        api.delete(f"/v1/sandboxes/{sid}")


@pytest.fixture
def port(server: Server, native_sandbox: str) -> Iterator[httpx.Client]:
    """An HTTP client for the sandbox's port 49999, as the SDK addresses it (an API key opens it too)."""
    headers = {"E2b-Sandbox-Id": native_sandbox, "E2b-Sandbox-Port": PORT, "X-API-Key": server.api_key}
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as client:
        yield client


def lines(client: httpx.Client, body: dict[str, object]) -> list[dict[str, object]]:
    with client.stream("POST", "/execute", json=body) as r:
        assert r.status_code == 200, r.read().decode()
        return [json.loads(line) for line in r.iter_lines() if line]


def test_health_is_plain_ok(port: httpx.Client) -> None:
    r = port.get("/health")
    assert r.status_code == 200 and r.text == "OK"


def test_execute_streams_ndjson_ending_with_end_of_execution(port: httpx.Client) -> None:
    events = lines(port, {"code": "print('a'); 6 * 7", "context_id": None, "language": None, "env_vars": None})
    kinds = [e["type"] for e in events if e["type"] != "keepalive"]
    assert kinds[0] == "number_of_executions" and kinds[-1] == "end_of_execution"
    assert {"type": "stdout", "text": "a\n"}.items() <= next(e for e in events if e["type"] == "stdout").items()
    result = next(e for e in events if e["type"] == "result")
    assert result["text"] == "42" and result["is_main_result"] is True


def test_language_is_normalised(port: httpx.Client) -> None:
    js = lines(port, {"code": "typeof require", "language": " JS "})
    assert next(e for e in js if e["type"] == "result")["text"] == "function"
    ts = lines(port, {"code": "const n: number = 2; n * 3", "language": "TS"})
    assert next(e for e in ts if e["type"] == "result")["text"] == "6"
    py = lines(port, {"code": "import sys; sys.version_info[0]", "language": ""})
    assert next(e for e in py if e["type"] == "result")["text"] == "3"
    r = port.post("/contexts", json={"language": "Js"})
    assert r.status_code == 200 and r.json()["language"] == "javascript"


def test_env_vars_apply_to_one_execution(port: httpx.Client) -> None:
    code = "import os; os.environ.get('ONLY_HERE')"
    first = lines(port, {"code": code, "env_vars": {"ONLY_HERE": "yes"}})
    assert next(e for e in first if e["type"] == "result")["text"] == "yes"
    after = lines(port, {"code": code})
    assert not [e for e in after if e["type"] == "result"]  # None has no result


def test_errors_are_plain_text(port: httpx.Client) -> None:
    both = port.post("/execute", json={"code": "1", "context_id": "abc", "language": "python"})
    assert both.status_code == 400 and both.headers["content-type"].startswith("text/plain")
    missing = port.post("/execute", json={"code": "1", "context_id": "nosuch"})
    assert missing.status_code == 404 and missing.text == "Context nosuch not found"
    assert missing.headers["content-type"].startswith("text/plain")
    for r in (port.delete("/contexts/nosuch"), port.post("/contexts/nosuch/restart")):
        assert r.status_code == 404 and r.text == "Context nosuch not found"
    bad = port.post("/contexts", json={"language": "cobol"})
    assert bad.status_code == 400 and "cobol" in bad.text and not bad.text.startswith("{")


def test_contexts_crud_wire_shapes(port: httpx.Client) -> None:
    r = port.post("/contexts", json={"cwd": "/tmp"})
    assert r.status_code == 200
    ctx = r.json()
    assert set(ctx) == {"id", "language", "cwd"} and ctx["language"] == "python" and ctx["cwd"] == "/tmp"
    assert port.post("/contexts", json={}).json()["cwd"] == "/home/user"
    listed = port.get("/contexts").json()
    assert ctx["id"] in [c["id"] for c in listed]
    assert {"python", "javascript"} <= {c["language"] for c in listed}  # E2B's defaults are always there
    restarted = port.post(f"/contexts/{ctx['id']}/restart")
    assert restarted.status_code == 200 and restarted.json() is None
    removed = port.delete(f"/contexts/{ctx['id']}")
    assert removed.status_code == 200 and removed.json() is None
    assert ctx["id"] not in [c["id"] for c in port.get("/contexts").json()]


def test_unknown_sandbox_and_missing_token(server: Server, native_sandbox: str) -> None:
    gone = httpx.post(f"{server.url}/execute", json={"code": "1"}, headers={
        "E2b-Sandbox-Id": "nosuchsandbox", "E2b-Sandbox-Port": PORT, "X-Access-Token": "x"})
    assert gone.status_code == 502  # what E2B's edge answers: the SDK raises TimeoutException
    assert gone.json() == {"sandboxId": "nosuchsandbox", "message": "The sandbox was not found", "code": 502}
    denied = httpx.get(f"{server.url}/contexts", headers={
        "E2b-Sandbox-Id": native_sandbox, "E2b-Sandbox-Port": PORT, "X-Access-Token": "wrong"})
    assert denied.status_code == 401 and denied.headers["content-type"].startswith("text/plain")


def test_contexts_belong_to_their_sandbox(server: Server, port: httpx.Client) -> None:
    ctx = port.post("/contexts", json={}).json()["id"]
    with server.client() as api:
        other = api.post("/v1/sandboxes", json={"template": "code-interpreter", "timeout": 60}).json()["id"]
        try:
            headers = {"E2b-Sandbox-Id": other, "E2b-Sandbox-Port": PORT, "X-API-Key": server.api_key}
            r = httpx.post(f"{server.url}/execute", json={"code": "1", "context_id": ctx}, headers=headers)
            assert r.status_code == 404 and r.text == f"Context {ctx} not found"
            assert httpx.delete(f"{server.url}/contexts/{ctx}", headers=headers).status_code == 404
        finally:
            api.delete(f"/v1/sandboxes/{other}")
    assert port.delete(f"/contexts/{ctx}").status_code == 200


def test_closing_the_stream_interrupts_the_cell(port: httpx.Client) -> None:
    ctx = port.post("/contexts", json={}).json()["id"]
    lines(port, {"code": "kept = 5", "context_id": ctx})
    with port.stream("POST", "/execute", json={"code": "import time; time.sleep(60)", "context_id": ctx}) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the cell started; now hang up
    started = time.monotonic()
    after = lines(port, {"code": "kept", "context_id": ctx})
    assert [e["text"] for e in after if e["type"] == "result"] == ["5"], after  # state kept, the cell ran
    assert time.monotonic() - started < 30


# -- the official Python SDK ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def e2b_env(server: Server) -> Iterator[None]:
    """Point the unmodified SDK at this server, as a user would (environment variables only)."""
    saved = {k: os.environ.get(k) for k in ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL", "E2B_DEBUG",
                                             "E2B_DOMAIN")}
    os.environ.update(E2B_API_KEY=server.api_key, E2B_API_URL=server.url, E2B_SANDBOX_URL=server.url)
    os.environ.pop("E2B_DEBUG", None)
    os.environ.pop("E2B_DOMAIN", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def sbx(e2b_env: None) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(timeout=600, envs={"FROM_SANDBOX": "sbx"})  # template code-interpreter-v1
    yield sandbox
    sandbox.kill()


def test_run_code_keeps_state_and_collects_output(sbx: Sandbox) -> None:
    sbx.run_code("x = 1")
    ex = sbx.run_code("print(x); x + 41")
    assert ex.logs.stdout == ["1\n"] and ex.logs.stderr == [] and ex.text == "42" and ex.error is None
    assert ex.execution_count is not None and ex.execution_count >= 2
    stderr = sbx.run_code("import sys; print('oops', file=sys.stderr)")
    assert stderr.logs.stderr == ["oops\n"]


def test_errors_are_data(sbx: Sandbox) -> None:
    ex = sbx.run_code("1/0")
    assert ex.error is not None and ex.error.name == "ZeroDivisionError"
    assert ex.error.value == "division by zero" and "ZeroDivisionError" in ex.error.traceback
    assert ex.results == []
    assert sbx.run_code("def broken(:").error.name == "SyntaxError"
    assert sbx.run_code("1 + 1").text == "2"  # the context survived


def test_rich_results(sbx: Sandbox) -> None:
    table = sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    main = table.results[0]
    assert main.is_main_result and "<table" in (main.html or "") and "a" in (main.text or "")
    assert "html" in main.formats() and "text" in main.formats()
    plot = sbx.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()")
    images = [r for r in plot.results if r.png]
    assert len(images) == 1 and not images[0].is_main_result
    assert base64.b64decode(images[0].png).startswith(b"\x89PNG\r\n\x1a\n")
    shown = sbx.run_code("from IPython.display import display, Markdown\ndisplay(Markdown('**hi**'))\n3")
    assert [r.markdown for r in shown.results if not r.is_main_result] == ["**hi**"] and shown.text == "3"


def test_streaming_callbacks(sbx: Sandbox) -> None:
    out: list[OutputMessage] = []
    err: list[OutputMessage] = []
    results: list[Result] = []
    errors: list[object] = []
    code = ("import sys, time\nprint('one', flush=True)\ntime.sleep(0.3)\nprint('two', file=sys.stderr)\n"
            "from IPython.display import display, HTML\ndisplay(HTML('<b>x</b>'))\n'done'")
    ex = sbx.run_code(code, on_stdout=out.append, on_stderr=err.append, on_result=results.append,
                      on_error=errors.append)
    assert [m.line for m in out] == ["one\n"] and [m.line for m in err] == ["two\n"]
    assert not out[0].error and err[0].error
    assert datetime.fromisoformat(str(out[0].timestamp)).tzinfo is not None  # ISO 8601, as E2B's server sends
    assert [r.html for r in results if r.html] == ["<b>x</b>"] and ex.text == "done"
    assert errors == []
    sbx.run_code("raise ValueError('bad')", on_error=errors.append)
    assert [e.name for e in errors] == ["ValueError"]  # type: ignore[attr-defined]


def test_env_vars(sbx: Sandbox) -> None:
    code = "import os; (os.environ.get('FROM_SANDBOX'), os.environ.get('FROM_CALL'))"
    assert sbx.run_code(code, envs={"FROM_CALL": "call"}).text == "('sbx', 'call')"
    assert sbx.run_code(code).text == "('sbx', None)"


def test_javascript_typescript_and_bash(sbx: Sandbox) -> None:
    js = sbx.create_code_context(language="js")
    assert js.language == "javascript" and js.cwd == "/home/user"
    sbx.run_code("const a = 20", context=js)
    ex = sbx.run_code("console.log('log'); a + 1", context=js)
    assert ex.text == "21" and ex.logs.stdout == ["log\n"]
    assert sbx.run_code("nope()", context=js).error.name == "ReferenceError"
    assert sbx.run_code("const n: number = 4; n * 2", language="ts").text == "8"
    assert sbx.run_code("[1, 2].map(x => x * 2)", language="javascript").text == "[ 2, 4 ]"
    bash = sbx.create_code_context(language="bash", cwd="/tmp")
    sbx.run_code("export GREETING=hello", context=bash)
    ex = sbx.run_code('echo "$GREETING from $(pwd)"', context=bash)
    assert ex.logs.stdout == ["hello from /tmp\n"] and ex.error is None


def test_contexts_list_restart_remove(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context(cwd="/tmp")
    assert ctx.language == "python" and ctx.cwd == "/tmp"
    assert sbx.run_code("import os; os.getcwd()", context=ctx).text == "/tmp"
    listed = sbx.list_code_contexts()
    assert ctx.id in [c.id for c in listed]
    assert {"python", "javascript"} <= {c.language for c in listed}
    sbx.run_code("y = 3", context=ctx)
    sbx.restart_code_context(ctx)
    assert sbx.run_code("y", context=ctx).error.name == "NameError"  # a restart loses the state
    sbx.remove_code_context(ctx.id)
    assert ctx.id not in [c.id for c in sbx.list_code_contexts()]
    with pytest.raises(NotFoundException, match=f"Context {ctx.id} not found"):
        sbx.run_code("1", context=ctx)


def test_unknown_context_is_not_found(sbx: Sandbox) -> None:
    ghost = Context("nosuchcontext", "python", "/home/user")
    with pytest.raises(NotFoundException, match="Context nosuchcontext not found"):
        sbx.run_code("1", context=ghost)
    with pytest.raises(NotFoundException):
        sbx.restart_code_context(ghost)
    with pytest.raises(NotFoundException):
        sbx.remove_code_context("nosuchcontext")
    with pytest.raises(InvalidArgumentException):  # checked by the SDK before any request
        sbx.run_code("1", language="python", context=ghost)  # type: ignore[call-overload]


def test_timeout_interrupts_and_the_context_stays_usable(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context()
    sbx.run_code("kept = 'yes'", context=ctx)
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.run_code("import time; time.sleep(60)", context=ctx, timeout=2)
    assert time.monotonic() - started < 10
    ex = sbx.run_code("kept", context=ctx, timeout=30)  # the hung-up cell was interrupted, state kept
    assert ex.text == "yes"
    assert time.monotonic() - started < 30


def test_code_runs_as_user_in_home(sbx: Sandbox) -> None:
    ex = sbx.run_code("import getpass, os; (getpass.getuser(), os.getcwd())")
    assert ex.text == "('user', '/home/user')"


def test_async_sandbox(e2b_env: None) -> None:
    async def main() -> None:
        sandbox = await AsyncSandbox.create(timeout=120)
        try:
            chunks: list[str] = []
            ex = await sandbox.run_code("for i in range(3): print(i)", on_stdout=lambda m: chunks.append(m.line))
            assert "".join(ex.logs.stdout) == "0\n1\n2\n" and "".join(chunks) == "0\n1\n2\n"
            ctx = await sandbox.create_code_context(language="javascript")
            assert (await sandbox.run_code("1 + 1", context=ctx)).text == "2"
            with pytest.raises(NotFoundException):
                await sandbox.run_code("1", context=Context("nope", "python", "/"))
        finally:
            await sandbox.kill()

    asyncio.run(main())
