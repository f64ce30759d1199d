"""Peers measured in the same run: raw ``runsc`` (gVisor, ptrace platform) and the PyPI ``gvisor``
wrapper, each "create a sandbox, then run ``true`` in it", next to the raw bwrap primitive.

* raw runsc: an OCI bundle over the base template's rootfs (read-only, no overlay, no network);
  ``runsc run --detach`` of ``sleep``, then ``runsc exec … true``. Kill and delete are outside the timing.
* PyPI ``gvisor``: ``gvisor.Sandbox(network="none")`` then ``.exec("true")``; ``close()`` outside the timing.

Either is skipped (None) when it is not installed or does not run here.

    sudo .venv/bin/python bench/peers.py [--samples 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from figures import TEMPLATES_ROOT, p50


def runsc_create_exec(rootfs: Path, samples: int) -> list[float] | None:
    """Seconds from ``runsc run --detach`` to the end of ``runsc exec true``, per sample."""
    if shutil.which("runsc") is None:
        return None
    work = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="bench-runsc-"))
    spec = {
        "ociVersion": "1.0.2",
        "root": {"path": str(rootfs), "readonly": True},
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["/bin/sleep", "3600"], "cwd": "/",
                    "env": ["PATH=/usr/bin:/bin"]},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": k} for k in ("pid", "ipc", "uts", "mount", "network")]},
    }
    (work / "config.json").write_text(json.dumps(spec))
    runsc = ["runsc", f"--root={work}/state", "--platform=ptrace", "--network=none", "--ignore-cgroups"]
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    times = []
    try:
        for i in range(samples + 1):
            name = f"bench-{i}"
            started = time.perf_counter()
            run = subprocess.run([*runsc, "run", "--detach", f"--bundle={work}", name], **quiet)
            if run.returncode != 0:
                return None
            subprocess.run([*runsc, "exec", name, "/bin/true"], check=True, **quiet)
            if i:  # the first warms runsc's binary and the rootfs pages
                times.append(time.perf_counter() - started)
            subprocess.run([*runsc, "kill", name, "KILL"], **quiet)
            subprocess.run([*runsc, "delete", "--force", name], **quiet)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return times


def gvisor_pypi(samples: int) -> list[float] | None:
    """Seconds for ``gvisor.Sandbox()`` + ``.exec("true")`` (PyPI ``gvisor``), per sample."""
    try:
        import gvisor
    except ImportError:
        return None
    times = []
    with ThreadPoolExecutor(2) as closer:  # close() takes ~1.5 s (runsc kill + delete): not ours to time
        for i in range(samples + 1):
            started = time.perf_counter()
            try:
                sandbox = gvisor.Sandbox(network="none")
                sandbox.exec("true")
            except gvisor.Error:
                return None
            if i:
                times.append(time.perf_counter() - started)
            closer.submit(sandbox.close)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    for name, values in (("raw runsc run --detach + exec true", runsc_create_exec(TEMPLATES_ROOT, args.samples)),
                         ("PyPI gvisor Sandbox() + exec('true')", gvisor_pypi(args.samples))):
        print(f"{name:<40}" + (f"{1000 * p50(values):>10.1f} ms" if values else "   not available here"))


if __name__ == "__main__":
    main()
