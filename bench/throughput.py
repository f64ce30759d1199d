"""Sustained create throughput: a closed loop of creators and killers through the real HTTP API.

One server with the warm pool on and sized by demand (``CORRAL_POOL=base=<min>``, a high
``CORRAL_POOL_MAX``). ``--creators`` callers (each its own connection, ``wire``) create
(``POST /v1/sandboxes``) as fast as answers come and hand each id to ``--killers`` callers that
delete it, for ``--seconds``; every non-2xx answer or transport error counts as an error. Then the
loop drains (every created sandbox is deleted). Creates outrunning the killers show as the ids
still queued for a kill when the creators stop (and, once the server's limit of live sandboxes is
reached, as 429 errors).

Baseline (same run): the raw primitive (overlay mount + ``bwrap … /bin/true`` + unmount) in a closed
loop with 2 workers (one per core) for ``--baseline-seconds``.

    sudo .venv/bin/python bench/throughput.py [--seconds 60] [--creators 8] [--killers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor

import wire
from create_latency import raw_primitive
from figures import TEMPLATES_ROOT, p50, pct, server
from pool_create import wait_ready


def raw_rate(seconds: float, workers: int = 2) -> float:
    """Raw primitives completed per second by ``workers`` threads in ``seconds``."""
    deadline = time.monotonic() + seconds

    def loop() -> int:
        done = 0
        while time.monotonic() < deadline:
            raw_primitive(TEMPLATES_ROOT, 1)
            done += 1
        return done

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        total = sum(pool.map(lambda _: loop(), range(workers)))
    return total / (time.monotonic() - started)


async def churn(url: str, key: str, seconds: float, creators: int, killers: int) -> dict[str, object]:
    latencies: list[float] = []
    kill_latencies: list[float] = []
    errors: list[str] = []
    pooled = 0
    kills = 0
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    deadline = time.monotonic() + seconds

    async def creator() -> None:
        nonlocal pooled
        conn = await wire.Conn.open(url, key)
        try:
            while time.monotonic() < deadline:
                try:
                    elapsed, status, data = await conn.timed("POST", "/v1/sandboxes", {"timeout": 300})
                except (OSError, asyncio.IncompleteReadError) as exc:
                    errors.append(f"create: {exc!r}")
                    conn = await wire.Conn.open(url, key)
                    continue
                if status != 201:
                    errors.append(f"create: {status} {data[:160]!r}")
                    continue
                latencies.append(elapsed)
                body = json.loads(data)
                pooled += bool(body.get("pooled"))
                queue.put_nowait(body["id"])
        finally:
            await conn.close()

    async def killer() -> None:
        nonlocal kills
        conn = await wire.Conn.open(url, key)
        try:
            while (sid := await queue.get()) is not None:
                try:
                    started = time.perf_counter()
                    status, data = await conn.request("DELETE", f"/v1/sandboxes/{sid}")
                    kill_latencies.append(time.perf_counter() - started)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    errors.append(f"kill: {exc!r}")
                    conn = await wire.Conn.open(url, key)
                    continue
                if status != 204:
                    errors.append(f"kill: {status} {data[:160]!r}")
                else:
                    kills += 1
        finally:
            await conn.close()

    started = time.monotonic()
    killing = [asyncio.create_task(killer()) for _ in range(killers)]
    await asyncio.gather(*(creator() for _ in range(creators)))
    elapsed = time.monotonic() - started
    unkilled = queue.qsize()  # created but not yet being killed: the killers' backlog, if they fell behind
    for _ in killing:
        queue.put_nowait(None)
    await asyncio.gather(*killing)
    return {"creates": len(latencies), "seconds": elapsed, "rate": len(latencies) / elapsed, "kills": kills,
            "errors": errors, "pooled": pooled, "latency_p50": p50(latencies) if latencies else None,
            "latency_p99": pct(latencies, 0.99) if latencies else None,
            "kill_p50": p50(kill_latencies) if kill_latencies else None, "unkilled_at_end": unkilled}


def run(seconds: float, creators: int, killers: int, pool_min: int = 16, pool_max: int = 200) -> dict[str, object]:
    with server(CORRAL_POOL=f"base={pool_min}", CORRAL_POOL_MAX=str(pool_max)) as srv:
        wait_ready(srv.url, srv.api_key, pool_min)
        result = asyncio.run(churn(srv.url, srv.api_key, seconds, creators, killers))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--creators", type=int, default=8)
    parser.add_argument("--killers", type=int, default=4)
    parser.add_argument("--baseline-seconds", type=float, default=5)
    args = parser.parse_args()
    baseline = raw_rate(args.baseline_seconds)
    result = run(args.seconds, args.creators, args.killers)
    errors = result.pop("errors")
    print({**result, "errors": len(errors), "raw_rate": baseline})  # type: ignore[arg-type]
    for line in errors[:10]:  # type: ignore[index]
        print("  ", line)


if __name__ == "__main__":
    main()
