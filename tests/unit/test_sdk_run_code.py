"""``run_code`` and code contexts on both faces over httpx.MockTransport: wire, timeouts, streaming."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from corral import (
    AsyncSandbox,
    Context,
    ExecutionError,
    InvalidArgumentException,
    NotFoundException,
    OutputMessage,
    Result,
    Sandbox,
    ServerException,
)
from corral.sdk._config import ConnectionConfig
from corral.sdk._http import AsyncHTTP, SyncHTTP

URL = "http://corral.test"
NDJSON = {"Content-Type": "application/x-ndjson"}


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def cell(n: int, delay: float = 0.0, end: bool = True) -> Iterator[bytes]:
    yield line({"type": "number_of_executions", "execution_count": 1})
    for i in range(n):
        if delay:
            time.sleep(delay)
        yield line({"type": "stdout", "text": f"{i}\n", "timestamp": "2026-11-29T10:00:00Z"})
        yield line({"type": "keepalive"})
    yield line({"type": "result", "is_main_result": True, "text": "42"})
    yield line({"type": "error", "name": "ZeroDivisionError", "value": "division by zero", "traceback": "tb"})
    if end:
        yield line({"type": "end_of_execution"})


def sandbox(handler: Callable[[httpx.Request], httpx.Response]) -> Sandbox:
    config = ConnectionConfig.resolve(api_key="e2b_k", api_url=URL)
    return Sandbox(sandbox_id="sbx_1", http=SyncHTTP(config, transport=httpx.MockTransport(handler)))


def async_sandbox(handler: Callable[[httpx.Request], Any]) -> AsyncSandbox:
    config = ConnectionConfig.resolve(api_key="e2b_k", api_url=URL)
    return AsyncSandbox(sandbox_id="sbx_1", http=AsyncHTTP(config, transport=httpx.MockTransport(handler)))


def error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"code": status, "message": message})


def test_callbacks_fire_as_lines_arrive_and_the_error_is_data() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, headers=NDJSON, content=cell(4, delay=0.1))

    sbx = sandbox(handler)
    start = time.monotonic()
    stamps: list[float] = []
    seen: list[object] = []
    execution = sbx.run_code(
        "for i in range(4): print(i)",
        on_stdout=lambda m: (stamps.append(time.monotonic() - start), seen.append(m)),
        on_result=seen.append,
        on_error=seen.append,
    )
    end = time.monotonic() - start
    assert len(stamps) == 4 and stamps[0] < end - 0.25 and stamps[2] < end - 0.05
    assert isinstance(seen[0], OutputMessage) and seen[0].line == "0\n" and not seen[0].error
    assert seen[-2:] == [
        Result(text="42", is_main_result=True),
        ExecutionError("ZeroDivisionError", "division by zero", "tb"),
    ]
    assert execution.logs.stdout == ["0\n", "1\n", "2\n", "3\n"] and execution.text == "42"
    assert execution.error is not None and execution.error.name == "ZeroDivisionError"
    request = requests[0]
    assert request.url.path == "/v1/sandboxes/sbx_1/code" and request.headers["Accept"] == "application/x-ndjson"
    assert json.loads(request.content) == {
        "code": "for i in range(4): print(i)",
        "language": None,
        "context_id": None,
        "envs": {},
        "timeout": 300,
    }


def test_http_read_timeout_outlasts_the_cell_timeout() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, content=cell(0))

    sbx = sandbox(handler)
    sbx.run_code("1")
    sbx.run_code("1", timeout=10, request_timeout=5)
    sbx.run_code("1", timeout=0)
    timeouts = [r.extensions["timeout"] for r in requests]
    assert timeouts[0]["read"] == 330 and timeouts[0]["connect"] == 60
    assert timeouts[1] == {"connect": 5, "read": 40, "write": 5, "pool": 5}
    assert timeouts[2]["read"] is None
    assert [json.loads(r.content)["timeout"] for r in requests] == [300, 10, 0]


def test_contexts_by_object_or_id_and_envs() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, content=cell(0))

    sbx = sandbox(handler)
    sbx.run_code("1", context=Context("c1", "python", "/"), envs={"A": "1"})
    sbx.run_code("1", context="c2")
    sbx.run_code("1", language="typescript")
    assert [(b["context_id"], b["language"], b["envs"]) for b in bodies] == [
        ("c1", None, {"A": "1"}),
        ("c2", None, {}),
        (None, "typescript", {}),
    ]
    with pytest.raises(InvalidArgumentException, match="not both"):
        sbx.run_code("1", language="python", context="c1")
    assert len(bodies) == 3  # refused before sending


def test_http_errors_raise_typed_exceptions() -> None:
    answers = {"c9": error(404, "context c9 not found"), "bad": error(400, "give either language or context_id")}
    sbx = sandbox(lambda r: answers[json.loads(r.content)["context_id"]])
    with pytest.raises(NotFoundException, match=r"^sandbox sbx_1: run code in context 'c9': context c9 not found"):
        sbx.run_code("1", context="c9")
    with pytest.raises(InvalidArgumentException, match="give either"):
        sbx.run_code("1", context="bad")


def test_a_cut_stream_raises_and_a_raising_callback_propagates() -> None:
    sbx = sandbox(lambda r: httpx.Response(200, content=cell(1, end=False)))
    with pytest.raises(ServerException, match="ended before end_of_execution"):
        sbx.run_code("print(0)")

    def boom(_: OutputMessage) -> None:
        raise RuntimeError("callback failed")

    sbx = sandbox(lambda r: httpx.Response(200, content=cell(1)))
    with pytest.raises(RuntimeError, match="callback failed"):
        sbx.run_code("print(0)", on_stdout=boom)


def test_context_methods() -> None:
    seen: list[str] = []
    ctx = {"id": "c1", "language": "javascript", "cwd": "/home/user"}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path} {request.content.decode()}")
        if request.method == "DELETE":
            return httpx.Response(204)
        if request.url.path.endswith("/contexts") and request.method == "GET":
            return httpx.Response(200, json=[ctx])
        return httpx.Response(201 if request.url.path.endswith("/contexts") else 200, json=ctx)

    sbx = sandbox(handler)
    created = sbx.create_code_context(cwd="/home/user", language="javascript")
    assert created == Context("c1", "javascript", "/home/user")
    assert sbx.list_code_contexts() == [created]
    assert sbx.restart_code_context(created) is None
    assert sbx.remove_code_context("c1") is None
    assert seen == [
        'POST /v1/sandboxes/sbx_1/contexts {"language":"javascript","cwd":"/home/user"}',
        "GET /v1/sandboxes/sbx_1/contexts ",
        "POST /v1/sandboxes/sbx_1/contexts/c1/restart ",
        "DELETE /v1/sandboxes/sbx_1/contexts/c1 ",
    ]
    with pytest.raises(TypeError):
        sbx.remove_code_context("")


# --- the async face ----------------------------------------------------------------------------------


async def async_cell(n: int, delay: float) -> AsyncIterator[bytes]:
    for chunk in cell(n):
        if b'"stdout"' in chunk:
            await asyncio.sleep(delay)
        yield chunk


def test_async_run_code_streams_to_sync_and_async_callbacks() -> None:
    async def main() -> None:
        requests: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            requests.append(request)
            return httpx.Response(200, content=async_cell(3, 0.1))

        sbx = async_sandbox(handler)
        start = time.monotonic()
        stamps: list[float] = []
        results: list[Result] = []
        errors: list[ExecutionError] = []

        async def on_stdout(_: OutputMessage) -> None:
            await asyncio.sleep(0)
            stamps.append(time.monotonic() - start)

        execution = await sbx.run_code(
            "x",
            context=Context("c1", "python", "/"),
            on_stdout=on_stdout,
            on_result=results.append,
            on_error=errors.append,
            timeout=5,
        )
        end = time.monotonic() - start
        assert len(stamps) == 3 and stamps[0] < end - 0.15
        assert execution.text == "42" and results[0].text == "42" and errors[0].name == "ZeroDivisionError"
        assert requests[0].extensions["timeout"]["read"] == 35
        assert json.loads(requests[0].content)["context_id"] == "c1"
        await sbx.close()

    asyncio.run(main())


def test_async_errors_and_contexts() -> None:
    async def main() -> None:
        ctx = {"id": "c1", "language": "python", "cwd": "/home/user"}

        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/code"):
                return error(404, "context c9 not found")
            if request.method == "DELETE":
                return error(404, "context c1 not found")
            return httpx.Response(200, json=[ctx] if request.method == "GET" else ctx)

        sbx = async_sandbox(handler)
        with pytest.raises(NotFoundException, match="c9"):
            await sbx.run_code("1", context="c9")
        with pytest.raises(InvalidArgumentException):
            await sbx.run_code("1", language="bash", context="c1")
        created = await sbx.create_code_context()
        assert await sbx.list_code_contexts() == [created]
        await sbx.restart_code_context(created)
        with pytest.raises(NotFoundException, match="remove context 'c1'"):
            await sbx.remove_code_context(created)

    asyncio.run(main())
