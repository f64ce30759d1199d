"""Crash safety under load: the server is killed with SIGKILL at random moments while creates,
commands, uploads (native and envd) and template builds are in flight, then restarted on the same
data dir, round after round.

Each round: start the server; check what the previous round's crash left (see `verify`); launch
worker threads doing a seeded random mix of operations; kill -9 the server once a seeded random
number of progress ticks (requests sent, body chunks sent, stream lines read) has happened, so the
crash lands before, inside or after any of those steps; check the sandbox disks from the host
(before the restart's reconcile removes them). The seed is printed with any failure:
``CORRAL_CRASH_SEED=<seed>`` reproduces the same choices (thread timing still varies).

``make test-long`` runs 100 rounds (`pytest -m long`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx
import pytest

from conftest import (
    Server,
    corral_cgroups,
    is_server_mount,
    loop_devices_of,
    make_data_dir,
    mounts_under,
    remove_data_dir,
    run_command,
    sandbox_processes,
    spawn_server,
    start_server,
)
from corral.config import Settings
from corral.runtime.bwrap import SHARED_RUNTIME
from corral.runtime.mounts_priv import SKELETON, SPARE_PREFIX

ROUNDS = 20
LONG_ROUNDS = 100
MAX_TICKS = 80  # the crash lands after 1..MAX_TICKS progress ticks of the round's workers
ROUND_TIMEOUT = 60.0  # a round whose workers neither tick enough nor finish by then is a hang
CHUNK = 64 << 10
ENVD_PORT = "49983"


class Ticker:
    """Counts the workers' progress; the main thread waits for the crash point or for all to end."""

    def __init__(self, target: int, workers: int) -> None:
        self.target = target
        self.workers = workers
        self._count = 0
        self._finished = 0
        self._changed = threading.Condition()

    def tick(self) -> None:
        with self._changed:
            self._count += 1
            self._changed.notify_all()

    def finished(self) -> None:
        with self._changed:
            self._finished += 1
            self._changed.notify_all()

    def wait(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: self._count >= self.target or self._finished >= self.workers, timeout
            )


@dataclass
class Upload:
    sandbox_id: str
    path: str  # absolute, inside the sandbox
    data: bytes
    acknowledged: bool = False


@dataclass
class Build:
    name: str
    tag: str
    build_id: str | None = None
    saw_ready: bool = False  # the log's status event said "ready" before the crash


@dataclass
class Seen:
    """What the clients of one round were told (shared by its workers; lists are appended under a lock)."""

    created: list[str] = field(default_factory=list)  # sandbox ids answered 201
    deleted: list[str] = field(default_factory=list)  # answered 204 (their disks are gone)
    uploads: list[Upload] = field(default_factory=list)
    builds: list[Build] = field(default_factory=list)
    commands_ok: int = 0
    anomalies: list[str] = field(default_factory=list)  # answers no live server should give
    left: set[str] = field(default_factory=set)  # sandbox ids with runtime state after the crash
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, item: object) -> None:
        with self.lock:
            getattr(self, name).append(item)


@dataclass
class History:
    """What earlier rounds established and later ones check."""

    ready_templates: dict[str, str] = field(default_factory=dict)  # name → the tag its build wrote
    rounds_done: int = 0


def _ticking(pieces: Iterator[bytes], ticker: Ticker) -> Iterator[bytes]:
    for piece in pieces:
        ticker.tick()
        yield piece


def _chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def _multipart(data: bytes, boundary: str, filename: str, name: str = "file") -> Iterator[bytes]:
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n").encode()
    yield from _chunks(data)
    yield f"\r\n--{boundary}--\r\n".encode()


def _context_tar(rng: random.Random, tag: str) -> bytes:
    """A build context of many small files (unpacking it takes a while: a window for the crash)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(rng.randint(100, 800)):
            body = f"{tag} {i}\n".encode()
            info = tarfile.TarInfo(f"d{i % 17}/f{i}.txt")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


class Worker:
    """One client thread: a sandbox of its own and a seeded random list of operations on it."""

    def __init__(self, server: Server, rng: random.Random, ticker: Ticker, seen: Seen, label: str) -> None:
        self.server = server
        self.rng = rng
        self.ticker = ticker
        self.seen = seen
        self.label = label
        self.extra: list[str] = []  # sandboxes created for the create/delete ops

    def run(self, body: Callable[[httpx.Client], None]) -> None:
        try:
            with self.server.client(timeout=30) as api:
                body(api)
        except httpx.TransportError:
            pass  # the crash: whatever was in flight stays unacknowledged
        except Exception as exc:  # surfaced by the round's check
            self.seen.add("anomalies", f"{self.label}: {type(exc).__name__}: {exc}")
        finally:
            self.ticker.finished()

    def _expect(self, response: httpx.Response, status: int, what: str) -> bool:
        if response.status_code == status:
            return True
        self.seen.add("anomalies", f"{self.label}: {what} answered {response.status_code}: {response.text[:300]}")
        return False

    def create(self, api: httpx.Client) -> str | None:
        self.ticker.tick()
        r = api.post("/v1/sandboxes", json={"timeout": 300})
        if not self._expect(r, 201, "create"):
            return None
        sandbox_id = str(r.json()["id"])
        self.seen.add("created", sandbox_id)
        self.ticker.tick()
        return sandbox_id

    def sandbox_ops(self, api: httpx.Client) -> None:
        sandbox_id = self.create(api)
        if sandbox_id is None:
            return
        ops = [self.command, self.upload_native, self.upload_envd, self.create_extra, self.delete_extra,
               self.pause_resume]
        for _ in range(self.rng.randint(3, 8)):
            self.rng.choice(ops)(api, sandbox_id)
        if self.rng.random() < 0.3:  # the crash then finds it frozen
            self.ticker.tick()
            self._expect(api.post(f"/sandboxes/{sandbox_id}/pause"), 204, f"pause {sandbox_id}")

    def command(self, api: httpx.Client, sandbox_id: str) -> None:
        lines = self.rng.randint(5, 40)
        cmd = f"for i in $(seq 1 {lines}); do echo line$i; done; echo err >&2"
        self.ticker.tick()
        with api.stream("POST", f"/v1/sandboxes/{sandbox_id}/commands", json={"cmd": cmd, "timeout": 60}) as r:
            if not self._expect(r, 200, "command"):
                return
            events = []
            for line in r.iter_lines():
                self.ticker.tick()
                if line:
                    events.append(json.loads(line))
        out = "".join(str(e.get("data")) for e in events if e["type"] == "stdout")
        if events[-1] != {"type": "exit", "exit_code": 0, "error": None} or out.count("line") != lines:
            self.seen.add("anomalies", f"{self.label}: command {cmd!r} streamed {events[-3:]!r}")
            return
        with self.seen.lock:
            self.seen.commands_ok += 1

    def _payload(self, sandbox_id: str) -> Upload:
        size = self.rng.randint(1, 48) * CHUNK + self.rng.randint(0, CHUNK - 1)
        name = f"/home/user/up-{self.label}-{secrets.token_hex(4)}.bin"
        upload = Upload(sandbox_id, name, self.rng.randbytes(size))
        self.seen.add("uploads", upload)
        return upload

    def upload_native(self, api: httpx.Client, sandbox_id: str) -> None:
        up = self._payload(sandbox_id)
        self.ticker.tick()
        r = api.put(f"/v1/sandboxes/{sandbox_id}/files", params={"path": up.path},
                    content=_ticking(_chunks(up.data), self.ticker))
        if self._expect(r, 200, f"PUT {up.path}"):
            up.acknowledged = True
            if r.json()["size"] != len(up.data):
                self.seen.add("anomalies", f"{self.label}: PUT {up.path} reported {r.json()}")

    def upload_envd(self, api: httpx.Client, sandbox_id: str) -> None:
        up = self._payload(sandbox_id)
        boundary = secrets.token_hex(12)
        self.ticker.tick()
        r = api.post(
            "/files", params={"path": up.path, "username": "user"},
            headers={"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": ENVD_PORT,
                     "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=_ticking(_multipart(up.data, boundary, up.path.rsplit("/", 1)[1]), self.ticker),
        )
        if self._expect(r, 200, f"envd upload {up.path}"):
            up.acknowledged = True

    def pause_resume(self, api: httpx.Client, sandbox_id: str) -> None:
        """Through the E2B control plane: freeze the sandbox in place, then thaw it."""
        self.ticker.tick()
        if self._expect(api.post(f"/sandboxes/{sandbox_id}/pause"), 204, f"pause {sandbox_id}"):
            self.ticker.tick()
            self._expect(api.post(f"/sandboxes/{sandbox_id}/resume", json={"timeout": 300}), 201,
                         f"resume {sandbox_id}")

    def create_extra(self, api: httpx.Client, _: str) -> None:
        sandbox_id = self.create(api)
        if sandbox_id is not None:
            self.extra.append(sandbox_id)

    def delete_extra(self, api: httpx.Client, _: str) -> None:
        if not self.extra:
            return
        sandbox_id = self.extra.pop()
        self.ticker.tick()
        if self._expect(api.delete(f"/v1/sandboxes/{sandbox_id}"), 204, f"delete {sandbox_id}"):
            self.seen.add("deleted", sandbox_id)

    def build(self, api: httpx.Client, name: str, base: str) -> None:
        tag = secrets.token_hex(6)
        build = Build(name=name, tag=tag)
        self.seen.add("builds", build)
        lines = self.rng.randint(5, 60)
        dockerfile = (f"FROM {base}\nRUN echo {tag} > /built && for i in $(seq 1 {lines}); do echo step$i; done\n"
                      "RUN test -s /built && echo checked\n")
        options = {"name": name, "memory_mb": 256}
        self.ticker.tick()
        if self.rng.random() < 0.5:
            r = api.post("/v1/templates", json={**options, "dockerfile": dockerfile})
        else:  # with a context, streamed with a Content-Length: the crash may land in the upload or the unpack
            dockerfile += "COPY . /ctx\nRUN test -s /ctx/d0/f0.txt\n"
            boundary = secrets.token_hex(12)
            head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"build\"\r\n\r\n"
                    f"{json.dumps({**options, 'dockerfile': dockerfile})}\r\n").encode()
            body = head + b"".join(_multipart(_context_tar(self.rng, tag), boundary, "context.tar", "context"))
            r = api.post("/v1/templates", content=_ticking(_chunks(body), self.ticker),
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                                  "Content-Length": str(len(body))})
        if not self._expect(r, 202, f"build {name}"):
            return
        build.build_id = str(r.json()["id"])
        self.ticker.tick()
        with api.stream("GET", f"/v1/builds/{build.build_id}/logs") as logs:
            if not self._expect(logs, 200, f"logs of {name}"):
                return
            last: dict[str, object] = {}
            for line in logs.iter_lines():
                self.ticker.tick()
                if line:
                    last = json.loads(line)
        if last.get("type") != "status" or last.get("state") != "ready":
            self.seen.add("anomalies", f"{self.label}: build {name} ended with {last!r}")
            return
        build.saw_ready = True


def _listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def _file_on_disk(settings: Settings, sandbox_id: str, path: str) -> bytes | None:
    """``path`` inside a sandbox of a crashed server, read from its disk. bwrap's disk and root
    were mounted in the sandbox's own mount namespace, gone with its processes: the image is read
    once its loop device is released (ext4 flushed it on the way). gVisor's stay mounted on the host."""
    root = settings.mounts_dir / sandbox_id
    if os.path.ismount(root):
        try:
            return (root / path.lstrip("/")).read_bytes()
        except FileNotFoundError:
            return None
    image = settings.sandboxes_dir / sandbox_id / "disk.img"
    assert loop_devices_of(image.parent, wait=30) == [], f"{image} is still attached 30 s after the crash"
    read = subprocess.run(["debugfs", "-R", f'cat "/upper{path}"', str(image)], capture_output=True)
    if b"File not found" in read.stderr:
        return None
    assert read.returncode == 0, read.stderr
    return read.stdout


def check_disks_after_crash(settings: Settings, seen: Seen) -> None:
    """Read each upload's target on the sandbox's disk, left by the crash: one that was
    acknowledged is complete; one that was not is absent or complete — never partial."""
    for up in seen.uploads:
        if up.sandbox_id in seen.deleted:
            continue
        found = _file_on_disk(settings, up.sandbox_id, up.path)
        if found is None:
            assert not up.acknowledged, f"{up.path} in {up.sandbox_id}: acknowledged upload is missing"
            continue
        assert found == up.data, (
            f"{up.path} in {up.sandbox_id}: {len(found)} bytes on disk, {len(up.data)} sent "
            f"({'acknowledged' if up.acknowledged else 'not acknowledged'}): a partial or corrupt file"
        )


def left_behind(settings: Settings) -> set[str]:
    """Ids of the sandboxes a crash left: their dirs, root mount points and cgroups."""
    cgroups = {Path(c).name for c in corral_cgroups(settings.data_dir)}
    return set(_listing(settings.sandboxes_dir)) | set(_listing(settings.mounts_dir)) | cgroups


def verify(server: Server, previous: Seen | None, history: History, pool: bool) -> None:
    """After a restart: nothing leaked, every record closed with a reason or usable, builds final.
    With the warm pool off nothing of any sandbox may exist; with it on, the pool's new sandboxes
    may, but nothing of those the crash left (`Seen.left`): no process, cgroup, mount or dir."""
    data = server.data_dir
    settings = Settings(data_dir=data, run_dir=Path(f"{data}.run"))
    crashed = previous.left if previous else set()

    def stale(found: list[str]) -> list[str]:
        # the new server's spare disks, shared runtime and skeleton are its own (test_recovery checks that a
        # crashed server's spares are removed)
        return [f for f in found if not is_server_mount(f) and f not in (SHARED_RUNTIME, SKELETON)
                and not f.startswith(SPARE_PREFIX)
                and (not pool or any(i in f for i in crashed))]

    def stale_pids() -> list[int]:
        pids = []
        for pid in sandbox_processes(data):
            try:
                about = Path(f"/proc/{pid}/cgroup").read_text() + Path(f"/proc/{pid}/cmdline").read_text()
            except OSError:
                continue
            if stale([about]):
                pids.append(pid)
        return pids

    assert stale_pids() == [], "sandbox processes survived the crash and the restart"
    assert stale(corral_cgroups(data)) == [], "cgroups survived the crash and the restart"
    assert stale(mounts_under(data)) == [], "mounts survived the crash and the restart"
    assert stale(_listing(settings.sandboxes_dir)) == [], "sandbox dirs survived the crash and the restart"
    assert stale(_listing(settings.mounts_dir)) == [], "root mount points survived the crash and the restart"
    tmp_layers = [n for n in _listing(data / "layers") if n.startswith(".tmp-")]
    assert tmp_layers == [], f"partial layers survived the restart: {tmp_layers}"
    with sqlite3.connect(f"file:{data / 'corral.db'}?mode=ro", uri=True) as db:
        building = db.execute("SELECT id, template FROM builds WHERE state = 'building'").fetchall()
        recorded = {row[0] for row in db.execute("SELECT id FROM builds")}
    assert building == [], f"builds left 'building' after the restart: {building}"
    build_dirs = _listing(data / "builds")
    # a crash while a context is unpacked, before the build's record exists: start() removes the dir
    assert [n for n in build_dirs if n not in recorded] == [], "build dirs without a build record survived"
    leftover_files = [n for n in build_dirs if (data / "builds" / n / "files").exists()]
    assert leftover_files == [], f"build dirs of finished builds kept their files: {leftover_files}"

    with server.client() as api:
        rows = api.get("/v1/sandboxes", params={"state": "all"}).json()
        for row in rows:
            if row["state"] == "running":
                assert run_command(api, row["id"], "echo alive").stdout == "alive\n"
            else:
                assert row["state"] in ("ended", "failed") and row["end_reason"] and row["ended_at"], row
        known = {row["id"]: row for row in rows}
        for sandbox_id in previous.created if previous else []:
            assert sandbox_id in known, f"sandbox {sandbox_id} (answered 201) has no record"
            assert known[sandbox_id]["state"] != "running", known[sandbox_id]

        templates = {t["name"]: t for t in api.get("/v1/templates").json()}
        for name, template in templates.items():
            if template["builtin"]:
                continue
            build = api.get(f"/v1/builds/{template['build_id']}").json()
            assert build["state"] == "ready", f"template {name} is visible but its build is {build}"
        for build in previous.builds if previous else []:
            if build.build_id is not None:
                state = api.get(f"/v1/builds/{build.build_id}").json()["state"]
                assert state in ("ready", "failed"), f"build {build.build_id} of {build.name} is {state}"
            if build.saw_ready:
                assert build.name in templates, f"template {build.name}: its build said ready, but it is gone"
            if build.name in templates:
                history.ready_templates[build.name] = build.tag
        for name in history.ready_templates:
            assert name in templates, f"template {name} was ready in an earlier round and is gone now"

        # usable: a fresh sandbox, from the newest template a build finished, runs a command
        template = next(reversed(history.ready_templates), "base")
        r = api.post("/v1/sandboxes", json={"template": template, "timeout": 60})
        assert r.status_code == 201, r.text
        sandbox_id = r.json()["id"]
        if template == "base":
            assert run_command(api, sandbox_id, "echo usable").stdout == "usable\n"
        else:
            assert run_command(api, sandbox_id, "cat /built").stdout == history.ready_templates[template] + "\n"
        assert api.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204


def crash_round(server: Server, seed: int, index: int, history: History) -> Seen:
    """Run one round of workers against `server` and kill it -9 at the seeded crash point."""
    rng = random.Random(seed * 1_000_003 + index)
    seen = Seen()
    sandbox_workers = rng.randint(1, 3)
    builds = 1 if rng.random() < 0.6 else 0
    ticker = Ticker(rng.randint(1, MAX_TICKS), sandbox_workers + builds)
    threads = []
    for w in range(sandbox_workers):
        worker = Worker(server, random.Random(rng.random()), ticker, seen, f"r{index}w{w}")
        threads.append(threading.Thread(target=worker.run, args=(worker.sandbox_ops,)))
    for b in range(builds):
        worker = Worker(server, random.Random(rng.random()), ticker, seen, f"r{index}b{b}")
        base = rng.choice([*history.ready_templates, "base"]) if history.ready_templates else "base"
        name = f"crash-r{index}-b{b}"
        threads.append(threading.Thread(target=worker.run, args=(partial(worker.build, name=name, base=base),)))
    for thread in threads:
        thread.start()
    reached = ticker.wait(ROUND_TIMEOUT)
    server.stop(signal.SIGKILL)
    for thread in threads:
        thread.join(30)
    assert reached, f"round {index}: workers neither reached {ticker.target} ticks nor finished in {ROUND_TIMEOUT}s"
    assert not any(t.is_alive() for t in threads), f"round {index}: a worker hung after the crash"
    assert seen.anomalies == [], f"round {index}: answers before the crash: {seen.anomalies}"
    settings = Settings(data_dir=server.data_dir, run_dir=Path(f"{server.data_dir}.run"))
    check_disks_after_crash(settings, seen)
    if rng.random() < 0.25:
        crash_recovery(server, rng.uniform(0.0, 2.5))
    seen.left = left_behind(settings)
    acked = sum(u.acknowledged for u in seen.uploads)
    print(f"round {index}: crash after {ticker.target} ticks; {len(seen.created)} creates, "
          f"{seen.commands_ok} commands, {acked}/{len(seen.uploads)} uploads acknowledged, "
          f"builds {[(b.build_id is not None, b.saw_ready) for b in seen.builds]}")
    return seen


def crash_recovery(crashed: Server, delay: float) -> None:
    """Crash the next start too, `delay` seconds in: maybe inside its reconcile of the first crash.
    The wait picks the crash moment; nothing is synchronised by it."""
    server = spawn_server(crashed.data_dir, api_key=crashed.api_key, CORRAL_POOL="base=2")  # maybe mid-refill
    try:
        server.process.wait(delay)
    except subprocess.TimeoutExpired:
        server.stop(signal.SIGKILL)
    else:
        raise AssertionError(f"the restart exited with {server.process.returncode}:\n{server.log_text()[-3000:]}")


def _reconcile_leftovers(data: Path, key: str) -> None:
    """After a failed round the SIGKILLed server's sandboxes, mounts, loop devices, cgroups, network
    namespaces and rules are still on the host (no restart followed): a server started on the same
    data dir removes them in its start-up reconcile, then stops. Best effort: the round's failure is
    what gets reported."""
    with contextlib.suppress(Exception, pytest.fail.Exception):
        cleaner = start_server(data, api_key=key, CORRAL_POOL="off")
        cleaner.stop()


def run_rounds(rounds: int) -> None:
    seed = int(os.environ.get("CORRAL_CRASH_SEED") or secrets.randbelow(1 << 32))
    data = make_data_dir()
    key = "e2b_" + secrets.token_hex(20)
    history = History()
    previous: Seen | None = None
    server: Server | None = None
    try:
        for index in range(rounds):
            try:
                started = time.monotonic()
                pool = random.Random(seed + index).random() < 0.5  # the warm pool on or off
                server = start_server(data, api_key=key, CORRAL_POOL="base=2" if pool else "off")
                healthy = time.monotonic()
                verify(server, previous, history, pool)
                previous = crash_round(server, seed, index, history)
                print(f"round {index}: {time.monotonic() - started:.1f}s (restart {healthy - started:.1f}s), "
                      f"pool {'on' if pool else 'off'}")
            except BaseException as exc:
                log = server.log_text()[-4000:] if server else ""
                raise AssertionError(f"crash round {index} of {rounds} failed; reproduce with "
                                     f"CORRAL_CRASH_SEED={seed}: {exc}\n--- server log (tail) ---\n{log}") from exc
            history.rounds_done += 1
        server = start_server(data, api_key=key, CORRAL_POOL="base=2")
        verify(server, previous, history, True)
        assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful exit
        assert mounts_under(data) == [] and corral_cgroups(data) == [] and sandbox_processes(data) == []
    except BaseException:
        if server is not None and server.process.poll() is None:
            server.stop(signal.SIGKILL)
        _reconcile_leftovers(data, key)
        raise
    finally:
        if server is not None and server.process.poll() is None:
            server.stop(signal.SIGKILL)
        remove_data_dir(data)
    print(f"crash rounds: {rounds} rounds, seed {seed}, {len(history.ready_templates)} templates built")


@pytest.mark.timeout(900)
def test_crash_rounds() -> None:
    run_rounds(ROUNDS)


@pytest.mark.long
@pytest.mark.timeout(3600)
def test_crash_rounds_long() -> None:
    run_rounds(LONG_ROUNDS)
