"""The Python SDK against a real server: the README's flows, sync and async."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest

from conftest import Server
from corral import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FileType,
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
)


@pytest.fixture
def sdk_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    monkeypatch.setenv("CORRAL_API_URL", server.url)
    monkeypatch.setenv("CORRAL_API_KEY", server.api_key)
    return server


def test_sync_sandbox_commands(sdk_env: Server) -> None:
    with Sandbox.create(template="base", timeout=60, envs={"A": "1"}, metadata={"k": "v"}, cpu=1,
                        memory_mb=512) as sbx:
        r = sbx.commands.run("echo $A; echo err >&2")
        assert (r.stdout, r.stderr, r.exit_code) == ("1\n", "err\n", 0)
        with pytest.raises(CommandExitException) as failed:
            sbx.commands.run("echo partial; exit 7")
        assert failed.value.exit_code == 7 and failed.value.stdout == "partial\n"
        assert sbx.commands.run("exit 7", check=False).exit_code == 7
        assert sbx.commands.run("pwd; whoami", cwd="/tmp", user="root").stdout == "/tmp\nroot\n"
        assert sbx.commands.run("echo $B", envs={"B": "2"}).stdout == "2\n"
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id and info.metadata == {"k": "v"}
        assert sbx.sandbox_id in [s.sandbox_id for s in Sandbox.list()]
        sbx.set_timeout(300)
        assert sbx.get_metrics().memory_limit_bytes == 512 * 1024 * 1024
        again = Sandbox.connect(sbx.sandbox_id)
        assert again.commands.run("echo same").stdout == "same\n"
        sandbox_id = sbx.sandbox_id
    with pytest.raises(NotFoundException, match=sandbox_id):
        Sandbox.connect(sandbox_id)  # the context manager killed it


def test_streaming_callbacks_fire_before_the_command_ends(sdk_env: Server) -> None:
    with Sandbox.create(timeout=60) as sbx:
        seen: list[tuple[float, str]] = []
        started = time.monotonic()
        sbx.commands.run("for i in 1 2 3 4 5; do echo $i; sleep 0.1; done",
                         on_stdout=lambda s: seen.append((time.monotonic(), s)))
        ended = time.monotonic()
        assert "".join(s for _, s in seen) == "1\n2\n3\n4\n5\n"
        assert seen[0][0] - started < ended - started - 0.3  # the first line came well before the end


def _ports_to(server_port: int) -> set[int]:
    """This process's local ports of open TCP connections to 127.0.0.1:`server_port`."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                mine.add(target[8:-1])
    ports = set()
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in mine and remote == f"0100007F:{server_port:04X}":
            ports.add(int(local.split(":")[1], 16))
    return ports


def test_calls_in_a_row_share_one_connection(sdk_env: Server) -> None:
    """Commands, background commands and code cells read their answers to the end, so the next call
    reuses the connection instead of opening a new one. Twin: each call did use a connection."""
    port = int(sdk_env.url.rsplit(":", 1)[1])
    others = _ports_to(port)  # other clients' idle connections in this process

    def ours() -> set[int]:
        return _ports_to(port) - others

    with Sandbox.create(template="base", timeout=60) as sbx:
        seen: list[set[int]] = []
        for _ in range(3):
            sbx.commands.run("echo x", on_stdout=lambda _line: seen.append(ours()))
        handle = sbx.commands.run("echo y", background=True, on_stdout=lambda _line: seen.append(ours()))
        assert handle.wait().exit_code == 0
        sbx.commands.run("echo z", on_stdout=lambda _line: seen.append(ours()))
        assert len(seen) == 5 and all(len(ports) == 1 for ports in seen), seen  # one connection open in each
        assert len(set().union(*seen)) <= 2, seen  # the background command's stream is its own connection
        cells: list[set[int]] = []
        for _ in range(2):  # the bash driver: code cells in any template
            sbx.run_code("echo 1", language="bash", on_stdout=lambda _m: cells.append(ours()))
        assert len(cells) == 2 and len(cells[0]) == 1 and cells[0] == cells[1], cells


def test_background_commands(sdk_env: Server) -> None:
    with Sandbox.create(timeout=60) as sbx:
        h = sbx.commands.run("sleep 100", background=True)
        assert h.pid in [p.pid for p in sbx.commands.list()]
        assert h.kill()
        with pytest.raises(CommandExitException):
            h.wait()
        cat = sbx.commands.run("cat", background=True, stdin=True, timeout=0)
        sbx.commands.send_stdin(cat.pid, "hello\n")
        sbx.commands.close_stdin(cat.pid)
        assert cat.wait().stdout == "hello\n"
        assert not sbx.commands.kill(999999)


def test_files(sdk_env: Server, tmp_path: Path) -> None:
    with Sandbox.create(timeout=60) as sbx:
        info = sbx.files.write("/home/user/a.csv", "a,b\n1,2\n")
        assert info.type == FileType.FILE and info.size == 8
        assert sbx.files.read("/home/user/a.csv") == "a,b\n1,2\n"
        assert sbx.files.read("a.csv", format="bytes") == b"a,b\n1,2\n"
        assert "a.csv" in [e.name for e in sbx.files.list("/home/user")]
        assert sbx.files.exists("/home/user/a.csv") and not sbx.files.exists("/home/user/nope")
        assert sbx.files.make_dir("/home/user/d") and not sbx.files.make_dir("/home/user/d")
        assert sbx.files.rename("/home/user/a.csv", "/home/user/d/b.csv").path == "/home/user/d/b.csv"
        assert sbx.files.get_info("/home/user/d").type == FileType.DIR
        sbx.files.remove("/home/user/d")
        assert not sbx.files.exists("/home/user/d")
        with pytest.raises(NotFoundException):
            sbx.files.read("/home/user/missing")
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(8 * 1024 * 1024))
        sbx.files.upload(str(big), "/home/user/big.bin")
        sbx.files.download("/home/user/big.bin", str(tmp_path / "back.bin"))
        assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()


def test_errors_are_typed(sdk_env: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgumentException, match="timeout"):
        Sandbox.create(timeout=0)
    with pytest.raises(NotFoundException, match="doesnotexist00000000"):
        Sandbox.connect("doesnotexist00000000")
    monkeypatch.setenv("CORRAL_API_KEY", "e2b_" + "0" * 40)
    with pytest.raises(AuthenticationException):
        Sandbox.list()


def test_async_sandbox(sdk_env: Server) -> None:
    async def main() -> None:
        async with await AsyncSandbox.create(timeout=60, envs={"X": "y"}) as sbx:
            chunks: list[str] = []
            r = await sbx.commands.run("echo $X", on_stdout=chunks.append)
            assert r.stdout == "y\n" and chunks == ["y\n"]
            await sbx.files.write("/home/user/f.txt", b"data")
            assert await sbx.files.read("/home/user/f.txt") == "data"
            results = await asyncio.gather(*(sbx.commands.run(f"echo {i}") for i in range(5)))
            assert [x.stdout for x in results] == [f"{i}\n" for i in range(5)]
            assert await sbx.is_running()

    asyncio.run(main())
