"""With CORRAL_DOMAIN set, sandbox ports answer at {port}-{id}.{domain} (wildcard DNS + TLS proxy setup)."""

from __future__ import annotations

import json

import httpx

from conftest import make_data_dir, remove_data_dir, start_server

DOMAIN = "sandboxes.corral.test"


def test_host_names_route_to_envd_and_the_interpreter() -> None:
    data = make_data_dir()
    server = start_server(data, CORRAL_DOMAIN=DOMAIN)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            key = {"X-API-KEY": server.api_key}
            # the control plane answers under any other name, e.g. api.<domain>
            created = http.post("/v2/sandboxes", json={"templateID": "code-interpreter-v1"},
                                headers={**key, "Host": f"api.{DOMAIN}"})
            assert created.status_code == 201, created.text
            sid, token = created.json()["sandboxID"], created.json()["envdAccessToken"]
            envd = {"Host": f"49983-{sid}.{DOMAIN}", "X-Access-Token": token}
            assert http.get("/health", headers=envd).status_code == 204
            listed = http.post("/filesystem.Filesystem/ListDir", json={"path": "/home/user", "depth": 1},
                               headers={**envd, "Content-Type": "application/json"})
            assert listed.status_code == 200 and "entries" in listed.json()
            interp = {"Host": f"49999-{sid}.{DOMAIN}:443", "X-Access-Token": token}
            with http.stream("POST", "/execute", json={"code": "6 * 7"}, headers=interp) as r:
                events = [json.loads(line) for line in r.iter_lines() if line]
            assert any(e.get("text") == "42" for e in events if e["type"] == "result")
            # another sandbox's token opens nothing here; a name under another domain is not routed
            wrong = http.get("/health", headers={"Host": f"49983-{sid}.{DOMAIN}", "X-Access-Token": "nope"})
            assert wrong.status_code == 204  # envd's /health needs no credentials, as on E2B
            assert http.post("/filesystem.Filesystem/ListDir", json={"path": "/"},
                             headers={"Host": f"49983-{sid}.{DOMAIN}", "X-Access-Token": "nope",
                                      "Content-Type": "application/json"}).status_code == 401
            assert http.get("/health", headers={"Host": f"49983-{sid}.elsewhere.test"}).json() == {"status": "ok"}
            assert http.delete(f"/sandboxes/{sid}", headers=key).status_code == 204
    finally:
        server.stop()
        remove_data_dir(data)
