"""Scaling curves: create latency vs concurrent creators (1, 10, 50; cold and from the warm pool) and vs
live sandboxes (from the density run), plotted to PNG with matplotlib.

A burst of ``c`` concurrent ``POST /v1/sandboxes`` on already-open connections (``wire``, a client
that costs next to nothing);
level 1 is ``--repeat`` single creates so it has more than one sample. The sandboxes are deleted after
each burst, outside the timing; a pooled burst waits for the pool to refill first.

    sudo .venv/bin/python bench/curves.py [--levels 1,10,50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import wire
from figures import p50, pct, server
from pool_create import wait_ready

DOCS = Path(__file__).resolve().parents[1] / "docs"


def create_burst(url: str, key: str, n: int) -> tuple[list[float], int]:
    """n concurrent ``POST /v1/sandboxes`` on open connections (``wire``), then deletes them (untimed):
    the latencies (s) and how many came from the pool."""
    answers = asyncio.run(wire.burst(url, key, n, "POST", "/v1/sandboxes", {"timeout": 120}))
    bodies = [json.loads(data) for _, status, data in answers if status == 201]
    asyncio.run(wire.each(url, key, "DELETE", [f"/v1/sandboxes/{b['id']}" for b in bodies]))
    if len(bodies) != n:
        raise RuntimeError(f"{n - len(bodies)} of {n} creates failed: {[a[1:] for a in answers if a[1] != 201][:3]}")
    return [t for t, _, _ in answers], sum(1 for b in bodies if b.get("pooled"))


def concurrency(url: str, key: str, levels: list[int], repeat: int = 10, refill: int = 0) -> dict[int, list[float]]:
    """Latencies (s) per concurrency level; ``refill`` > 0: wait for that many pooled before each burst."""
    curve: dict[int, list[float]] = {}
    for level in levels:
        times: list[float] = []
        for _ in range(repeat if level == 1 else 1):
            if refill:
                wait_ready(url, key, min(refill, max(levels)))
            times += create_burst(url, key, level)[0]
        curve[level] = times
    return curve


def plot_concurrency(cold: dict[int, list[float]], warm: dict[int, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for label, curve, style in (("cold (pool off)", cold, "o-"), ("warm pool", warm, "s-")):
        if not curve:
            continue
        levels = sorted(curve)
        ax.plot(levels, [1000 * p50(curve[c]) for c in levels], style, label=f"{label} p50")
        ax.plot(levels, [1000 * pct(curve[c], 0.99) for c in levels], style, alpha=0.4, label=f"{label} p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sorted(cold or warm), labels=[str(c) for c in sorted(cold or warm)])
    ax.set_xlabel("concurrent creators")
    ax.set_ylabel("POST /v1/sandboxes latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_live(points: list[tuple[int, list[float], list[float]]], path: Path, title: str) -> None:
    """``points``: (live sandboxes, Corral's cold create -> output samples, raw primitive samples)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    live = [n for n, _, _ in points]
    ax.plot(live, [1000 * p50(v) for _, v, _ in points], "o-", label="Corral cold create -> first output, p50")
    ax.plot(live, [1000 * pct(v, 0.99) for _, v, _ in points], "o-", alpha=0.4, label="Corral, p99")
    ax.plot(live, [1000 * p50(r) for _, _, r in points], "s--", label="raw bwrap + overlay + true, p50")
    ax.set_xlabel("idle sandboxes already running")
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", default="1,10,50")
    args = parser.parse_args()
    levels = [int(c) for c in args.levels.split(",")]
    with server() as srv:
        cold = concurrency(srv.url, srv.api_key, levels)
    with server(CORRAL_POOL=f"base={max(levels)}", CORRAL_POOL_MAX=str(max(levels))) as srv:
        warm = concurrency(srv.url, srv.api_key, levels, refill=max(levels))
    for label, curve in (("cold", cold), ("warm", warm)):
        for level, times in curve.items():
            print(f"{label} c={level:<3} p50 {1000 * p50(times):8.1f} ms  p99 {1000 * pct(times, 0.99):8.1f} ms")
    plot_concurrency(cold, warm, Path("/tmp/corral-create-vs-concurrency.png"), "create latency vs concurrency")
    print("plotted to /tmp/corral-create-vs-concurrency.png")


if __name__ == "__main__":
    main()
