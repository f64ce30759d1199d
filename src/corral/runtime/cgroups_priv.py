"""Per-sandbox cgroups (privileged: writes under /sys/fs/cgroup).

Two drivers behind one small interface:

* ``V2Cgroups`` — a unified hierarchy with the memory, pids and cpu controllers (current distros).
* ``HybridCgroups`` — controllers on v1 hierarchies (memory, pids, cpu, cpuacct) plus the cgroup2
  mount without controllers, still used for ``cgroup.kill`` (hosts like Debian with systemd hybrid).

Pausing a sandbox is cgroup2's ``cgroup.freeze`` in both: the sandbox's own group on v2, its group
in the controller-less cgroup2 mount on hybrid hosts.

Every sandbox gets ``corral/<instance>/<sandbox id>`` in each hierarchy, where the instance names one
server (one data dir), so servers sharing a host never touch each other's sandboxes. ``detect()`` picks the driver and
raises ``CgroupUnavailable`` naming what is missing. Not thread-safe per sandbox: the caller owns a
sandbox's cgroup from ``create`` to ``remove``.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from corral.runtime.mounts_priv import mountinfo_path

ROOT = Path("/sys/fs/cgroup")
GROUP = "corral"
CPU_PERIOD_US = 100_000
FREEZE_TIMEOUT = 10.0


class CgroupUnavailable(RuntimeError):
    """The host lacks a cgroup controller Corral needs."""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    pids: int
    cpu: float  # cores


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    memory_bytes: int
    pids: int
    oom_kills: int


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str:
    with open(path) as f:
        return f.read()


def _keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _set_frozen(group: Path, frozen: bool, timeout: float | None = None) -> None:
    """Write cgroup2's ``cgroup.freeze`` and wait until ``cgroup.events`` reports the new state.

    The kernel signals a change of ``cgroup.events`` as POLLPRI, so this waits without polling
    the file in a loop. Freezing that does not settle in ``timeout`` is undone and raises.
    """
    timeout = FREEZE_TIMEOUT if timeout is None else timeout
    want = f"frozen {int(frozen)}"
    _write(group / "cgroup.freeze", str(int(frozen)))
    deadline = time.monotonic() + timeout
    with open(group / "cgroup.events") as events:
        poller = select.poll()
        poller.register(events, select.POLLPRI)
        while want not in events.read().splitlines():
            left = deadline - time.monotonic()
            if left <= 0:
                if frozen:
                    _write(group / "cgroup.freeze", "0")
                raise TimeoutError(f"{group}: not {'frozen' if frozen else 'thawed'} after {timeout:.0f}s")
            poller.poll(left * 1000)
            events.seek(0)


def _kill_and_rmdir(path: Path) -> None:
    """Kill every process in a cgroup directory, then remove it (children first)."""
    if not path.is_dir():
        return
    with os.scandir(path) as entries:  # d_type from cgroupfs: no stat per control file
        children = [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    for child in children:
        _kill_and_rmdir(child)
    freeze_file = path / "cgroup.freeze"  # a paused sandbox: thawed, so its processes can exit
    if freeze_file.exists():
        with contextlib.suppress(OSError):
            _write(freeze_file, "0")
    kill_file = path / "cgroup.kill"
    if kill_file.exists():
        with contextlib.suppress(OSError):
            _write(kill_file, "1")
    for _ in range(200):
        try:
            pids = [int(p) for p in _read(path / "cgroup.procs").split()]
        except OSError:
            pids = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.005)  # the kernel frees a cgroup only after its last task has exited
    path.rmdir()


class Cgroups:
    """Interface of a cgroup driver."""

    name = "abstract"
    instance = "default"

    def group(self, base: Path) -> Path:
        return base / GROUP / self.instance

    def hierarchies(self) -> list[Path]:
        raise NotImplementedError

    def create(self, sandbox_id: str, limits: Limits) -> None:
        raise NotImplementedError

    def usage(self, sandbox_id: str) -> Usage:
        raise NotImplementedError

    def oom_kills(self, sandbox_id: str) -> int:
        """How many processes the memory limit has killed (one file read: cheap enough per command)."""
        raise NotImplementedError

    def attach(self, sandbox_id: str, pid: int) -> None:
        for base in self.hierarchies():
            _write(self.group(base) / sandbox_id / "cgroup.procs", str(pid))

    def procs_fds(self, sandbox_id: str) -> list[int]:
        """The sandbox's ``cgroup.procs`` files, opened for writing (close-on-exec; the caller closes
        them): a process given them joins the sandbox's cgroups itself by writing ``0`` to each."""
        fds: list[int] = []
        try:
            for base in self.hierarchies():
                fds.append(os.open(self.group(base) / sandbox_id / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def freezer(self, sandbox_id: str) -> Path:
        """The cgroup2 group whose ``cgroup.freeze`` pauses this sandbox."""
        raise NotImplementedError

    def cgroup2_mount(self) -> Path | None:
        """Where the host's cgroup2 filesystem is mounted, if it is."""
        raise NotImplementedError

    def favor_migrations(self) -> str:
        """Turn on cgroup2's ``favordynmods`` (see ``favor_dynamic_changes``); says what it did."""
        mount = self.cgroup2_mount()
        if mount is None:
            return "not available: no cgroup2 mount"
        return favor_dynamic_changes(mount)

    def freeze(self, sandbox_id: str) -> None:
        """Stop every process of the sandbox (cgroup2 freezer); returns once all are frozen."""
        _set_frozen(self.freezer(sandbox_id), True)

    def thaw(self, sandbox_id: str) -> None:
        _set_frozen(self.freezer(sandbox_id), False)

    def remove(self, sandbox_id: str) -> None:
        """Kill everything left in the sandbox's cgroups and delete them. Idempotent."""
        for base in self.hierarchies():
            _kill_and_rmdir(self.group(base) / sandbox_id)

    def close(self) -> None:
        """Remove this server's (empty) instance groups."""
        for base in self.hierarchies():
            with contextlib.suppress(OSError):
                self.group(base).rmdir()

    def existing(self) -> set[str]:
        """Sandbox ids that have a cgroup in any hierarchy (used to find orphans)."""
        found: set[str] = set()
        for base in self.hierarchies():
            group = self.group(base)
            if group.is_dir():
                found.update(p.name for p in group.iterdir() if p.is_dir())
        return found

    def _mkdirs(self, sandbox_id: str) -> None:
        for base in self.hierarchies():
            self.group(base).mkdir(parents=True, exist_ok=True)
            (self.group(base) / sandbox_id).mkdir(exist_ok=True)


class HybridCgroups(Cgroups):
    """cgroup v1 controllers; cgroup2 (no controllers) only for ``cgroup.kill``."""

    name = "v1"

    def __init__(self, root: Path = ROOT, instance: str = "default") -> None:
        self.root = root
        self.unified = root / "unified"
        self.instance = instance

    def hierarchies(self) -> list[Path]:
        bases = [self.root / c for c in ("memory", "pids", "cpu", "cpuacct")]
        if (self.unified / "cgroup.procs").exists():
            bases.append(self.unified)
        return bases

    def create(self, sandbox_id: str, limits: Limits) -> None:
        self._mkdirs(sandbox_id)
        mem = self.group(self.root / "memory") / sandbox_id
        _write(mem / "memory.limit_in_bytes", str(limits.memory_bytes))
        if (mem / "memory.memsw.limit_in_bytes").exists():
            _write(mem / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        _write(self.group(self.root / "pids") / sandbox_id / "pids.max", str(limits.pids))
        cpu = self.group(self.root / "cpu") / sandbox_id
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(max(1000, int(limits.cpu * CPU_PERIOD_US))))

    def usage(self, sandbox_id: str) -> Usage:
        mem = self.group(self.root / "memory") / sandbox_id
        return Usage(
            cpu_seconds=int(_read(self.group(self.root / "cpuacct") / sandbox_id / "cpuacct.usage")) / 1e9,
            memory_bytes=int(_read(mem / "memory.usage_in_bytes")),
            pids=int(_read(self.group(self.root / "pids") / sandbox_id / "pids.current")),
            oom_kills=self.oom_kills(sandbox_id),
        )

    def oom_kills(self, sandbox_id: str) -> int:
        mem = self.group(self.root / "memory") / sandbox_id
        return _keyed(_read(mem / "memory.oom_control")).get("oom_kill", 0)

    def cgroup2_mount(self) -> Path | None:
        return self.unified if (self.unified / "cgroup.procs").exists() else None

    def freezer(self, sandbox_id: str) -> Path:
        unified = self.cgroup2_mount()
        if unified is None:
            raise CgroupUnavailable(f"pausing needs the cgroup2 freezer; no cgroup2 mount at {self.unified}")
        return self.group(unified) / sandbox_id


class V2Cgroups(Cgroups):
    """A unified cgroup2 hierarchy with memory, pids and cpu controllers."""

    name = "v2"

    def __init__(self, root: Path = ROOT, instance: str = "default") -> None:
        self.root = root
        self.instance = instance

    def hierarchies(self) -> list[Path]:
        return [self.root]

    def create(self, sandbox_id: str, limits: Limits) -> None:
        self._mkdirs(sandbox_id)
        for parent in (self.root, self.root / GROUP, self.group(self.root)):  # delegate controllers downwards
            _write(parent / "cgroup.subtree_control", "+memory +pids +cpu")
        cg = self.group(self.root) / sandbox_id
        _write(cg / "memory.max", str(limits.memory_bytes))
        if (cg / "memory.swap.max").exists():
            _write(cg / "memory.swap.max", "0")
        _write(cg / "pids.max", str(limits.pids))
        _write(cg / "cpu.max", f"{max(1000, int(limits.cpu * CPU_PERIOD_US))} {CPU_PERIOD_US}")

    def usage(self, sandbox_id: str) -> Usage:
        cg = self.group(self.root) / sandbox_id
        return Usage(
            cpu_seconds=_keyed(_read(cg / "cpu.stat")).get("usage_usec", 0) / 1e6,
            memory_bytes=int(_read(cg / "memory.current")),
            pids=int(_read(cg / "pids.current")),
            oom_kills=self.oom_kills(sandbox_id),
        )

    def oom_kills(self, sandbox_id: str) -> int:
        return _keyed(_read(self.group(self.root) / sandbox_id / "memory.events")).get("oom_kill", 0)

    def freezer(self, sandbox_id: str) -> Path:
        return self.group(self.root) / sandbox_id

    def cgroup2_mount(self) -> Path:
        return self.root


FEATURES = Path("/sys/kernel/cgroup/features")
FAVOR = "favordynmods"


def super_options(mountinfo: str, mount_point: Path) -> set[str] | None:
    """The filesystem's own (super block) options of the mount at ``mount_point``, from the text of
    ``/proc/self/mountinfo``; None if nothing is mounted there."""
    found = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and mountinfo_path(fields[4]) == str(mount_point) and " - " in line:
            found = set(line.split(" - ", 1)[1].split()[-1].split(","))  # the last mount there wins
    return found


def favor_dynamic_changes(mount: Path, features: Path = FEATURES) -> str:
    """Remount cgroup2 with ``favordynmods`` if the kernel has it and it is off; says what it did.

    Every create moves a process into the sandbox's cgroups. Without the option each move takes the
    kernel's global threadgroup lock for writing, which waits for an RCU grace period when no other
    move happened just before: 5-12 ms of a cold create on a 2-core host, against ~0.1 ms with it.
    The kernel documents the option for exactly this use (frequent migrations), at a small cost to
    fork and exit; since Linux 6.18 it also switches to a per-process lock and stays on until reboot.
    The other mount options are kept (``mount -o remount`` merges them)."""
    try:
        supported = FAVOR in features.read_text().split()
        options = _options_now(mount)
    except OSError as exc:
        return f"not available: {exc}"
    if not supported:
        return "not available in this kernel"
    if options is None:
        return f"not available: nothing mounted at {mount}"
    if FAVOR in options:
        return "on (already)"
    tool = shutil.which("mount", path="/usr/sbin:/usr/bin:/sbin:/bin") or "mount"
    proc = subprocess.run([tool, "-o", f"remount,{FAVOR}", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"could not be turned on: {proc.stderr.strip() or proc.returncode}"
    # the kernel applies cgroup2's flags only from the host's cgroup namespace (not in a container)
    if FAVOR not in (_options_now(mount) or ()):
        return "not applied by the kernel (not the host's cgroup namespace?)"
    return "on"


def _options_now(mount: Path) -> set[str] | None:
    with open("/proc/self/mountinfo") as f:
        return super_options(f.read(), mount)


def detect(root: Path = ROOT, instance: str = "default") -> Cgroups:
    """Pick the driver this host supports, or raise ``CgroupUnavailable`` naming what is missing."""
    controllers = root / "cgroup.controllers"
    if controllers.exists():
        have = set(_read(controllers).split())
        missing = {"memory", "pids", "cpu"} - have
        if missing:
            raise CgroupUnavailable(f"cgroup v2 at {root} lacks controllers: {', '.join(sorted(missing))}")
        return V2Cgroups(root, instance)
    missing = [c for c in ("memory", "pids", "cpu", "cpuacct") if not (root / c / "cgroup.procs").exists()]
    if missing:
        raise CgroupUnavailable(
            f"no cgroup v2 controllers and no v1 hierarchy for: {', '.join(missing)} under {root}"
        )
    return HybridCgroups(root, instance)
