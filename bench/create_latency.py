"""Create → first output latency through the real HTTP API, next to the raw primitive.

Baseline (same run, same machine, its samples alternating with ours): mount an overlay over the base
template and run ``bwrap --unshare-all ... /bin/true`` in it, then unmount. Ours: ``POST /v1/sandboxes`` followed by a
command whose first stdout event ends the measurement (then the sandbox is killed, outside the timing).

    sudo .venv/bin/python bench/create_latency.py [--samples 40]
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
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TEMPLATES, make_data_dir, remove_data_dir, start_server


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def raw_once(rootfs: Path) -> float:
    """One raw primitive, in seconds: an overlay over ``rootfs`` mounted and ``bwrap ... /bin/true``
    run in it (the unmount and the clean-up are not timed)."""
    work = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        for name in ("upper", "work", "root"):
            (work / name).mkdir()
        started = time.perf_counter()
        subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={rootfs},upperdir={work}/upper,workdir={work}/work", str(work / "root")], check=True)
        try:
            subprocess.run(["bwrap", "--unshare-all", "--die-with-parent", "--cap-drop", "ALL", "--bind",
                            str(work / "root"), "/", "--proc", "/proc", "--dev", "/dev", "/bin/true"], check=True)
            return time.perf_counter() - started
        finally:
            subprocess.run(["umount", str(work / "root")], check=True)
    finally:
        shutil.rmtree(work)


def raw_primitive(rootfs: Path, samples: int) -> list[float]:
    return [raw_once(rootfs) for _ in range(samples)]


def alternated(calls: dict[str, Callable[[], float]], samples: int, pause: float = 0.0) -> dict[str, list[float]]:
    """Each call's own measurement (seconds), ``samples`` rounds of one call each in turn: a figure and
    its baseline meet the same moments of a host whose speed drifts by tens of percent within an
    hour (docs/performance.md), instead of one block of each. ``pause``: seconds before every call,
    so that none runs beside the background work the one before left (a server's teardown)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(samples):
        for name, call in calls.items():
            time.sleep(pause)
            times[name].append(call())
    return times


def to_output(client: httpx.Client, body: dict[str, object]) -> float:
    """One create (``body`` added to the request) -> the first output of ``echo`` in it, in seconds;
    the sandbox is killed after. A refused create raises ``httpx.HTTPStatusError``."""
    started = time.perf_counter()
    sid = client.post("/v1/sandboxes", json={"timeout": 60, **body}).raise_for_status().json()["id"]
    took = None
    with client.stream("POST", f"/v1/sandboxes/{sid}/commands", json={"cmd": "echo ready"}) as r:
        for line in r.iter_lines():
            if json.loads(line)["type"] == "stdout":
                took = time.perf_counter() - started
                break
    client.delete(f"/v1/sandboxes/{sid}")
    assert took is not None, "the command printed nothing"
    return took


def ours(client: httpx.Client, samples: int, template: str = "base", pause: float = 0.0) -> list[float]:
    """``pause``: seconds between one create's delete and the next create (a user's think time: the
    server's background work, teardowns and spares, is done by then)."""
    times = []
    for _ in range(samples):
        times.append(to_output(client, {"template": template}))
        time.sleep(pause)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    data = make_data_dir()
    server = start_server(data)
    try:
        rootfs = TEMPLATES / "base" / "rootfs"
        with server.client() as client:
            ours(client, 3)  # warm up imports and caches
            raw_once(rootfs)
            times = alternated({"ours": lambda: to_output(client, {"template": "base"}),
                                "raw": lambda: raw_once(rootfs)}, args.samples, pause=0.25)
        measured, baseline = times["ours"], times["raw"]
    finally:
        server.stop()
        remove_data_dir(data)
    print(f"{'figure':<34}{'p50 ms':>10}{'p99 ms':>10}")
    for name, values in (("raw bwrap + overlay + true", baseline), ("corral create -> first output", measured)):
        print(f"{name:<34}{1000 * statistics.median(values):>10.1f}{1000 * pct(values, 0.99):>10.1f}")
    print(f"{'ratio (ours / raw), p50':<34}{statistics.median(measured) / statistics.median(baseline):>10.2f}")


if __name__ == "__main__":
    main()
