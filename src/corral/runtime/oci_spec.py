"""The gVisor launch, computed without side effects: the OCI ``config.json`` and runsc's flags.

The counterpart of ``plan.py`` for the gVisor backend. It takes the same ``LaunchPlan`` (paths,
limits, agent runtime) and says how ``runsc`` should run it; ``gvisor_priv`` carries it out.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

from corral.runtime import gvisor_preload
from corral.runtime.host import sandbox_nofile
from corral.runtime.mounts_priv import RUNTIME_DIR
from corral.runtime.plan import AGENT_CAPS, AGENT_LIB, RT_DIR, SANDBOX_PATH, LaunchPlan

OCI_VERSION = "1.0.2"
CONTROL_FD = 0  # the agent's control socket is its stdin (runsc hands a container exactly fds 0-2)
# The sentry, gofer and runsc's own process share the sandbox's memory cgroup with the workload.
SENTRY_OVERHEAD_MB = 128
SENTRY_THREADS = 256  # host tasks of the sentry, gofer and runsc beyond one per sandbox process
ID_RANGE = 65536


def runsc_flags(state_root: Path, networked: bool = False) -> list[str]:
    """runsc's global flags, the same for every subcommand on one server (``networked``: for ``run``
    of a sandbox with a veth in its netns)."""
    return [
        "runsc",
        f"--root={state_root}",
        # kvm hangs on PVM hosts; systrap (runsc 2023+) was slower here on 2 cores (docs/gvisor.md)
        "--platform=ptrace",
        # netstack either way: with the veth runsc finds in the sandbox's netns, or loopback only
        "--network=sandbox" if networked else "--network=none",
        "--ignore-cgroups",  # the launcher places runsc in the sandbox's cgroups itself
        "--file-access=exclusive",  # the gofer owns the root: the sentry may cache it
        # the root's writes go to our overlay's upper dir (disk quota, commit), never to a file of
        # runsc's own (newer runsc's default, root:self)
        "--overlay2=none",
        "--host-uds=none",
        "--host-fifo=none",
    ]


def memory_limit_bytes(plan: LaunchPlan) -> int:
    """The cgroup limit: what the caller asked for plus gVisor's own (sentry, gofer) share."""
    return plan.limits.memory_bytes + SENTRY_OVERHEAD_MB * 1024 * 1024


def pids_limit(plan: LaunchPlan) -> int:
    """The cgroup's pids limit. gVisor's ptrace platform needs a host task per sandbox process plus
    its own threads; hitting the host limit ends the whole sandbox (the sentry cannot grow)."""
    return plan.limits.pids + SENTRY_THREADS


def config(plan: LaunchPlan, netns: str | None = None, preload: gvisor_preload.Preload | None = None) -> dict[str, Any]:
    """The OCI runtime config of one sandbox: the pre-mounted overlay (with the agent's runtime bound
    read-only under ``/.corral``) as root, ids shifted like bwrap's, the agent as its only process.
    ``netns``: the path of the network namespace the server made and plugged (networked sandboxes);
    without it runsc makes an empty one. ``preload``: the stat fix-up, bound with the list naming it
    over ``/etc/ld.so.preload`` (``gvisor_preload``)."""
    fixup = [] if preload is None else [
        (preload.dir, gvisor_preload.INSIDE_DIR), (preload.list_file, gvisor_preload.PRELOAD_LIST),
    ]
    network: dict[str, str] = {"type": "network", **({"path": netns} if netns else {})}
    caps = list(AGENT_CAPS)
    mapping = [{"containerID": 0, "hostID": plan.id_offset, "size": ID_RANGE}]
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": plan.runtime.argv(CONTROL_FD, "--control-fd"),
            "env": [
                f"PATH={SANDBOX_PATH}", "LANG=C.UTF-8", f"PYTHONHOME={RT_DIR}/usr", f"PYTHONPATH={AGENT_LIB}",
            ],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": True,
            # the limit of open files the server was started with (it raised its own, runsc's with it)
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": sandbox_nofile(),
                         "hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1]}],
        },
        "root": {"path": str(plan.root), "readonly": False},
        "hostname": plan.sandbox_id[:63],
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777"]},
            # /.corral (the host's read-only skeleton with the runtime under it) as a mount of the
            # sentry's own, so that gVisor refuses to rename or remove it itself (docs/gvisor.md, "Open")
            {"destination": RUNTIME_DIR, "type": "bind", "source": str(plan.root / RUNTIME_DIR.lstrip("/")),
             "options": ["rbind", "ro", "nosuid", "nodev"]},
            # networked: /etc/resolv.conf naming the gateway (bwrap's --ro-bind of the same file)
            *[{"destination": inside, "type": "bind", "source": str(src), "options": ["rbind", "ro"]}
              for src, inside in plan.net_files],
            *[{"destination": inside, "type": "bind", "source": str(src),
               "options": ["rbind", "ro", "nosuid", "nodev"]} for src, inside in fixup],
        ],
        "linux": {
            "namespaces": [*[{"type": t} for t in ("pid", "ipc", "uts", "mount")], network, {"type": "user"}],
            # runsc runs its gofer and sentry in a user namespace with this map: files the sandbox
            # creates are owned by host ids id_offset.., exactly as under bwrap (and commit alike)
            "uidMappings": mapping,
            "gidMappings": mapping,
        },
    }
