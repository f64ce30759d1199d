"""Build ``corral-tools`` (the agent package's ``tools.c``): compiled static into the agent package's
``__pycache__``, under the name the agent derives from the source it ships (``corral_agent.tools``).

Static, so it runs in any template whatever its libc; built once per source (the name changes with
it), by every server start that finds it missing. It starts bubblewrap (``launch``), is a sandbox's
pid 1 (``pid1``), starts the agent's commands as another user (``exec-as``) and makes networked
sandboxes' network namespaces (``netns``). Without a C compiler, or if the build fails, each falls
back to what it replaced (a shell and setpriv, the runtime's bash and sleep, a fork of the agent,
bubblewrap's own namespace): slower, not wrong.

Built with musl (``musl-gcc``) where it is installed: glibc's static start-up asks the CPU about its
caches with ~100 ``CPUID`` instructions, each a trap to the hypervisor on a virtual machine (7 µs
here), ~0.65 ms per exec against ~0.07 ms for musl's, and a cold create execs it three times on its
way (docs/performance.md, "An exec's CPUID toll").
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from corral.agent import tools
from corral.runtime import build_cache

log = logging.getLogger(__name__)
COMPILE_TIMEOUT = 120.0
CC_FLAGS = ["-static", "-O2", "-s"]
COMPILERS = ("musl-gcc", "cc", "gcc")  # the first found builds it

_built: dict[Path, Path | None] = {}  # one build per server process


def build(agent_src: Path) -> Path | None:
    """The program built from ``agent_src``'s ``tools.c``, compiled if missing; None (with a warning)
    if it can't be built."""
    if agent_src not in _built:
        _built[agent_src] = _build(agent_src)
    return _built[agent_src]


def _build(agent_src: Path) -> Path | None:
    source = agent_src / tools.SOURCE
    try:
        target = agent_src / "__pycache__" / tools.file_name(source.read_bytes())
        if os.access(target, os.X_OK):
            os.utime(target)  # in use: kept by other servers' pruning
        else:
            _compile(source, target)
        build_cache.prune(target, "corral-tools-*")
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("corral-tools was not built (%s): sandboxes start and run commands as another user "
                    "and networks through slower stand-ins (install musl-tools, or gcc and libc6-dev)", exc)
        return None
    return target


def _compile(source: Path, target: Path) -> None:
    """With the first of ``compilers()`` that builds it (a broken musl install falls back to gcc)."""
    found = compilers()
    if not found:
        raise OSError("no C compiler")
    target.parent.mkdir(parents=True, exist_ok=True)
    for cc in found:
        try:
            # a sandbox runs it as an unmapped owner's file: "other" may execute
            compile_c(cc, source, target, CC_FLAGS, 0o755)
            return
        except (OSError, subprocess.SubprocessError) as exc:
            if cc == found[-1]:
                raise
            log.warning("building corral-tools with %s failed (%s); trying the next compiler", cc, exc)


def compilers() -> list[str]:
    """The C compilers found, in the order corral-tools is built with them: musl's first."""
    return list(dict.fromkeys(path for name in COMPILERS if (path := shutil.which(name))))


def compile_c(cc: str, source: Path, target: Path, flags: list[str], mode: int) -> None:
    """Compile ``source`` with ``cc`` into ``target`` (mode ``mode``), which appears whole or not at
    all: built under a temporary name, renamed. OSError if the compiler fails (its stderr's end)."""
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        done = subprocess.run(
            [cc, *flags, "-o", str(partial), str(source)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=COMPILE_TIMEOUT,
        )
        if done.returncode != 0:
            raise OSError(f"{cc} exited {done.returncode}: {done.stderr.strip()[-500:]}")
        os.chmod(partial, mode)
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
