"""Sandbox networking: modes, allow/deny policy, the DNS forwarder, always-denied destinations.

Traffic goes only to the test-made lab namespace (fake public, metadata and private hosts), to a
fake DNS on loopback, and to the host's own addresses (which must stay unreachable). Every
"denied" probe has an "allowed" twin in the same sandbox.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from conftest import Server, run_command, sandbox_address
from netlab import DOMAIN, METADATA, PRIVATE_CLOSED, PRIVATE_OPEN, PUBLIC_A, PUBLIC_B, PUBLIC_C

PROBE = r"""
import json, socket, sys, threading, urllib.request
out = {}
def get(url):
    try:
        out[url] = "ok:" + urllib.request.urlopen(url, timeout=3).read().decode().strip()
    except Exception as e:
        out[url] = "fail:" + type(getattr(e, "reason", e)).__name__ + ":" + str(getattr(e, "reason", e))
threads = [threading.Thread(target=get, args=(u,)) for u in sys.argv[1:]]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps(out))
"""


@pytest.fixture
def napi(netserver: Server) -> Iterator[httpx.Client]:
    with netserver.client() as client:
        yield client


def create(api: httpx.Client, **fields: object) -> str:
    r = api.post("/v1/sandboxes", json={"timeout": 120, **fields})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def probe(api: httpx.Client, sandbox_id: str, *urls: str) -> dict[str, str]:
    r = run_command(api, sandbox_id, "python3 -c \"$P\" " + " ".join(urls), envs={"P": PROBE}, timeout=30)
    assert r.exit_code == 0, r.stderr
    return dict(json.loads(r.stdout))


def reached(result: str, host: str) -> bool:
    return result.startswith(f"ok:hello from {host}:")


def test_none_mode_has_no_route(napi: httpx.Client) -> None:
    sid = create(napi, network="none")
    try:
        r = run_command(napi, sid, "ip -o link; echo ---; ip route")
        links, routes = r.stdout.split("---")
        assert [line for line in links.splitlines() if line] and all(": lo:" in x for x in links.splitlines() if x)
        # bwrap's kernel lists no route at all; gVisor's netstack lists its loopback ones: none leaves lo
        assert all(" dev lo " in x for x in routes.splitlines() if x.strip()), routes
        got = probe(napi, sid, f"http://{PUBLIC_A}/")
        assert any(w in got[f"http://{PUBLIC_A}/"].lower() for w in ("unreachable", "no route to host"))
        assert napi.get(f"/v1/sandboxes/{sid}/network").json()["mode"] == "none"
    finally:
        napi.delete(f"/v1/sandboxes/{sid}")


def test_internet_mode_reaches_public_hosts_but_never_metadata_or_closed_private_ranges(napi: httpx.Client) -> None:
    sid = create(napi)
    try:
        urls = [f"http://{h}/" for h in (PUBLIC_A, METADATA, PRIVATE_CLOSED, PRIVATE_OPEN)]
        got = probe(napi, sid, *urls, "http://files.example.com/", "http://metadata.example.com/")
        assert reached(got[f"http://{PUBLIC_A}/"], PUBLIC_A)
        assert reached(got["http://files.example.com/"], PUBLIC_A)
        assert reached(got[f"http://{PRIVATE_OPEN}/"], PRIVATE_OPEN)  # the operator opened 10.77.1.0/24
        for host in (METADATA, PRIVATE_CLOSED):
            assert got[f"http://{host}/"].startswith("fail:"), got
        assert got["http://metadata.example.com/"].startswith("fail:")  # resolving it does not open it
    finally:
        napi.delete(f"/v1/sandboxes/{sid}")


def test_allow_list_lets_only_allowed_names_cidrs_and_ports_through(napi: httpx.Client) -> None:
    sid = create(napi, allow_out=["files.example.com", "*.example.org:80", "10.77.1.0/24:8080"])
    try:
        got = probe(
            napi, sid, "http://files.example.com/", "http://files.example.com:8080/",
            "http://deep.api.example.org/", "http://deep.api.example.org:8080/", "http://example.org/",
            "http://other.example.net/", f"http://{PUBLIC_C}/", f"http://{PRIVATE_OPEN}:8080/",
            f"http://{PRIVATE_OPEN}/",
        )
        assert reached(got["http://files.example.com/"], PUBLIC_A)
        assert reached(got["http://files.example.com:8080/"], PUBLIC_A)  # no port in the rule: every port
        assert reached(got["http://deep.api.example.org/"], PUBLIC_B)  # wildcard, any depth
        assert "timed out" in got["http://deep.api.example.org:8080/"]  # the rule says :80
        assert "name" in got["http://example.org/"].lower()  # the apex is not under "*.example.org": refused
        assert "name" in got["http://other.example.net/"].lower()
        assert got[f"http://{PUBLIC_C}/"].startswith("fail:")  # not allowed by address either
        assert reached(got[f"http://{PRIVATE_OPEN}:8080/"], PRIVATE_OPEN)
        assert got[f"http://{PRIVATE_OPEN}/"].startswith("fail:")  # the CIDR rule says :8080

        r = run_command(napi, sid, "getent hosts other.example.net; echo $?; getent hosts files.example.com")
        assert r.stdout.splitlines()[0] == "2" and PUBLIC_A in r.stdout  # refused by the forwarder
        queries = napi.get(f"/v1/sandboxes/{sid}/network").json()["dns_queries"]
        answers = {(q["name"], q["type"]): q["answer"] for q in queries}
        assert answers[("other.example.net", "A")] == "refused"
        assert answers[("files.example.com", "A")] == "allowed"
    finally:
        napi.delete(f"/v1/sandboxes/{sid}")


def test_deny_beats_allow(napi: httpx.Client) -> None:
    sid = create(
        napi, allow_out=["files.example.com", "*.example.org", "198.51.100.0/24"],
        deny_out=[PUBLIC_A, "api.example.org"],
    )
    try:
        got = probe(napi, sid, "http://files.example.com/", f"http://{PUBLIC_A}/", f"http://{PUBLIC_C}/",
                    "http://api.example.org/", "http://deep.api.example.org/")
        assert got["http://files.example.com/"].startswith("fail:")  # resolves, but its address is denied
        assert got[f"http://{PUBLIC_A}/"].startswith("fail:")
        assert reached(got[f"http://{PUBLIC_C}/"], PUBLIC_C)  # the rest of the allowed /24
        assert "name" in got["http://api.example.org/"].lower()  # a denied name is refused
        assert reached(got["http://deep.api.example.org/"], PUBLIC_B)
    finally:
        napi.delete(f"/v1/sandboxes/{sid}")


def test_metadata_and_closed_private_hosts_stay_denied_even_when_allowed(napi: httpx.Client) -> None:
    sid = create(napi, allow_out=["169.254.0.0/16", "10.0.0.0/8", "metadata.example.com", "private.example.com"])
    try:
        got = probe(napi, sid, f"http://{METADATA}/", f"http://{PRIVATE_CLOSED}/", f"http://{PRIVATE_OPEN}/",
                    "http://metadata.example.com/", "http://private.example.com/")
        assert reached(got[f"http://{PRIVATE_OPEN}/"], PRIVATE_OPEN)  # opened by the operator and the policy
        for url in (f"http://{METADATA}/", f"http://{PRIVATE_CLOSED}/", "http://metadata.example.com/",
                    "http://private.example.com/"):
            assert got[url].startswith("fail:"), (url, got[url])
    finally:
        napi.delete(f"/v1/sandboxes/{sid}")


def test_policy_update_on_a_running_sandbox_takes_effect(napi: httpx.Client) -> None:
    sid = create(napi, allow_out=["files.example.com"])
    try:
        got = probe(napi, sid, "http://files.example.com/", f"http://{PUBLIC_B}/")
        assert reached(got["http://files.example.com/"], PUBLIC_A) and got[f"http://{PUBLIC_B}/"].startswith("fail:")
        r = napi.put(f"/v1/sandboxes/{sid}/network", json={"allow_out": [PUBLIC_B]})
        assert r.status_code == 200, r.text
        assert r.json()["allow_out"] == [PUBLIC_B] and r.json()["mode"] == "allowlist"
        got = probe(napi, sid, "http://files.example.com/", f"http://{PUBLIC_A}/", f"http://{PUBLIC_B}/")
        assert reached(got[f"http://{PUBLIC_B}/"], PUBLIC_B)
        assert "name" in got["http://files.example.com/"].lower()
        assert got[f"http://{PUBLIC_A}/"].startswith("fail:")  # the address learnt before is forgotten
        r = napi.put(f"/v1/sandboxes/{sid}/network", json={"network": "internet"})
        assert r.status_code == 200 and r.json()["mode"] == "internet"
        assert reached(probe(napi, sid, f"http://{PUBLIC_C}/")[f"http://{PUBLIC_C}/"], PUBLIC_C)
        r = napi.put(f"/v1/sandboxes/{sid}/network", json={"allow_out": [PUBLIC_B]})  # and closed again
        assert r.status_code == 200 and r.json()["mode"] == "allowlist"
        got = probe(napi, sid, f"http://{PUBLIC_B}/", f"http://{PUBLIC_C}/")
        assert reached(got[f"http://{PUBLIC_B}/"], PUBLIC_B) and got[f"http://{PUBLIC_C}/"].startswith("fail:")
    finally:
        napi.delete(f"/v1/sandboxes/{sid}")


def test_update_of_an_unnetworked_sandbox_and_bad_rules_are_json_errors(napi: httpx.Client) -> None:
    bad = napi.post("/v1/sandboxes", json={"allow_out": ["not a rule!"]})
    assert bad.status_code == 400 and "allow_out" in bad.json()["message"]
    assert napi.post("/v1/sandboxes", json={"network": "wifi"}).status_code == 400
    sid = create(napi, network="none")
    try:
        r = napi.put(f"/v1/sandboxes/{sid}/network", json={"allow_out": [PUBLIC_A]})
        assert r.status_code == 409 and sid in r.json()["message"]
    finally:
        napi.delete(f"/v1/sandboxes/{sid}")


def _host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    return sorted({line.split()[3].split("/")[0] for line in out.splitlines()} - {"127.0.0.1"})


def test_host_services_are_unreachable_on_every_host_address(napi: httpx.Client, netserver: Server) -> None:
    listener = socket.create_server(("0.0.0.0", 0))  # a host service on every address
    port = listener.getsockname()[1]
    listener.setblocking(False)
    api_port = int(netserver.url.rsplit(":", 1)[1])
    sid = create(napi)
    try:
        address = sandbox_address(napi, sid)
        gateway = address.rsplit(".", 1)[0] + ".1"
        hosts = [gateway, *_host_addresses()]
        urls = [f"http://{h}:{p}/" for h in hosts for p in (port, api_port)] + [f"http://127.0.0.1:{api_port}/"]
        got = probe(napi, sid, *urls, f"http://{PUBLIC_A}/")
        assert reached(got[f"http://{PUBLIC_A}/"], PUBLIC_A)  # the sandbox does have a network
        for url in urls:
            assert got[url].startswith("fail:"), (url, got[url])
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing got through
        r = run_command(napi, sid, "getent hosts files.example.com")
        assert PUBLIC_A in r.stdout  # DNS on the gateway is the one thing the host answers
    finally:
        napi.delete(f"/v1/sandboxes/{sid}")
        listener.close()


def test_another_sandbox_is_unreachable(napi: httpx.Client) -> None:
    server_sid, client_sid = create(napi), create(napi)
    try:
        serve(napi, server_sid, 8000)
        target = sandbox_address(napi, server_sid)
        assert reached(probe(napi, server_sid, "http://127.0.0.1:8000/")["http://127.0.0.1:8000/"], "127.0.0.1")
        got = probe(napi, client_sid, f"http://{target}:8000/", f"http://{PUBLIC_A}/")
        assert got[f"http://{target}:8000/"].startswith("fail:")
        assert reached(got[f"http://{PUBLIC_A}/"], PUBLIC_A)
    finally:
        napi.delete(f"/v1/sandboxes/{server_sid}")
        napi.delete(f"/v1/sandboxes/{client_sid}")


SERVE = r"""
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host, port = self.connection.getsockname()[:2]
        body = f"hello from {host}:{port} path {self.path}\n".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
server = http.server.HTTPServer((sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0", int(sys.argv[1])), H)
if os.fork():
    os._exit(0)  # listening before the command returns: no waiting needed
os.setsid()
server.serve_forever()
"""


def serve(api: httpx.Client, sandbox_id: str, port: int, host: str = "0.0.0.0") -> None:
    """Start an HTTP server on ``host``:``port`` in the sandbox; returns once it listens."""
    cmd = f"python3 -c \"$SERVE\" {port} {host} </dev/null >/dev/null 2>&1"
    assert run_command(api, sandbox_id, cmd, envs={"SERVE": SERVE}).exit_code == 0


# The templates have no pip: fetch pip's wheel from the index (PEP 691 JSON) and run pip from it.
GET_PIP = r"""
import json, urllib.request
req = urllib.request.Request("https://pypi.org/simple/pip/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
wheels = [f for f in files if f["filename"].endswith("-py3-none-any.whl") and not f.get("yanked")]
url = wheels[-1]["url"]
open("/tmp/pip.whl", "wb").write(urllib.request.urlopen(url, timeout=120).read())
"""


def test_pip_install_works_in_internet_mode(api: httpx.Client) -> None:
    """The default server resolves through the host's resolver and reaches the package index over
    TLS (the host's CA bundle is trusted inside)."""
    sid = create(api)
    try:
        r = run_command(
            api, sid, "python3 -c \"$GET_PIP\" && python3 /tmp/pip.whl/pip install -q --no-cache-dir "
            "--disable-pip-version-check --target /tmp/pkgs six 2>&1 | tail -3; "
            "PYTHONPATH=/tmp/pkgs python3 -c 'import six; print(six.__name__)'", envs={"GET_PIP": GET_PIP}, timeout=240,
        )
        assert r.stdout.strip().endswith("six"), r.stdout + r.stderr
        queries = api.get(f"/v1/sandboxes/{sid}/network").json()["dns_queries"]
        assert any(q["name"] == "pypi.org" and q["answer"] == "allowed" for q in queries)
    finally:
        api.delete(f"/v1/sandboxes/{sid}")



def test_exposed_ports_answer_through_the_api_with_the_access_token(napi: httpx.Client, netserver: Server) -> None:
    r = napi.post("/v1/sandboxes", json={"timeout": 120})
    sid, token = r.json()["id"], r.json()["access_token"]
    other = napi.post("/v1/sandboxes", json={"timeout": 120, "network": "none"}).json()
    try:
        serve(napi, sid, 8000)
        serve(napi, other["id"], 8000)  # "none" sandboxes expose ports too
        serve(napi, sid, 8002, "127.0.0.1")
        with httpx.Client(base_url=netserver.url, timeout=30) as anon:
            by_path = anon.get(f"/v1/sandboxes/{sid}/ports/8000/some/where", params={"q": "1"},
                               headers={"X-Access-Token": token})
            # the connection arrives from the sandbox's own loopback (bwrap: the server connects inside the
            # sandbox's netns; gVisor: the agent relays it, netstack owns that loopback)
            assert by_path.status_code == 200
            assert by_path.text == "hello from 127.0.0.1:8000 path /some/where?q=1\n"
            by_host = anon.get("/x", headers={"Host": f"8000-{sid}.{DOMAIN}", "X-Access-Token": token})
            assert by_host.status_code == 200 and "path /x" in by_host.text
            by_headers = anon.get("/y", headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "8000",
                                                 "E2B-Traffic-Access-Token": token})
            assert by_headers.status_code == 200 and "path /y" in by_headers.text
            none_mode = anon.get(f"/v1/sandboxes/{other['id']}/ports/8000/",
                                 headers={"X-Access-Token": other["access_token"]})
            assert none_mode.status_code == 200 and "hello from 127.0.0.1:8000" in none_mode.text

            missing = anon.get(f"/v1/sandboxes/{sid}/ports/8000/")
            assert missing.status_code == 401 and sid in missing.json()["message"]
            wrong = anon.get(f"/v1/sandboxes/{sid}/ports/8000/", headers={"X-Access-Token": other["access_token"]})
            assert wrong.status_code == 401
            local = anon.get(f"/v1/sandboxes/{sid}/ports/8002/", headers={"X-Access-Token": token})
            assert local.status_code == 200, local.text  # a server on loopback only is reachable too
            closed = anon.get(f"/v1/sandboxes/{sid}/ports/8001/", headers={"X-Access-Token": token})
            assert closed.status_code == 502 and "8001" in closed.json()["message"]
        assert napi.get(f"/v1/sandboxes/{sid}/ports/8000/").status_code == 200  # an API key that may use it
    finally:
        napi.delete(f"/v1/sandboxes/{sid}")
        napi.delete(f"/v1/sandboxes/{other['id']}")


def test_sdk_network_arguments_and_update_network(netserver: Server) -> None:
    from corral import Sandbox

    fetch = f"python3 -c \"$P\" http://files.example.com/ http://{PUBLIC_B}/"
    with Sandbox.create(timeout=120, allow_out=["files.example.com"], deny_out=[PUBLIC_C],
                        api_url=netserver.url, api_key=netserver.api_key) as sbx:
        got = json.loads(sbx.commands.run(fetch, envs={"P": PROBE}).stdout)
        assert reached(got["http://files.example.com/"], PUBLIC_A) and got[f"http://{PUBLIC_B}/"].startswith("fail:")
        info = sbx.update_network(allow_out=[PUBLIC_B])
        assert info.mode == "allowlist" and info.allow_out == [PUBLIC_B] and info.deny_out == []
        got = json.loads(sbx.commands.run(fetch, envs={"P": PROBE}).stdout)
        assert reached(got[f"http://{PUBLIC_B}/"], PUBLIC_B)
        assert "name" in got["http://files.example.com/"].lower()
        asked = {(q["name"], q["answer"]) for q in sbx.get_network().dns_queries}
        assert ("files.example.com", "allowed") in asked and ("files.example.com", "refused") in asked
    with Sandbox.create(timeout=60, network="none", api_url=netserver.url, api_key=netserver.api_key) as off:
        assert off.get_network().mode == "none" and off.get_network().address is None


def test_any_user_binds_any_port_and_root_cannot_reconfigure_the_network(napi: httpx.Client) -> None:
    """Ports below 1024 need no privilege, as in Docker's containers; the network itself is not sandbox
    root's to change (bwrap: its namespace belongs to a user namespace the sandbox is not in)."""
    bind = "python3 -c 'import socket; s = socket.socket(); s.bind((\"0.0.0.0\", 80)); s.listen(); print(\"bound\")'"
    change = "ip link set lo down 2>&1; ip addr add 10.1.2.3/32 dev lo 2>&1; ip -o link show lo"
    for network in ("internet", "none"):
        sid = create(napi, network=network)
        try:
            assert run_command(napi, sid, bind).stdout.strip() == "bound", network  # as user
            root = run_command(napi, sid, f"{bind}; {change}", user="root")
            lines = root.stdout.splitlines()
            assert lines[0] == "bound", network
            refused = ("RTNETLINK answers: Operation not permitted", "RTNETLINK answers: Permission denied")  # gVisor's
            assert len(lines) == 4 and all(line in refused for line in lines[1:3]), (network, root.stdout)
            assert ",UP," in lines[3], network  # lo still up
        finally:
            napi.delete(f"/v1/sandboxes/{sid}")


def test_loopback_answers_on_ipv6_too(napi: httpx.Client) -> None:
    """``::1`` is on ``lo`` whatever the network, as in a Docker container: servers that listen on
    ``localhost`` (Node resolves it to ``::1`` first) are reachable inside. Other IPv6 stays off."""
    script = ("import socket; s = socket.socket(socket.AF_INET6); s.bind(('::1', 0)); s.listen(); "
              "c = socket.create_connection(('::1', s.getsockname()[1]), timeout=5); a, _ = s.accept(); "
              "c.sendall(b'v6'); print(a.recv(2).decode())")
    for network in ("internet", "none"):
        sid = create(napi, network=network)
        try:
            r = run_command(napi, sid, f'python3 -c "{script}"')
            assert (r.exit_code, r.stdout) == (0, "v6\n"), (network, r.stderr)
            v6 = run_command(napi, sid, "cat /proc/net/if_inet6").stdout.split()
            assert "lo" in v6 and "eth0" not in v6, (network, v6)  # ::1 only: no link-local address outside
        finally:
            napi.delete(f"/v1/sandboxes/{sid}")
