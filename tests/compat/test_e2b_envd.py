"""envd (sandbox port 49983) against the official ``e2b`` Python SDK, unmodified.

Sandboxes come from ``e2b.Sandbox.create()`` (the E2B control plane); every call after that is a
Connect RPC or a ``/files`` transfer to our envd emulation, routed by the SDK's ``E2b-Sandbox-*``
headers on the one server port. Tests assert what an SDK user sees: results, exceptions, files.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FileNotFoundException,
    FileType,
    InvalidArgumentException,
    NotEnoughSpaceException,
    NotFoundException,
    Sandbox,
    SandboxNotRunningException,
    TimeoutException,
)
from e2b.connection_config import ConnectionConfig
from e2b.sandbox.commands.command_handle import PtySize
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType

from conftest import Server

ENVD = "49983"


@pytest.fixture(scope="module")
def e2b_env(server: Server) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("E2B_API_KEY", server.api_key)
        mp.setenv("E2B_API_URL", server.url)
        mp.setenv("E2B_SANDBOX_URL", server.url)
        mp.delenv("E2B_DEBUG", raising=False)
        mp.delenv("E2B_DOMAIN", raising=False)
        yield


@pytest.fixture(scope="module")
def sbx(e2b_env: None) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(timeout=600, envs={"SANDBOX_WIDE": "from create"})
    yield sandbox
    sandbox.kill()


@pytest.fixture(scope="module")
def other(e2b_env: None) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(timeout=600)
    yield sandbox
    sandbox.kill()


def envd_client(server: Server, sandbox_id: str, **headers: str) -> httpx.Client:
    """Plain HTTP to a sandbox's envd port, addressed like the SDK does it."""
    routing = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": ENVD, **headers}
    return httpx.Client(base_url=server.url, headers=routing, timeout=60)


def until_file(path: str) -> str:
    """Shell: block until `path` exists (the test creates it: synchronisation without sleeps)."""
    return f"while [ ! -e {path} ]; do sleep 0.02; done"


# -- commands -----------------------------------------------------------------------------------


def test_run_in_foreground_as_the_default_user(sbx: Sandbox) -> None:
    result = sbx.commands.run("echo hi; whoami; pwd")
    assert result.exit_code == 0 and result.error is None
    assert result.stdout == "hi\nuser\n/home/user\n"
    assert result.stderr == ""


def test_run_with_envs_cwd_and_root(sbx: Sandbox) -> None:
    result = sbx.commands.run('echo "$GREETING"; pwd; echo "$E2B_SANDBOX_ID"', envs={"GREETING": "hello"}, cwd="/tmp")
    assert result.stdout == f"hello\n/tmp\n{sbx.sandbox_id}\n"
    assert sbx.commands.run('echo "$E2B_SANDBOX $E2B_TEMPLATE_ID"').stdout == "true base\n"  # as envd sets them
    assert sbx.commands.run('echo "$SANDBOX_WIDE"').stdout == "from create\n"
    assert sbx.commands.run('echo "$SANDBOX_WIDE"', envs={"SANDBOX_WIDE": "mine"}).stdout == "mine\n"
    assert sbx.commands.run("whoami; echo ~", user="root").stdout == "root\n/root\n"
    with pytest.raises(AuthenticationException):  # envd: an unknown user is not authenticated
        sbx.commands.run("true", user="nobody-here")


def test_output_streams_to_callbacks_while_the_command_runs(sbx: Sandbox) -> None:
    out: list[str] = []
    err: list[str] = []

    def on_stdout(chunk: str) -> None:
        out.append(chunk)
        sbx.files.write("/tmp/stream-go", "")  # the command only goes on once we saw its first line

    result = sbx.commands.run(
        f"echo first; {until_file('/tmp/stream-go')}; echo second >&2", on_stdout=on_stdout, on_stderr=err.append
    )
    assert "".join(out) == "first\n" and "".join(err) == "second\n"
    assert result.stdout == "first\n" and result.stderr == "second\n"


def test_non_zero_exit_raises_command_exit_exception(sbx: Sandbox) -> None:
    with pytest.raises(CommandExitException) as caught:
        sbx.commands.run("echo oops >&2; exit 3")
    assert caught.value.exit_code == 3
    assert caught.value.stderr == "oops\n"
    assert caught.value.error == "exit status 3"


def test_bad_cwd_is_an_invalid_argument(sbx: Sandbox) -> None:
    with pytest.raises(InvalidArgumentException):
        sbx.commands.run("true", cwd="/no/such/dir")


def test_timeout_raises_and_kills_the_command(sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep 60", background=True, timeout=1)
    with pytest.raises(TimeoutException):
        handle.wait()
    with pytest.raises(CommandExitException) as caught:  # the command's lifetime was the timeout
        sbx.commands.connect(handle.pid, timeout=30).wait()
    assert caught.value.exit_code == -1 and "killed" in (caught.value.error or "")


def test_background_list_and_kill(sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep 120", background=True, envs={"MARK": "bg"}, cwd="/tmp")
    listed = {p.pid: p for p in sbx.commands.list()}
    assert handle.pid in listed
    info = listed[handle.pid]
    assert (info.cmd, info.args) == ("/bin/bash", ["-l", "-c", "sleep 120"])
    assert (info.envs, info.cwd) == ({"MARK": "bg"}, "/tmp")
    assert handle.kill() is True
    with pytest.raises(CommandExitException) as caught:
        handle.wait()
    assert caught.value.exit_code == -1
    assert handle.pid not in {p.pid for p in sbx.commands.list()}
    assert sbx.commands.kill(handle.pid) is False
    assert sbx.commands.kill(999_999) is False


def test_stdin_send_and_close(sbx: Sandbox) -> None:
    handle = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(handle.pid, "hello ")
    handle.send_stdin(b"world\n")
    handle.close_stdin()
    assert handle.wait().stdout == "hello world\n"


def test_stream_input_is_client_streaming(sbx: Sandbox) -> None:
    handle = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.stream_input(handle.pid, ["a", b"b", "c\n"])
    sbx.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "abc\n"


def test_disconnect_then_connect_by_pid(sbx: Sandbox) -> None:
    handle = sbx.commands.run(f"{until_file('/tmp/connect-go')}; echo done", background=True)
    handle.disconnect()  # detaching must not kill it
    again = sbx.commands.connect(handle.pid)
    sbx.files.write("/tmp/connect-go", "")
    assert again.wait().stdout == "done\n"


def test_unknown_process_is_not_found(sbx: Sandbox) -> None:
    with pytest.raises(NotFoundException):
        sbx.commands.send_stdin(999_999, "x")
    with pytest.raises(NotFoundException):
        sbx.commands.connect(999_999)


# -- pty ----------------------------------------------------------------------------------------


def test_pty_create_input_resize_and_exit(sbx: Sandbox) -> None:
    handle = sbx.pty.create(PtySize(rows=24, cols=80), envs={"PS1": "$ "})
    sbx.pty.resize(handle.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(handle.pid, b"echo $((6*7)); stty size; exit 0\n")
    output = bytearray()
    result = handle.wait(on_pty=output.extend)
    assert result.exit_code == 0
    text = output.decode(errors="replace")
    assert "42" in text and "30 100" in text


def test_pty_kill(sbx: Sandbox) -> None:
    handle = sbx.pty.create(PtySize(rows=24, cols=80))
    assert sbx.pty.kill(handle.pid) is True
    with pytest.raises(CommandExitException):
        handle.wait()
    assert sbx.pty.kill(handle.pid) is False


# -- files --------------------------------------------------------------------------------------


def test_write_read_and_info(sbx: Sandbox) -> None:
    info = sbx.files.write("/home/user/hello.txt", "hello world")
    assert (info.path, info.name, info.type) == ("/home/user/hello.txt", "hello.txt", FileType.FILE)
    assert sbx.files.read("/home/user/hello.txt") == "hello world"
    assert sbx.files.read("hello.txt", format="bytes") == b"hello world"  # relative to the user's home
    entry = sbx.files.get_info("/home/user/hello.txt")
    assert (entry.type, entry.size, entry.owner, entry.group) == (FileType.FILE, 11, "user", "user")
    assert entry.permissions == "-rw-r--r--" and entry.mode == 0o644
    assert abs(entry.modified_time - datetime.now(UTC)) < timedelta(minutes=5)
    assert sbx.files.exists("/home/user/hello.txt") and not sbx.files.exists("/home/user/nope.txt")


def test_binary_and_streamed_writes(sbx: Sandbox) -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB, every byte value
    sbx.files.write("/tmp/blob.bin", blob)
    assert sbx.files.read("/tmp/blob.bin", format="bytes") == blob
    sbx.files.write("/tmp/chunks.bin", iter([b"a" * 100_000, b"b" * 100_000]))  # octet-stream upload
    data = sbx.files.read("/tmp/chunks.bin", format="bytes")
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(b"a" * 100_000 + b"b" * 100_000).hexdigest()
    assert b"".join(sbx.files.read("/tmp/chunks.bin", format="stream")) == data
    assert sbx.files.read("/tmp/chunks.bin", format="bytes", gzip=True) == data


def test_write_files_list_depth_and_user(sbx: Sandbox) -> None:
    written = sbx.files.write_files(
        [{"path": "/tmp/tree/a.txt", "data": "A"}, {"path": "/tmp/tree/sub/b.txt", "data": b"B"}]
    )
    assert [w.path for w in written] == ["/tmp/tree/a.txt", "/tmp/tree/sub/b.txt"]
    assert sorted(e.name for e in sbx.files.list("/tmp/tree")) == ["a.txt", "sub"]
    deep = {e.path: e.type for e in sbx.files.list("/tmp/tree", depth=2)}
    assert deep == {
        "/tmp/tree/a.txt": FileType.FILE, "/tmp/tree/sub": FileType.DIR, "/tmp/tree/sub/b.txt": FileType.FILE,
    }
    sbx.files.write("/root/secret.txt", "s", user="root")
    assert sbx.files.get_info("/root/secret.txt", user="root").owner == "root"


def test_make_dir_rename_remove(sbx: Sandbox) -> None:
    assert sbx.files.make_dir("/tmp/made/deep") is True
    assert sbx.files.make_dir("/tmp/made/deep") is False
    sbx.files.write("/tmp/made/deep/f.txt", "x")
    moved = sbx.files.rename("/tmp/made/deep/f.txt", "/tmp/made/g.txt")
    assert moved.path == "/tmp/made/g.txt" and sbx.files.read("/tmp/made/g.txt") == "x"
    sbx.commands.run("ln -s /tmp/made/g.txt /tmp/made/link")
    link = sbx.files.get_info("/tmp/made/link")
    assert link.type == FileType.SYMLINK and link.symlink_target == "/tmp/made/g.txt"
    sbx.files.remove("/tmp/made")
    assert not sbx.files.exists("/tmp/made")


def test_missing_paths_raise_file_not_found(sbx: Sandbox) -> None:
    with pytest.raises(FileNotFoundException):
        sbx.files.read("/nope/missing.txt")
    with pytest.raises(FileNotFoundException):
        sbx.files.get_info("/nope/missing.txt")
    with pytest.raises(FileNotFoundException):
        sbx.files.list("/nope")
    with pytest.raises(FileNotFoundException):
        sbx.files.rename("/nope/a", "/tmp/b")


def test_wrong_kind_of_path_is_an_invalid_argument(sbx: Sandbox) -> None:
    sbx.files.write("/tmp/plain.txt", "x")
    with pytest.raises(InvalidArgumentException):
        sbx.files.list("/tmp/plain.txt")
    with pytest.raises(InvalidArgumentException):
        sbx.files.read("/tmp")


def test_full_disk_raises_not_enough_space(sbx: Sandbox) -> None:
    sbx.commands.run("fallocate -l $(df --output=avail -B1 /home/user | tail -1) /home/user/fill || true")
    try:
        with pytest.raises(NotEnoughSpaceException):
            sbx.files.write("/home/user/more.bin", b"x" * (4 << 20))
    finally:
        sbx.files.remove("/home/user/fill")
    sbx.files.write("/home/user/more.bin", b"x")  # room again


def test_watch_dir_polling(server: Server, sbx: Sandbox) -> None:
    sbx.files.make_dir("/tmp/watched")
    handle = sbx.files.watch_dir("/tmp/watched")
    sbx.files.write("/tmp/watched/new.txt", "1")
    sbx.files.remove("/tmp/watched/new.txt")
    seen: list[tuple[str, FilesystemEventType]] = []
    deadline = time.monotonic() + 30
    while not any(t == FilesystemEventType.REMOVE for _, t in seen) and time.monotonic() < deadline:
        seen += [(e.name, e.type) for e in handle.get_new_events()]  # a poll: the API is polling
    handle.stop()
    assert ("new.txt", FilesystemEventType.CREATE) in seen
    assert ("new.txt", FilesystemEventType.REMOVE) in seen
    with envd_client(server, sbx.sandbox_id, **{"X-Access-Token": sbx._envd_access_token or ""}) as envd:
        r = envd.post("/filesystem.Filesystem/GetWatcherEvents", json={"watcherId": handle._watcher_id})
    assert (r.status_code, r.json()["code"]) == (404, "not_found")  # stop() removed it on the server


def test_watch_dir_streaming_async(e2b_env: None, sbx: Sandbox) -> None:
    async def scenario() -> list[tuple[str, FilesystemEventType]]:
        asbx = await AsyncSandbox.connect(sbx.sandbox_id)
        assert (await asbx.commands.run("echo async")).stdout == "async\n"
        await asbx.files.make_dir("/tmp/awatched")
        seen: list[tuple[str, FilesystemEventType]] = []
        got_write = asyncio.Event()

        def on_event(event) -> None:  # type: ignore[no-untyped-def]
            seen.append((event.name, event.type))
            if event.type == FilesystemEventType.WRITE:
                got_write.set()

        handle = await asbx.files.watch_dir("/tmp/awatched", on_event, recursive=True)
        await asbx.files.make_dir("/tmp/awatched/sub")
        await asbx.commands.run("echo x > /tmp/awatched/sub/f.txt")
        await asyncio.wait_for(got_write.wait(), 30)
        await handle.stop()
        return seen

    seen = asyncio.run(scenario())
    assert ("sub", FilesystemEventType.CREATE) in seen
    assert ("sub/f.txt", FilesystemEventType.WRITE) in seen


# -- HTTP endpoints, signed URLs, access tokens -------------------------------------------------


def test_health_and_envs(server: Server, sbx: Sandbox) -> None:
    assert sbx.is_running() is True
    with envd_client(server, sbx.sandbox_id, **{"X-Access-Token": sbx._envd_access_token or ""}) as envd:
        assert envd.get("/health").status_code == 204
        envs = envd.get("/envs").json()
    assert envs["E2B_SANDBOX"] == "true" and envs["E2B_SANDBOX_ID"] == sbx.sandbox_id
    assert envs["E2B_TEMPLATE_ID"] == "base"
    assert envs["SANDBOX_WIDE"] == "from create"


def test_signed_download_and_upload_urls(server: Server, sbx: Sandbox) -> None:
    sbx.files.write("/home/user/shared.txt", "signed content")
    url = sbx.download_url("/home/user/shared.txt", use_signature_expiration=120)
    assert "signature=v1_" in url and "signature_expiration=" in url
    with envd_client(server, sbx.sandbox_id) as anonymous:  # no token: the signature is the credential
        assert anonymous.get(url).text == "signed content"
        assert anonymous.get(url.replace("signature=v1_", "signature=v1_x")).status_code == 401
        non_ascii = anonymous.get(url.replace("signature=v1_", "signature=v1_%C3%A9"))  # é
        assert non_ascii.status_code == 401 and non_ascii.json()["code"] == 401
        assert anonymous.get(sbx.download_url("/home/user/other.txt")).status_code == 404
        reused = sbx.download_url("/home/user/shared.txt").replace("shared.txt", "hello.txt")
        assert anonymous.get(reused).status_code == 401  # a signature covers exactly one path
        up = sbx.upload_url("/home/user/uploaded.txt")
        r = anonymous.post(up, files={"file": ("ignored-name", b"via url")})
        assert r.status_code == 200, r.text
        assert r.json() == [{"path": "/home/user/uploaded.txt", "name": "uploaded.txt", "type": "file"}]
        assert anonymous.post(sbx.download_url("/home/user/x.txt"), files={"file": ("x", b"")}).status_code == 401
    assert sbx.files.read("/home/user/uploaded.txt") == "via url"


def test_another_sandboxes_token_does_not_open_this_one(server: Server, sbx: Sandbox, other: Sandbox) -> None:
    thief = Sandbox(
        sandbox_id=sbx.sandbox_id, sandbox_domain=None, envd_version=sbx._envd_version,
        envd_access_token=other._envd_access_token, traffic_access_token=None,
        connection_config=ConnectionConfig(extra_sandbox_headers={
            "E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": ENVD,
            "X-Access-Token": other._envd_access_token or "",
        }),
    )
    with pytest.raises(AuthenticationException):
        thief.commands.run("echo pwned")
    with pytest.raises(AuthenticationException):
        thief.files.read("/home/user/hello.txt")
    with pytest.raises(AuthenticationException):
        thief.files.write("/home/user/pwned.txt", "x")
    with envd_client(server, sbx.sandbox_id) as anonymous:
        assert anonymous.post("/process.Process/List", json={}).status_code == 401
        assert anonymous.get("/files", params={"path": "/home/user/hello.txt"}).status_code == 401
    assert other.commands.run("echo mine").stdout == "mine\n"  # the token still opens its own sandbox


def test_concurrent_commands_share_nothing(sbx: Sandbox) -> None:
    results: dict[int, str] = {}

    def run(i: int) -> None:
        results[i] = sbx.commands.run(f"echo {i}").stdout

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"{i}\n" for i in range(8)}


def test_a_killed_sandbox_is_not_running(e2b_env: None) -> None:
    doomed = Sandbox.create(timeout=120)
    running = doomed.commands.run("sleep 60", background=True)
    assert doomed.is_running() is True
    doomed.kill()
    with pytest.raises(SandboxNotRunningException):  # the stream broke: the SDK probes /health
        running.wait()
    assert doomed.is_running() is False
    with pytest.raises(SandboxNotRunningException):
        doomed.commands.run("true")
    with pytest.raises(SandboxNotRunningException):
        doomed.files.read("/etc/hostname")
    with pytest.raises(SandboxNotRunningException):
        doomed.files.list("/")


# -- the Connect wire, spoken directly ----------------------------------------------------------


def frames(body: bytes) -> list[tuple[int, dict[str, object]]]:
    import json

    out, at = [], 0
    while at < len(body):
        flags, length = body[at], int.from_bytes(body[at + 1 : at + 5], "big")
        out.append((flags, json.loads(body[at + 5 : at + 5 + length])))
        at += 5 + length
    return out


def envelope(message: dict[str, object]) -> bytes:
    import json

    payload = json.dumps(message).encode()
    return b"\0" + len(payload).to_bytes(4, "big") + payload


def test_wire_stream_keepalives_and_end_of_stream(server: Server, sbx: Sandbox) -> None:
    headers = {"X-Access-Token": sbx._envd_access_token or "", "Content-Type": "application/connect+json",
               "Keepalive-Ping-Interval": "1"}
    start = {"process": {"cmd": "/bin/sh", "args": ["-c", f"{until_file('/tmp/wire-go')}; echo out"]}, "stdin": False}
    received = bytearray()
    with (
        envd_client(server, sbx.sandbox_id, **headers) as envd,
        envd.stream("POST", "/process.Process/Start", content=envelope(start)) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"] == "application/connect+json"
        for chunk in r.iter_raw():
            received += chunk
            if b"keepalive" in received and not sbx.files.exists("/tmp/wire-go"):
                sbx.files.write("/tmp/wire-go", "")  # idle until we saw a keepalive
    got = frames(bytes(received))
    events = [next(iter(m["event"])) for flags, m in got[:-1]]  # type: ignore[call-overload]
    assert events[0] == "start" and "keepalive" in events and events[-1] == "end"
    assert {"event": {"data": {"stdout": "b3V0Cg=="}}} in [m for _, m in got]
    assert got[-1] == (2, {})


def test_wire_errors_and_deadlines(server: Server, sbx: Sandbox) -> None:
    token = {"X-Access-Token": sbx._envd_access_token or ""}
    with envd_client(server, sbx.sandbox_id, **token) as envd:
        r = envd.post("/filesystem.Filesystem/Stat", json={"path": "/nope"})
        assert r.status_code == 404 and r.json()["code"] == "not_found"
        proto = {"Content-Type": "application/proto"}
        r = envd.post("/filesystem.Filesystem/Stat", content=b"\x0a\x01/", headers=proto)
        assert r.json()["code"] == "unimplemented"  # the JSON codec only
        assert envd.post("/process.Process/Nope", json={}).json()["code"] == "unimplemented"
        sleeper = {"process": {"cmd": "/bin/sleep", "args": ["30"]}}
        r = envd.post("/process.Process/Start", content=envelope(sleeper),
                      headers={"Content-Type": "application/connect+json", "Connect-Timeout-Ms": "500"})
        got = frames(r.content)
        assert next(iter(got[0][1]["event"])) == "start"  # type: ignore[call-overload]
        assert got[-1][0] == 2 and got[-1][1]["error"]["code"] == "deadline_exceeded"  # type: ignore[index]
        r = envd.post("/process.Process/Start", content=envelope({"process": {"cmd": "true", "cwd": "/nope"}}),
                      headers={"Content-Type": "application/connect+json"})
        assert r.status_code == 200 and frames(r.content)[-1][1]["error"]["code"] == "invalid_argument"  # type: ignore[index]


def test_wire_download_gzip_only_when_asked_for_alone(server: Server, sbx: Sandbox) -> None:
    sbx.files.write("/tmp/text.txt", "z" * 10_000)
    token = {"X-Access-Token": sbx._envd_access_token or ""}
    with envd_client(server, sbx.sandbox_id, **token) as envd:
        r = envd.get("/files", params={"path": "/tmp/text.txt"}, headers={"Accept-Encoding": "gzip"})
        assert r.headers["content-encoding"] == "gzip" and r.text == "z" * 10_000
        assert r.num_bytes_downloaded < 1000  # compressed on the wire
        r = envd.get("/files", params={"path": "/tmp/text.txt"}, headers={"Accept-Encoding": "gzip, deflate"})
        assert "content-encoding" not in r.headers and r.headers["content-length"] == "10000"
        assert r.headers["content-disposition"] == 'inline; filename="text.txt"'


def test_a_paused_sandbox_is_not_running_until_resumed(server: Server, e2b_env: None) -> None:
    napping = Sandbox.create(timeout=120)
    napping.files.write("/home/user/kept.txt", "still here")
    signed = napping.download_url("/home/user/kept.txt")
    assert napping.pause() is True
    assert napping.is_running() is False
    with pytest.raises(SandboxNotRunningException):
        napping.commands.run("true")
    with envd_client(server, napping.sandbox_id) as anonymous:
        assert anonymous.get(signed).status_code == 502  # signed URLs wait for the resume too
    resumed = Sandbox.connect(napping.sandbox_id)
    assert resumed.is_running() is True
    assert resumed.files.read("/home/user/kept.txt") == "still here"
    resumed.kill()
