"""Extra create latency of a networked sandbox (veth, routes, nftables batch) against ``network="none"``.

Both measured in the same run against the same server, interleaved so drift hits both alike:
``POST /v1/sandboxes`` until it answers 201 (the sandbox's agent is up), then the sandbox is killed
outside the timing. Prints median and p95 of each and the ratio networked/none.

    sudo .venv/bin/python bench/net_latency.py [--samples 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_data_dir, remove_data_dir, start_server


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def create_once(client: httpx.Client, body: dict[str, object]) -> float:
    started = time.perf_counter()
    sid = client.post("/v1/sandboxes", json={"timeout": 60, **body}).raise_for_status().json()["id"]
    elapsed = time.perf_counter() - started
    client.delete(f"/v1/sandboxes/{sid}").raise_for_status()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    data = make_data_dir()
    server = start_server(data)
    try:
        with server.client() as client:
            for body in ({"network": "none"}, {}, {"allow_out": ["1.2.3.4"]}):  # warm-up
                create_once(client, body)
            kinds: dict[str, dict[str, object]] = {
                "none": {"network": "none"}, "internet": {}, "allowlist": {"allow_out": ["example.com", "1.2.3.4"]},
            }
            times: dict[str, list[float]] = {k: [] for k in kinds}
            for _ in range(args.samples):
                for kind, body in kinds.items():
                    times[kind].append(create_once(client, body))
    finally:
        server.stop()
        remove_data_dir(data)
    base = statistics.median(times["none"])
    print(f"create latency, {args.samples} samples each (ms)")
    for kind, values in times.items():
        med = statistics.median(values)
        print(f"  {kind:9s} median {med * 1000:7.1f}  p95 {pct(values, 0.95) * 1000:7.1f}  "
              f"ratio vs none {med / base:5.2f}  extra {(med - base) * 1000:+6.1f}")


if __name__ == "__main__":
    main()
