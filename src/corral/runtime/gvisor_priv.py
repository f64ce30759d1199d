"""Carry out a gVisor launch (privileged: mounts, cgroups, runsc as root).

The steps, in order (docs/gvisor.md lists them too):

1. ``prepare``: the sandbox dir (0700) with its ext4 disk; the root overlay with the agent's runtime
   bound read-only (``mounts_priv``, as for bwrap); cgroups with limits; ``bundle/config.json``.
2. ``spawn``: a root shell writes its own pid into the sandbox's cgroups (every hierarchy) and execs
   ``runsc run``, so runsc, its gofer and its sentry start inside the limits; the agent's control
   socket is the container's stdin. A networked sandbox's netns (made and plugged by the server
   before) is named in the config; runsc moves its veth's address and routes into netstack.
3. ``delete``: after the processes are gone, ``runsc delete --force`` removes runsc's state.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from pathlib import Path

from corral.runtime import gvisor_preload, launch_priv, mounts_priv, oci_spec
from corral.runtime.cgroups_priv import Cgroups, Limits
from corral.runtime.plan import LaunchPlan

_JOIN_CGROUPS = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
# This runsc takes any netns in which /proc/sys/net/core/rmem_default exists for the host's and
# refuses it; on newer kernels (6.18 here) every netns has that file. So runsc gets a mount namespace of its own
# (host mounts still propagate into it) where an empty read-only tmpfs covers /proc/sys/net. Its
# gofer, in a user namespace, may mount a procfs only while one procfs there is fully visible: a
# second, uncovered procfs is mounted on the sandbox's empty ``proc`` dir for that.
_HIDE_NET_SYSCTLS = [
    "unshare", "--mount", "--propagation", "slave", "/bin/sh", "-c",
    'mount -t proc -o nosuid,nodev,noexec corral-proc "$0" && '
    'mount -t tmpfs -o ro,size=4k,mode=555 corral-nosysctl /proc/sys/net || exit 125; exec "$@"',
]


def prepare(
    plan: LaunchPlan, cgroups: Cgroups, netns: str | None = None, spare: mounts_priv.Spare | None = None,
    preload: gvisor_preload.Preload | None = None,
) -> tuple[Path, bool]:
    """Disk, root, cgroups and the OCI bundle (``netns``: the plugged netns' path; ``spare``: a disk
    made ahead, see ``launch_priv.make_dir``; ``preload``: the stat fix-up, unless the template has an
    ``/etc/ld.so.preload`` of its own); returns the bundle dir and whether the fix-up is bound."""
    launch_priv.make_dir(plan, spare)
    d = plan.sandbox_dir
    # the stat fix-up's dir is bound by runsc, onto a mount point made here (/.corral is read-only)
    mounts_priv.mount_root(plan.root, d / "disk", list(plan.layers), plan.ro_binds(), (gvisor_preload.INSIDE_DIR,))
    if preload is not None and gvisor_preload.template_has_own(plan.root):
        preload = None
    limits = Limits(memory_bytes=oci_spec.memory_limit_bytes(plan), pids=oci_spec.pids_limit(plan), cpu=plan.limits.cpu)
    cgroups.create(plan.sandbox_id, limits)
    bundle = d / "bundle"
    bundle.mkdir(mode=0o700)
    (bundle / "config.json").write_text(json.dumps(oci_spec.config(plan, netns, preload), indent=1))
    return bundle, preload is not None


def spawn(
    plan: LaunchPlan, bundle: Path, state_root: Path, cgroups: Cgroups, networked: bool = False,
) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """Start ``runsc run`` inside the sandbox's cgroups; returns it and the host end of the control socket."""
    state_root.mkdir(mode=0o700, parents=True, exist_ok=True)
    procs = [str(cgroups.group(base) / plan.sandbox_id / "cgroup.procs") for base in cgroups.hierarchies()]
    argv = [
        "/bin/sh", "-c", _JOIN_CGROUPS, "corral-join", *procs, "--",
        *([*_HIDE_NET_SYSCTLS, str(_proc_dir(plan))] if networked else []),
        *oci_spec.runsc_flags(state_root, networked), "run", f"--bundle={bundle}", plan.sandbox_id,
    ]
    if networked:
        _proc_dir(plan).mkdir(mode=0o700)
    host, agent = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    log = open(plan.log_path, "wb")  # noqa: SIM115 - handed to the child; on the sandbox's disk
    try:
        process = subprocess.Popen(  # a session of its own (CPython still vforks for that)
            argv, stdin=agent, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    except BaseException:
        host.close()
        raise
    finally:
        log.close()
        agent.close()
    host.shutdown(socket.SHUT_RD)  # the host only donates; nothing the sandbox sends is ever queued
    return process, host

def _proc_dir(plan: LaunchPlan) -> Path:
    return plan.sandbox_dir / "proc"  # stays empty on the host: the mount is runsc's own


def delete(state_root: Path, sandbox_id: str, processes_gone: bool = False) -> None:
    """Remove runsc's record of a container: with ``runsc delete --force`` (which kills what is left
    first), or, once every process of it is known gone (its cgroups removed), by deleting its state
    files, which is all that is left of it then (``runsc delete`` took ~1.5-2 s here to find that
    out). Idempotent."""
    if not state_root.is_dir():
        return
    if not processes_gone:
        subprocess.run(
            [*oci_spec.runsc_flags(state_root), "delete", "--force", sandbox_id],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
        )
    # its .state and .lock, and (the 2024 runsc) its sandbox controller's socket
    for leftover in [*state_root.glob(f"{sandbox_id}_sandbox:*"), state_root / f"runsc-{sandbox_id}.sock"]:
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def containers(state_root: Path) -> list[str]:
    """Container ids runsc holds state for under ``state_root`` (to find a crash's leftovers)."""
    if not state_root.is_dir():
        return []
    proc = subprocess.run(
        [*oci_spec.runsc_flags(state_root), "list", "--quiet"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]

def teardown(plan_dirs: tuple[Path, Path], sandbox_id: str, cgroups: Cgroups, state_root: Path) -> None:
    """Kill everything (cgroups), drop runsc's state, unmount and delete. Idempotent.

    Mounts go even if the cgroups resist: hundreds of ptrace stubs may take longer to die than one
    removal attempt waits; the next attempts (and the next start's reconcile) catch those."""
    removed = False
    try:
        for attempt in range(3):
            try:
                cgroups.remove(sandbox_id)
                removed = True
                break
            except OSError:
                if attempt == 2:
                    raise
    finally:
        delete(state_root, sandbox_id, processes_gone=removed)
        mounts_priv.destroy(*plan_dirs)
    launch_priv.teardown(plan_dirs[0], plan_dirs[1], sandbox_id, cgroups)


def remove_state_root(state_root: Path) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(state_root)
