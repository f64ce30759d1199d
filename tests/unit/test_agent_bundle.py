"""The agent's start-up bundle: built from the agent's and the runtime's bytecode, served before the
file system, never reading outside the runtime's rootfs, ignored when it does not fit."""

from __future__ import annotations

import compileall
import importlib.util
import marshal
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import replace
from pathlib import Path

import pytest
from test_agent_harness import collect, run, start_agent

import corral.agent
from corral.agent import bundle
from corral.runtime import agent_bundle
from corral.runtime.plan import AgentRuntime

AGENT_DIR = Path(corral.agent.__file__).parent
HOST_STDLIB = Path("/usr/lib/python3.11")  # Debian's python, the runtime of the base template
needs_debian_python = pytest.mark.skipif(
    not (HOST_STDLIB / "json" / "__pycache__").is_dir() or sys.version_info[:2] != (3, 11),
    reason="needs Debian 12's python3.11 with its byte-compiled stdlib (the machines Corral runs on)",
)


def agent_copy(tmp_path: Path) -> Path:
    """The agent package under its in-sandbox name, byte-compiled as the backend does."""
    src = tmp_path / "lib" / "corral_agent"
    shutil.copytree(AGENT_DIR, src, ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(src, quiet=2, workers=1)
    return src


def host_runtime() -> AgentRuntime:
    """The host's own python as the runtime: its rootfs is /, its stdlib Debian's."""
    return AgentRuntime(rootfs=Path("/"), python="usr/bin/python3.11", loader="-", libdir="-")


@needs_debian_python
def test_the_agent_starts_from_its_bundle_and_serves(tmp_path: Path) -> None:
    src = agent_copy(tmp_path)
    name = agent_bundle.build(host_runtime(), src)
    assert name is not None and (src / "__pycache__" / name).is_file()
    modules = bundle.load((src / "__pycache__" / name).read_bytes())
    assert modules is not None
    assert {"corral_agent.server", "corral_agent.protocol", "json.decoder", "socket"} <= set(modules)
    assert modules["json"][:2] == ("/.corral/rt/usr/lib/python3.11/json/__init__.py", True)
    assert modules["corral_agent.server"][:2] == ("/.corral/lib/corral_agent/server.py", False)
    # what the interpreter has before the agent's __main__ runs is not carried
    assert not {"corral_agent", "encodings", "encodings.utf_8"} & set(modules)

    # the command line the backends give the runtime, on the host's python (-v: each import says
    # who loaded it), run from a cwd where a template could have planted a package of the same name
    argv = replace(host_runtime(), bundle=name).argv(99)
    at = argv.index("--listen-fd")
    command = [sys.executable, "-v", *argv[4:at], *argv[at + 2 :]]
    planted = tmp_path / "cwd" / "corral_agent"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text("raise SystemExit('the planted package ran')\n")
    env_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src.parent)
    try:
        with start_agent(command, cwd=str(planted.parent)) as running:
            async def main() -> None:
                assert (await running.client.ping())["version"] == 1
                assert (await collect(await running.client.exec(["echo", "hi"], user="root")))[0] == b"hi\n"
            run(main())
            log = running.log()
    finally:
        os.environ.pop("PYTHONPATH")
        if env_path is not None:
            os.environ["PYTHONPATH"] = env_path
    loaded = {line.split("'")[1]: line for line in log.splitlines() if line.startswith("import '")}
    assert "BundleFinder" in loaded["corral_agent.server"] and "BundleFinder" in loaded["json.decoder"]
    assert "ExtensionFileLoader" in loaded["_json"]  # extension modules import the ordinary way


def test_a_symlink_out_of_the_runtime_rootfs_is_not_followed(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    json_dir = rootfs / "usr/lib/python3.11/json"
    (json_dir / "__pycache__").mkdir(parents=True)
    for module in ("decoder", "scanner"):
        (json_dir / f"{module}.py").write_text("")
    header = importlib.util.MAGIC_NUMBER + bytes(12)
    secret = tmp_path / "host-secret"
    secret.write_bytes(header + b"HOST-SECRET-BYTES")
    Path(importlib.util.cache_from_source(str(json_dir / "decoder.py"))).symlink_to(secret)
    Path(importlib.util.cache_from_source(str(json_dir / "scanner.py"))).write_bytes(header + b"CODE")
    runtime = AgentRuntime(rootfs=rootfs, python="usr/bin/python3.11", loader="-", libdir="-")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    imported = [(f"json.{m}", str(stdlib / "json" / f"{m}.py"), False) for m in ("decoder", "scanner")]
    modules = agent_bundle._collect(runtime, agent_copy(tmp_path), imported)
    assert modules == {"json.scanner": ("/.corral/rt/usr/lib/python3.11/json/scanner.py", False, b"CODE")}


def test_a_bundle_of_another_python_or_a_broken_file_is_ignored(tmp_path: Path) -> None:
    before = list(sys.meta_path)
    other = tmp_path / "other.bin"
    other.write_bytes(marshal.dumps((b"\x00\x00\r\n", bundle.FORMAT, {"json": ("/x.py", False, b"")})))
    broken = tmp_path / "broken.bin"
    broken.write_bytes(b"\xff" * 100)
    assert not bundle.install(str(other))
    assert not bundle.install(str(broken))
    assert not bundle.install(str(tmp_path / "missing.bin"))
    assert sys.meta_path == before


def test_the_bundle_argument_names_a_file_in_the_agents_own_cache_only(tmp_path: Path) -> None:
    src = agent_copy(tmp_path)
    (src / "__pycache__" / "bundle-x").mkdir()
    scanner = Path(sysconfig.get_paths()["stdlib"]) / "json" / "scanner.py"
    code = marshal.dumps(compile(scanner.read_text(), str(scanner), "exec"))
    (tmp_path / "lib" / "bundle-evil.bin").write_bytes(bundle.dump({"json.scanner": (str(scanner), False, code)}))
    command = [sys.executable, "-S", "-s", "-B", "-P", "-v", "-c", "import corral_agent.__main__",
               "--bundle", "bundle-x/../../../bundle-evil.bin", "--listen-fd", "-1"]
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(src.parent)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]  # the agent ran (and refused the fd)
    assert "import 'json.scanner'" in done.stderr and "BundleFinder" not in done.stderr
    assert "start-up bundle 'bundle-x/../../../bundle-evil.bin' not usable" in done.stderr
