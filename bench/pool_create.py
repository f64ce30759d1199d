"""Warm-pool creates: ``POST /v1/sandboxes`` latency at 50 concurrent callers through the real HTTP API,
served from a pool of ready sandboxes, next to the same burst with the pool off (cold creates) and a
no-op authenticated call (the API's own overhead) measured in the same run.

    sudo .venv/bin/python bench/pool_create.py [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
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


async def burst(url: str, key: str, n: int) -> tuple[list[float], list[str], int]:
    """n concurrent creates; returns latencies (s), ids, and how many came from the pool."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=120, limits=limits) as client:
        await asyncio.gather(*(client.get("/v1/sandboxes") for _ in range(n)))  # open n connections first

        async def one() -> tuple[float, dict[str, object]]:
            started = time.perf_counter()
            r = await client.post("/v1/sandboxes", json={"timeout": 120})
            r.raise_for_status()
            return time.perf_counter() - started, r.json()

        results = await asyncio.gather(*(one() for _ in range(n)))
        ids = [str(body["id"]) for _, body in results]
        await asyncio.gather(*(client.delete(f"/v1/sandboxes/{sid}") for sid in ids))
    return [t for t, _ in results], ids, sum(1 for _, body in results if body.get("pooled"))


async def noop(url: str, key: str, samples: int) -> list[float]:
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=30) as client:
        await client.get("/v1/sandboxes")
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            (await client.get("/v1/sandboxes")).raise_for_status()
            times.append(time.perf_counter() - started)
    return times


def wait_ready(server_url: str, key: str, want: int, deadline_s: float = 600) -> None:
    deadline = time.monotonic() + deadline_s
    with httpx.Client(base_url=server_url, headers={"X-API-Key": key}) as client:
        while sum(p["ready"] for p in client.get("/v1/pool").json()["pools"]) < want:
            if time.monotonic() > deadline:
                raise SystemExit("the pool did not fill in time")
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    n = args.concurrency
    rows = []
    data = make_data_dir()
    server = start_server(data, CORRAL_POOL=f"base={n}", CORRAL_POOL_MAX=str(n))
    try:
        wait_ready(server.url, server.api_key, n)
        warm, _, pooled = asyncio.run(burst(server.url, server.api_key, n))
        api = asyncio.run(noop(server.url, server.api_key, 200))
    finally:
        server.stop()
        remove_data_dir(data)
    data = make_data_dir()
    server = start_server(data, CORRAL_POOL="off")
    try:
        cold, _, _ = asyncio.run(burst(server.url, server.api_key, n))
    finally:
        server.stop()
        remove_data_dir(data)
    ms = 1000
    rows.append((f"create, pool, {n} concurrent, p50 (ms)", statistics.median(warm) * ms, statistics.median(cold) * ms,
                 "< 5"))
    rows.append((f"create, pool, {n} concurrent, p99 (ms)", pct(warm, 0.99) * ms, pct(cold, 0.99) * ms, "< 20"))
    rows.append(("no-op authenticated call, p50 (ms)", statistics.median(api) * ms, None, "-"))
    print(f"served from the pool: {pooled}/{n}")
    print(f"{'figure':<42}{'ours':>10}{'cold':>10}{'ratio':>8}  target")
    for name, value, baseline, target in rows:
        ratio = f"{value / baseline:>8.3f}" if baseline else f"{'':>8}"
        base = f"{baseline:>10.2f}" if baseline else f"{'':>10}"
        print(f"{name:<42}{value:>10.2f}{base}{ratio}  {target}")


if __name__ == "__main__":
    main()
