"""The sync/async shells over httpx.MockTransport: transport-level behaviour only, no server.

What is sent on the wire (headers, timeouts, bodies), how error bodies and transport failures
surface, and that streamed output reaches callbacks while the stream is still open.
"""

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    NotEnoughSpaceException,
    NotFoundException,
    Sandbox,
    ServerException,
    TimeoutException,
)
from corral.sdk import _sandbox
from corral.sdk._config import ConnectionConfig
from corral.sdk._http import AsyncHTTP, SyncHTTP

URL = "http://corral.test"
ENTRY = {"name": "f", "path": "/f", "type": "file", "modified": "2026-11-29T10:00:00Z"}


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def command_stream(n: int, delay: float = 0.0, exit_code: int = 0) -> Iterator[bytes]:
    yield line({"type": "start", "pid": 7})
    for i in range(n):
        if delay:
            time.sleep(delay)
        yield line({"type": "stdout", "data": f"{i}\n"})
    yield line({"type": "stderr", "data": "done\n"})
    yield line({"type": "exit", "exit_code": exit_code, "error": None})


def sandbox(handler: Callable[[httpx.Request], httpx.Response], api_key: str | None = "e2b_k") -> Sandbox:
    config = ConnectionConfig.resolve(api_key=api_key, api_url=URL)
    return Sandbox(sandbox_id="sbx_1", http=SyncHTTP(config, transport=httpx.MockTransport(handler)))


def error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"code": status, "message": message})


def test_headers_base_url_and_request_timeout() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    sbx = sandbox(handler)
    assert sbx.kill(request_timeout=7) is True
    request = seen[0]
    assert str(request.url) == f"{URL}/v1/sandboxes/sbx_1"
    assert request.headers["X-API-Key"] == "e2b_k"
    assert request.headers["User-Agent"].startswith("corral-python/")
    assert request.extensions["timeout"] == {"connect": 7, "read": 7, "write": 7, "pool": 7}
    sbx.set_timeout(30, request_timeout=0)
    assert seen[1].extensions["timeout"]["read"] is None  # 0 = no limit
    assert json.loads(seen[1].content) == {"timeout": 30}


def test_no_key_no_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_API_KEY", raising=False)
    seen: list[httpx.Request] = []
    sbx = sandbox(lambda r: seen.append(r) or httpx.Response(204), api_key=None)
    sbx.kill()
    assert "X-API-Key" not in seen[0].headers


def test_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_API_URL", "http://elsewhere:9/")
    monkeypatch.setenv("CORRAL_API_KEY", "e2b_env")
    config = ConnectionConfig.resolve()
    assert (config.api_url, config.api_key, config.request_timeout) == ("http://elsewhere:9", "e2b_env", 60)
    assert ConnectionConfig.resolve(api_url="http://x", api_key="k").api_url == "http://x"


def test_error_bodies_become_typed_exceptions_naming_the_sandbox() -> None:
    answers = {
        "/v1/sandboxes/sbx_1": error(404, "sandbox sbx_1 ended at 10:00 (timeout)"),
        "/v1/sandboxes/sbx_1/metrics": error(401, "unknown API key"),
        "/v1/sandboxes/sbx_1/files": error(507, "disk full"),
    }
    sbx = sandbox(lambda r: answers[r.url.path])
    with pytest.raises(NotFoundException, match=r"^sandbox sbx_1: get info: sandbox sbx_1 ended at 10:00"):
        sbx.get_info()
    with pytest.raises(AuthenticationException, match="unknown API key"):
        sbx.get_metrics()
    with pytest.raises(NotEnoughSpaceException, match=r"^sandbox sbx_1: write '/big': disk full \(HTTP 507\)$"):
        sbx.files.write("/big", b"x")
    with pytest.raises(NotEnoughSpaceException, match="read '/big'"):
        sbx.files.read("/big", "stream")  # streamed answers are checked before returning


def test_transport_failures_name_the_server() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(
        ServerException, match=f"^sandbox sbx_1: check state: cannot talk to the Corral server at {URL}"
    ):
        sandbox(refuse).is_running()

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(TimeoutException, match=r"^sandbox sbx_1: list commands: no answer"):
        sandbox(slow).commands.list()


def test_class_level_calls_use_their_own_client(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path} {request.headers.get('X-API-Key')}")
        return httpx.Response(404, json={"code": 404, "message": "never existed"})

    monkeypatch.setattr(_sandbox, "SyncHTTP", lambda config: SyncHTTP(config, transport=httpx.MockTransport(handler)))
    assert Sandbox.kill("sbx_2", api_key="e2b_x", api_url=URL) is False
    with pytest.raises(NotFoundException, match=r"^sandbox sbx_3: connect: never existed"):
        Sandbox.connect("sbx_3", api_key="e2b_x", api_url=URL)
    assert seen == ["DELETE /v1/sandboxes/sbx_2 e2b_x", "GET /v1/sandboxes/sbx_3 e2b_x"]


def test_run_streams_output_to_callbacks_before_the_command_ends() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        headers = {"Content-Type": "application/x-ndjson"}
        return httpx.Response(200, headers=headers, content=command_stream(4, delay=0.1))

    sbx = sandbox(handler)
    start = time.monotonic()
    stamps: list[float] = []
    errs: list[str] = []
    result = sbx.commands.run(
        "count", on_stdout=lambda s: stamps.append(time.monotonic() - start), on_stderr=errs.append
    )
    end = time.monotonic() - start
    assert result.stdout == "0\n1\n2\n3\n" and result.stderr == "done\n" and result.exit_code == 0
    assert errs == ["done\n"]
    assert len(stamps) == 4 and stamps[0] < end - 0.25 and stamps[2] < end - 0.05
    assert requests[0].headers["Accept"] == "application/x-ndjson"
    # no read timeout cut-off for the stream beyond the command's own timeout + margin
    assert requests[0].extensions["timeout"]["read"] == 90
    sbx.commands.run("count", timeout=0)
    assert requests[1].extensions["timeout"]["read"] is None


def test_run_raises_on_nonzero_exit_unless_unchecked() -> None:
    sbx = sandbox(lambda r: httpx.Response(200, content=command_stream(1, exit_code=3)))
    with pytest.raises(CommandExitException) as ei:
        sbx.commands.run("false")
    assert ei.value.exit_code == 3 and ei.value.stdout == "0\n" and "sandbox sbx_1" in str(ei.value)
    assert sbx.commands.run("false", check=False).exit_code == 3


def test_run_accepts_sse_answers() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = b"".join(b"data: " + chunk.rstrip(b"\n") + b"\n\n" for chunk in command_stream(2))
        return httpx.Response(200, headers={"Content-Type": "text/event-stream"}, content=body)

    assert sandbox(handler).commands.run("x").stdout == "0\n1\n"


def test_background_handle_drains_and_replays() -> None:
    sbx = sandbox(lambda r: httpx.Response(200, content=command_stream(3, delay=0.05)))
    live: list[str] = []
    handle = sbx.commands.run("count", background=True, on_stdout=live.append)
    assert handle.pid == 7
    replayed: list[str] = []
    result = handle.wait(on_stdout=replayed.append)
    assert result.stdout == "0\n1\n2\n" and handle.exit_code == 0
    assert live == replayed == ["0\n", "1\n", "2\n"]
    assert list(handle) == [("0\n", None), ("1\n", None), ("2\n", None), (None, "done\n")]


def test_stream_ending_without_exit_is_a_server_exception() -> None:
    sbx = sandbox(lambda r: httpx.Response(200, content=line({"type": "start", "pid": 1})))
    with pytest.raises(ServerException, match="ended without an exit event"):
        sbx.commands.run("x")
    handle = sbx.commands.run("x", background=True)
    with pytest.raises(ServerException, match="ended without an exit event"):
        handle.wait()


def test_uploads_stream_file_objects_and_size_known_files(tmp_path: Path) -> None:
    seen: list[tuple[dict[str, str], bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((dict(request.headers), request.read()))
        return httpx.Response(200, json=ENTRY)

    sbx = sandbox(handler)
    sbx.files.write("/a", "héllo")
    sbx.files.write("/b", io.BytesIO(b"x" * 300_000))
    local = tmp_path / "big.bin"
    local.write_bytes(b"y" * 600_000)
    sbx.files.upload(local, "/c")
    assert seen[0][1] == "héllo".encode()
    assert seen[1][0].get("transfer-encoding") == "chunked" and seen[1][1] == b"x" * 300_000
    assert seen[2][0]["content-length"] == "600000" and "transfer-encoding" not in seen[2][0]
    assert seen[2][1] == b"y" * 600_000


def test_download_is_atomic(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params["path"] == "/missing":
            return error(404, "no such file")
        return httpx.Response(200, content=iter([b"ab", b"cd"]))

    sbx = sandbox(handler)
    target = tmp_path / "out.bin"
    sbx.files.download("/f", target)
    assert target.read_bytes() == b"abcd"
    with pytest.raises(NotFoundException):
        sbx.files.download("/missing", tmp_path / "never")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


# --- the async face over the same transport-level checks ------------------------------------------


def async_sandbox(handler: Callable[[httpx.Request], Any]) -> AsyncSandbox:
    config = ConnectionConfig.resolve(api_key="e2b_k", api_url=URL)
    return AsyncSandbox(sandbox_id="sbx_1", http=AsyncHTTP(config, transport=httpx.MockTransport(handler)))


async def async_command_stream(n: int, delay: float) -> AsyncIterator[bytes]:
    for chunk in command_stream(n):
        if b'"stdout"' in chunk:
            await asyncio.sleep(delay)
        yield chunk


def test_async_run_streams_and_accepts_async_callbacks() -> None:
    async def main() -> None:
        sbx = async_sandbox(lambda r: httpx.Response(200, content=async_command_stream(3, 0.1)))
        start = time.monotonic()
        stamps: list[float] = []

        async def on_stdout(_: str) -> None:
            stamps.append(time.monotonic() - start)

        result = await sbx.commands.run("count", on_stdout=on_stdout)
        end = time.monotonic() - start
        assert result.stdout == "0\n1\n2\n" and stamps[0] < end - 0.15
        handle = await sbx.commands.run("count", background=True)
        chunks = [c async for c in handle]
        assert chunks[-1] == (None, "done\n") and (await handle.wait()).exit_code == 0
        await sbx.close()

    asyncio.run(main())


def test_async_errors_are_mapped() -> None:
    async def main() -> None:
        sbx = async_sandbox(lambda r: error(404, "no such file"))
        with pytest.raises(NotFoundException, match=r"^sandbox sbx_1: read '/x': no such file"):
            await sbx.files.read("/x")
        with pytest.raises(NotFoundException):
            await sbx.commands.run("x")
        assert await sbx.files.exists("/x") is False

    asyncio.run(main())


def test_async_uploads_and_downloads_stream(tmp_path: Path) -> None:
    seen: list[tuple[dict[str, str], bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            seen.append((dict(request.headers), request.content))
            return httpx.Response(200, json=ENTRY)
        return httpx.Response(200, content=b"z" * 70_000)

    async def main() -> None:
        sbx = async_sandbox(handler)
        local = tmp_path / "in.bin"
        local.write_bytes(b"y" * 600_000)
        await sbx.files.upload(local, "/c")
        await sbx.files.write("/d", io.StringIO("text"))
        await sbx.files.download("/c", tmp_path / "out.bin")
        assert await sbx.files.read("/c", "bytes") == b"z" * 70_000
        chunks = [c async for c in await sbx.files.read("/c", "stream")]
        assert b"".join(chunks) == b"z" * 70_000

    asyncio.run(main())
    assert seen[0][0]["content-length"] == "600000" and seen[0][1] == b"y" * 600_000
    assert seen[1][1] == b"text"
    assert (tmp_path / "out.bin").read_bytes() == b"z" * 70_000
