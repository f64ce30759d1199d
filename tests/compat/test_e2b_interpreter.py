"""E2B code interpreter (sandbox port 49999) against the official ``e2b_code_interpreter`` SDK, unmodified.

The SDK reaches the server through ``E2B_API_URL`` / ``E2B_SANDBOX_URL`` (one port, header routing).
These tests speak the wire protocol directly (status codes, plain-text error bodies, the NDJSON
stream), on a sandbox made through the native API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

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


def test_closing_the_stream_interrupts_the_cell(port: httpx.Client) -> None:
    ctx = port.post("/contexts", json={}).json()["id"]
    lines(port, {"code": "kept = 5", "context_id": ctx})
    with port.stream("POST", "/execute", json={"code": "import time; time.sleep(60)", "context_id": ctx}) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the cell started; now hang up
    started = time.monotonic()
    after = lines(port, {"code": "kept", "context_id": ctx})
    assert next(e for e in after if e["type"] == "result")["text"] == "5"
    assert time.monotonic() - started < 30
