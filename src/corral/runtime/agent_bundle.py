"""Build the agent's start-up bundle: the bytecode of every pure-Python module it imports at start,
in one file the agent reads with one open (``corral.agent.bundle`` says why: gVisor's ptrace
platform makes each import's system calls expensive).

Which modules: those a python of the server's own version imports for ``corral_agent.server``,
found by running it once. Their bytecode: the agent's own from its ``__pycache__`` (byte-compiled
by the backend just before), the stdlib's from the runtime rootfs's ``__pycache__`` (the runtime
is the interpreter the agent runs on; its pycs are the ones it would load anyway). Modules whose
bytecode is missing, of another python version, or reached through a symlink leaving the rootfs
are left out: the agent imports those the ordinary way. Nothing here is executed or unmarshalled.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

from corral.agent import bundle
from corral.runtime import build_cache
from corral.runtime.plan import AGENT_LIB, AGENT_PKG, RT_DIR, AgentRuntime

log = logging.getLogger(__name__)
MAX_PYC = 4 << 20  # no stdlib module's bytecode comes near this
# Modules the interpreter has before the agent's ``__main__`` runs (its own start-up, the package) are not needed.
_LIST = """
import sys
before = set(sys.modules)
external, bootstrap = sys.modules["_frozen_importlib_external"], sys.modules["_frozen_importlib"]
spec = external.spec_from_file_location(
    "{pkg}", sys.argv[1] + "/__init__.py", submodule_search_locations=[sys.argv[1]])
package = sys.modules["{pkg}"] = bootstrap.module_from_spec(spec)
spec.loader.exec_module(package)
before.add("{pkg}")
import {pkg}.server
import json
json.dump([[n, m.__spec__.origin, m.__spec__.submodule_search_locations is not None]
           for n, m in list(sys.modules.items()) if n not in before
           and getattr(m, "__spec__", None) is not None and (m.__spec__.origin or "").endswith(".py")], sys.stdout)
"""


_built: dict[tuple[AgentRuntime, Path], str | None] = {}  # one build per server (both backends ask)


def build(runtime: AgentRuntime, agent_src: Path) -> str | None:
    """Write the bundle into ``agent_src/__pycache__`` (content-addressed, so servers of other
    versions or runtimes sharing the dir keep theirs); its file name, or None if it can't be built."""
    if (runtime, agent_src) not in _built:
        _built[runtime, agent_src] = _build(runtime, agent_src)
    return _built[runtime, agent_src]


def _build(runtime: AgentRuntime, agent_src: Path) -> str | None:
    ours = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if Path(runtime.python).name != ours:  # its bytecode differs from ours: nothing to share
        log.info("agent start-up bundle not built: the runtime is %s, the server %s", runtime.python, ours)
        return None
    try:
        modules = _collect(runtime, agent_src, _imported(agent_src))
        if not modules:
            return None
        data = bundle.dump(modules)
        name = f"bundle-{hashlib.sha256(data).hexdigest()[:20]}.bin"
        cache = agent_src / "__pycache__"
        _write_once(cache / name, data)
        build_cache.prune(cache / name, "bundle-*.bin")  # an agent whose bundle is gone imports module by module
        return name
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("agent start-up bundle not built (agents import module by module): %s", exc)
        return None


def _imported(agent_src: Path) -> list[tuple[str, str, bool]]:
    """(name, file, is package) of the pure-Python modules the agent imports at start."""
    src = str(agent_src)
    out = subprocess.run(  # the package loaded from its dir under the agent's name: no link or temp dir
        [sys.executable, "-I", "-S", "-B", "-c", _LIST.format(pkg=AGENT_PKG), src],
        capture_output=True, text=True, timeout=60, check=True, stdin=subprocess.DEVNULL,
    ).stdout
    # the agent's files as corral_agent/..., so they are told apart from the stdlib's
    return [(name, f"{AGENT_PKG}/{origin[len(src) + 1:]}" if origin.startswith(src + "/") else origin, pkg)
            for name, origin, pkg in json.loads(out)]


def _collect(runtime: AgentRuntime, agent_src: Path, imported: list[tuple[str, str, bool]]) -> dict[str, bundle.Entry]:
    host_stdlib = Path(sysconfig.get_paths()["stdlib"])
    rt_stdlib = runtime.rootfs / runtime.stdlib()
    modules: dict[str, bundle.Entry] = {}
    for name, origin, is_package in imported:
        path = Path(origin)
        if not path.is_absolute():  # one of the agent's: corral_agent/...
            rel = path.relative_to(AGENT_PKG)
            code = _bytecode(agent_src / rel, agent_src)
            inside = f"{AGENT_LIB}/{AGENT_PKG}/{rel}"
        elif path.is_relative_to(host_stdlib):
            rel = path.relative_to(host_stdlib)
            code = _bytecode(rt_stdlib / rel, runtime.rootfs)
            inside = f"{RT_DIR}/{runtime.stdlib()}/{rel}"
        else:
            continue
        if code is not None:
            modules[name] = (inside, is_package, code)
    return modules


def _bytecode(source: Path, root: Path) -> bytes | None:
    """The marshalled code of ``source`` from its pyc, if that is a regular file reached below
    ``root`` without any symlink and of this python's bytecode version."""
    data = _read_beneath(root, Path(importlib.util.cache_from_source(str(source))).relative_to(root))
    if data is None or len(data) < 16 or data[:4] != importlib.util.MAGIC_NUMBER:
        return None
    return data[16:]  # the header: magic, flags, the source's mtime and size (or hash)


def _read_beneath(root: Path, rel: Path) -> bytes | None:
    """A regular file's bytes, walked to one component at a time with ``O_NOFOLLOW`` from ``root``
    (a symlink anywhere on the way, a FIFO or device, or a file over ``MAX_PYC``: None)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in rel.parts[:-1]:
            parent, fd = fd, os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(parent)
        parent, fd = fd, os.open(rel.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        os.close(parent)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_PYC:
            return None
        with os.fdopen(fd, "rb") as f:
            fd = -1
            return f.read(MAX_PYC + 1)
    except OSError:
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def _write_once(path: Path, data: bytes) -> None:
    try:
        os.utime(path)  # there already (content-addressed): marked in use, so not pruned
        return
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
