"""bwrap vs gVisor, through the real HTTP API, next to raw ``runsc run`` measured in the same run.

Per backend (one server, ``isolation`` chosen per sandbox; bwrap with and without its network):
create → first output of ``echo``, and ``commands.run("true")`` round trips in a live sandbox.
Baseline: ``runsc run`` of ``/bin/true`` in a bundle over the base template (no overlay, no agent),
the floor any gVisor backend pays.

    sudo .venv/bin/python bench/backends.py [--samples 20] [--runs 40]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from create_latency import to_output

from conftest import TEMPLATES, make_data_dir, remove_data_dir, start_server


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def raw_runsc(rootfs: Path, samples: int) -> list[float]:
    work = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="bench-runsc-"))
    config = {
        "ociVersion": "1.0.2", "root": {"path": str(rootfs), "readonly": True},
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["/bin/true"], "cwd": "/", "env": ["PATH=/usr/bin:/bin"]},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")]},
    }
    (work / "config.json").write_text(json.dumps(config))
    flags = ["runsc", f"--root={work}/state", "--platform=ptrace", "--network=none", "--ignore-cgroups"]
    times = []
    try:
        for i in range(samples):
            started = time.perf_counter()
            subprocess.run([*flags, "run", f"--bundle={work}", f"bench-{i}"], check=True, stdin=subprocess.DEVNULL)
            times.append(time.perf_counter() - started)
    finally:
        shutil.rmtree(work)
    return times


KINDS = {  # label -> create body; gVisor sandboxes have loopback only, so bwrap is measured both ways
    "bwrap": {"isolation": "bwrap"},
    "bwrap-nonet": {"isolation": "bwrap", "network": "none"},
    "gvisor": {"isolation": "gvisor"},
}


def create_to_output(client: httpx.Client, body: dict[str, str], samples: int) -> list[float]:
    return [to_output(client, body) for _ in range(samples)]


def run_true(client: httpx.Client, body: dict[str, str], runs: int) -> list[float]:
    sid = client.post("/v1/sandboxes", json={"timeout": 120, **body}).raise_for_status().json()["id"]
    times = []
    try:
        for _ in range(runs + 3):
            started = time.perf_counter()
            r = client.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "true"})
            assert json.loads(r.text.splitlines()[-1])["exit_code"] == 0
            times.append(time.perf_counter() - started)
    finally:
        client.delete(f"/v1/sandboxes/{sid}")
    return times[3:]  # the first runs warm the shell's pages in


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    if shutil.which("runsc") is None:
        sys.exit("runsc is not installed (Debian package runsc): nothing to compare")
    data = make_data_dir()
    server = start_server(data)
    figures: dict[str, list[float]] = {}
    try:
        with server.client() as client:
            for kind, body in KINDS.items():
                create_to_output(client, body, 2)  # warm up
                figures[f"{kind} create -> first output"] = create_to_output(client, body, args.samples)
                figures[f"{kind} commands.run('true')"] = run_true(client, body, args.runs)
        figures["raw runsc run /bin/true"] = raw_runsc(TEMPLATES / "base" / "rootfs", args.samples)
    finally:
        server.stop()
        remove_data_dir(data)
    print(f"{'figure':<40}{'p50 ms':>10}{'p95 ms':>10}")
    for name, values in figures.items():
        print(f"{name:<40}{1000 * statistics.median(values):>10.1f}{1000 * pct(values, 0.95):>10.1f}")
    med = {name: statistics.median(values) for name, values in figures.items()}
    ratios = (
        ("ratio gvisor / bwrap, create", "gvisor create -> first output", "bwrap create -> first output"),
        ("ratio gvisor / bwrap-nonet, create", "gvisor create -> first output", "bwrap-nonet create -> first output"),
        ("ratio gvisor / bwrap, run true", "gvisor commands.run('true')", "bwrap commands.run('true')"),
        ("ratio gvisor create / raw runsc", "gvisor create -> first output", "raw runsc run /bin/true"),
    )
    for label, num, den in ratios:
        print(f"{label:<40}{med[num] / med[den]:>10.2f}")

if __name__ == "__main__":
    main()
