"""The calls taken ahead of the FastAPI apps (``api/fastpath.py``) answer as the apps' routes do.

A key's first call goes through the app (the key is looked up, then cached); its next calls take
the fast path. Requests the fast path leaves to the app — bodies that do not validate, other
content types, uncached or revoked keys — get the app's answers. envd calls take it with the
sandbox's access token, and go to the envd app with an API key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from conftest import Server

VOLATILE = {"id", "created_at", "expires_at", "access_token"}


@pytest.fixture
def fresh_key(api: httpx.Client, server: Server) -> Iterator[httpx.Client]:
    """A client with a key the server has not seen used yet (its first call is the app's)."""
    created = api.post("/v1/keys", json={"name": "fast-path"}).json()
    with server.client(created["key"]) as client:
        yield client
    api.delete(f"/v1/keys/{created['id']}")


def _stable(answer: dict[str, object], volatile: set[str] = VOLATILE) -> dict[str, object]:
    return {k: v for k, v in answer.items() if k not in volatile}


def _events(
    client: httpx.Client, sandbox_id: str, cmd: str, accept: str | None = None, content_type: str = "application/json"
) -> tuple[str, list[dict[str, object]]]:
    """The content type and events (without the pid) of running ``cmd``."""
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
    body = json.dumps({"cmd": cmd}).encode()
    with client.stream("POST", f"/v1/sandboxes/{sandbox_id}/commands", content=body, headers=headers) as r:
        assert r.status_code == 200, r.read()
        lines = [line for line in r.iter_lines() if line]
        kind = r.headers["content-type"]
    if accept == "text/event-stream":
        lines = [line.removeprefix("data: ") for line in lines]
    return kind, [{k: v for k, v in json.loads(line).items() if k != "pid"} for line in lines]


def test_a_create_is_answered_alike_both_ways(fresh_key: httpx.Client) -> None:
    body = {"timeout": 30, "metadata": {"way": "both"}, "memory_mb": 256}
    first = fresh_key.post("/v1/sandboxes", json=body)  # the app's route: the key is not cached yet
    second = fresh_key.post("/v1/sandboxes", json=body)  # the fast path
    try:
        for r in (first, second):
            assert r.status_code == 201, r.text
            assert r.headers["content-type"] == "application/json"
            assert int(r.headers["content-length"]) == len(r.content)
        one, two = first.json(), second.json()
        assert one.keys() == two.keys()
        assert _stable(one) == _stable(two)
        assert one["metadata"] == {"way": "both"} and one["state"] == "running"
    finally:
        for r in (first, second):
            if r.status_code == 201:
                fresh_key.delete(f"/v1/sandboxes/{r.json()['id']}")


def test_a_command_streams_alike_both_ways(api: httpx.Client, sandbox: str) -> None:
    api.get("/v1/sandboxes").raise_for_status()  # the key is cached
    cmd = "echo out; echo err >&2; exit 3"
    # a +json content type the app reads as JSON and the fast path leaves to it: the app's route
    slow = _events(api, sandbox, cmd, content_type="application/vnd.corral+json")
    fast = _events(api, sandbox, cmd)
    assert fast == slow
    kind, events = fast
    assert kind == "application/x-ndjson"
    assert events[0] == {"type": "start"} and events[-1]["type"] == "exit" and events[-1]["exit_code"] == 3
    assert {"type": "stdout", "data": "out\n"} in events and {"type": "stderr", "data": "err\n"} in events
    sse_kind, sse_events = _events(api, sandbox, cmd, accept="text/event-stream")
    assert sse_kind.startswith("text/event-stream") and sse_events == events


def test_bodies_it_leaves_to_the_app_get_the_apps_answers(api: httpx.Client, sandbox: str) -> None:
    api.get("/v1/sandboxes").raise_for_status()  # the key is cached: the fast path looks at each
    bad = api.post("/v1/sandboxes", json={"timeout": "soon"})
    assert bad.status_code == 422 and "timeout" in bad.json()["message"]
    for content in (b"", b"{", b"[]", b"null", b"\xff\xfe"):
        r = api.post("/v1/sandboxes", content=content, headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["code"] == 422, (content, r.text)
    r = api.post(f"/v1/sandboxes/{sandbox}/commands", json={"cwd": "/"})
    assert r.status_code == 422 and "cmd" in r.json()["message"]
    r = api.post(f"/v1/sandboxes/{sandbox}/commands", json={"cmd": "true", "timeout": "long"})
    assert r.status_code == 422 and "timeout" in r.json()["message"]
    # a JSON body sent as text: the app does not read it as JSON, so the body is missing
    r = api.post("/v1/sandboxes", content=b'{"timeout": 30}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 422 and r.json()["code"] == 422


def test_errors_of_the_work_itself_are_the_apps_json_errors(api: httpx.Client, sandbox: str) -> None:
    api.get("/v1/sandboxes").raise_for_status()
    cases = [
        ("/v1/sandboxes", {"template": "no-such-template"}, 404, "no-such-template"),
        ("/v1/sandboxes", {"timeout": 0}, 400, "timeout"),
        ("/v1/sandboxes", {"network": "sideways"}, 400, "network"),
        ("/v1/sandboxes/nosuchsandbox000000/commands", {"cmd": "true"}, 404, "nosuchsandbox000000"),
        (f"/v1/sandboxes/{sandbox}/commands", {"cmd": "true", "cwd": "/no/such/dir"}, 400, "/no/such/dir"),
        (f"/v1/sandboxes/{sandbox}/commands", {"cmd": "true", "timeout": -1}, 400, "timeout"),
    ]
    for path, body, status, named in cases:
        r = api.post(path, json=body)
        assert r.status_code == status, (path, body, r.text)
        assert r.json()["code"] == status and named in r.json()["message"], (path, body, r.text)


def test_a_deeply_nested_body_gets_the_apps_error(api: httpx.Client, sandbox: str) -> None:
    api.get("/v1/sandboxes").raise_for_status()
    for path in ("/v1/sandboxes", f"/v1/sandboxes/{sandbox}/commands", "/sandboxes"):
        for content in (b"[" * 100_000, b'{"metadata": ' + b"[" * 100_000):
            r = api.post(path, content=content, headers={"Content-Type": "application/json"})
            assert 400 <= r.status_code < 500 and r.json()["code"] == r.status_code, (path, r.text)


def test_a_key_revoked_while_the_body_arrives_is_refused(api: httpx.Client, server: Server) -> None:
    created = api.post("/v1/keys", json={"name": "revoked-mid-body"}).json()
    live = len(api.get("/v1/sandboxes").json())
    with server.client(created["key"]) as other:
        assert other.get("/v1/sandboxes").status_code == 200  # checked, now cached

        def body() -> Iterator[bytes]:
            yield b'{"timeout": '
            assert api.delete(f"/v1/keys/{created['id']}").status_code == 204  # the server has the headers
            yield b"30}"

        r = other.post("/v1/sandboxes", content=body(), headers={"Content-Type": "application/json"})
        assert r.status_code == 401, r.text
    assert len(api.get("/v1/sandboxes").json()) == live  # nothing was created


def test_a_body_in_several_chunks_is_read_whole(api: httpx.Client, sandbox: str) -> None:
    api.get("/v1/sandboxes").raise_for_status()
    parts = [b'{"cmd": "echo ', b'chunked", ', b'"timeout": 10}']
    with api.stream("POST", f"/v1/sandboxes/{sandbox}/commands", content=iter(parts),
                    headers={"Content-Type": "application/json"}) as r:
        assert r.status_code == 200
        events = [json.loads(line) for line in r.iter_lines() if line]
    assert {"type": "stdout", "data": "chunked\n"} in [{k: e[k] for k in ("type", "data")} for e in events
                                                        if e["type"] == "stdout"]


def test_keys_without_a_cached_check_or_revoked_are_refused(api: httpx.Client, server: Server) -> None:
    for headers in ({}, {"X-API-Key": "e2b_" + "0" * 40}, {"Authorization": "Bearer nope"}):
        r = httpx.post(f"{server.url}/v1/sandboxes", json={"timeout": 30}, headers=headers)
        assert r.status_code == 401 and r.json()["code"] == 401, (headers, r.text)
    created = api.post("/v1/keys", json={"name": "revoked-on-the-fast-path"}).json()
    with server.client(created["key"]) as other:
        assert other.get("/v1/sandboxes").status_code == 200  # checked, now cached
        assert api.delete(f"/v1/keys/{created['id']}").status_code == 204
        r = other.post("/v1/sandboxes", json={"timeout": 30})
        assert r.status_code == 401, r.text
        r = other.post("/v1/sandboxes/nosuchsandbox000000/commands", json={"cmd": "true"})
        assert r.status_code == 401, r.text


def test_an_e2b_create_is_answered_alike_both_ways(fresh_key: httpx.Client) -> None:
    key = {"X-API-KEY": fresh_key.headers["X-API-Key"]}
    body = {"templateID": "base", "timeout": 30, "metadata": {"way": "e2b"}}
    first = httpx.post(f"{fresh_key.base_url}/sandboxes", json=body, headers=key)  # the app's: not cached yet
    second = httpx.post(f"{fresh_key.base_url}/v2/sandboxes", json=body, headers=key)  # the fast path
    try:
        for r in (first, second):
            assert r.status_code == 201, r.text
            assert r.headers["content-type"] == "application/json"
        one, two = first.json(), second.json()
        assert one.keys() == two.keys()
        volatile = {"sandboxID", "envdAccessToken", "trafficAccessToken", "startedAt", "endAt", "clientID"}
        assert _stable(one, volatile) == _stable(two, volatile)
        bad = httpx.post(f"{fresh_key.base_url}/sandboxes", json={"timeout": "soon"}, headers=key)
        assert bad.status_code == 422 and "timeout" in bad.json()["message"]
    finally:
        for r in (first, second):
            if r.status_code == 201:
                httpx.delete(f"{fresh_key.base_url}/sandboxes/{r.json()['sandboxID']}", headers=key)


def test_envd_calls_are_answered_alike_both_ways(api: httpx.Client, server: Server) -> None:
    created = api.post("/v1/sandboxes", json={"timeout": 60}).json()
    other = api.post("/v1/sandboxes", json={"timeout": 60}).json()
    routing = {"E2b-Sandbox-Id": created["id"], "E2b-Sandbox-Port": "49983"}
    token = {**routing, "X-Access-Token": created["access_token"]}  # the fast path
    key = {**routing, "X-API-Key": server.api_key}  # an API key allowed to use it: the envd app
    calls = [
        ("/filesystem.Filesystem/Stat", {"path": "/etc/hostname"}),
        ("/filesystem.Filesystem/Stat", {"path": "/no/such/file"}),
        ("/filesystem.Filesystem/ListDir", {"path": "/etc", "depth": 1}),
        ("/process.Process/List", {}),
        ("/process.Process/Nope", {}),
    ]
    try:
        for path, body in calls:
            fast = httpx.post(f"{server.url}{path}", json=body, headers=token)
            slow = httpx.post(f"{server.url}{path}", json=body, headers=key)
            assert (fast.status_code, fast.headers["content-type"]) == (slow.status_code, slow.headers["content-type"])
            assert fast.json() == slow.json(), path
        for bad in ("x", "\xe9t\xe9".encode("latin-1"), other["access_token"]):  # any, non-ASCII, another's
            wrong = httpx.post(f"{server.url}/process.Process/List", json={},
                               headers={**routing, "X-Access-Token": bad})
            assert wrong.status_code == 401 and wrong.json()["code"] == 401, (bad, wrong.text)
        e2b = {"X-API-KEY": server.api_key}
        assert httpx.post(f"{server.url}/sandboxes/{created['id']}/pause", headers=e2b).status_code == 204
        paused = httpx.post(f"{server.url}/process.Process/List", json={}, headers=token)
        assert paused.status_code == 502 and "paused" in paused.json()["message"]  # as E2B's edge answers
    finally:
        api.delete(f"/v1/sandboxes/{created['id']}")
        api.delete(f"/v1/sandboxes/{other['id']}")
