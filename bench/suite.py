"""``make bench``: every performance figure of Corral in one run, printed as one table.

Each figure is a small function returning ``Figure(ours, baseline, …)`` with its baseline measured in
this run (docs/performance.md explains each). The blocks, in order:

1. latency (server with the pool off): cold create → first output vs the raw bwrap + overlay + ``true``
   (their samples in turns, each after a pause; and each back to back; and through the official E2B
   SDK, reported next to it);
   ``commands.run("true")`` vs local ``subprocess.run("true")`` + one HTTP round trip (``/health``), in turns;
   a no-op authenticated call vs a bare uvicorn app's round trip; peers (raw ``runsc``, PyPI ``gvisor``,
   Corral's own gVisor backend);
   create latency vs concurrent creators (cold);
2. warm pool (pool of 50): 50 concurrent creates, p50 and p99, vs 50 concurrent no-op calls (and
   those vs a bare uvicorn app at 50 concurrent); the same creates through the SDK's
   ``AsyncSandbox.create()``; pooled latency vs concurrent creators. Bursts go through ``wire``, a
   client that costs next to nothing (httpx at 50 concurrent costs more than the server's answer);
3. throughput: creators + killers for ``--churn-seconds`` (pool sized by demand), errors counted;
4. density: idle sandboxes up to ``--density`` (checkpoints on the way), host memory per sandbox and
   where it goes; create latency vs live sandboxes.

Writes the curves to ``docs/perf-*.png`` (``--plots``) and every number to ``--json``.

    sudo .venv/bin/python bench/suite.py [--quick] [--density 500] [--churn-seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import density
import httpx
import throughput
import wire
from create_latency import alternated, raw_once, raw_primitive, to_output
from create_latency import ours as create_to_output
from curves import DOCS, concurrency, create_burst, plot_concurrency, plot_live
from figures import TEMPLATES_ROOT, Figure, Server, load, p50, pct, save, server, table
from peers import gvisor_pypi, runsc_create_exec
from pool_create import wait_ready

from corral import AsyncSandbox, Sandbox
from corral.sdk._config import ConnectionConfig
from corral.sdk._http import SyncHTTP

MS = 1000.0
BARE_APP = textwrap.dedent("""
    import sys, uvicorn
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"[]"})
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", loop="uvloop", http="httptools")
""")


def timed(call: object, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return times


def round_trips(url: str, path: str, samples: int, key: str | None = None) -> list[float]:
    with httpx.Client(base_url=url, headers={"X-API-Key": key} if key else {}) as client:
        for _ in range(20):
            client.get(path).raise_for_status()
        return timed(lambda: client.get(path).raise_for_status(), samples)


@contextlib.contextmanager
def bare_app() -> Iterator[str]:
    """A bare uvicorn (uvloop, httptools) ASGI app answering ``[]``, the framework floor: its URL."""
    from conftest import free_port

    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".py") as script:
        script.write(BARE_APP)
        script.flush()
        proc = subprocess.Popen([sys.executable, script.name, str(port)])
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    httpx.get(url, timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)  # readiness poll of a separate process
            yield url
        finally:
            proc.terminate()
            proc.wait()


def bare_uvicorn(samples: int) -> list[float]:
    with bare_app() as url:
        return round_trips(url, "/", samples)


# block 1: latency, pool off
IDLE_GAP = 0.25  # seconds before each sample of a cold create and of its baseline


def cold_create(srv: Server, samples: int) -> Figure:
    """Our create -> first output and the raw primitive in turns (the same moments of the host), each
    after a pause: the server has finished the last sandbox's teardown and its spares' refill, as the
    primitive's own clean-up ends before its next sample, and both start from an idle host, as one
    user's create does (an idle vCPU here costs a wake-up: both are slower than in a busy loop)."""
    with srv.client() as client:
        create_to_output(client, 3)
        raw_once(TEMPLATES_ROOT)
        times = alternated({"ours": lambda: to_output(client, {"template": "base"}),
                            "raw": lambda: raw_once(TEMPLATES_ROOT)}, samples, pause=IDLE_GAP)
    ours, raw = times["ours"], times["raw"]
    return Figure("cold create -> first output, p50", "ms", p50(ours) * MS, p50(raw) * MS,
                  "raw bwrap+overlay+true", "ratio <= 2.5", lambda _o, r: r is not None and r <= 2.5,
                  note=f"p99 {pct(ours, 0.99) * MS:.0f} vs {pct(raw, 0.99) * MS:.1f} ms; in turns, "
                  f"{IDLE_GAP} s before each", extra={"ours": ours, "baseline": raw})


def e2b_cold_create(srv: Server, cold: Figure, samples: int) -> Figure:
    """The official E2B SDK as its users start (pool off): ``Sandbox.create()``, then
    ``commands.run("echo ready")`` until its first output, each after the same pause as the cold
    create above; next to that figure (our own client on the native API)."""
    from e2b import Sandbox as E2BSandbox

    options = {"api_key": srv.api_key, "api_url": srv.url, "sandbox_url": srv.url}

    def once() -> float:
        started = time.perf_counter()
        sandbox = E2BSandbox.create(timeout=60, **options)
        first: list[float] = []
        sandbox.commands.run("echo ready", on_stdout=lambda _: first.append(time.perf_counter()))
        sandbox.kill()
        return first[0] - started

    once()  # warms the SDK's client and the server's E2B routes
    times = []
    for _ in range(samples):
        time.sleep(IDLE_GAP)
        times.append(once())
    return Figure("E2B SDK Sandbox.create() -> first output of commands.run, cold, p50", "ms", p50(times) * MS,
                  cold.ours, "our client on the native API (above)", "report", None,
                  note=f"p99 {pct(times, 0.99) * MS:.0f} ms; {IDLE_GAP} s before each", extra={"ours": times})


def cold_create_back_to_back(srv: Server, samples: int) -> Figure:
    """The same cold creates one right after another (a loop of create, command, kill: each meets the
    previous one's teardown and refills), next to the raw primitive back to back."""
    with srv.client() as client:
        ours = create_to_output(client, samples)
    raw = raw_primitive(TEMPLATES_ROOT, samples)
    return Figure("cold create -> first output, back to back, p50", "ms", p50(ours) * MS,
                  p50(raw) * MS, "raw bwrap+overlay+true, back to back", "report", None,
                  note=f"p99 {pct(ours, 0.99) * MS:.0f} vs {pct(raw, 0.99) * MS:.1f} ms",
                  extra={"ours": ours, "baseline": raw})


def run_true(srv: Server, samples: int) -> Figure:
    """``commands.run("true")`` in turns with its baseline's two parts (the same moments of the host)."""
    sandbox = Sandbox.create(api_url=srv.url, api_key=srv.api_key, timeout=600)
    try:
        with httpx.Client(base_url=srv.url) as trip:
            for _ in range(10):
                sandbox.commands.run("true")
                trip.get("/health").raise_for_status()
            times = alternated({
                "ours": lambda: timed(lambda: sandbox.commands.run("true"), 1)[0],
                "local": lambda: timed(lambda: subprocess.run(["true"], check=True), 1)[0],
                "trip": lambda: timed(lambda: trip.get("/health").raise_for_status(), 1)[0],
            }, samples)
    finally:
        sandbox.kill()
    ours, local, trip_times = times["ours"], times["local"], times["trip"]
    baseline = p50(local) + p50(trip_times)
    return Figure('commands.run("true"), live sandbox, p50', "ms", p50(ours) * MS, baseline * MS,
                  "subprocess.run(true) + 1 HTTP trip", "ratio <= 1.5", lambda _o, r: r is not None and r <= 1.5,
                  note=f"local true {p50(local) * MS:.2f} ms + /health {p50(trip_times) * MS:.2f} ms; in turns",
                  extra={"ours": ours, "local": local, "trip": trip_times})


def api_overhead(srv: Server, samples: int) -> Figure:
    ours = round_trips(srv.url, "/v1/sandboxes", samples, srv.api_key)
    bare = bare_uvicorn(samples)
    return Figure("no-op authenticated call (GET /v1/sandboxes), p50", "ms", p50(ours) * MS, p50(bare) * MS,
                  "bare uvicorn app", "report", None, note=f"p99 {pct(ours, 0.99) * MS:.2f} ms",
                  extra={"ours": ours, "baseline": bare})


def peers(cold: Figure, samples: int) -> tuple[list[Figure], list[float] | None]:
    """Raw ``runsc`` and the PyPI ``gvisor`` wrapper next to our cold create; also the wrapper's times."""
    figures = []
    wrapper = gvisor_pypi(samples)
    for label, values in (("raw runsc (ptrace) run+exec", runsc_create_exec(TEMPLATES_ROOT, samples)),
                          ("PyPI gvisor Sandbox()+exec", wrapper)):
        if values is None:
            figures.append(Figure(f"peer: {label}", "ms", cold.ours, None, "not available here", "report"))
            continue
        figures.append(Figure(f"cold create -> output vs peer: {label}", "ms", cold.ours, p50(values) * MS, label,
                              "report", None, extra={"baseline": values}))
    return figures, wrapper


def gvisor_to_output(client: httpx.Client, body: dict[str, object]) -> float | None:
    """One gVisor create -> first output (seconds), or None if this server cannot make one."""
    try:
        return to_output(client, body)
    except httpx.HTTPStatusError:
        return None


def gvisor_backend(srv: Server, cold: Figure, samples: int) -> tuple[Figure, list[float]]:
    """Our own gVisor backend (``isolation: "gvisor"``, pool off) next to our bwrap, same server, same run."""
    times: list[float] = []
    with srv.client() as client:
        for i in range(samples + 1):
            took = gvisor_to_output(client, {"isolation": "gvisor"})
            if took is None:
                return Figure("cold create -> output, gVisor backend", "ms", cold.ours, None,
                              "not available here", "report"), []
            if i:
                times.append(took)
    return Figure("cold create -> output: bwrap backend vs our gVisor backend", "ms", cold.ours, p50(times) * MS,
                  "Corral, isolation gvisor", "report", None, extra={"baseline": times}), times


def gvisor_pooled(samples: int) -> list[float]:
    """A server whose sandboxes are gVisor by default (``CORRAL_BACKEND=gvisor``), its warm pool as
    shipped (one ``base`` ready, more with demand): create -> first output, the pool refilled between."""
    times: list[float] = []
    with server(CORRAL_BACKEND="gvisor", CORRAL_POOL="base=1") as srv, srv.client() as client:
        for i in range(samples + 1):
            wait_ready(srv.url, srv.api_key, 1)
            took = gvisor_to_output(client, {})
            if took is None:
                return []
            if i:
                times.append(took)
    return times


def gvisor_vs_wrapper(label: str, ours: list[float], wrapper: list[float] | None, note: str) -> Figure:
    """The issue's peer target: our gVisor backend should beat the PyPI wrapper's Sandbox() + exec."""
    if not ours or not wrapper:
        return Figure(f"our gVisor backend ({label}) vs PyPI gvisor Sandbox()+exec", "ms", p50(ours) * MS if ours
                      else 0.0, None, "not available here", "report")
    return Figure(f"our gVisor backend ({label}) create -> output vs PyPI gvisor Sandbox()+exec", "ms",
                  p50(ours) * MS, p50(wrapper) * MS, "PyPI gvisor wrapper", "ratio < 1 (beat it)",
                  lambda _o, r: r is not None and r < 1, note=note, extra={"ours": ours, "baseline": wrapper})


def without_zygote(cold: Figure, samples: int) -> Figure:
    """The same cold create on a server that starts python per sandbox (the agent before the zygote)."""
    with server(CORRAL_AGENT_ZYGOTE="off") as srv, srv.client() as client:
        create_to_output(client, 3)
        times = create_to_output(client, samples)
    return Figure("cold create -> output: agent zygote vs python per sandbox", "ms", cold.ours, p50(times) * MS,
                  "CORRAL_AGENT_ZYGOTE=off", "report", None, extra={"baseline": times})


def e2b_first_cell(pool: str, samples: int) -> list[float]:
    """The official E2B SDK's code interpreter, as its users start: ``Sandbox.create()`` then
    ``run_code("1+1")`` until the result, on a server with ``CORRAL_POOL=pool`` (the pool refilled
    between samples when there is one)."""
    from e2b_code_interpreter import Sandbox as E2BSandbox

    times: list[float] = []
    saved = {name: os.environ.get(name) for name in ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL")}
    with server(CORRAL_POOL=pool) as srv:
        os.environ.update(E2B_API_KEY=srv.api_key, E2B_API_URL=srv.url, E2B_SANDBOX_URL=srv.url)
        try:
            for i in range(samples + 1):
                if pool != "off":
                    wait_ready(srv.url, srv.api_key, 1)
                started = time.perf_counter()
                sandbox = E2BSandbox.create(timeout=120)
                assert sandbox.run_code("1+1").text == "2"
                if i:  # the first warms the client and the server
                    times.append(time.perf_counter() - started)
                sandbox.kill()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    return times


# block 2: the warm pool
def noop_burst(url: str, key: str, n: int) -> list[float]:
    """n concurrent no-op authenticated calls on n open connections (what the API costs at that load)."""
    answers = asyncio.run(wire.burst(url, key, n, "GET", "/v1/sandboxes"))
    assert all(status == 200 for _, status, _ in answers)
    return [t for t, _, _ in answers]


def bare_burst(n: int, rounds: int) -> list[float]:
    """n concurrent round trips to a bare uvicorn app, ``rounds`` times: the floor at that concurrency."""
    times: list[float] = []
    with bare_app() as url:
        for _ in range(rounds):
            times += [t for t, _, _ in asyncio.run(wire.burst(url, None, n, "GET", "/"))]
    return times


async def sdk_burst(url: str, key: str, n: int) -> tuple[list[float], float]:
    """n concurrent ``AsyncSandbox.create()`` (each builds its own HTTP client, as the SDK does), and
    what building one ``SyncHTTP`` costs on its own."""
    async def one() -> tuple[float, AsyncSandbox]:
        started = time.perf_counter()
        sandbox = await AsyncSandbox.create(api_url=url, api_key=key, timeout=120)
        return time.perf_counter() - started, sandbox

    results = await asyncio.gather(*(one() for _ in range(n)))
    for _, sandbox in results:
        await sandbox.kill()
        await sandbox.close()
    config = ConnectionConfig.resolve(key, url)
    client_cost = p50(timed(lambda: SyncHTTP(config), 20))
    return [t for t, _ in results], client_cost


def warm_pool(srv: Server, n: int, rounds: int) -> tuple[list[Figure], dict[int, list[float]]]:
    warm: list[float] = []
    pooled = 0
    noop: list[float] = []
    for _ in range(rounds):
        wait_ready(srv.url, srv.api_key, n)
        noop += noop_burst(srv.url, srv.api_key, n)
        times, got = create_burst(srv.url, srv.api_key, n)
        warm += times
        pooled += got
    bare = bare_burst(n, rounds)
    wait_ready(srv.url, srv.api_key, n)
    sdk, client_cost = asyncio.run(sdk_burst(srv.url, srv.api_key, n))
    note = f"{pooled}/{n * rounds} served from the pool"
    figures = [
        Figure(f"warm-pool create, {n} concurrent, p50", "ms", p50(warm) * MS, p50(noop) * MS,
               f"{n} concurrent no-op calls", "< 5 ms", lambda o, _r: o < 5, note=note,
               extra={"ours": warm, "baseline": noop}),
        Figure(f"warm-pool create, {n} concurrent, p99", "ms", pct(warm, 0.99) * MS, pct(noop, 0.99) * MS,
               f"{n} concurrent no-op calls", "< 20 ms", lambda o, _r: o < 20, note=note),
        Figure(f"{n} concurrent no-op authenticated calls, p50", "ms", p50(noop) * MS, p50(bare) * MS,
               f"{n} concurrent, bare uvicorn app", "report", None, note=f"p99 {pct(noop, 0.99) * MS:.0f} vs "
               f"{pct(bare, 0.99) * MS:.1f} ms", extra={"ours": noop, "baseline": bare}),
        Figure(f"AsyncSandbox.create() (SDK), {n} concurrent, p50", "ms", p50(sdk) * MS, p50(warm) * MS,
               "same over open connections", "report", None,
               note=f"building one SDK HTTP client costs {client_cost * MS:.1f} ms", extra={"ours": sdk}),
    ]
    curve = concurrency(srv.url, srv.api_key, [1, 10, n], repeat=10, refill=n)
    return figures, curve


def machine() -> str:
    """The host as the figures depend on it: CPU model, cores, memory (the same suite drew a raw
    primitive twice as slow on one kind of host as on another)."""
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--density", type=int, default=500, help="idle sandboxes to reach")
    parser.add_argument("--churn-seconds", type=float, default=60)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few samples, 20 s churn, 50 sandboxes")
    parser.add_argument("--plots", default=str(DOCS), help="where the PNG curves go")
    parser.add_argument("--json", default="/tmp/corral-bench.json")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.density, args.churn_seconds = 8, 50, 20
    n = args.concurrency
    started = time.monotonic()
    context: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "load_before": load(),
        "kernel": platform.release(), "python": platform.python_version(), "machine": machine(),
    }
    figures: list[Figure] = []

    def step(text: str) -> None:
        print(f"[{time.monotonic() - started:5.0f} s, load {load()}] {text}", flush=True)

    step("latency: cold create, commands.run, API overhead, peers, concurrency (pool off)")
    with server() as srv:
        cold = cold_create(srv, args.samples)
        figures += [cold, e2b_cold_create(srv, cold, args.samples), cold_create_back_to_back(srv, args.samples),
                    run_true(srv, args.samples * 3), api_overhead(srv, args.samples * 10)]
        peer_figures, wrapper = peers(cold, max(4, args.samples // 4))
        gvisor_cold, gvisor_times = gvisor_backend(srv, cold, max(4, args.samples // 4))
        figures += [*peer_figures, gvisor_cold]
        cold_curve = concurrency(srv.url, srv.api_key, [1, 10, n], repeat=10)
    figures.append(without_zygote(cold, max(10, args.samples // 2)))
    figures.append(gvisor_vs_wrapper("cold, pool off", gvisor_times, wrapper,
                                     "runsc boot + the agent's start under ptrace (docs/performance.md)"))
    pooled_gvisor = gvisor_pooled(max(4, args.samples // 4)) if gvisor_times else []  # [] without runsc
    figures.append(gvisor_vs_wrapper("its warm pool, as shipped", pooled_gvisor, wrapper,
                                     "CORRAL_BACKEND=gvisor, pool base=1; the pool refilled between creates"))
    cell_cold = e2b_first_cell("off", 3)
    cell_warm = e2b_first_cell("code-interpreter=1", 5)
    figures.append(Figure("E2B code interpreter Sandbox.create() + first run_code, warm pool vs pool off", "ms",
                          p50(cell_warm) * MS, p50(cell_cold) * MS, "CORRAL_POOL=off", "report", None,
                          note="pooled: its python kernel started while it waited",
                          extra={"ours": cell_warm, "baseline": cell_cold}))

    step(f"warm pool: {n} concurrent creates")
    with server(CORRAL_POOL=f"base={n}", CORRAL_POOL_MAX=str(n)) as srv:
        pool_figures, warm_curve = warm_pool(srv, n, rounds=3)
        figures += pool_figures

    step(f"throughput: creators + killers for {args.churn_seconds:.0f} s")
    raw_rate = throughput.raw_rate(5)
    churn = throughput.run(args.churn_seconds, creators=8, killers=4)
    errors = churn["errors"]
    assert isinstance(errors, list)
    figures.append(Figure(f"creates/s sustained {args.churn_seconds:.0f} s, kills in parallel", "1/s",
                          float(churn["rate"]), raw_rate, "raw primitive, 2 workers",  # type: ignore[arg-type]
                          ">= 50/s, 0 errors", lambda o, _r: o >= 50 and not errors,
                          note=f"{len(errors)} errors, {churn['pooled']}/{churn['creates']} pooled, create p50 "
                               f"{float(churn['latency_p50'] or 0) * MS:.0f} ms, kill p50 "  # type: ignore[arg-type]
                               f"{float(churn['kill_p50'] or 0) * MS:.0f} ms, {churn['unkilled_at_end']} "  # type: ignore[arg-type]
                               "left to kill when the creators stopped",
                          extra={k: v for k, v in churn.items() if k != "errors"} | {"errors": errors[:20]}))

    step(f"density: up to {args.density} idle sandboxes")
    at = sorted({c for c in (100, 200, args.density) if c <= args.density})
    dense = density.run(at, samples=10)
    points = dense["checkpoints"]
    assert isinstance(points, list)
    last = points[-1]
    per = last["per_sandbox"]
    floor = float(dense["python_floor_mib"])  # type: ignore[arg-type]
    dense_errors = dense["errors"]
    assert isinstance(dense_errors, list)
    figures.append(Figure("idle sandboxes held (pool off, base, network on)", "count", float(last["live"]), None,
                          "-", ">= 500, 0 errors", lambda o, _r: o >= 500 and not dense_errors,
                          note=f"{len(dense_errors)} errors; killed all in {float(dense['kill_s']):.0f} s"))  # type: ignore[arg-type]
    figures.append(Figure(f"host overhead per idle sandbox at {last['live']}", "MiB", per["overhead"], floor,
                          "idle python3 in raw bwrap (PSS)", "<= 15 MiB", lambda o, _r: o <= 15,
                          note=f"agent PSS {per['agent_pss']:.1f} (anon {per['agent_pss_anon']:.1f}), pid 1 "
                               f"{per.get('pid1_pss', 0.0):.2f}, bwrap×{per.get('bwrap_count', 0):.0f} "
                               f"{per['bwrap_pss']:.2f}, kernel (slab, page tables, stacks) {per['kernel']:.2f}, "
                               f"server {per['server_rss_growth']:.2f}; host MemAvailable fell "
                               f"{per['host_used_growth']:.1f} MiB/sandbox", extra={"checkpoints": points}))
    figures.append(Figure(f"same, processes' RSS + server growth (shared pages once per process) at {last['live']}",
                          "MiB", per["overhead_rss"], None, "-", "<= 15 MiB RSS", lambda o, _r: o <= 15,
                          note=f"agent RSS {per['agent_rss']:.1f} (of it shared with the zygote and all agents "
                               f"{per['agent_rss'] - per['agent_private_dirty']:.1f}), pid 1 "
                               f"{per.get('pid1_rss', 0.0):.1f}, bwrap {per['bwrap_rss']:.1f}; kernel objects (not "
                               f"RSS) {per['kernel']:.2f} more"))

    step("plots")
    plots = Path(args.plots)
    plot_concurrency(cold_curve, warm_curve, plots / "perf-create-vs-concurrency.png",
                     f"POST /v1/sandboxes vs concurrent creators\n{context['date']}, load {context['load_before']}")
    plot_live([(int(p["live"]), list(p["latency"]), list(p["raw"])) for p in points],
              plots / "perf-create-vs-live.png",
              f"create latency vs idle sandboxes already running\n{context['date']}, load {context['load_before']}")
    context["load_after"] = load()
    context["seconds"] = round(time.monotonic() - started)
    context["curves"] = {"cold": cold_curve, "warm": warm_curve}
    save(figures, Path(args.json), context)
    print()
    print(f"Corral benchmark suite, {context['date']}, load before {context['load_before']}, "
          f"after {context['load_after']}, {context['seconds']} s; {context['machine']}, kernel {context['kernel']}, "
          f"Python {context['python']}")
    print(table(figures))
    for f in figures:
        if f.note:
            print(f"  {f.name}: {f.note}")
    for label, curve in (("cold", cold_curve), ("warm", warm_curve)):
        print(f"  {label} create vs concurrency: " + ", ".join(
            f"c={c} p50 {p50(v) * MS:.0f} / p99 {pct(v, 0.99) * MS:.0f} ms" for c, v in curve.items()))
    print("  cold create -> output vs live: " + ", ".join(
        f"{p['live']} live p50 {p50(p['latency']) * MS:.0f} ms (raw {p50(p['raw']) * MS:.1f})" for p in points))
    print(f"results: {args.json}; curves: {plots}/perf-create-vs-*.png")


if __name__ == "__main__":
    main()
