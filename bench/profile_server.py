"""Profile the server with py-spy while it serves a workload; print the top frames (self and total).

Workloads (each on a fresh server, py-spy attached to it for the workload only):

* ``cold``: creates with the pool off — 10 one after another, then a burst of 10 concurrent;
* ``pooled``: two bursts of 50 concurrent creates served from a full warm pool (the refill that
  follows runs inside the profile too);
* ``exec``: 300 × ``commands.run("true")`` on one live sandbox through the SDK;
* ``agent`` (no server): the agent's start-up in a raw bwrap, import by import, and the agent's own
  spawn → first ping reply (``--agent-src`` dirs, e.g. an older tree's, are measured in the same run);
* ``noop``: 20 bursts of 50 concurrent no-op authenticated calls (``GET /v1/sandboxes``);
* ``churn``: ``bench/throughput.py``'s loop (8 creators, 4 killers, warm pool by demand) for 20 s.

py-spy samples every thread of the server process (``--idle`` off: waiting threads don't count) at
``--rate`` Hz and writes collapsed stacks; the summary counts a function once per sample for "total"
and the innermost frame for "self". The collapsed files stay in ``--out`` for flame graphs.

    sudo .venv/bin/python bench/profile_server.py [--workload cold,pooled,exec] [--out /tmp/corral-prof]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import wire
from create_latency import ours as create_to_output
from curves import create_burst
from figures import Server, server
from pool_create import wait_ready
from throughput import churn

from corral import Sandbox


def cold(srv: Server) -> None:
    with srv.client() as client:
        create_to_output(client, 10)
    create_burst(srv.url, srv.api_key, 10)


def pooled(srv: Server) -> None:
    for _ in range(2):
        wait_ready(srv.url, srv.api_key, 50)
        create_burst(srv.url, srv.api_key, 50)
    time.sleep(3)  # the refill


def noop(srv: Server) -> None:
    for _ in range(20):
        asyncio.run(wire.burst(srv.url, srv.api_key, 50, "GET", "/v1/sandboxes"))


def churn_loop(srv: Server) -> None:
    """bench/throughput.py's closed loop (8 creators, 4 killers) for 20 s, warm pool by demand."""
    asyncio.run(churn(srv.url, srv.api_key, 20, 8, 4))


def exec_loop(srv: Server) -> None:
    sandbox = Sandbox.create(api_url=srv.url, api_key=srv.api_key)
    try:
        for _ in range(300):
            sandbox.commands.run("true")
    finally:
        sandbox.kill()


WORKLOADS: dict[str, tuple[dict[str, str], Callable[[Server], None], Callable[[Server], None] | None]] = {
    # name: (server env, workload, preparation outside the profile)
    "cold": ({}, cold, lambda s: cold(s)),
    "pooled": ({"CORRAL_POOL": "base=50", "CORRAL_POOL_MAX": "50"}, pooled, lambda s: wait_ready(s.url, s.api_key, 50)),
    "exec": ({}, exec_loop, None),
    "noop": ({}, noop, None),
    "churn": ({"CORRAL_POOL": "base=16", "CORRAL_POOL_MAX": "200"}, churn_loop,
              lambda s: wait_ready(s.url, s.api_key, 16)),
}


def summarise(collapsed: Path, top: int) -> str:
    """Top frames by self and by total time, for the event-loop thread and for the worker threads
    apart (a stack through ``Runner.run`` is the loop's), plus the top Corral frames by total."""
    own = {"loop": collections.Counter[str](), "threads": collections.Counter[str]()}
    total = {"loop": collections.Counter[str](), "threads": collections.Counter[str]()}
    ours: collections.Counter[str] = collections.Counter()
    samples = collections.Counter[str]()
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        where = "loop" if any(f.startswith("Runner.run ") for f in frames) else "threads"
        samples[where] += count
        own[where][frames[-1]] += count
        for frame in set(frames):
            total[where][frame] += count
            if "(corral/" in frame:
                ours[frame] += count
    everything = max(1, sum(samples.values()))
    out = [f"{everything} samples: event loop {100 * samples['loop'] / everything:.0f}%, "
           f"worker threads {100 * samples['threads'] / everything:.0f}%"]
    for where in ("loop", "threads"):
        for title, counter in (("self", own[where]), ("total", total[where])):
            out.append(f"  {where}, top {top} by {title} (% of all samples):")
            out += [f"    {100 * c / everything:5.1f}%  {frame}" for frame, c in counter.most_common(top)]
    out.append(f"  Corral frames, top {top} by total:")
    out += [f"    {100 * c / everything:5.1f}%  {frame}" for frame, c in ours.most_common(top)]
    return "\n".join(out)


def py_spy() -> str | None:
    """py-spy's path: on PATH, or beside this interpreter (the venv's, not activated)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def profile(name: str, out: Path, rate: int, top: int) -> str:
    env, work, prepare = WORKLOADS[name]
    with server(**env) as srv:
        if prepare is not None:
            prepare(srv)
        target = out / f"{name}.collapsed"
        spy = subprocess.Popen(
            [py_spy() or "py-spy", "record", "--pid", str(srv.process.pid), "--rate", str(rate), "--format", "raw",
             "--output", str(target), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        time.sleep(1)  # attached
        started = time.perf_counter()
        work(srv)
        elapsed = time.perf_counter() - started
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
        if not target.exists():
            return f"{name}: py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"
    return f"== {name} ({elapsed:.1f} s of workload)\n{summarise(target, top)}"


AGENT_SRC = Path(__file__).resolve().parents[1] / "src" / "corral" / "agent"
PROBES = {  # what the sandbox's python does before the agent answers, one step at a time
    "python3 -c pass": "pass",
    "import asyncio": "import asyncio",
    "import ssl": "import ssl",
    "import the agent (corral_agent.server)": "import corral_agent.server",
}
PING = struct.pack(">Ic", 13, b"J") + b'{"op":"ping"}'  # one frame


def _bwrap(agent_src: Path) -> list[str]:
    from figures import TEMPLATES_ROOT

    return ["bwrap", "--unshare-all", "--die-with-parent", "--cap-drop", "ALL", "--ro-bind", str(TEMPLATES_ROOT), "/",
            "--tmpfs", "/tmp", "--ro-bind", str(agent_src), "/tmp/corral_agent", "--proc", "/proc", "--dev", "/dev",
            "--setenv", "PYTHONPATH", "/tmp", "/usr/bin/python3", "-s", "-B"]


def agent_ready(agent_src: Path, samples: int) -> tuple[list[float], int, int]:
    """Spawn → first ping reply of the agent itself (listening fd inherited, as a sandbox starts it),
    and its RssAnon / Pss_Anon in KiB once it answered."""
    times, anon, pss = [], 0, 0
    for n in range(samples):
        name = f"\0corral-bench-agent-{os.getpid()}-{time.monotonic_ns()}-{n}"  # the last agent may still hold its own
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(name)
            listener.listen(8)
            fd = listener.fileno()
            started = time.perf_counter()
            proc = subprocess.Popen([*_bwrap(agent_src), "-m", "corral_agent", "--listen-fd", str(fd)], pass_fds=[fd],
                                    stderr=subprocess.DEVNULL)
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                    conn.connect(name)
                    conn.sendall(PING)
                    if not conn.recv(64):
                        raise RuntimeError("the agent closed the connection")
                times.append(time.perf_counter() - started)
                agent = _agent_pid(proc.pid)
                anon = _status_kib(agent, "RssAnon")
                pss = _rollup_kib(agent, "Pss_Anon")
            finally:
                proc.terminate()
                proc.wait()
    return times, anon, pss


def _agent_pid(bwrap: int) -> int:
    """The python under bwrap's two processes (the deepest descendant)."""
    pid = bwrap
    while True:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:
            return pid
        if not children:
            return pid
        pid = int(children[0])


def _status_kib(pid: int, key: str) -> int:
    return next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith(key + ":"))


def _rollup_kib(pid: int, key: str) -> int:
    return next(int(line.split()[1]) for line in open(f"/proc/{pid}/smaps_rollup") if line.startswith(key + ":"))


def agent_startup(samples: int = 10, agent_src: Path = AGENT_SRC) -> str:
    """The agent's start in a raw bwrap with the base template's python (as a sandbox runs it, with
    ``-s -B``): wall time and anonymous memory per import step, the agent's own spawn → first ping
    reply, and the slowest imports (-X importtime)."""
    from figures import p50

    bwrap = _bwrap(agent_src)
    show = "; print(next(l for l in open('/proc/self/status') if l.startswith('RssAnon')).split()[1])"
    lines = [f"== agent start-up (raw bwrap, base template python, -s -B; agent from {agent_src})"]
    for label, code in PROBES.items():
        times, anon = [], 0
        for _ in range(samples):
            started = time.perf_counter()
            out = subprocess.run([*bwrap, "-c", code + show], capture_output=True, text=True, check=True).stdout
            times.append(time.perf_counter() - started)
            anon = int(out.split()[-1])
        lines.append(f"  {label:<42} p50 {1000 * p50(times):6.1f} ms   RssAnon {anon / 1024:5.1f} MiB")
    times, anon, pss = agent_ready(agent_src, samples)
    lines.append(f"  {'the agent: spawn -> first ping reply':<42} p50 {1000 * p50(times):6.1f} ms   RssAnon "
                 f"{anon / 1024:5.1f} MiB   Pss_Anon {pss / 1024:5.1f} MiB")
    err = subprocess.run([*bwrap, "-X", "importtime", "-c", "import corral_agent.server"], capture_output=True,
                         text=True, check=True).stderr
    rows = []
    for line in err.splitlines()[1:]:
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[1].isdigit():
            rows.append((int(parts[1]), parts[2]))
    lines.append("  slowest imports by cumulative time (us), one run:")
    lines += [f"    {us:>8}  {name}" for us, name in sorted(rows, reverse=True)[:15]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", default="agent,cold,pooled,exec,noop")
    parser.add_argument("--out", default="/tmp/corral-prof")
    parser.add_argument("--rate", type=int, default=250)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--agent-src", type=Path, action="append",
                        help="agent package dir(s) for the agent workload, compared in one run (default: this tree's)")
    args = parser.parse_args()
    if args.workload == "agent":  # no server, no py-spy
        for agent_src in args.agent_src or [AGENT_SRC]:
            print(agent_startup(agent_src=agent_src), flush=True)
        return
    if py_spy() is None:
        sys.exit("py-spy is not installed: pip install -c constraints.txt -e '.[bench]'")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.workload.split(","):
        print(agent_startup() if name == "agent" else profile(name, out, args.rate, args.top), flush=True)


if __name__ == "__main__":
    main()
