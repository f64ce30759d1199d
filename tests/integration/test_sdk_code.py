"""The SDK's ``run_code`` and code contexts against a real server and ``code-interpreter`` sandboxes."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator

import pytest

from conftest import Server
from corral import (
    AsyncSandbox,
    Context,
    ExecutionError,
    InvalidArgumentException,
    NotFoundException,
    OutputMessage,
    Result,
    Sandbox,
)

TEMPLATE = "code-interpreter"


@pytest.fixture
def sdk_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    monkeypatch.setenv("CORRAL_API_URL", server.url)
    monkeypatch.setenv("CORRAL_API_KEY", server.api_key)
    return server


@pytest.fixture(scope="module")
def sbx(server: Server) -> Iterator[Sandbox]:
    """One code-interpreter sandbox for the module (starting interpreters is the slow part)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORRAL_API_URL", server.url)
        mp.setenv("CORRAL_API_KEY", server.api_key)
        sandbox = Sandbox.create(template=TEMPLATE, timeout=900, envs={"SBX": "on"})
    with sandbox:
        yield sandbox


def test_python_state_output_and_value(sbx: Sandbox) -> None:
    sbx.run_code("x = 41")
    ex = sbx.run_code("print('hi'); x + 1")
    assert ex.logs.stdout == ["hi\n"] and ex.logs.stderr == []
    assert ex.text == "42" and ex.error is None
    assert ex.results[0].is_main_result and ex.execution_count is not None


def test_rich_results_pandas_table_and_matplotlib_png(sbx: Sandbox) -> None:
    ex = sbx.run_code("import pandas as pd; pd.DataFrame({'a': [1, 2]})")
    assert ex.error is None, ex.error
    assert ex.results[0].html is not None and "<table" in ex.results[0].html
    assert "html" in ex.results[0].formats() and ex.results[0]._repr_html_() == ex.results[0].html

    ex = sbx.run_code("import matplotlib.pyplot as plt; plt.plot([1, 2, 3]); plt.show()")
    assert ex.error is None, ex.error
    pngs = [r.png for r in ex.results if r.png]
    assert pngs and base64.b64decode(pngs[0]).startswith(b"\x89PNG")


def test_an_execution_error_is_data(sbx: Sandbox) -> None:
    errors: list[ExecutionError] = []
    ex = sbx.run_code("1/0", on_error=errors.append)
    assert ex.error is not None and ex.error.name == "ZeroDivisionError"
    assert "division by zero" in ex.error.value and "ZeroDivisionError" in ex.error.traceback
    assert errors == [ex.error] and ex.text is None
    assert sbx.run_code("x").text == "41"  # the context lives on


def test_javascript_context_typescript_and_bash(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context(language="javascript", cwd="/home/user")
    assert isinstance(ctx, Context) and ctx.language == "javascript" and ctx.cwd == "/home/user"
    sbx.run_code("let a = [1,2,3]", context=ctx)
    assert sbx.run_code("a.map(x=>x*2)", context=ctx).text == "[ 2, 4, 6 ]"
    assert sbx.run_code("process.cwd()", context=ctx.id).text == "/home/user"
    assert sbx.run_code("const n: number = 2; n * 21", language="typescript").text == "42"
    sbx.run_code("cd /tmp && X=5", language="bash")
    ex = sbx.run_code("echo $X $PWD", language="bash")
    assert "".join(ex.logs.stdout).strip() == "5 /tmp"


def test_callbacks_stream_before_the_cell_ends(sbx: Sandbox) -> None:
    seen: list[tuple[float, OutputMessage]] = []
    results: list[Result] = []
    started = time.monotonic()
    ex = sbx.run_code(
        "import time, sys\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(0.3)\n"
        "print('err', file=sys.stderr)\n'done'",
        on_stdout=lambda m: seen.append((time.monotonic(), m)),
        on_stderr=lambda m: seen.append((time.monotonic(), m)),
        on_result=results.append,
    )
    ended = time.monotonic()
    out = [m for _, m in seen if not m.error]
    assert "".join(m.line for m in out) == "0\n1\n2\n3\n" and "".join(ex.logs.stdout) == "0\n1\n2\n3\n"
    assert [m.line for _, m in seen if m.error] == ["err\n"]
    assert seen[0][0] - started < ended - started - 0.6  # the first line came well before the end
    assert out[-1].timestamp - out[0].timestamp >= 0.6e9  # the sandbox stamped them as produced
    assert abs(out[0].timestamp / 1e9 - time.time()) < 60
    assert [r.text for r in results] == ["done"] == [ex.text]


def test_timeout_interrupts_and_keeps_state(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context()
    sbx.run_code("kept = 7", context=ctx)
    started = time.monotonic()
    ex = sbx.run_code("while True: pass", context=ctx, timeout=2)
    assert time.monotonic() - started < 15
    assert ex.error is not None and ex.error.name == "ExecutionTimeout"
    assert sbx.run_code("kept", context=ctx).text == "7"
    sbx.remove_code_context(ctx)


def test_list_restart_remove_contexts(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context(cwd="/tmp")
    assert ctx.id in [c.id for c in sbx.list_code_contexts()]
    assert sbx.run_code("import os; y = 1; os.getcwd()", context=ctx).text == "/tmp"
    sbx.restart_code_context(ctx)
    after = sbx.run_code("y", context=ctx)
    assert after.error is not None and after.error.name == "NameError"
    sbx.remove_code_context(ctx.id)
    assert ctx.id not in [c.id for c in sbx.list_code_contexts()]
    with pytest.raises(NotFoundException, match=ctx.id):
        sbx.run_code("1", context=ctx)
    with pytest.raises(NotFoundException):
        sbx.remove_code_context(ctx)
    with pytest.raises(InvalidArgumentException):
        sbx.run_code("1", language="python", context="whatever")
    with pytest.raises(InvalidArgumentException):
        sbx.create_code_context(language="cobol")


def test_per_call_envs(sbx: Sandbox) -> None:
    code = "import os; (os.environ.get('SBX'), os.environ.get('CALL'))"
    assert sbx.run_code(code, envs={"CALL": "x"}).text == "('on', 'x')"
    assert sbx.run_code(code).text == "('on', None)"
    ex = sbx.run_code("echo $CALL", language="bash", envs={"CALL": "b"})
    assert "".join(ex.logs.stdout).strip() == "b"


def test_async_sandbox(sdk_env: Server) -> None:
    async def main() -> None:
        async with await AsyncSandbox.create(template=TEMPLATE, timeout=300) as sbx:
            lines: list[str] = []

            async def on_stdout(message: OutputMessage) -> None:
                await asyncio.sleep(0)
                lines.append(message.line)

            ex = await sbx.run_code("print('a'); 6 * 7", on_stdout=on_stdout)
            assert ex.text == "42" and lines == ["a\n"]
            assert (await sbx.run_code("1/0")).error.name == "ZeroDivisionError"  # type: ignore[union-attr]
            ctxs = [await sbx.create_code_context() for _ in range(2)]
            assert {c.id for c in ctxs} <= {c.id for c in await sbx.list_code_contexts()}
            cell = "import time; began = time.time(); time.sleep(1); [began, time.time()]"
            both = await asyncio.gather(*(sbx.run_code(cell, context=c) for c in ctxs))
            spans = [json.loads(e.text or "") for e in both]
            assert max(s[0] for s in spans) < min(s[1] for s in spans), spans  # they ran in parallel
            await sbx.restart_code_context(ctxs[0])
            await sbx.remove_code_context(ctxs[0])
            with pytest.raises(NotFoundException):
                await sbx.run_code("1", context=ctxs[0])

    asyncio.run(main())
