"""Resource exhaustion: a sandbox (or an API client) tries to starve the host and its neighbours.

During every attack three things are measured: the server's `/health` latency (a separate
process probes it every 20 ms on fresh connections; p95 must stay under 100 ms), a neighbouring
sandbox running commands (each must succeed), and the server's resident memory (VmRSS before and
after; it must stay bounded). Figures are printed (`pytest -s`) for docs/security.md.
The 1 GiB stdout flood is `long` (`make test-long`); a 100 MiB flood always runs.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from sandbox_probe import new_sandbox

from conftest import TEST_BACKEND, Server, run_command

HEALTH_P95_LIMIT = 0.100
RSS_GROWTH_LIMIT = 64 << 20
MiB = 1 << 20

# Probes /health on a fresh connection every 20 ms until its stdin closes, then prints latencies.
PROBER = r"""
import json, select, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
request = b"GET /health HTTP/1.1\r\nHost: corral\r\nConnection: close\r\n\r\n"
latencies, failures = [], 0
while not select.select([sys.stdin], [], [], 0.02)[0]:
    started = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(request)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        if not answer.startswith(b"HTTP/1.1 200"):
            failures += 1
    except OSError:
        failures += 1
    latencies.append(time.perf_counter() - started)
print(json.dumps({"latencies": latencies, "failures": failures}))
"""


def rss(server: Server) -> int:
    with open(f"/proc/{server.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


GVISOR = TEST_BACKEND == "gvisor"  # gVisor: a memory or pids limit ends the whole sandbox (docs/gvisor.md)


def until_ended(api: httpx.Client, sandbox_id: str, within: float = 30) -> str:
    """gVisor: poll until the server reports the sandbox ended on its own; returns the reason."""
    deadline = time.monotonic() + within
    while (g := api.get(f"/v1/sandboxes/{sandbox_id}")).status_code == 200:
        assert time.monotonic() < deadline, f"sandbox {sandbox_id} did not end"
        time.sleep(0.05)  # polling the server's view of another process's death
    return str(g.json()["message"])


def until_alive(api: httpx.Client, sandbox_id: str, within: float = 30) -> None:
    """Poll until the sandbox runs a command again (its processes from an attack are being reaped)."""
    deadline = time.monotonic() + within
    while run_command(api, sandbox_id, "echo alive", timeout=10).stdout != "alive\n":
        assert time.monotonic() < deadline, f"sandbox {sandbox_id} did not recover"


@dataclass
class Figures:
    attack: str
    health: list[float] = field(default_factory=list)
    health_failures: int = 0
    neighbour: list[float] = field(default_factory=list)
    rss_before: int = 0
    rss_peak: int = 0
    rss_after: int = 0

    def p(self, q: float, values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def report(self) -> str:
        return (f"{self.attack}: /health n={len(self.health)} p50={self.p(0.5, self.health) * 1000:.1f}ms "
                f"p95={self.p(0.95, self.health) * 1000:.1f}ms max={max(self.health, default=0) * 1000:.1f}ms "
                f"failures={self.health_failures}; neighbour n={len(self.neighbour)} "
                f"max={max(self.neighbour, default=0) * 1000:.0f}ms; server RSS {self.rss_before / MiB:.0f}"
                f"→{self.rss_peak / MiB:.0f} (peak)→{self.rss_after / MiB:.0f} MiB")


@pytest.fixture(scope="module")
def neighbour(server: Server) -> Iterator[str]:
    with server.client() as api:
        sandbox_id = new_sandbox(api, timeout=600)
        yield sandbox_id
        api.delete(f"/v1/sandboxes/{sandbox_id}")


def under_attack(server: Server, neighbour: str, name: str, attack: Callable[[], object]) -> Figures:
    """Run `attack` in a thread; meanwhile probe /health (separate process) and run commands in
    `neighbour` until the attack ends. Asserts the three bounds and returns the figures."""
    figures = Figures(name, rss_before=rss(server))
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    prober = subprocess.Popen([sys.executable, "-c", PROBER, host, port], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    outcome: list[BaseException] = []

    def attack_thread() -> None:
        try:
            attack()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attack_thread)
    thread.start()
    try:
        with server.client() as api:
            while True:
                done = not thread.is_alive()
                started = time.perf_counter()
                ran = run_command(api, neighbour, "echo alive", timeout=30)
                figures.neighbour.append(time.perf_counter() - started)
                assert ran.stdout == "alive\n", ran
                figures.rss_peak = max(figures.rss_peak, rss(server))
                if done:
                    break
    finally:
        thread.join()
        out, _ = prober.communicate("")
    probed = json.loads(out)
    figures.health, figures.health_failures = probed["latencies"], probed["failures"]
    figures.rss_after = rss(server)
    print(figures.report())
    if outcome:
        raise outcome[0]
    assert figures.health_failures == 0, figures.report()
    assert figures.p(0.95, figures.health) < HEALTH_P95_LIMIT, figures.report()
    assert figures.rss_after - figures.rss_before < RSS_GROWTH_LIMIT, figures.report()
    assert figures.rss_peak - figures.rss_before < 2 * RSS_GROWTH_LIMIT, figures.report()
    return figures


def test_fork_bomb(api: httpx.Client, server: Server, neighbour: str) -> None:
    """Attack: a bash fork bomb for 4 s. The pids cgroup stops it; the server, the neighbour
    and (after the command's timeout kills its process group) the attacker itself keep working."""
    sid = new_sandbox(api, timeout=120)
    try:
        def bomb() -> None:
            r = run_command(api, sid, "bomb() { bomb | bomb & }; bomb; sleep 60", timeout=4)
            # bwrap: its timeout kills it, or (when the bomb fills the task limit before the agent starts
            # the thread that serves it) it is killed at once; gVisor: the host limit ends the sandbox
            ends = ("not reachable",) if GVISOR else ("timed out", "killed: no thread left to serve it")
            assert r.error and any(end in r.error for end in ends), r
        under_attack(server, neighbour, "fork bomb", bomb)
        if GVISOR:  # the host pids limit ended the sandbox (gVisor enforces none of its own)
            assert "failed" in until_ended(api, sid)
            return
        until_alive(api, sid)
        deadline = time.monotonic() + 30  # the killed bomb's processes are being reaped: none survives
        while api.get(f"/v1/sandboxes/{sid}/metrics").json()["pids"] >= 16:
            assert time.monotonic() < deadline, "fork bomb processes survived the group kill"
    finally:
        api.delete(f"/v1/sandboxes/{sid}")


def test_memory_bomb(api: httpx.Client, server: Server, neighbour: str) -> None:
    """Attack: allocate and touch memory without end in a 256 MiB sandbox, over and over for 2 s.
    The memory cgroup kills it each time; the attacker's next command works."""
    sid = new_sandbox(api, memory_mb=256, timeout=120)
    try:
        def bomb() -> None:  # again and again for 2 s: one OOM kill is over too fast for a meaningful p95
            end = time.monotonic() + 2
            while time.monotonic() < end:
                r = run_command(api, sid, "python3 -c 'b = []\nwhile True: b.append(bytearray(16 << 20))'")
                if GVISOR:  # no OOM killer in gVisor: the host's ends the sentry, and with it the sandbox
                    assert "out of memory" in until_ended(api, sid)
                    return
                assert r.exit_code == 137 and "out of memory" in (r.error or "")
        under_attack(server, neighbour, "memory bomb", bomb)
        if GVISOR:
            return
        assert run_command(api, sid, "echo alive").stdout == "alive\n"
    finally:
        api.delete(f"/v1/sandboxes/{sid}")


def test_disk_fill_and_inode_exhaustion(api: httpx.Client, server: Server, neighbour: str) -> None:
    """Attack: fill a 64 MiB disk with one big file, then with empty files until no inode is left.
    Both end in ENOSPC inside the sandbox; the host's filesystem loses at most the image size."""
    sid = new_sandbox(api, disk_mb=64, timeout=120)
    try:
        def fill() -> None:
            r = run_command(api, sid, "dd if=/dev/zero of=/home/user/fill bs=1M 2>&1; echo rc=$?")
            assert "No space left" in r.stdout and "rc=1" in r.stdout
            r = run_command(api, sid, "rm /home/user/fill; mkdir /home/user/many && cd /home/user/many && python3 -c '"
                            "import itertools, os\nfor n in itertools.count():\n    try:\n        open(str(n), \"w\")"
                            "\n    except OSError as e:\n        print(n, e.errno); break'", timeout=60)
            count, err = r.stdout.split()
            assert err == "28" and int(count) > 1000  # ENOSPC: out of inodes
        under_attack(server, neighbour, "disk fill + inode exhaustion", fill)
        r = run_command(api, sid, "rm -rf /home/user/many && echo alive > /home/user/ok && cat /home/user/ok")
        assert r.stdout == "alive\n"
    finally:
        api.delete(f"/v1/sandboxes/{sid}")


def test_threads_and_processes(api: httpx.Client, server: Server, neighbour: str) -> None:
    """Attack: start threads until the kernel refuses (over and over for 2 s). Threads count
    against the pids cgroup, which stops them."""
    sid = new_sandbox(api, timeout=120)
    limit = 0
    try:
        def spawn() -> None:
            nonlocal limit
            code = ("import threading, os\nn = 0\nev = threading.Event()\ntry:\n"
                    "    while True:\n        threading.Thread(target=ev.wait).start(); n += 1\n"
                    "except RuntimeError:\n    print(n, flush=True)\nos._exit(0)")
            end = time.monotonic() + 2  # again and again for 2 s, so that p95 has samples enough
            while time.monotonic() < end:
                r = run_command(api, sid, f"python3 -c '{code}'", timeout=60)
                if GVISOR:  # each thread is a host stub task: the host pids limit ends the sandbox
                    assert "failed" in until_ended(api, sid)
                    return
                limit = int(r.stdout.split()[0])
        under_attack(server, neighbour, "threads", spawn)
        if GVISOR:
            return
        assert 0 < limit < 4096
        assert run_command(api, sid, "echo alive").stdout == "alive\n"
    finally:
        api.delete(f"/v1/sandboxes/{sid}")


def _flood(api: httpx.Client, sid: str, size: int) -> int:
    """Print `size` bytes in the sandbox and read them all through the API; returns bytes seen."""
    seen = 0
    with api.stream("POST", f"/v1/sandboxes/{sid}/commands",
                    json={"cmd": f"head -c {size} /dev/zero | tr '\\0' x"}, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith('{"type":"stdout"') or line.startswith('{"type": "stdout"'):
                seen += len(json.loads(line)["data"])
    return seen


def test_stdout_flood_100_mib(api: httpx.Client, server: Server, neighbour: str) -> None:
    """Attack: 100 MiB on stdout, read by the caller. The server forwards it as it comes and never
    holds it: RSS stays bounded, /health stays fast."""
    sid = new_sandbox(api, timeout=300)
    try:
        seen: list[int] = []
        under_attack(server, neighbour, "stdout flood 100 MiB", lambda: seen.append(_flood(api, sid, 100 * MiB)))
        assert seen == [100 * MiB]
    finally:
        api.delete(f"/v1/sandboxes/{sid}")


@pytest.mark.long
def test_stdout_flood_1_gib(api: httpx.Client, server: Server, neighbour: str) -> None:
    """Attack: the same with 1 GiB (opt-in: `make test-long`)."""
    sid = new_sandbox(api, timeout=900)
    try:
        seen: list[int] = []
        under_attack(server, neighbour, "stdout flood 1 GiB", lambda: seen.append(_flood(api, sid, 1024 * MiB)))
        assert seen == [1024 * MiB]
    finally:
        api.delete(f"/v1/sandboxes/{sid}")


def test_stdout_flood_to_a_caller_that_stops_reading(api: httpx.Client, server: Server, neighbour: str) -> None:
    """Attack: an endless stdout flood whose caller reads 1 MiB and then stops reading while the
    neighbour runs commands: the server must not buffer the unread output (back-pressure reaches
    the sandbox's pipe). Twin: the caller's first MiB did arrive."""
    sid = new_sandbox(api, timeout=120)
    try:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": server.api_key}, timeout=60) as slow, \
                slow.stream("POST", f"/v1/sandboxes/{sid}/commands", json={"cmd": "yes flood"}) as r:
                got = 0
                for chunk in r.iter_raw():
                    got += len(chunk)
                    if got > MiB:
                        break

                def stalled() -> None:  # the stream stays open, unread, for 20 neighbour commands
                    with server.client() as other:
                        for _ in range(20):
                            assert run_command(other, neighbour, "true").exit_code == 0

                under_attack(server, neighbour, "stalled flood", stalled)
                assert got > MiB
    finally:
        api.delete(f"/v1/sandboxes/{sid}")


def test_uploads_beyond_the_disk(api: httpx.Client, server: Server, neighbour: str) -> None:
    """Attack: stream 256 MiB uploads into a 64 MiB disk: a PUT with no Content-Length (chunked),
    one announcing its size, and envd's raw POST /files. Each must fail with "disk full" or "too
    large" without the server holding the body; the sandbox keeps working."""
    sid = new_sandbox(api, disk_mb=64, timeout=120)
    try:
        def body() -> Iterator[bytes]:
            block = b"u" * MiB
            for _ in range(256):
                yield block

        def upload() -> None:
            r = api.put(f"/v1/sandboxes/{sid}/files", params={"path": "/home/user/big"}, content=body())
            assert r.status_code == 507, r.text
            host, port = server.url.removeprefix("http://").rsplit(":", 1)
            with socket.create_connection((host, int(port))) as s:  # announces 256 MiB, sends none of it
                s.sendall(f"PUT /v1/sandboxes/{sid}/files?path=/home/user/big HTTP/1.1\r\nHost: corral\r\n"
                          f"X-API-Key: {server.api_key}\r\nContent-Length: {256 * MiB}\r\n\r\n".encode())
                assert s.recv(4096).startswith(b"HTTP/1.1 413")
            token = api.get(f"/sandboxes/{sid}").json().get("envdAccessToken")
            headers = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983", "Content-Type": "application/octet-stream"}
            headers |= {"X-Access-Token": token} if token else {"X-API-Key": server.api_key}
            r = api.post("/files", params={"path": "/home/user/big"}, headers=headers, content=body())
            assert r.status_code == 507, r.text

        under_attack(server, neighbour, "uploads beyond the disk", upload)
        assert run_command(api, sid, "ls /home/user; echo alive").stdout.endswith("alive\n")
    finally:
        api.delete(f"/v1/sandboxes/{sid}")


def test_slowloris_clients(server: Server, neighbour: str) -> None:
    """Attack: 500 connections to the API that send their request headers one byte per round and
    never finish, kept up while the neighbour runs commands. /health must stay fast for everyone
    else and the server's memory bounded."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    partial = b"POST /v1/sandboxes HTTP/1.1\r\nHost: corral\r\nX-API-Key: " + b"e" * 4000
    conns = [socket.create_connection((host, int(port))) for _ in range(500)]
    stop = threading.Event()

    def drip() -> None:
        offset = 0
        while not stop.is_set():
            for c in conns:
                with contextlib.suppress(OSError):
                    c.send(partial[offset % len(partial):][:1])
            offset += 1
            stop.wait(0.05)  # the attacker's pace (one byte per connection every 50 ms)

    dripper = threading.Thread(target=drip)
    dripper.start()
    try:
        def hold() -> None:
            with server.client() as api:
                for _ in range(30):
                    assert run_command(api, neighbour, "true").exit_code == 0

        under_attack(server, neighbour, "slowloris x500", hold)
    finally:
        stop.set()
        dripper.join()
        for c in conns:
            c.close()


@pytest.fixture(scope="module")
def impatient_server() -> Iterator[Server]:
    """A server that gives clients 1.5 s for their request headers (CORRAL_HEADER_TIMEOUT)."""
    from conftest import make_data_dir, remove_data_dir, start_server

    data = make_data_dir()
    srv = start_server(data, CORRAL_HEADER_TIMEOUT="1.5")
    yield srv
    srv.stop()
    remove_data_dir(data)


def _closed_by_server(conn: socket.socket, drip: bytes, pace: float, limit: float) -> float:
    """Send ``drip`` a byte every ``pace`` seconds until the server closes the connection; the
    seconds that took (``limit`` if it never did)."""
    started = time.monotonic()
    offset = 0
    while (elapsed := time.monotonic() - started) < limit:
        readable, _, _ = select.select([conn], [], [], pace)
        if readable:
            try:
                if conn.recv(4096) == b"":
                    return elapsed
            except ConnectionResetError:
                return elapsed
        if drip:
            with contextlib.suppress(OSError):
                conn.send(drip[offset % len(drip):][:1])
            offset += 1
    return limit


def test_slow_headers_are_cut_off_but_slow_bodies_are_not(impatient_server: Server) -> None:
    """Attack: connections that send nothing, or trickle their headers a byte at a time, to hold
    server sockets forever. Each is closed once its headers are 1.5 s late, however steadily it
    trickles; a client whose headers arrive in time but whose body trickles in for longer is served."""
    host, port = impatient_server.url.removeprefix("http://").rsplit(":", 1)
    partial = b"GET /v1/sandboxes HTTP/1.1\r\nHost: corral\r\nX-API-Key: " + b"k" * 200
    with socket.create_connection((host, int(port))) as silent:
        assert 1.0 < _closed_by_server(silent, b"", 0.1, 20) < 15
    with socket.create_connection((host, int(port))) as trickler:
        assert 1.0 < _closed_by_server(trickler, partial, 0.05, 20) < 15
    # the same server answers a request whose JSON body arrives over ~3 s (past the header deadline)
    body = json.dumps({"template": "no-such-template"}).encode()
    with socket.create_connection((host, int(port)), timeout=30) as slow_body:
        slow_body.sendall(
            f"POST /v1/sandboxes HTTP/1.1\r\nHost: corral\r\nX-API-Key: {impatient_server.api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        pace = 3.0 / len(body)
        for i in range(len(body)):
            slow_body.sendall(body[i:i + 1])
            select.select([], [], [], pace)  # the client's pace, not synchronisation
        answer = b""
        while chunk := slow_body.recv(4096):
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 404 Not Found", answer[:300]
    assert b"no-such-template" in rest
