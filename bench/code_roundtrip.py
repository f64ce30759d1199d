"""``run_code("1+1")`` on a warm context, next to a direct local jupyter_client execute (same run).

Baseline: a local ipykernel started by jupyter_client on this host; one execute of ``1+1`` until
the kernel is idle again. Ours: ``POST /v1/sandboxes/{id}/code`` through the real HTTP API into a
sandboxed kernel, until ``end_of_execution``.

    sudo .venv/bin/python bench/code_roundtrip.py [--samples 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from jupyter_client.manager import start_new_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_data_dir, remove_data_dir, start_server


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def local_kernel(samples: int) -> list[float]:
    manager, client = start_new_kernel(kernel_name="python3")
    try:
        client.execute_interactive("1+1", timeout=30, output_hook=lambda _msg: None)  # warm
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            client.execute_interactive("1+1", timeout=30, output_hook=lambda _msg: None)
            times.append(time.perf_counter() - started)
        return times
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def ours(samples: int) -> list[float]:
    data = make_data_dir()
    server = start_server(data)
    try:
        with server.client() as api:
            sid = api.post("/v1/sandboxes", json={"template": "code-interpreter", "timeout": 600}).json()["id"]

            def once() -> float:
                started = time.perf_counter()
                with api.stream("POST", f"/v1/sandboxes/{sid}/code", json={"code": "1+1"}) as r:
                    for line in r.iter_lines():
                        if json.loads(line)["type"] == "end_of_execution":
                            break
                return time.perf_counter() - started

            once()  # creates and warms the default context
            return [once() for _ in range(samples)]
    finally:
        server.stop()
        remove_data_dir(data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    baseline = local_kernel(args.samples)
    measured = ours(args.samples)
    print(f"{'figure':<40}{'p50 ms':>10}{'p95 ms':>10}")
    rows = (("local jupyter_client execute 1+1", baseline), ("corral run_code 1+1 (warm, HTTP)", measured))
    for name, values in rows:
        print(f"{name:<40}{1000 * statistics.median(values):>10.1f}{1000 * pct(values, 0.95):>10.1f}")
    print(f"{'ratio (ours / local), p50':<40}{statistics.median(measured) / statistics.median(baseline):>10.2f}")


if __name__ == "__main__":
    main()
