"""The official E2B JavaScript SDKs (``e2b``, ``@e2b/code-interpreter`` from npm, pinned in
``tests/compat/js/package-lock.json``) against a real server: runs ``node --test`` in
``tests/compat/js`` (``make deps`` installs the packages with ``npm ci``, and node itself into the venv
from PyPI when the system's is too old) and asserts every test passes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Server

JS = Path(__file__).parent / "js"
NODE_MIN = (20, 18, 1)  # the SDKs' "engines" (undici 7)
TIMEOUT = 600


def node_version(node: str) -> tuple[int, ...]:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    return tuple(int(p) for p in re.findall(r"\d+", out)[:3])


@pytest.mark.timeout(TIMEOUT + 60)
def test_js_sdk_suite(server: Server) -> None:
    venv_bin = str(Path(sys.executable).parent)  # where `make deps` puts node if the system's is too old
    node = shutil.which("node", path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))
    if node is None:
        pytest.fail("node is not installed: run `make deps`")
    if node_version(node) < NODE_MIN:
        pytest.fail(f"{node} is {'.'.join(map(str, node_version(node)))}, older than the E2B JS SDKs need "
                    f"({'.'.join(map(str, NODE_MIN))}): run `make deps`")
    if not (JS / "node_modules" / "@e2b" / "code-interpreter").is_dir():
        pytest.fail("the JS SDKs are not installed: run `make deps` (npm ci --prefix tests/compat/js)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    env.update(E2B_API_URL=server.url, E2B_SANDBOX_URL=server.url, E2B_API_KEY=server.api_key, NO_COLOR="1")
    tests = sorted(str(p.name) for p in JS.glob("*.test.mjs"))
    assert tests, "no JS test files"
    # --test-force-exit: @e2b/code-interpreter leaves its 60 s request timer running when /execute
    # answers an error (a NotFound context), which would hold the process open for a minute
    proc = subprocess.run(
        [node, "--test", "--test-concurrency=1", "--test-force-exit", "--test-reporter=spec", *tests],
        cwd=JS, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    output = proc.stdout + proc.stderr
    print(output)  # shown by pytest when the assertion below fails
    assert proc.returncode == 0, f"node --test exited {proc.returncode}:\n{output[-20000:]}"
    summary = dict(re.findall(r"^ℹ (tests|pass|fail|cancelled) (\d+)$", output, re.M))
    assert int(summary.get("tests", 0)) > 0 and summary.get("fail") == "0", summary
