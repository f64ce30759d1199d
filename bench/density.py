"""Density: how many idle sandboxes fit, what each costs the host, and create latency as they pile up.

One server (pool off), sandboxes from the default template ``base`` with the default network, started
by 4 concurrent callers and left idle. At each checkpoint (0 and the ``--at`` counts) it takes a memory
snapshot and measures cold create → first output (``--samples`` sandboxes, killed again):

* per sandbox, summed over its processes (bwrap's monitor, pid 1 — bwrap's init, or with the agent
  zygote ``corral-tools pid1`` or the runtime's ``sleep`` — and the agent, found through its memory cgroup):
  PSS and RSS from ``/proc/<pid>/smaps_rollup``, split anon / file;
* the kernel's charge to its memory cgroup (``memory.usage_in_bytes``/``memory.current``, ``kmem``);
* the server's RSS growth, and ``/proc/meminfo`` (slab, page tables, kernel stacks, available) growth,
  both divided by the number of sandboxes — host-wide, so other load on the machine shows up in them;
* loop devices, the sparse disk images' allocated blocks, and the host's mount table;
* the raw primitive (bwrap + overlay + ``true``) at the same checkpoint, to tell the host's own slope
  (more mounts, more processes) from Corral's.

The headline per sandbox: its processes' PSS + the server's RSS growth + the host's kernel growth
(slab, page tables, kernel stacks). The RSS figure (the issue's "agent + bookkeeping") is its
processes' RSS + the server's RSS growth: every shared page counted again per process; the kernel's
objects are not RSS and are reported beside it.

Baseline (same run): ``python3 -c 'import time; time.sleep()'`` with the base template's interpreter
in a raw bwrap (all namespaces), i.e. the floor any Python agent pays.

    sudo .venv/bin/python bench/density.py [--at 100,200,500] [--samples 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from create_latency import ours as create_to_output
from create_latency import raw_primitive
from figures import TEMPLATES_ROOT, Server, p50, server

from corral.config import Settings

MIB = 1024 * 1024
CGROUP = Path("/sys/fs/cgroup")


def rollup(pid: int | str) -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` in bytes (empty if the process is gone)."""
    values = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    values[key] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return values


def meminfo() -> dict[str, int]:
    with open("/proc/meminfo") as f:
        return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return 0


@dataclass
class Snapshot:
    sandboxes: int
    procs: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> summed rollup fields + count
    cgroup: dict[str, int] = field(default_factory=dict)
    server: dict[str, int] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)
    loops: int = 0
    disk_allocated: int = 0
    mounts: int = 0  # in the host's mount namespace


def snapshot(srv: Server, ids: list[str]) -> Snapshot:
    instance = Settings(data_dir=srv.data_dir).instance
    snap = Snapshot(len(ids))
    for sid in ids:
        v1 = CGROUP / "memory" / "corral" / instance / sid
        group = v1 if v1.is_dir() else CGROUP / "corral" / instance / sid
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            # pid 1 with the agent zygote: `corral-tools pid1`, or without it the runtime's `sleep
            # infinity` (started through the runtime's loader)
            waits = argv[1:2] == [b"pid1"] or b"sleep\0infinity" in b"\0".join(argv)
            kind = "bwrap" if comm == "bwrap" else "pid1" if waits else \
                "agent" if comm.startswith(("python", "ld-linux", "corral-agent")) else "other"
            total = snap.procs.setdefault(kind, {"count": 0})
            total["count"] += 1
            for key, value in rollup(pid).items():
                total[key] = total.get(key, 0) + value
        if v1.is_dir():
            charge = {"usage": _read_int(v1 / "memory.usage_in_bytes"),
                      "kmem": _read_int(v1 / "memory.kmem.usage_in_bytes")}
            for line in (v1 / "memory.stat").read_text().splitlines():
                key, value = line.split()
                if key in ("rss", "cache", "shmem", "mapped_file"):
                    charge[key] = int(value)
        else:
            charge = {"usage": _read_int(group / "memory.current")}
        for key, value in charge.items():
            snap.cgroup[key] = snap.cgroup.get(key, 0) + value
        image = srv.data_dir / "sandboxes" / sid / "disk.img"
        if image.exists():
            snap.disk_allocated += image.stat().st_blocks * 512
    snap.server = rollup(srv.process.pid)
    snap.host = meminfo()
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    snap.loops = sum(1 for line in loops.splitlines() if str(srv.data_dir) in line)
    with open("/proc/self/mountinfo") as f:
        snap.mounts = sum(1 for _ in f)
    return snap


def breakdown(base: Snapshot, snap: Snapshot) -> dict[str, float]:
    """MiB per sandbox, by where it goes."""
    n = max(1, snap.sandboxes)
    per: dict[str, float] = {}
    for kind, total in snap.procs.items():
        per[f"{kind}_count"] = total["count"] / n
        for key in ("Pss", "Rss", "Pss_Anon", "Pss_File", "Private_Dirty"):
            per[f"{kind}_{key.lower()}"] = total.get(key, 0) / n / MIB
    for key, value in snap.cgroup.items():
        per[f"cgroup_{key}"] = value / n / MIB
    per["server_rss_growth"] = (snap.server.get("Rss", 0) - base.server.get("Rss", 0)) / n / MIB
    per["server_pss_growth"] = (snap.server.get("Pss", 0) - base.server.get("Pss", 0)) / n / MIB
    for key in ("Slab", "SUnreclaim", "PageTables", "KernelStack", "Cached", "Shmem"):
        per[f"host_{key.lower()}_growth"] = (snap.host[key] - base.host[key]) / n / MIB
    per["host_used_growth"] = (base.host["MemAvailable"] - snap.host["MemAvailable"]) / n / MIB
    per["loops"] = snap.loops / n
    per["disk_allocated"] = snap.disk_allocated / n / MIB
    per["process_pss"] = sum(t.get("Pss", 0) for t in snap.procs.values()) / n / MIB
    per["process_rss"] = sum(t.get("Rss", 0) for t in snap.procs.values()) / n / MIB
    per["host_mounts"] = (snap.mounts - base.mounts) / n
    # the figure: the sandbox's processes (PSS: shared pages split between their users), the server's
    # bookkeeping, and the kernel's objects host-wide (slab: mounts, netns, veth, loop, ext4; page
    # tables; kernel stacks; the sandbox cgroup's kmem is a part of these, so it is not added again)
    kernel = sum(max(0.0, per[f"host_{k}_growth"]) for k in ("slab", "pagetables", "kernelstack"))
    per["kernel"] = kernel
    per["overhead"] = per["process_pss"] + max(0.0, per["server_rss_growth"]) + kernel
    per["overhead_rss"] = per["process_rss"] + max(0.0, per["server_rss_growth"])
    return per


def python_floor(count: int = 20) -> float:
    """MiB PSS of an idle ``python3`` (the base template's) in a raw bwrap, averaged over ``count``."""
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--cap-drop", "ALL", "--ro-bind", str(TEMPLATES_ROOT), "/",
            "--proc", "/proc", "--dev", "/dev", "/usr/bin/python3", "-c", "import time; time.sleep(600)"]
    procs = [subprocess.Popen(argv) for _ in range(count)]
    try:
        time.sleep(2)  # let them import and go idle
        pss = 0
        for proc in procs:
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            pythons = [p for p in kids if "python" in Path(f"/proc/{p}/comm").read_text()]
            for pid in pythons or kids:  # bwrap's pid 1 sits between: walk one more level
                inner = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                pss += sum(rollup(q).get("Pss", 0) for q in inner) + rollup(pid).get("Pss", 0)
            pss += rollup(proc.pid).get("Pss", 0)
        return pss / count / MIB
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def _start(url: str, key: str, count: int, ids: list[str], errors: list[str], parallel: int = 4) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=300) as client:
        todo = iter(range(count))

        async def worker() -> None:
            for _ in todo:
                try:
                    r = await client.post("/v1/sandboxes", json={"timeout": 3600})
                    if r.status_code == 201:
                        ids.append(r.json()["id"])
                    else:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

        await asyncio.gather(*(worker() for _ in range(parallel)))


async def _kill(url: str, key: str, ids: list[str], parallel: int = 8) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=300) as client:
        todo = iter(ids)

        async def worker() -> None:
            for sid in todo:
                await client.delete(f"/v1/sandboxes/{sid}")

        await asyncio.gather(*(worker() for _ in range(parallel)))


def run(at: list[int], samples: int, log: list[str] | None = None) -> dict[str, object]:
    """Grow to each count in ``at``; returns checkpoints (latency samples, breakdown) and errors."""
    say = log.append if log is not None else print
    floor = python_floor()
    checkpoints: list[dict[str, object]] = []
    ids: list[str] = []
    errors: list[str] = []
    with server(CORRAL_MAX_SANDBOXES=str(max(at) + 50)) as srv:
        with srv.client() as client:
            create_to_output(client, 3)  # warm-up
            time.sleep(1)
            base = snapshot(srv, [])
            for target in [0, *at]:
                started = time.monotonic()
                asyncio.run(_start(srv.url, srv.api_key, target - len(ids), ids, errors))
                grow_s = time.monotonic() - started
                time.sleep(2)  # let the new ones go idle
                snap = snapshot(srv, ids)
                latency = create_to_output(client, samples)
                raw = raw_primitive(TEMPLATES_ROOT, samples)  # the host's own slope (e.g. its mount table)
                per = breakdown(base, snap) if ids else {}
                checkpoints.append({"live": len(ids), "latency": latency, "raw": raw, "per_sandbox": per,
                                    "grow_s": grow_s, "mounts": snap.mounts})
                say(f"density: {len(ids)} live ({len(errors)} errors, grew in {grow_s:.0f} s), create -> output "
                    f"p50 {1000 * p50(latency):.0f} ms" + (f", {per['overhead']:.1f} MiB/sandbox" if per else ""))
        started = time.monotonic()
        asyncio.run(_kill(srv.url, srv.api_key, ids))
        kill_s = time.monotonic() - started
    return {"checkpoints": checkpoints, "errors": errors, "python_floor_mib": floor, "kill_s": kill_s,
            "killed": len(ids)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--at", default="100,200,500", help="sandbox counts to measure at")
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    result = run([int(n) for n in args.at.split(",")], args.samples)
    print(json.dumps(result, indent=1, default=str))
    print(f"pid {os.getpid()} done")


if __name__ == "__main__":
    main()
