"""Shared fixtures: a real Corral server (subprocess, real HTTP, real sandboxes) and leak guards.

The base template is built once into ``/var/lib/corral/templates`` (shared with ``make serve``);
everything else of a test run lives in a fresh data dir that is removed afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from corral.config import Settings
from corral.runtime.bwrap import SHARED_RUNTIME
from corral.runtime.mounts_priv import SPARE_PREFIX
from netlab import DOMAIN, FakeDNS, Lab, lab_leftovers

TEMPLATES = Path(os.environ.get("CORRAL_TEST_TEMPLATES", "/var/lib/corral/templates"))
SUBID_BASE = 1_000_000
START_TIMEOUT = 900  # the first run builds the base template
TEST_BACKEND = os.environ.get("CORRAL_TEST_BACKEND") or "bwrap"  # the servers' default isolation (make test-gvisor)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PF_EXITING = 0x4  # linux/sched.h: the task is in do_exit


def sandbox_processes(data_dir: Path | None = None) -> list[int]:
    """Host pids running as a sandbox id (uid in the shifted range), of one server (by its data dir:
    in its cgroups, whatever their uid, or naming its run dir) or of all. Zombies don't count: an orphaned one waits for
    the host's init to reap it, which may lag, and can no longer run. Nor do processes already in their exit
    (PF_EXITING): a killed sandbox's pid 1 stays there, sleeping, until the host's init has reaped the rest of
    its pid namespace (orphans once a crashed server's zygote is gone)."""
    marks = [f"/corral/{Settings(data_dir=data_dir).instance}/", f"{data_dir}.run/"] if data_dir else []
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            uid = entry.stat().st_uid
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            state, exiting = fields[0], int(fields[6]) & PF_EXITING
        except (FileNotFoundError, ProcessLookupError):
            continue
        in_cgroups = False
        if marks:
            try:
                groups = (entry / "cgroup").read_text()
                about = groups + (entry / "cmdline").read_text(errors="replace")
            except (FileNotFoundError, ProcessLookupError):
                continue
            if not any(m in about for m in marks):
                continue
            in_cgroups = marks[0] in groups  # gVisor's runsc, gofer and sentry run as root / nobody
        if (in_cgroups or SUBID_BASE <= uid < SUBID_BASE + 65536) and state != "Z" and not exiting:
            pids.append(int(entry.name))
    return pids


def proc_status(proc: Path) -> dict[str, str]:
    try:
        lines = (proc / "status").read_text().splitlines()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def sandbox_init(sandbox_id: str) -> int:
    """Host pid of a bwrap sandbox's pid 1 (the process whose pid namespace it heads). Its
    ``/proc/<pid>/root`` and ``mountinfo`` show the sandbox's files and mounts, which are in no
    namespace of the host's."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and proc_status(proc).get("NSpid", "").split()[-1:] == ["1"]:
            try:
                if f"/{sandbox_id}\n" in (proc / "cgroup").read_text():
                    return int(proc.name)
            except OSError:
                continue
    raise AssertionError(f"no pid 1 of {sandbox_id} on the host")


def sandbox_files(data_dir: Path, sandbox_id: str) -> Path:
    """A sandbox's ``/`` as the host reaches it: bwrap's root is mounted in the sandbox's own mount
    namespace only (reached through its pid 1), gVisor's on the host. Walk it one component at a
    time with ``O_NOFOLLOW``: an absolute symlink inside would resolve against the host's ``/``."""
    if TEST_BACKEND == "gvisor":
        return Settings(data_dir=data_dir, run_dir=Path(f"{data_dir}.run")).mounts_dir / sandbox_id
    return Path(f"/proc/{sandbox_init(sandbox_id)}/root")


def sandbox_disk(data_dir: Path, sandbox_id: str) -> Path:
    """A sandbox's ext4 disk as the host reaches it: gVisor's is mounted on the host; bwrap's in the
    sandbox's own mount namespace, the one bwrap's monitor (the parent of its pid 1) runs in."""
    disk = data_dir / "sandboxes" / sandbox_id / "disk"
    if TEST_BACKEND == "gvisor":
        return disk
    monitor = proc_status(Path(f"/proc/{sandbox_init(sandbox_id)}"))["PPid"]
    return Path(f"/proc/{monitor}/root{disk}")


def loop_devices_of(path: Path, wait: float = 10.0) -> list[str]:
    """Backing files under ``path`` of attached loop devices, once none is left or after ``wait``
    seconds (the kernel releases a sandbox's loop device as its last mount goes, just after)."""
    deadline = time.monotonic() + wait
    while True:
        listed = subprocess.run(["losetup", "--list", "--noheadings", "-O", "BACK-FILE"], capture_output=True,
                                text=True).stdout.splitlines()
        found = [f.strip() for f in listed if f.strip().startswith(f"{path}/")]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)  # polls the kernel's release, bounded; the result is what is asserted


def corral_cgroups(data_dir: Path | None = None) -> list[str]:
    """Sandbox cgroups on the host: of one server (by its data dir), or of every Corral server."""
    instance = Settings(data_dir=data_dir).instance if data_dir else "*"
    found = []
    root = Path("/sys/fs/cgroup")
    for group in [*root.glob(f"*/corral/{instance}"), *root.glob(f"corral/{instance}")]:
        if group.is_dir():
            found += [f"{group}/{p.name}" for p in group.iterdir() if p.is_dir()]
    return found


def mounts_under(path: Path) -> list[str]:
    """Mounts below a data dir or its run dir (``<data>.run``, where sandbox roots are mounted)."""
    prefixes = (str(path).rstrip("/") + "/", f"{str(path).rstrip('/')}.run/")
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefixes)]


def sandbox_mounts(path: Path) -> list[str]:
    """``mounts_under`` less what a running server keeps for all sandboxes: its spare disks
    (runtime/spares.py: made ahead, mounted) and its shared runtime (``<mounts dir>/.runtime``).
    They go when the server stops, where the whole ``mounts_under`` must be empty."""
    return [m for m in mounts_under(path) if not is_server_mount(m)]


def is_server_mount(path: str) -> bool:
    """A spare disk or the shared runtime of a server (not any sandbox's)."""
    return f"/sandboxes/{SPARE_PREFIX}" in path or f"/{SHARED_RUNTIME}" in path


def spare_dirs(data_dir: Path) -> list[Path]:
    sandboxes = data_dir / "sandboxes"
    return sorted(p for p in sandboxes.iterdir() if p.name.startswith(SPARE_PREFIX)) if sandboxes.is_dir() else []


def net_leftovers(data_dir: Path) -> list[str]:
    """This server's veths and nftables table still on the host (both must go when it stops)."""
    instance = Settings(data_dir=data_dir).instance
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    veths = [w.split("@")[0] for w in links.split() if w.startswith(f"crl{instance[:8]}")]
    tables = subprocess.run(["nft", "list", "tables", "inet"], capture_output=True, text=True).stdout
    return veths + [t for t in tables.split() if t == f"corral_{instance}"]


@dataclass
class Server:
    url: str
    api_key: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, key: str | None = None, timeout: float = 60) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": key or self.api_key}, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def spawn_server(data_dir: Path, api_key: str | None = None, **extra_env: str) -> Server:
    """Start a server process on `data_dir` without waiting for it (see `start_server`)."""
    if os.geteuid() != 0:
        pytest.fail("Corral's integration tests need root (namespaces, cgroups, mounts): run `sudo make test`")
    api_key = api_key or "e2b_" + secrets.token_hex(20)
    port = free_port()
    env = {
        **os.environ, "CORRAL_DATA_DIR": str(data_dir), "CORRAL_PORT": str(port), "CORRAL_HOST": "127.0.0.1",
        "CORRAL_API_KEY": api_key, "CORRAL_TEMPLATES_DIR": str(TEMPLATES),
        "CORRAL_RUN_DIR": f"{data_dir}.run", "CORRAL_BACKEND": TEST_BACKEND,
        "CORRAL_POOL": "off",  # tests that want the warm pool say so (tests/integration/test_pool.py)
        **extra_env,
    }
    log = data_dir.with_name(data_dir.name + ".log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from corral.api.server import serve; serve()"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    return Server(url=f"http://127.0.0.1:{port}", api_key=api_key, data_dir=data_dir, process=proc, log=log)


def start_server(data_dir: Path, api_key: str | None = None, **extra_env: str) -> Server:
    """A server on `data_dir`, once it answers /health (its start-up reconcile is done by then)."""
    server = spawn_server(data_dir, api_key, **extra_env)
    proc = server.process
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{server.log_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # readiness poll of a separate process, not test synchronisation
    server.stop(signal.SIGKILL)
    pytest.fail(f"server not healthy after {START_TIMEOUT}s:\n{server.log_text()[-3000:]}")


def remove_data_dir(data: Path) -> None:
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(f"{data}.run", ignore_errors=True)
    Path(f"{data}.log").unlink(missing_ok=True)


def make_data_dir() -> Path:
    # mode 0700, like any private temp dir: the runtime must work without others reaching it
    return Path(tempfile.mkdtemp(prefix="corral-test-", dir="/var/tmp"))


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    data = make_data_dir()
    srv = start_server(data)
    yield srv
    srv.stop()
    assert mounts_under(data) == [], "server left mounts behind"
    assert loop_devices_of(data) == [], "server left loop devices (sandbox disks) behind"
    assert corral_cgroups(data) == [], "server left cgroups behind"
    assert sandbox_processes(data) == [], "sandbox processes survived the server"
    assert net_leftovers(data) == [], "server left veths or its nftables table behind"
    remove_data_dir(data)


@pytest.fixture
def e2b_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """Point the official E2B SDK at the session's server, as a user would (environment variables):
    plain HTTP, header routing, the server's key."""
    monkeypatch.setenv("E2B_API_URL", server.url)
    monkeypatch.setenv("E2B_SANDBOX_URL", server.url)
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    return server


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The test-made outside world (tests/netlab.py): fake public, metadata and private hosts."""
    lab = Lab().start()
    yield lab
    lab.stop()
    assert lab_leftovers() == [], "the lab namespace or its veth survived"


@pytest.fixture(scope="session")
def netserver(lab: Lab) -> Iterator[Server]:
    """A server resolving through a fake DNS (the lab's names), whose operator opened 10.77.1.0/24."""
    fake = FakeDNS().start()
    data = make_data_dir()
    srv = start_server(
        data, CORRAL_NET_DNS=f"127.0.0.1:{fake.port}", CORRAL_NET_ALLOW_PRIVATE="10.77.1.0/24", CORRAL_DOMAIN=DOMAIN
    )
    yield srv
    srv.stop()
    fake.stop()
    assert mounts_under(data) == [] and corral_cgroups(data) == [] and sandbox_processes(data) == []
    assert net_leftovers(data) == [], "server left veths or its nftables table behind"
    remove_data_dir(data)


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture
def sandbox(api: httpx.Client, server: Server) -> Iterator[str]:
    """A fresh sandbox, killed afterwards; asserts its mounts and cgroups are gone."""
    r = api.post("/v1/sandboxes", json={"timeout": 120})
    assert r.status_code == 201, r.text
    sandbox_id = r.json()["id"]
    yield sandbox_id
    address = api.get(f"/v1/sandboxes/{sandbox_id}/network").json().get("address")
    assert api.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    assert leftovers_of(server, sandbox_id, address) == []


def leftovers_of(server: Server, sandbox_id: str, address: str | None = None, within: float = 10.0) -> list[str]:
    """What is left on the host of a killed sandbox (its mounts, cgroups, dir, and the route to
    ``address``, which goes with its veth), once nothing is or after ``within`` seconds: the server
    tears a sandbox down in the background once its processes are gone and the kill returned."""
    deadline = time.monotonic() + within
    while True:
        left = [m for m in mounts_under(server.data_dir) if sandbox_id in m]
        left += [c for c in corral_cgroups() if sandbox_id in c]
        if (server.data_dir / "sandboxes" / sandbox_id).exists():
            left.append(str(server.data_dir / "sandboxes" / sandbox_id))
        if address:
            left += subprocess.run(["ip", "route", "show", address], capture_output=True, text=True).stdout.split("\n")
            left = [x for x in left if x]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)  # polls the server's background teardown, bounded; the result is asserted


def sandbox_address(api: httpx.Client, sandbox_id: str) -> str:
    r = api.get(f"/v1/sandboxes/{sandbox_id}/network")
    assert r.status_code == 200, r.text
    return str(r.json()["address"])


@dataclass
class Ran:
    stdout: str
    stderr: str
    exit_code: int
    error: str | None
    events: list[dict[str, object]]


def run_command(api: httpx.Client, sandbox_id: str, cmd: str, **fields: object) -> Ran:
    """Run a command through the REST API and collect its NDJSON event stream."""
    import json

    events: list[dict[str, object]] = []
    with api.stream("POST", f"/v1/sandboxes/{sandbox_id}/commands", json={"cmd": cmd, **fields}) as r:
        assert r.status_code == 200, r.read().decode()
        for line in r.iter_lines():
            if line:
                events.append(json.loads(line))
    out = "".join(str(e["data"]) for e in events if e["type"] == "stdout")
    err = "".join(str(e["data"]) for e in events if e["type"] == "stderr")
    exit_event = events[-1]
    assert exit_event["type"] == "exit", events
    return Ran(out, err, int(exit_event["exit_code"]), exit_event.get("error"), events)  # type: ignore[arg-type]


def run_code(api: httpx.Client, sandbox_id: str, code: str, **fields: object) -> list[dict[str, object]]:
    """Run a cell through the REST API: its events (keepalives left out), ending with end_of_execution."""
    import json

    with api.stream("POST", f"/v1/sandboxes/{sandbox_id}/code", json={"code": code, **fields}, timeout=120) as r:
        assert r.status_code == 200, r.read().decode()
        events = [json.loads(line) for line in r.iter_lines() if line]
    assert events[-1] == {"type": "end_of_execution"}
    return [e for e in events if e["type"] != "keepalive"]


def main_text(events: list[dict[str, object]]) -> str | None:
    """The text of a cell's main result."""
    return next((str(e["text"]) for e in events if e["type"] == "result" and e.get("is_main_result")), None)


@pytest.fixture
def run(api: httpx.Client):  # type: ignore[no-untyped-def]
    def _run(sandbox_id: str, cmd: str, **fields: object) -> Ran:
        return run_command(api, sandbox_id, cmd, **fields)

    return _run
