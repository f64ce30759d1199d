"""Carry out a ``LaunchPlan`` (privileged: mounts, cgroups, user-namespace maps, root spawns).

The steps, in order (docs/security.md lists them too):

1. ``prepare``: make the sandbox dir (0700, root) with its ext4 disk, which also holds the runtime
   log that bwrap and the agent write to (sandbox root can make them write: on the disk image that
   counts against its limit), mounted with the root overlay (at its path in the mounts dir) in a
   new mount namespace, the sandbox's own (``mountns_priv``), never the host's; create its cgroups
   with limits; bind the agent's listening unix socket (host-only path).
2. ``spawn``: start bubblewrap as the unprivileged host uid ``id_offset`` in that mount namespace,
   handing it the seccomp
   program: a ``sh`` stub is moved into the sandbox's cgroups (every hierarchy) and only then execs
   ``setpriv`` (to ``id_offset``, no groups, no capabilities) and bwrap, so bwrap, and
   its cgroup namespace, start inside them; the only host path it
   resolves is the root's mount point (in the 0711 mounts dir); it creates all namespaces and then
   blocks before doing anything inside them.
3. ``admit``: read bwrap's child pid, write the user-namespace maps (sandbox 0..65535 → host
   ``id_offset``..+65535), plug the sandbox's network into its (still idle) netns
   (``network``/``netns_priv``) unless bwrap started in one made and plugged for it
   (``netspares``), then unblock bwrap.

From then on bwrap mounts the root, drops to the agent's capability set, installs seccomp and
execs the agent; or, with the agent zygote (``corral.runtime.zygote``), execs a capability-less
pid 1 that reports it runs, after which an agent forked from the zygote joins the sandbox.
Nothing in a sandbox ever runs as a host id below ``id_offset``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.runtime import mountns_priv, mounts_priv, netns_priv
from corral.runtime.cgroups_priv import Cgroups
from corral.runtime.host import SET_SANDBOX_NOFILE, sandbox_nofile
from corral.runtime.plan import Fds, LaunchPlan
from corral.runtime.seccomp import program_fd

ID_RANGE = 65536
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC


@dataclass
class Prepared:
    listener: socket.socket
    socket_path: Path
    ns: int  # the sandbox's mount namespace, until bwrap starts in it (then ``release``d)
    disk: int  # the sandbox's disk (its root dir): the host's way to it, for the sandbox's life
    log: int  # the runtime log on that disk, for bwrap's and the agent's output (then ``release``d)
    root: tuple[int, int]  # (st_dev, st_ino) of the sandbox's root
    netns: int = -1  # the network namespace made for it (``LaunchPlan.joins_netns``), until bwrap starts in it

    def release(self) -> None:
        """Close what only starting bwrap needs (the namespaces, the log). Idempotent."""
        for name in ("ns", "log", "netns"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


@dataclass
class Spawned:
    process: subprocess.Popen[bytes]
    info_r: int
    block_w: int
    ready: io.FileIO | None = None  # zygote mode: pid 1 writes one byte here once it runs
    init_pidfd: int = -1  # set by ``admit``: a pidfd of the sandbox's pid 1, opened while it waits


def prepare(plan: LaunchPlan, cgroups: Cgroups, spare: mounts_priv.Spare | None = None) -> Prepared:
    """``spare``: a disk made ahead (``mounts_priv.make_spare``) of the plan's size, taken by renaming.
    The disk and the root are mounted in a new mount namespace, the sandbox's own (``mountns_priv``),
    which bwrap starts in; the host reaches the disk through ``Prepared.disk``."""
    fds: list[int] = []
    try:
        with mountns_priv.fresh() as ns:
            make_dir(plan, spare)
            d = plan.sandbox_dir
            mounts_priv.mount_root(plan.root, d / "disk", list(plan.layers), plan.ro_binds(),
                                   tuple(inside for _, inside in plan.runtime_binds()))
            fds.append(os.dup(ns))
            fds.append(os.open(d / "disk", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            fds.append(os.open(plan.log_path, _LOG_FLAGS, 0o600))
            root = os.stat(plan.root)
            mountns_priv.trim()
        cgroups.create(plan.sandbox_id, plan.limits)
        path = d / "agent.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            os.chmod(path, 0o600)
            listener.listen(256)
        except BaseException:
            listener.close()
            raise
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    ns_fd, disk, log = fds
    return Prepared(listener=listener, socket_path=path, ns=ns_fd, disk=disk, log=log, root=(root.st_dev, root.st_ino))


def make_dir(plan: LaunchPlan, spare: mounts_priv.Spare | None) -> None:
    """The sandbox dir with its mounted disk (in this thread's mount namespace): a spare renamed
    into place, or made now."""
    plan.root.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    d = plan.sandbox_dir
    if spare is not None and mounts_priv.take_spare(spare, d):
        return
    d.mkdir(mode=0o700)
    mounts_priv.create_disk(d, plan.disk_mb, owner=plan.id_offset)


# Started in a session of its own, waits for one line on stdin (sent once its pid is in the
# cgroups), sets the soft limit of open files sandboxes get (``host.sandbox_nofile``: the server
# raised its own), then becomes bwrap through setpriv (the sandbox uid); on EOF (the server died
# first) it exits. Dropping privileges there rather than in Popen(user=...) lets CPython vfork the
# stub (it does with start_new_session, not with user=): a fork copies the server's page tables
# with the GIL held (~8-9 ms at 150 MiB, more when bigger). ``corral-tools launch`` does all this in
# one static exec (``_stub``); this is its stand-in.
_STUB = f'read -r _ && {SET_SANDBOX_NOFILE} && exec "$@" </dev/null'


SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@functools.cache
def _tool(name: str) -> str:
    """A host tool's absolute path from the system dirs (never the server's PATH: the stub runs
    them as root), so the stub's exec searches no PATH."""
    return shutil.which(name, path=SYSTEM_PATH) or name


def _stub(plan: LaunchPlan, bwrap: list[str], cgroup_fds: Sequence[int] = ()) -> list[str]:
    """The command that becomes ``bwrap`` once released: ``corral-tools launch`` (one static exec;
    given ``cgroup_fds``, it joins the sandbox's cgroups itself), or without it a shell and setpriv
    (two dynamic ones)."""
    if plan.runtime.tools:
        tools = plan.agent_src / "__pycache__" / plan.runtime.tools
        cgroups = ["--cgroup-fds", ",".join(map(str, cgroup_fds))] if cgroup_fds else []
        return [str(tools), "launch", str(sandbox_nofile()), str(plan.id_offset), *cgroups, "--", _tool(bwrap[0]),
                *bwrap[1:]]
    return ["/bin/sh", "-c", _STUB, "corral-bwrap", str(sandbox_nofile()), *_as_sandbox_uid(plan.id_offset, bwrap)]


def _as_sandbox_uid(uid: int, argv: list[str]) -> list[str]:
    """``argv`` as ``uid``/``uid`` with no supplementary groups (setpriv's change of uid from root
    leaves no capabilities, as Popen(user=...) did)."""
    return [_tool("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", _tool(argv[0]), *argv[1:]]


def spawn(
    plan: LaunchPlan, prepared: Prepared, seccomp_filter: bytes, cgroups: Cgroups, zygote: bool = False,
) -> Spawned:
    """Start bwrap as the unprivileged id-offset uid inside the sandbox's cgroups (so its cgroup
    namespace is rooted at the sandbox's own groups) and mount namespace; it blocks until ``admit``
    releases it. The caller then ``release``s ``prepared`` (the log fd may still serve the joiner).

    ``zygote``: its command is a waiting pid 1 whose stdout is ``Spawned.ready_r`` and the agent
    comes later (``zygote.request_joiner``, ``zygote.finish_agent``); the listener stays with the
    caller. Otherwise bwrap runs the agent on the listener."""
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC) if zygote else (None, None)
    seccomp_fd = program_fd(seccomp_filter)
    listen = None if zygote else prepared.listener.fileno()
    fds = Fds(block=block_r, info=info_w, seccomp=seccomp_fd, listen=listen)
    log = prepared.log
    cgroup_fds: list[int] = []
    try:
        # corral-tools' stub joins the sandbox's cgroups itself once released (no wait for the
        # server's writes); the stand-in is moved by the server before its release
        if plan.runtime.tools:
            cgroup_fds = cgroups.procs_fds(plan.sandbox_id)
        # bwrap starts in the sandbox's mount namespace, and in its network namespace if one was made
        joined = netns_priv.entered(prepared.netns) if prepared.netns >= 0 else contextlib.nullcontext()
        with joined, mountns_priv.entered(prepared.ns):
            process = subprocess.Popen(
                _stub(plan, plan.argv(fds), cgroup_fds),
                stdin=subprocess.PIPE, stdout=log if ready_w is None else ready_w, stderr=log,
                start_new_session=True,
                pass_fds=(*(fd for fd in (fds.block, fds.info, fds.seccomp, listen) if fd is not None), *cgroup_fds),
            )
        try:
            if not cgroup_fds:
                cgroups.attach(plan.sandbox_id, process.pid)
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            process.stdin.close()
        except BaseException:
            process.kill()
            process.wait()
            raise
    except BaseException:
        for fd in (info_r, block_w, ready_r):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for fd in (info_w, block_r, seccomp_fd, ready_w, *cgroup_fds):
            if fd is not None:
                os.close(fd)
        if not zygote:
            prepared.listener.close()
    ready = None if ready_r is None else io.FileIO(ready_r, "rb")
    return Spawned(process=process, info_r=info_r, block_w=block_w, ready=ready)


def admit(plan: LaunchPlan, spawned: Spawned, plug: Callable[[int], None] | None = None) -> int:
    """Map ids, plug its network (``plug(child pid)``: the netns exists, nothing runs in it yet),
    release it. Returns the sandbox's init pid (host view); ``spawned.init_pidfd`` is a pidfd of it.
    bwrap and its child are in the sandbox's cgroups since ``spawn``."""
    try:
        data = b""
        while b"}" not in data:
            chunk = os.read(spawned.info_r, 4096)
            if not chunk:
                raise RuntimeError("bubblewrap exited before creating the sandbox namespaces")
            data += chunk
        child = int(json.loads(data[: data.index(b"}") + 1])["child-pid"])
        spawned.init_pidfd = os.pidfd_open(child)  # it waits for us, so the pid is still its own
        mapping = f"0 {plan.id_offset} {ID_RANGE}\n"
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{child}/{name}", "w") as f:
                f.write(mapping)
        if plug is not None:
            plug(child)
        os.write(spawned.block_w, b"1")
        return child
    finally:
        for fd in (spawned.info_r, spawned.block_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def teardown(sandbox_dir: Path, root: Path, sandbox_id: str, cgroups: Cgroups) -> None:
    """Kill all processes, remove cgroups, unmount and delete the sandbox's files. Idempotent. A
    cgroup still busy (its last process exiting) does not keep the files: both are tried, then the
    first failure is raised."""
    try:
        cgroups.remove(sandbox_id)
    finally:
        mounts_priv.destroy(sandbox_dir, root)


def kill_strays(id_offset: int, mounts_dir: Path) -> list[int]:
    """SIGKILL this server's leftover bwrap processes: running as a sandbox id with one of this
    server's sandbox roots on their command line (other servers on the host keep theirs).

    Only for start-up, when no sandbox is live: it catches a bwrap child that a crash left
    between clone and cgroup placement, where no cgroup kill can reach it."""
    marker = f"{mounts_dir}/".encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            uid = entry.stat().st_uid
            mine = id_offset <= uid < id_offset + ID_RANGE and marker in (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if mine:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed
