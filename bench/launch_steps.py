"""The server-side launch steps of a bare sandbox (no network, no server), each timed:
``launch_priv.prepare`` (disk, root, cgroups, socket), ``spawn`` (bwrap, blocked) and ``admit`` (id
maps, release), then ``teardown`` (outside the timing).

    sudo .venv/bin/python bench/launch_steps.py [--samples 30]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import corral.agent
from corral.runtime import launch_priv
from corral.runtime.backend import SandboxSpec
from corral.runtime.cgroups_priv import detect
from corral.runtime.plan import AgentRuntime, plan
from corral.runtime.seccomp import build_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TEMPLATES


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="corral-bench-", dir="/var/tmp"))
    mounts = Path(f"{data}.run")
    cgroups = detect(instance=f"bench-{uuid.uuid4().hex[:8]}")
    rootfs = TEMPLATES / "base" / "rootfs"
    runtime, seccomp = AgentRuntime.find(rootfs), build_filter()
    times: dict[str, list[float]] = {"prepare": [], "spawn": [], "admit": [], "teardown": []}
    try:
        for i in range(args.samples + 2):  # the first two warm the image cache and imports
            spec = SandboxSpec(sandbox_id=f"b{uuid.uuid4().hex[:12]}", layers=(rootfs,), cpu=1, memory_mb=256,
                               disk_mb=2048)
            p = plan(spec, sandboxes_dir=data / "sandboxes", mounts_dir=mounts, runtime=runtime,
                     agent_src=Path(corral.agent.__file__).parent, id_offset=1_000_000)
            p.sandbox_dir.parent.mkdir(exist_ok=True)
            marks = [time.perf_counter()]
            spawned = None
            try:
                prepared = launch_priv.prepare(p, cgroups)
                marks.append(time.perf_counter())
                spawned = launch_priv.spawn(p, prepared, seccomp, cgroups)
                marks.append(time.perf_counter())
                launch_priv.admit(p, spawned)
                marks.append(time.perf_counter())
            finally:
                launch_priv.teardown(p.sandbox_dir, p.root, spec.sandbox_id, cgroups)  # kills bwrap too
                if spawned is not None:
                    spawned.process.wait()
                marks.append(time.perf_counter())
            if i >= 2:
                for name, start, end in zip(times, marks, marks[1:], strict=False):
                    times[name].append(1000 * (end - start))
    finally:
        cgroups.close()
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(mounts, ignore_errors=True)
    print(f"{'step':<12}{'p50 ms':>9}{'p90 ms':>9}")
    for name, values in times.items():
        print(f"{name:<12}{statistics.median(values):>9.2f}{sorted(values)[int(0.9 * (len(values) - 1))]:>9.2f}")


if __name__ == "__main__":
    main()
