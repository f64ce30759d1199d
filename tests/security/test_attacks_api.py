"""Attacks by API callers: another tenant's key, another sandbox's access token, forged file URLs.

Two ordinary (non-admin) keys are made with the admin key's /v1/keys. The victim tenant owns a
native sandbox, an E2B-created one (with its envd access token), a code context and a template
build; the attacker tries every route on them. Each denial has a twin: the owner's same call works.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from sandbox_probe import envd

from conftest import Server, run_command
from corral.api.e2b.envd.access import signature

INTERPRETER_PORT = "49999"


@dataclass
class Tenant:
    key: str
    client: httpx.Client


@dataclass
class Victim:
    tenant: Tenant
    sandbox: str  # native
    e2b_sandbox: str
    token: str  # the E2B sandbox's envd access token
    context: str
    build: str
    template: str


@pytest.fixture(scope="module")
def tenants(server: Server) -> Iterator[tuple[Tenant, Tenant]]:
    made = []
    with server.client() as admin:
        for name in ("victim", "attacker"):
            r = admin.post("/v1/keys", json={"name": name})
            assert r.status_code == 201, r.text
            made.append((r.json()["id"], r.json()["key"]))
        clients = [server.client(key) for _, key in made]
        yield Tenant(made[0][1], clients[0]), Tenant(made[1][1], clients[1])
        for client in clients:
            client.close()
        for key_id, _ in made:
            admin.delete(f"/v1/keys/{key_id}")


@pytest.fixture(scope="module")
def victim(tenants: tuple[Tenant, Tenant]) -> Iterator[Victim]:
    owner = tenants[0]
    api = owner.client
    sandbox = api.post("/v1/sandboxes", json={"timeout": 300}).json()["id"]
    created = api.post("/sandboxes", json={"templateID": "base", "timeout": 300}).json()
    run_command(api, sandbox, "echo victim-data > /tmp/secret")
    run_command(api, created["sandboxID"], "echo victim-data > /tmp/secret")
    context = api.post(f"/v1/sandboxes/{sandbox}/contexts", json={"language": "bash"}).json()["id"]
    template = f"victim-{sandbox[:8]}"
    build = api.post("/v1/templates", json={"name": template, "dockerfile": "FROM base\nRUN echo built\n"})
    assert build.status_code == 202, build.text
    build_id = build.json()["id"]
    with api.stream("GET", f"/v1/builds/{build_id}/logs") as log:
        for _ in log.iter_lines():
            pass  # follows the build's log to its end
    assert api.get(f"/v1/builds/{build_id}").json()["state"] == "ready"
    yield Victim(owner, sandbox, created["sandboxID"], created["envdAccessToken"], context, build_id, template)
    api.delete(f"/v1/sandboxes/{sandbox}")
    api.delete(f"/v1/sandboxes/{created['sandboxID']}")
    api.delete(f"/v1/templates/{template}")


def _native_calls(v: Victim) -> list[tuple[str, str, dict[str, object]]]:
    s = v.sandbox
    return [
        ("GET", f"/v1/sandboxes/{s}", {}),
        ("GET", f"/v1/sandboxes/{s}/metrics", {}),
        ("POST", f"/v1/sandboxes/{s}/timeout", {"json": {"timeout": 5}}),
        ("POST", f"/v1/sandboxes/{s}/commands", {"json": {"cmd": "cat /tmp/secret"}}),
        ("GET", f"/v1/sandboxes/{s}/commands", {}),
        ("GET", f"/v1/sandboxes/{s}/files", {"params": {"path": "/tmp/secret"}}),
        ("PUT", f"/v1/sandboxes/{s}/files", {"params": {"path": "/tmp/planted"}, "content": b"x"}),
        ("GET", f"/v1/sandboxes/{s}/files/list", {"params": {"path": "/tmp"}}),
        ("GET", f"/v1/sandboxes/{s}/files/stat", {"params": {"path": "/tmp/secret"}}),
        ("POST", f"/v1/sandboxes/{s}/files/mkdir", {"json": {"path": "/tmp/planted-dir"}}),
        ("POST", f"/v1/sandboxes/{s}/files/move", {"json": {"src": "/tmp/secret", "dst": "/tmp/moved"}}),
        ("DELETE", f"/v1/sandboxes/{s}/files", {"params": {"path": "/tmp/secret"}}),
        ("GET", f"/v1/sandboxes/{s}/contexts", {}),
        ("POST", f"/v1/sandboxes/{s}/contexts", {"json": {"language": "bash"}}),
        ("POST", f"/v1/sandboxes/{s}/contexts/{v.context}/restart", {}),
        ("DELETE", f"/v1/sandboxes/{s}/contexts/{v.context}", {}),
        ("POST", f"/v1/sandboxes/{s}/code", {"json": {"code": "cat /tmp/secret", "context_id": v.context}}),
        ("DELETE", f"/v1/sandboxes/{s}", {}),
        # the E2B control plane
        ("GET", f"/sandboxes/{v.e2b_sandbox}", {}),
        ("GET", f"/sandboxes/{v.e2b_sandbox}/metrics", {}),
        ("POST", f"/sandboxes/{v.e2b_sandbox}/timeout", {"json": {"timeout": 5}}),
        ("POST", f"/sandboxes/{v.e2b_sandbox}/connect", {"json": {"timeout": 5}}),
        ("POST", f"/sandboxes/{v.e2b_sandbox}/pause", {}),
        ("DELETE", f"/sandboxes/{v.e2b_sandbox}", {}),
        # builds and templates
        ("GET", f"/v1/builds/{v.build}", {}),
        ("GET", f"/v1/builds/{v.build}/logs", {}),
        ("DELETE", f"/v1/templates/{v.template}", {}),
        ("POST", "/v1/templates", {"json": {"name": v.template, "dockerfile": "FROM base\nRUN echo mine\n"}}),
        ("POST", "/v1/keys", {"json": {"name": "escalate"}}),
        ("GET", "/v1/keys", {}),
    ]


def test_another_tenants_key_cannot_touch_my_sandboxes(tenants: tuple[Tenant, Tenant], victim: Victim) -> None:
    """Attack: a second tenant's valid key calls every route on the first tenant's sandboxes
    (native and E2B control plane: get, metrics, timeout, connect, pause, kill, commands, files,
    code contexts), builds (record, logs), template (delete, overwrite by rebuilding) and the key
    admin routes. All must be refused (404 as if unknown, 403/409 where the name is public) and
    leave the victim's things as they were. Twin: the owner's same reads work afterwards."""
    attacker = tenants[1].client
    for method, path, extra in _native_calls(victim):
        r = attacker.request(method, path, **extra)  # type: ignore[arg-type]
        assert r.status_code in (403, 404, 409), (method, path, r.status_code, r.text[:200])
        assert "victim-data" not in r.text and "built" not in r.text
    listed = attacker.get("/v1/sandboxes", params={"state": "all"}).json()
    assert {victim.sandbox, victim.e2b_sandbox}.isdisjoint(s["id"] for s in listed)
    e2b_listed = attacker.get("/v2/sandboxes").json()
    assert victim.e2b_sandbox not in json.dumps(e2b_listed)
    metrics = attacker.get("/sandboxes/metrics", params={"sandbox_ids": f"{victim.sandbox},{victim.e2b_sandbox}"})
    assert "victim" not in metrics.text and metrics.status_code in (200, 404)
    assert not attacker.get(f"/v1/templates/{victim.template}").json().get("builds")
    # Twin: everything of the victim is intact and the owner still reaches it.
    owner = victim.tenant.client
    assert run_command(owner, victim.sandbox, "cat /tmp/secret; ls /tmp").stdout.startswith("victim-data\n")
    listing = run_command(owner, victim.sandbox, "printf '%s\\n' /tmp/*").stdout  # a glob works on both backends
    assert "/tmp/secret" in listing and "planted" not in listing
    assert owner.get(f"/v1/sandboxes/{victim.sandbox}/contexts").json()[0]["id"] == victim.context
    assert owner.get(f"/v1/builds/{victim.build}").json()["state"] == "ready"
    assert owner.get(f"/sandboxes/{victim.e2b_sandbox}").status_code == 200
    info = owner.get(f"/v1/templates/{victim.template}").json()
    assert info["build_id"] == victim.build and info["builds"]


def test_sandbox_token_is_valid_for_its_sandbox_only(server: Server, tenants: tuple[Tenant, Tenant],
                                                     victim: Victim) -> None:
    """Attack: the attacker's own E2B sandbox comes with an envd access token; sent with the
    victim's sandbox id in `E2b-Sandbox-Id` (envd port and the code-interpreter port), in both token
    headers, plus the attacker's API key in its place, and a file URL signed with that token for the
    victim's sandbox. All must be refused. Twin: the victim's token works on its own sandbox."""
    attacker = tenants[1].client
    created = attacker.post("/sandboxes", json={"templateID": "base", "timeout": 120}).json()
    mine, my_token = created["sandboxID"], created["envdAccessToken"]
    try:
        forged_sig = signature("/tmp/secret", "read", "user", my_token, None)
        attempts = [
            {"X-Access-Token": my_token},
            {"E2B-Traffic-Access-Token": my_token},
            {"X-Access-Token": my_token.upper()},
            {"X-Access-Token": ""},
            {"X-API-Key": tenants[1].key},
            {},
        ]
        for headers in attempts:
            for port in ("49983", INTERPRETER_PORT):
                with envd(server, victim.e2b_sandbox, **headers) as e:
                    e.headers["E2b-Sandbox-Port"] = port
                    for method, path, extra in (
                        ("GET", "/files", {"params": {"path": "/tmp/secret"}}),
                        ("GET", "/envs", {}),
                        ("POST", "/filesystem.Filesystem/ListDir", {"json": {"path": "/tmp"}}),
                        ("POST", "/files", {"params": {"path": "/tmp/planted"}, "content": b"x",
                                            "headers": {"Content-Type": "application/octet-stream"}}),
                        ("GET", "/contexts", {}),
                        ("POST", "/execute", {"json": {"code": "open('/tmp/secret').read()"}}),
                    ):
                        r = e.request(method, path, **extra)  # type: ignore[arg-type]
                        assert r.status_code in (401, 403, 404, 502), (headers, port, path, r.status_code)
                        assert "victim-data" not in r.text
        with envd(server, victim.e2b_sandbox) as e:
            r = e.get("/files", params={"path": "/tmp/secret", "username": "user", "signature": forged_sig})
            assert r.status_code == 401 and "victim-data" not in r.text
            # Twin: a URL signed with the victim's own token, and the token itself, work.
            good = signature("/tmp/secret", "read", "user", victim.token, None)
            r = e.get("/files", params={"path": "/tmp/secret", "username": "user", "signature": good})
            assert r.text == "victim-data\n"
        with envd(server, victim.e2b_sandbox, **{"X-Access-Token": victim.token}) as e:
            assert e.get("/files", params={"path": "/tmp/secret"}).text == "victim-data\n"
            assert "planted" not in e.post("/filesystem.Filesystem/ListDir", json={"path": "/tmp"}).text
        with envd(server, mine, **{"X-Access-Token": my_token}) as e:
            assert e.get("/envs").status_code == 200  # the attacker's token does work on its own sandbox
    finally:
        attacker.delete(f"/v1/sandboxes/{mine}")


def test_revoked_and_malformed_keys_are_refused(server: Server) -> None:
    """Attack: use a key after its revocation, a key differing in case or with whitespace, another
    scheme in Authorization, and a sandbox access token as an API key. All must get 401.
    Twin: the freshly made key works before its revocation."""
    with server.client() as admin:
        made = admin.post("/v1/keys", json={"name": "short-lived"}).json()
        created = admin.post("/sandboxes", json={"templateID": "base", "timeout": 60}).json()
        try:
            key = made["key"]
            with httpx.Client(base_url=server.url, timeout=30) as anon:
                assert anon.get("/v1/sandboxes", headers={"X-API-Key": key}).status_code == 200
                assert admin.delete(f"/v1/keys/{made['id']}").status_code == 204
                for headers in (
                    {"X-API-Key": key}, {"Authorization": f"Bearer {key}"}, {"X-API-Key": key.upper()},
                    {"X-API-Key": f"{server.api_key}x"}, {"X-API-Key": server.api_key[:-1]},
                    {"Authorization": f"Basic {server.api_key}"},
                    {"X-API-Key": created["envdAccessToken"]}, {"X-API-Key": ""},
                ):
                    assert anon.get("/v1/sandboxes", headers=headers).status_code == 401, headers
                    assert anon.post("/v1/sandboxes", headers=headers, json={}).status_code == 401, headers
        finally:
            admin.delete(f"/v1/sandboxes/{created['sandboxID']}")
