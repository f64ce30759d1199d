"""A sandbox's network plug and unplug: ``netns_priv.plug`` + ``unplug`` of this tree against a
baseline ``netns_priv`` (by default the one at git ref ``main``, e.g. the pyroute2 version it
replaced), same run, interleaved, each on a fresh netns.

Prints wall time and the process's CPU time of each (all threads: the in-netns half runs on the
namespace thread; nothing else runs meanwhile), then the wall time of N threads each plugging and
unplugging M sandboxes at once (the pooled-create shape: plugs meet unplugs).

    sudo .venv/bin/python bench/net_plug.py [--samples 60] [--baseline-ref main | --baseline-file F]
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType

from corral.runtime import netns_priv

GATEWAY = ipaddress.IPv4Address("172.31.255.1")  # the test links carry no traffic


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def baseline(args: argparse.Namespace) -> ModuleType:
    if args.baseline_file:
        return load(Path(args.baseline_file), "netns_priv_baseline")
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(
        ["git", "-C", str(root), "show", f"{args.baseline_ref}:src/corral/runtime/netns_priv.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(text)
    try:
        return load(Path(f.name), "netns_priv_baseline")
    finally:
        os.unlink(f.name)


def cycle(module: ModuleType, veth: str, slot: int) -> tuple[float, float, float, float]:
    """plug wall, plug CPU, unplug wall, unplug CPU (seconds), on a fresh netns."""
    fd = netns_priv.new_netns()
    try:
        ns = f"/proc/{os.getpid()}/fd/{fd}"
        w0, c0 = time.perf_counter(), time.process_time()
        module.plug(ns, veth, GATEWAY, GATEWAY + 1 + slot)
        w1, c1 = time.perf_counter(), time.process_time()
        module.unplug(veth)
        w2, c2 = time.perf_counter(), time.process_time()
    finally:
        os.close(fd)
    return w1 - w0, c1 - c0, w2 - w1, c2 - c1


def burst(module: ModuleType, prefix: str, threads: int, each: int) -> float:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(each):
                cycle(module, f"{prefix}{t:x}{i:x}", 100 + t * each + i)
        except BaseException as exc:
            errors.append(exc)

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--baseline-ref", default="main")
    parser.add_argument("--baseline-file")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--each", type=int, default=5)
    parser.add_argument("--bursts", type=int, default=3)
    args = parser.parse_args()
    impls = {"baseline": baseline(args), "this tree": netns_priv}
    prefix = f"crlb{secrets.token_hex(3)}"
    figures = ("plug wall", "plug CPU", "unplug wall", "unplug CPU")
    samples: dict[str, dict[str, list[float]]] = {k: {f: [] for f in figures} for k in impls}
    bursts: dict[str, list[float]] = {k: [] for k in impls}
    try:
        for i in range(args.samples + 1):  # the first round warms both up
            for n, (name, module) in enumerate(impls.items()):
                got = cycle(module, f"{prefix}{n}{i:x}", 1 + i)
                if i:
                    for figure, value in zip(figures, got, strict=True):
                        samples[name][figure].append(value)
        for b in range(args.bursts):
            for n, (name, module) in enumerate(impls.items()):
                bursts[name].append(burst(module, f"{prefix}{n}{b}", args.threads, args.each))
    finally:
        for veth in netns_priv.links(prefix):
            netns_priv.unplug(veth)
    print(f"{args.samples} interleaved samples, fresh netns each; load {os.getloadavg()[0]:.2f}")
    print(f"{'figure':<14}" + "".join(f"{k + ' p50':>16}{k + ' p95':>16}" for k in impls) + f"{'ratio p50':>11}")
    for figure in figures:
        a, b = (samples[k][figure] for k in impls)
        row = "".join(f"{p(v, 0.5):>16.2f}{p(v, 0.95):>16.2f}" for v in (a, b))
        print(f"{figure + ' ms':<14}{row}{statistics.median(b) / statistics.median(a):>11.2f}")
    a, b = (bursts[k] for k in impls)
    cycles = args.threads * args.each
    print(
        f"{args.threads} threads x {args.each} plug+unplug at once ({args.bursts} bursts), wall ms: "
        + ", ".join(f"{k} {' / '.join(f'{1000 * v:.0f}' for v in vs)}" for k, vs in bursts.items())
        + f"; per cycle p50 {1000 * statistics.median(a) / cycles:.1f} vs {1000 * statistics.median(b) / cycles:.1f}"
        + f", ratio {statistics.median(b) / statistics.median(a):.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
