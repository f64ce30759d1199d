"""The agent's wire protocol: hostile input, the op list, stdlib-only packaging, client failures."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_agent_harness import RunningAgent, agent, alive, collect, read_until, run, start_agent, wait_until

import corral.agent
from corral.agent.client import AgentClient, DonatedAgentClient, Donor
from corral.agent.protocol import ERROR_KINDS, OPS, AgentError, AgentUnavailable, recv_fds
from corral.agent.server import Agent

__all__ = ["agent"]  # the fixture, imported from the harness

AGENT_DIR = Path(corral.agent.__file__).parent


def frame(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">Ic", len(payload), kind) + payload


def exchange(path: str, data: bytes) -> tuple[dict[str, Any] | None, bool]:
    """Send raw bytes on a new connection; return the agent's first JSON reply and whether it closed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    if len(received) < 5:
        return None, True
    length, kind = struct.unpack(">Ic", received[:5])
    assert kind == b"J"
    return json.loads(received[5 : 5 + length]), True


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (struct.pack(">Ic", 2**31, b"J"), "too_large"),
        (struct.pack(">Ic", (1 << 20) + 1, b"J") + b"{" * 64, "too_large"),
        (frame(b"J", b"{not json"), "invalid"),
        (frame(b"J", b"[1, 2]"), "invalid"),
        (frame(b"J", b"[" * 100_000 + b"]" * 100_000), "invalid"),
        (frame(b"J", b'{"op": "format_disk"}'), "invalid"),
        (frame(b"J", b'{"no_op": 1}'), "invalid"),
        (frame(b"X", b"{}"), "invalid"),
        (frame(b"D", b"data first"), "invalid"),
        (frame(b"J", b'{"op": "exec", "cmd": 5}'), "invalid"),
        (frame(b"J", b'{"op": "exec", "cmd": ["true"], "timeout": "1"}'), "invalid"),
        (frame(b"J", b'{"op": "exec", "cmd": ["true"], "timeout": NaN}'), "invalid"),
        (frame(b"J", b'{"op": "exec", "cmd": ["a\\u0000b"]}'), "invalid"),
        (frame(b"J", b'{"op": "exec", "cmd": ["true"], "env": {"A=B": "c"}}'), "invalid"),
        (frame(b"J", b'{"op": "signal", "pid": true, "signal": 9}'), "invalid"),
        (frame(b"J", b'{"op": "signal", "pid": 1, "signal": 99999}'), "invalid"),
        (frame(b"J", b'{"op": "signal", "pid": 1, "signal": 9}'), "not_found"),
        (frame(b"J", b'{"op": "stat", "path": 123}'), "invalid"),
        (frame(b"J", b'{"op": "stat", "path": "/", "user": 0}'), "invalid"),
        (frame(b"J", b'{"op": "stdin", "pid": 1, "data": "!!!"}'), "invalid"),
        (frame(b"J", b'{"op": "write", "path": "/tmp/x", "mode": 99999}') + frame(b"Z", b""), "invalid"),
        (frame(b"J", b'{"op": "list", "path": "/", "depth": "deep"}'), "invalid"),
    ],
)
def test_malformed_requests_get_structured_errors(agent: RunningAgent, raw: bytes, kind: str) -> None:
    reply, closed = exchange(agent.socket_path, raw)
    assert reply is not None and reply["ok"] is False and closed
    assert reply["error"]["kind"] == kind, reply
    assert run(agent.client.ping())["ok"] is True


def test_truncated_and_silent_connections_do_not_affect_others(agent: RunningAgent) -> None:
    for raw in (b"", b"\x00\x00", frame(b"J", b'{"op": "ping"}')[:-3]):
        assert exchange(agent.socket_path, raw) == (None, True)

    async def main() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
            idle.connect(agent.socket_path)
            idle.sendall(struct.pack(">Ic", 100, b"J") + b"{")  # and then nothing more
            stream = await agent.client.exec(["echo", "still serving"])
            assert (await collect(stream))[0] == b"still serving\n"

    run(main())


def test_the_op_list_is_complete_and_documented() -> None:
    assert set(Agent().handlers) == set(OPS)
    assert all(doc and "\n" not in doc for doc in OPS.values())
    documented = (Path(__file__).parents[2] / "docs" / "agent-protocol.md").read_text()
    assert all(f"| `{op}` |" in documented for op in OPS)
    assert all(f"`{kind}`" in documented for kind in ERROR_KINDS)


def test_agent_sources_import_only_the_stdlib_and_themselves() -> None:
    for source in AGENT_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top == "__future__" or top in sys.stdlib_module_names, f"{source.name}: {name}"


# Each costs the agent's start (every cold create) and its heap (every idle sandbox) milliseconds or
# MiB: asyncio alone pulled in ssl, logging, concurrent.futures and inspect (docs/performance.md).
EXPENSIVE = ("asyncio", "ssl", "logging", "concurrent", "inspect", "typing", "dataclasses", "argparse",
             "tarfile", "shutil", "secrets", "hashlib", "email", "http", "urllib", "tempfile", "pathlib")


def test_agent_start_path_imports_nothing_expensive(tmp_path: Path) -> None:
    shutil.copytree(AGENT_DIR, tmp_path / "corral_agent", ignore=shutil.ignore_patterns("__pycache__"))
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import corral_agent.server; print(*sys.modules)"
    out = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert "corral_agent.server" in out
    assert sorted({name.split(".")[0] for name in out} & set(EXPENSIVE)) == []


@pytest.mark.parametrize("form", ["directory", "module"])
def test_agent_runs_isolated_under_another_package_name(tmp_path: Path, form: str) -> None:
    shutil.copytree(AGENT_DIR, tmp_path / "corral_agent", ignore=shutil.ignore_patterns("__pycache__"))
    if form == "directory":  # no site-packages, no environment, no cwd on the path
        command, cwd = [sys.executable, "-I", "-S", str(tmp_path / "corral_agent")], None
    else:
        command, cwd = [sys.executable, "-S", "-m", "corral_agent"], str(tmp_path)

    async def main(client: AgentClient) -> None:
        assert (await client.ping())["version"] == 1
        assert (await collect(await client.exec(["echo", "hi"], user="root")))[0] == b"hi\n"

    with start_agent(command, cwd=cwd) as running:
        run(main(running.client))
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=10) == 0, running.log()


def test_unreachable_agent_raises_agent_unavailable(tmp_path: Path) -> None:
    with pytest.raises(AgentUnavailable) as err:
        run(AgentClient(str(tmp_path / "no.sock"), connect_timeout=1).ping())
    assert isinstance(err.value, AgentError) and err.value.kind == "unavailable"


def test_agent_dying_mid_stream_raises_agent_unavailable() -> None:
    async def main(running: RunningAgent) -> None:
        stream = await running.client.exec(["sh", "-c", "echo up; exec cat"], stdin=True)
        await read_until(stream, b"up\n")
        cat = stream.pid
        running.process.send_signal(signal.SIGKILL)
        with pytest.raises(AgentUnavailable):
            await collect(stream)
        with pytest.raises(AgentUnavailable):
            await running.client.ping()
        # Its stdin and stdout pipes died with the agent, so cat ends on its own.
        await wait_until(lambda: not alive(cat), "the orphaned process ended")

    with start_agent() as running:
        run(main(running))


def test_agent_refuses_an_fd_that_is_not_a_listening_socket(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "corral.agent", "--listen-fd", str(read_end)],
            pass_fds=[read_end],
            capture_output=True,
            timeout=10,
        )
        assert proc.returncode == 2 and b"not a socket" in proc.stderr
    finally:
        os.close(read_end)
        os.close(write_end)


def test_donated_connections_are_served_and_the_agent_ends_with_its_control_socket() -> None:
    """``--control-fd``: the host hands over each connection as an fd; closing the control ends the agent."""
    host, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.agent", "--control-fd", str(theirs.fileno())],
        pass_fds=[theirs.fileno()], stderr=subprocess.PIPE,
    )
    theirs.close()

    async def main() -> None:
        donor = Donor(host)
        client = DonatedAgentClient(donor, "test agent")
        assert (await client.ping())["ok"] is True
        streams = [await client.exec(["echo", str(i)]) for i in range(3)]  # three connections at once
        assert [(await collect(s))[0] for s in streams] == [b"0\n", b"1\n", b"2\n"]
        donor.close()

    try:
        run(main())
        assert process.wait(timeout=10) == 0
        assert process.stderr is not None and b"Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_agent_refuses_a_listening_socket_as_its_control_fd(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(tmp_path / "s"))
        listener.listen(1)
        proc = subprocess.run(
            [sys.executable, "-m", "corral.agent", "--control-fd", str(listener.fileno())],
            pass_fds=[listener.fileno()], capture_output=True, timeout=10,
        )
    assert proc.returncode == 2 and b"not a connected AF_UNIX stream socket" in proc.stderr


def _loopback_server() -> tuple[socket.socket, int]:
    """A listening TCP socket on 127.0.0.1 and its port (the test plays the server by hand)."""
    listener = socket.create_server(("127.0.0.1", 0))
    return listener, int(listener.getsockname()[1])


async def _relay_round(client: AgentClient, listener: socket.socket, port: int) -> None:
    loop = asyncio.get_running_loop()
    relayed = await client.relay(port)
    conn, _ = await loop.sock_accept(listener)
    with conn, relayed:
        await loop.sock_sendall(conn, b"hello\n")  # the server speaks first: nothing may be lost
        assert await loop.sock_recv(relayed, 100) == b"hello\n"
        await loop.sock_sendall(relayed, b"ping")
        assert await loop.sock_recv(conn, 100) == b"ping"
        relayed.shutdown(socket.SHUT_WR)  # the caller's EOF reaches the server...
        assert await loop.sock_recv(conn, 100) == b""
        await loop.sock_sendall(conn, b"bye")  # ...which can still answer
        conn.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(relayed, 100) == b"bye"
        assert await loop.sock_recv(relayed, 100) == b""


def test_relay_splices_a_loopback_port_both_ways_on_both_transports(agent: RunningAgent) -> None:
    """`relay` (gVisor's exposed ports): the agent connects to 127.0.0.1:port and the caller's socket
    then carries raw bytes both ways, half-closes included; nothing listening is a not_found error."""
    listener, port = _loopback_server()
    listener.setblocking(False)
    with listener:
        run(_relay_round(agent.client, listener, port))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = int(probe.getsockname()[1])
        with pytest.raises(AgentError) as caught:
            run(agent.client.relay(free))
        assert caught.value.kind == "not_found" and str(free) in caught.value.message
        with pytest.raises(AgentError) as caught:
            run(agent.client.relay(0))
        assert caught.value.kind == "invalid"

        host, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = subprocess.Popen([sys.executable, "-m", "corral.agent", "--control-fd", str(theirs.fileno())],
                                   pass_fds=[theirs.fileno()])
        theirs.close()

        async def donated() -> None:
            donor = Donor(host)
            await _relay_round(DonatedAgentClient(donor, "test agent"), listener, port)
            donor.close()

        try:
            run(donated())
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def _frames(sock: socket.socket, count: int) -> list[tuple[bytes, Any]]:
    """The next `count` frames on a blocking socket: (kind, JSON object or bytes)."""
    out: list[tuple[bytes, Any]] = []
    buf = b""
    while len(out) < count:
        while len(buf) < 5 or len(buf) < 5 + struct.unpack(">I", buf[:4])[0]:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {out}"
            buf += chunk
        length, kind = struct.unpack(">Ic", buf[:5])
        payload, buf = buf[5 : 5 + length], buf[5 + length :]
        out.append((kind, json.loads(payload) if kind == b"J" else payload))
    assert buf == b""
    return out


def _ask(sock: socket.socket, request: dict[str, Any], replies: int = 1) -> list[tuple[bytes, Any]]:
    sock.sendall(frame(b"J", json.dumps(request).encode()))
    return _frames(sock, replies)


def test_a_connection_carries_the_next_request_once_an_exchange_completed(agent: RunningAgent) -> None:
    """One-reply ops (error replies too) and exec/attach after their exit leave the connection open for
    the next request; a read ends its connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(agent.socket_path)
        assert _ask(sock, {"op": "ping"})[0][1]["ok"] is True
        assert _ask(sock, {"op": "stat", "path": "/nonexistent-here"})[0][1]["error"]["kind"] == "not_found"
        started, out, end = _ask(sock, {"op": "exec", "cmd": ["echo", "again"]}, 3)
        assert (started[1]["ok"], out, end[1]["exit_code"]) == (True, (b"O", b"again\n"), 0)
        assert _ask(sock, {"op": "attach", "pid": started[1]["pid"]}, 2)[1][1]["event"] == "exit"
        assert _ask(sock, {"op": "exec", "cmd": ["/nonexistent-here"]})[0][1]["error"]["kind"] == "not_found"
        assert _ask(sock, {"op": "stat", "path": "/"})[0][1]["entry"]["type"] == "dir"
        assert _ask(sock, {"op": "read", "path": "/etc/hostname"}, 3)[2] == (b"Z", b"")
        assert sock.recv(1) == b""  # and closed


def test_the_agent_closes_a_connection_left_idle() -> None:
    with start_agent(env={"CORRAL_AGENT_KEEP_IDLE": "0.2"}) as running, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(running.socket_path)
        assert _ask(sock, {"op": "ping"})[0][1]["ok"] is True
        assert _ask(sock, {"op": "ping"})[0][1]["ok"] is True  # open after the first
        assert sock.recv(1) == b""  # closed by the agent once 0.2 s passed without a request


def test_a_pool_reuses_completed_connections_and_replaces_one_closed_meanwhile() -> None:
    from corral.agent.client import ChannelPool

    with start_agent(env={"CORRAL_AGENT_KEEP_IDLE": "0.2"}) as running:
        pool = ChannelPool()
        client = AgentClient(running.socket_path, pool=pool)

        async def main() -> None:
            assert (await client.ping())["ok"] is True and pool.idle(client.socket_path) == 1
            reused = pool.take(client.socket_path)
            assert reused is not None
            pool.put(client.socket_path, reused)
            out, _, result = await collect(await client.exec(["echo", "pooled"]))
            assert (out, result.exit_code, pool.idle(client.socket_path)) == (b"pooled\n", 0, 1)
            assert pool.take(client.socket_path) is reused  # the same connection served both
            pool.put(client.socket_path, reused)
            # the agent closes it (idle 0.2 s) while this loop does not run: it still looks open here
            peer = select.poll()
            peer.register(reused._writer.get_extra_info("socket").fileno(), select.POLLIN | select.POLLHUP)
            assert peer.poll(10_000)
            assert (await client.stat("/"))["type"] == "dir"  # sent on it, no reply: sent again on a new one
            assert pool.idle(client.socket_path) == 1 and pool.take(client.socket_path) is not reused

        run(main())


def test_descriptors_received_are_close_on_exec() -> None:
    """Descriptors passed to the agent, its zygote and spawner, or the host's zygote client arrive
    close-on-exec: nothing a sandbox's process is handed leaks into the next program it starts."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read_end, write_end = os.pipe()
    try:
        os.set_inheritable(read_end, True)
        socket.send_fds(theirs, [b"take"], [read_end, write_end])
        msg, fds = recv_fds(ours, 64, 4)
        assert msg == b"take" and len(fds) == 2
        assert [os.get_inheritable(fd) for fd in fds] == [False, False]
        for fd in fds:
            os.close(fd)
        socket.send_fds(theirs, [b"none wanted"], [read_end])
        assert recv_fds(ours, 64, 0) == (b"none wanted", [])  # the kernel drops what did not fit
    finally:
        for end in (ours, theirs):
            end.close()
        os.close(read_end)
        os.close(write_end)
