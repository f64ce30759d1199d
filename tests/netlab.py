"""A test-made "outside world" for network tests: a network namespace with fake hosts, and a fake DNS.

``Lab`` builds one netns joined to the host by a veth, gives it the addresses of the fake hosts
(public test ranges, the metadata address, private ranges), routes them from the host, and runs
an HTTP server there on ports 80 and 8080 that answers ``hello from <address>:<port>``.
``FakeDNS`` answers a fixed zone on 127.0.0.1 (used as the server's upstream resolver). Tests
send traffic only to these: nothing leaves the machine.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

PUBLIC_A = "198.51.100.10"  # TEST-NET-2, inside the lab only
PUBLIC_B = "198.51.100.11"
PUBLIC_C = "198.51.100.12"
METADATA = "169.254.169.254"
PRIVATE_OPEN = "10.77.1.10"  # the policy server's operator opens 10.77.1.0/24
PRIVATE_CLOSED = "10.77.2.10"
HOSTS = (PUBLIC_A, PUBLIC_B, PUBLIC_C, METADATA, PRIVATE_OPEN, PRIVATE_CLOSED)
LAB_GATEWAY = "198.51.100.1"  # the host's end of the lab veth
DOMAIN = "sbx.test"  # the policy server's CORRAL_DOMAIN (exposed ports by Host name)

ZONE = {
    "files.example.com": PUBLIC_A,
    "api.example.org": PUBLIC_B,
    "deep.api.example.org": PUBLIC_B,
    "example.org": PUBLIC_B,
    "other.example.net": PUBLIC_C,
    "metadata.example.com": METADATA,
    "private.example.com": PRIVATE_CLOSED,
}

SERVER = r"""
import http.server, socketserver, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host, port = self.connection.getsockname()[:2]
        body = f"hello from {host}:{port}\n".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
servers = [S(("0.0.0.0", p), H) for p in (80, 8080)]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
servers[0].serve_forever()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


_MINE: set[str] = set()  # tags of the labs this test process made (other sessions may share the host)


class Lab:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        _MINE.add(tag)
        self.netns = f"corral-test-{tag}"
        self.veth = f"ctv{tag}"
        self.server: subprocess.Popen[str] | None = None

    def start(self) -> Lab:
        try:
            return self._start()
        except BaseException:  # e.g. another session's lab holds the fake hosts' routes: leave nothing
            self.stop()
            raise

    def _start(self) -> Lab:
        ns, veth = self.netns, self.veth
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
        _ip("link", "set", f"{veth}p", "netns", ns)
        _ip("addr", "add", f"{LAB_GATEWAY}/32", "dev", veth)
        _ip("link", "set", veth, "up")
        inner = ("netns", "exec", ns, "ip")
        _ip(*inner, "link", "set", "lo", "up")
        _ip(*inner, "link", "set", f"{veth}p", "name", "eth0")
        for host in HOSTS:
            _ip(*inner, "addr", "add", f"{host}/32", "dev", "eth0")
            _ip("route", "add", f"{host}/32", "dev", veth)
        _ip(*inner, "link", "set", "eth0", "up")
        _ip(*inner, "route", "add", f"{LAB_GATEWAY}/32", "dev", "eth0")
        _ip(*inner, "route", "add", "default", "via", LAB_GATEWAY)
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True,
        )
        assert self.server.stdout is not None and self.server.stdout.readline().strip() == "ready"
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)


def lab_leftovers() -> list[str]:
    """Lab namespaces and links still on the host (every Lab must remove its own)."""
    netns = [p.name for p in Path("/run/netns").glob("corral-test-*")] if Path("/run/netns").is_dir() else []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found = netns + [w.split("@")[0].rstrip(":") for w in links.split() if w.startswith("ctv")]
    return [name for name in found if name.removeprefix("corral-test-").removeprefix("ctv")[:6] in _MINE]


class FakeDNS:
    """A UDP DNS server on 127.0.0.1 answering ``ZONE`` (A records, TTL 60); NXDOMAIN otherwise."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> FakeDNS:
        self.thread.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            answer = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True).lower()
            if name in ZONE and dns.rdatatype.to_text(question.rdtype) == "A":
                answer.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", ZONE[name]))
            elif name not in ZONE:
                answer.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(answer.to_wire(), addr)

    def stop(self) -> None:
        self.sock.close()
