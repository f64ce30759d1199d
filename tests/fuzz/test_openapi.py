"""Schemathesis over the native API's OpenAPI document, against a real server (admin key).

Every operation of ``/openapi.json`` gets generated requests — valid and invalid bodies, query and
path parameters; half of those naming a sandbox use a live one, so calls reach a real agent. The
properties: no server error (5xx), except a 503 saying a runtime or agent failed (documented in
docs/api.md); every error answer is JSON ``{"code": <its status>, "message": <text>}``.

What a case creates (sandboxes, keys, templates) is removed after it, so the server stays small.
Commands and code cells get a timeout of at most a few seconds, so no generated command runs on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import (
    Server,
    corral_cgroups,
    make_data_dir,
    mounts_under,
    remove_data_dir,
    sandbox_processes,
    start_server,
)

EXAMPLES = 15  # per operation (~35 operations): about 500 requests
FEWER = {  # operations whose successful calls start processes or sandboxes (~1 s each)
    "POST /v1/sandboxes": 8,
    "POST /v1/sandboxes/{sandbox_id}/contexts": 5,
    "POST /v1/sandboxes/{sandbox_id}/contexts/{context_id}/restart": 5,
    "POST /v1/templates": 8,
}


@pytest.fixture(scope="module")
def api_server() -> Iterator[Server]:
    data = make_data_dir()
    server = start_server(data)
    yield server
    server.stop()
    assert mounts_under(data) == [] and corral_cgroups(data) == [] and sandbox_processes(data) == []
    remove_data_dir(data)


@pytest.fixture(scope="module")
def live_sandbox(api_server: Server) -> Iterator[Callable[[str], str]]:
    """A function giving a running sandbox of a template (a new one if a generated DELETE killed it)."""
    current: dict[str, str] = {}
    with api_server.client() as api:

        def get(template: str) -> str:
            if template not in current or api.get(f"/v1/sandboxes/{current[template]}").status_code != 200:
                r = api.post("/v1/sandboxes", json={"timeout": 600, "template": template})
                assert r.status_code == 201, r.text
                current[template] = r.json()["id"]
            return current[template]

        yield get
        for sandbox_id in current.values():
            api.delete(f"/v1/sandboxes/{sandbox_id}")


def bound(case: Any) -> None:
    """Cap what a generated command or code cell may take: 0 means no limit to the server."""
    if case.path.endswith(("/commands", "/code")) and case.method.upper() == "POST" and isinstance(case.body, dict):
        timeout = case.body.get("timeout")
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 3:
            case.body["timeout"] = 2


def clean_up(api: httpx.Client, case: Any, response: Any) -> None:
    """Remove what a successful generated call created."""
    method, path = case.method.upper(), case.path
    if method != "POST" or response.status_code not in (201, 202):
        return
    created = response.json()
    if path == "/v1/sandboxes":
        api.delete(f"/v1/sandboxes/{created['id']}")
    elif path == "/v1/sandboxes/{sandbox_id}/contexts":
        api.delete(f"/v1/sandboxes/{case.path_parameters['sandbox_id']}/contexts/{created['id']}")
    elif path == "/v1/keys":
        api.delete(f"/v1/keys/{created['id']}")
    elif path == "/v1/templates":
        with api.stream("GET", f"/v1/builds/{created['id']}/logs") as logs:
            for _ in logs.iter_lines():
                pass
        api.delete(f"/v1/templates/{created['template']}")


def check(case: Any, response: Any) -> None:
    where = f"{case.method.upper()} {case.formatted_path}"
    status = response.status_code
    if status < 400:
        return
    try:
        body = response.json()
    except json.JSONDecodeError:
        raise AssertionError(f"{where}: {status} with a body that is not JSON: {response.text[:300]!r}") from None
    assert isinstance(body, dict) and body.get("code") == status, f"{where}: {status} {body!r:.300}"
    assert isinstance(body.get("message"), str) and body["message"], f"{where}: {status} {body!r:.300}"
    # 503 is documented (docs/api.md) for a runtime failure, e.g. no interpreter in a base sandbox
    assert status < 500 or status == 503, f"{where}: server error {status}: {body['message']}\n{case.as_curl_command()}"


def test_openapi_operations(api_server: Server, live_sandbox: Callable[[str], str]) -> None:
    """Each operation in turn, as its own hypothesis run (shrunk on failure); all failures are reported.
    (schemathesis's lazy pytest loader doesn't work with pytest 9, so operations are driven here.)"""
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{api_server.url}/openapi.json")
    failures: list[str] = []
    operations = 0
    with api_server.client() as api:
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1

            @settings(max_examples=FEWER.get(operation.label, EXAMPLES), deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
            @given(case=operation.as_strategy(), use_live=st.booleans())
            def run(case: Any, use_live: bool) -> None:
                if use_live and "sandbox_id" in (case.path_parameters or {}):
                    interpreter = "/code" in case.path or "/contexts" in case.path
                    case.path_parameters["sandbox_id"] = live_sandbox("code-interpreter" if interpreter else "base")
                bound(case)
                response = case.call(base_url=api_server.url, headers={"X-API-Key": api_server.api_key}, timeout=30)
                clean_up(api, case, response)
                check(case, response)

            try:
                run()
            except Exception as exc:
                details = [str(e) for e in exc.exceptions] if isinstance(exc, BaseExceptionGroup) else [str(exc)]
                failures += [f"{operation.label}: {d}" for d in details]
    print(f"openapi fuzz: {operations} operations in {time.monotonic() - started:.0f}s")
    assert operations >= 30, f"only {operations} operations in the OpenAPI document"
    assert not failures, "\n\n".join(failures)
