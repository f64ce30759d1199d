"""The launch plan: everything a sandbox will be given, computed without side effects.

``plan(...)`` turns a ``SandboxSpec`` into the bubblewrap argv, the cgroup limits and the paths
used, so it can be read and unit-tested without root. ``launch_priv`` carries it out.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from corral.runtime.backend import SandboxSpec
from corral.runtime.cgroups_priv import Limits

# Capabilities the agent keeps inside its user namespace (none of them count on the host):
# switching to the sandbox user, owning files it writes for callers, signalling any sandbox process.
AGENT_CAPS = (
    "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETFCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_AUDIT_WRITE", "CAP_MKNOD",
)
# Capability numbers (linux/capability.h) of AGENT_CAPS.
CAP_NUMBERS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5, "CAP_SETGID": 6,
    "CAP_SETUID": 7, "CAP_NET_BIND_SERVICE": 10, "CAP_SYS_CHROOT": 18, "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29,
    "CAP_SETFCAP": 31,
}
AGENT_CAPS_MASK = sum(1 << CAP_NUMBERS[cap] for cap in AGENT_CAPS)
RT_DIR = "/.corral/rt"
AGENT_LIB = "/.corral/lib"
AGENT_PKG = "corral_agent"
INTERP_PKG = "corral_interp"
LOADERS = {
    "x86_64": ("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "usr/lib/x86_64-linux-gnu"),
    "aarch64": ("usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1", "usr/lib/aarch64-linux-gnu"),
}
LOG_NAME = "runtime.log"  # on the sandbox's disk, beside the overlay's dirs (``LaunchPlan.log_path``)
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def agent_env() -> dict[str, str]:
    """The agent's whole environment (commands get theirs from the request, not from it)."""
    return {"PATH": SANDBOX_PATH, "LANG": "C.UTF-8", "PYTHONHOME": f"{RT_DIR}/usr", "PYTHONPATH": AGENT_LIB}


def agent_env_args() -> list[str]:
    """``agent_env`` as bwrap's ``--setenv NAME VALUE`` arguments."""
    return [a for name, value in agent_env().items() for a in ("--setenv", name, value)]


def agent_binds(runtime: AgentRuntime, agent_src: Path) -> list[tuple[Path, str]]:
    """Host dirs of the agent's runtime and code, and where a sandbox (and the zygote) has them."""
    return [
        (runtime.rootfs, RT_DIR),
        (agent_src, f"{AGENT_LIB}/{AGENT_PKG}"),
        (agent_src.parent / "interpreter", f"{AGENT_LIB}/{INTERP_PKG}"),
    ]


@dataclass(frozen=True)
class AgentRuntime:
    """The interpreter the agent runs on: the base rootfs's python, started through its own loader,
    so the agent works in any template (no python, other libc) and the template cannot replace it."""

    rootfs: Path
    python: str  # path inside the rootfs, e.g. usr/bin/python3.11
    loader: str
    libdir: str
    bundle: str | None = None  # the agent's start-up bundle in its __pycache__ (``agent_bundle``), if built
    tools: str | None = None  # corral-tools in the agent's __pycache__ (``static_tools``), if built

    @classmethod
    def find(cls, rootfs: Path, machine: str | None = None) -> AgentRuntime:
        machine = machine or platform.machine()
        loader, libdir = LOADERS[machine]
        pythons = sorted(p.name for p in (rootfs / "usr/bin").glob("python3.[0-9]*") if p.name[-1].isdigit())
        if not pythons:
            raise FileNotFoundError(f"no python3.X interpreter in {rootfs}/usr/bin")
        return cls(rootfs=rootfs, python=f"usr/bin/{pythons[-1]}", loader=loader, libdir=libdir)

    def argv(self, fd: int, channel: str = "--listen-fd") -> list[str]:
        """The agent's command line; ``channel`` says what ``fd`` is (``--listen-fd``, ``--control-fd``).
        ``-c``, not ``-m``: runpy's own imports took ~13 ms of a gVisor sandbox's start."""
        bundle = ["--bundle", self.bundle] if self.bundle else []
        return [*self.python_argv(), "-c", f"import {AGENT_PKG}.__main__", channel, str(fd), *bundle]

    def stdlib(self) -> str:
        """The runtime's stdlib dir, relative to its rootfs (``usr/lib/python3.11``)."""
        return f"usr/lib/{Path(self.python).name}"

    def pid1_argv(self, close: tuple[int, ...] = ()) -> list[str]:
        """Pid 1 of a sandbox whose agent comes from the zygote: it tells the host it runs (one byte on
        stdout, so bwrap has finished the sandbox), then only waits, holding nothing but /dev/null
        (sandbox root can reopen or hijack pid 1's fds: it is dumpable and has the same uid); the
        fds bwrap leaves it (``close``) are closed. ``corral-tools pid1`` (static: one exec, ~0.7 MiB
        resident, shared by every sandbox's pid 1), or without it the runtime's bash and sleep
        through the runtime's loader (two dynamic execs); either works in any template, and bwrap's
        errors still reach the log."""
        if self.tools:
            return [f"{AGENT_LIB}/{AGENT_PKG}/__pycache__/{self.tools}", "pid1", *(str(fd) for fd in close)]
        run = f"{RT_DIR}/{self.loader} --library-path {RT_DIR}/{self.libdir}"
        closing = "".join(f" {fd}<&-" for fd in close)
        return [
            *run.split(), f"{RT_DIR}/usr/bin/bash", "--norc", "--noprofile", "-c",
            f"printf . && exec {run} {RT_DIR}/usr/bin/sleep infinity </dev/null >/dev/null 2>&1{closing}",
        ]

    def python_argv(self) -> list[str]:
        """The runtime's python inside a sandbox (for the agent, or a helper the host runs there)."""
        return [
            f"{RT_DIR}/{self.loader}", "--library-path", f"{RT_DIR}/{self.libdir}",
            # no site: stdlib only, ~5 ms less per start; -P: the cwd (the sandbox's / for forked agents)
            # is never searched, so nothing in a template or written by sandbox root is imported
            f"{RT_DIR}/{self.python}", "-S", "-s", "-B", "-P",
        ]


@dataclass(frozen=True)
class Fds:
    """File descriptor numbers handed to bwrap."""

    block: int  # bwrap waits on it until the user-namespace maps are written
    info: int  # bwrap reports its child pid here
    seccomp: int  # the BPF program
    listen: int | None  # the agent's listening socket; None: the agent comes from the zygote


@dataclass(frozen=True)
class LaunchPlan:
    sandbox_id: str
    sandbox_dir: Path  # private (0700): disk image, agent socket
    root: Path  # the overlay mount point, under the searchable mounts dir
    layers: tuple[Path, ...]
    disk_mb: int
    limits: Limits
    id_offset: int
    runtime: AgentRuntime
    agent_src: Path
    net_dirs: tuple[tuple[Path, str], ...] = ()  # networked sandboxes: the CA bundle dir
    net_files: tuple[tuple[Path, str], ...] = ()  # networked sandboxes: /etc/resolv.conf
    extra_binds: tuple[tuple[Path, str], ...] = ()
    # bwrap: the agent's runtime and code, bound read-only once for every sandbox (``runtime_binds``)
    # and bound from there by bwrap inside the sandbox's own mount namespace. None: bound into each
    # root on the host (gVisor).
    shared_runtime: Path | None = None
    # bwrap starts in a network namespace made for the sandbox (``netspares``) instead of making one
    joins_netns: bool = False

    @property
    def log_path(self) -> Path:
        """bwrap's and the agent's stdout/stderr: on the sandbox's own disk image, beside (not in) the
        overlay's upper dir, so it is invisible by path yet everything written to it counts against the
        sandbox's disk limit (sandbox root can reach these fds through /proc and make them write)."""
        return self.sandbox_dir / "disk" / LOG_NAME

    def ro_binds(self) -> list[tuple[Path, str]]:
        """Host dirs bound read-only into the root (by the launcher, before bwrap starts)."""
        if self.shared_runtime is not None:
            return list(self.extra_binds)
        return [*agent_binds(self.runtime, self.agent_src), *self.net_dirs, *self.extra_binds]

    def runtime_binds(self) -> list[tuple[Path, str]]:
        """Read-only binds bwrap makes inside the sandbox (with a shared runtime): the shared runtime
        mounts and the network's dirs (the CA bundle), from paths bwrap's uid can reach."""
        if self.shared_runtime is None:
            return []
        shared = self.shared_runtime
        runtime = [(shared / Path(inside).name, inside) for _, inside in agent_binds(self.runtime, self.agent_src)]
        return [*runtime, *self.net_dirs]

    def argv(self, fds: Fds) -> list[str]:
        """The bubblewrap command line: every namespace, the overlay as /, the agent's runtime read-only.

        With an agent from the zygote (``fds.listen`` None) bwrap's command is a capability-less pid 1
        that only waits (``--as-pid-1``: no second bwrap process); otherwise it is the agent."""
        if fds.listen is None:
            command, own = ["--as-pid-1"], self.runtime.pid1_argv(close=(fds.block, fds.seccomp))
        else:
            command, own = [a for cap in AGENT_CAPS for a in ("--cap-add", cap)], self.runtime.argv(fds.listen)
        return [
            "bwrap",
            "--unshare-user", "--unshare-ipc", "--unshare-pid", *([] if self.joins_netns else ["--unshare-net"]),
            "--unshare-uts", "--unshare-cgroup",
            "--userns-block-fd", str(fds.block), "--info-fd", str(fds.info),
            "--uid", "0", "--gid", "0",
            "--cap-drop", "ALL", *command,
            "--hostname", self.sandbox_id[:63],
            "--die-with-parent",
            "--bind", str(self.root), "/",  # recursive: brings the launcher's read-only binds along
            *[a for src, dst in self.runtime_binds() for a in ("--ro-bind", str(src), dst)],
            *[a for src, dst in self.net_files for a in ("--ro-bind", str(src), dst)],
            "--proc", "/proc",
            "--dev", "/dev",
            "--seccomp", str(fds.seccomp),
            "--clearenv", *agent_env_args(),
            "--chdir", "/",
            "--", *own,
        ]


def plan(
    spec: SandboxSpec, *, sandboxes_dir: Path, mounts_dir: Path, runtime: AgentRuntime, agent_src: Path,
    id_offset: int, net_dirs: tuple[tuple[Path, str], ...] = (), net_files: tuple[tuple[Path, str], ...] = (),
    shared_runtime: Path | None = None, joins_netns: bool = False,
) -> LaunchPlan:
    """Compute the launch of one sandbox (no side effects)."""
    for _, inside in spec.binds:
        if not inside.startswith("/.corral/") or ".." in inside.split("/"):
            raise ValueError(f"extra binds go under /.corral/, not {inside!r}")
    limits = Limits(memory_bytes=spec.memory_mb * 1024 * 1024, pids=spec.pids, cpu=spec.cpu)
    return LaunchPlan(
        sandbox_id=spec.sandbox_id, sandbox_dir=sandboxes_dir / spec.sandbox_id,
        root=mounts_dir / spec.sandbox_id, layers=spec.layers,
        disk_mb=spec.disk_mb, limits=limits, id_offset=id_offset, runtime=runtime, agent_src=agent_src,
        net_dirs=net_dirs, net_files=net_files,
        extra_binds=spec.binds, shared_runtime=shared_runtime, joins_netns=joins_netns,
    )
