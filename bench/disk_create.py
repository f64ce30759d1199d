"""A sandbox's writable disk: ``mounts_priv.create_disk`` + ``destroy`` next to the per-create
``mkfs.ext4`` + ``mount -o loop`` + ``umount`` it replaced (same run, interleaved).

    sudo .venv/bin/python bench/disk_create.py [--samples 40] [--size-mb 2048]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from corral.runtime import mounts_priv


def mkfs_and_mount(d: Path, size_mb: int) -> None:
    image, mountpoint = d / "disk.img", d / "disk"
    mountpoint.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "nodiscard", str(image)],
                   check=True)
    subprocess.run(["mount", "-o", "loop,noatime", str(image), str(mountpoint)], check=True)
    for name in ("upper", "work"):
        (mountpoint / name).mkdir()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--size-mb", type=int, default=2048)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="corral-bench-", dir="/var/tmp"))
    sandboxes = data / "sandboxes"
    sandboxes.mkdir()
    names = ("mkfs.ext4 + mount -o loop (before)", "create_disk (cached image)")
    times: dict[str, list[float]] = {name: [] for name in names}
    teardown: dict[str, list[float]] = {name: [] for name in names}
    first = 0.0
    try:
        for i in range(args.samples + 1):
            for n, name in enumerate(names):
                d = sandboxes / f"s{i}-{n}"
                d.mkdir()
                started = time.perf_counter()
                if n == 0:
                    mkfs_and_mount(d, args.size_mb)
                else:
                    mounts_priv.create_disk(d, args.size_mb, owner=1_000_000)
                elapsed = time.perf_counter() - started
                started = time.perf_counter()
                mounts_priv.destroy(d, data / "none")
                if i == 0 and n == 1:
                    first = elapsed  # builds the cached image
                elif i:
                    times[name].append(elapsed)
                    teardown[name].append(time.perf_counter() - started)
    finally:
        for d in sandboxes.iterdir():
            mounts_priv.destroy(d, data / "none")
        shutil.rmtree(data)
    print(f"{'figure':<52}{'p50 ms':>9}{'p90 ms':>9}")
    rows = [*times.items(), *((f"  teardown after {name.split(' (')[0]}", v) for name, v in teardown.items())]
    for name, values in rows:
        p90 = sorted(values)[int(0.9 * (len(values) - 1))]
        print(f"{name:<52}{1000 * statistics.median(values):>9.2f}{1000 * p90:>9.2f}")
    before, after = (statistics.median(times[name]) for name in names)
    print(f"first create_disk (builds the image): {1000 * first:.1f} ms; ratio after/before p50: {after / before:.2f}")


if __name__ == "__main__":
    main()
