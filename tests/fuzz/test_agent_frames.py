"""Fuzzing the agent's wire protocol (`agent/protocol.py`) with hypothesis.

Properties: whatever bytes arrive, `Channel.recv` (the host's, asyncio) and `SyncChannel.recv` (the
agent's, a blocking socket) yield the same well-formed frames and then stop with the same
`AgentError` or at end of stream (`EOFError`) — never another exception — and never ask their reader
for more than one header or one payload of at most `MAX_PAYLOAD` bytes, so a lying length field
can't make them buffer more. `decode_json` and `Request`'s typed accessors turn any
JSON into a value of the promised type or an `AgentError`. A live agent answers hostile first
frames with a protocol error reply (or closes), stays up, and logs no traceback.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.agent.client import Channel
from corral.agent.copyin import owner_ids
from corral.agent.protocol import (
    ERROR_KINDS,
    HEADER,
    KINDS,
    MAX_PAYLOAD,
    OPS,
    AgentError,
    AgentUnavailable,
    Request,
    SyncChannel,
    decode_json,
    is_unicode,
)
from unit.test_agent_harness import RunningAgent, start_agent

KIND_BYTES = st.sampled_from(sorted(KINDS)) | st.binary(min_size=1, max_size=1)
EDGES = [MAX_PAYLOAD, MAX_PAYLOAD + 1, 2**31, 2**32 - 1]
LENGTHS = st.integers(0, 64) | st.sampled_from(EDGES) | st.integers(0, 2**32 - 1)
# strings include lone surrogates: JSON can spell them ("\\ud800") though no OS call can take them
TEXT = st.text() | st.text(alphabet=st.characters(categories=["Cs"]) | st.sampled_from("a/.\0é"), max_size=6)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


class CountingReader:
    """An asyncio.StreamReader that records how many bytes each read asked for."""

    def __init__(self, data: bytes) -> None:
        self.reader = asyncio.StreamReader()
        self.reader.feed_data(data)
        self.reader.feed_eof()
        self.asked: list[int] = []

    async def readexactly(self, n: int) -> bytes:
        self.asked.append(n)
        return await self.reader.readexactly(n)


def frame(kind: bytes, payload: bytes, length: int | None = None) -> bytes:
    return HEADER.pack(len(payload) if length is None else length, kind) + payload


def read_all(data: bytes) -> tuple[list[tuple[bytes, bytes]], BaseException, list[int]]:
    """Every frame `Channel.recv` gets from `data`, the exception that ended it, the sizes asked for."""

    async def go() -> tuple[list[tuple[bytes, bytes]], BaseException, list[int]]:
        reader = CountingReader(data)
        chan = Channel(reader, None)  # type: ignore[arg-type]  # recv never writes
        frames = []
        while True:
            try:
                frames.append(await chan.recv())
            except BaseException as exc:  # judged by the caller
                return frames, exc, reader.asked

    return asyncio.run(go())


class FakeSocket:
    """Just what `SyncChannel.recv` uses of a socket, recording how many bytes each read asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.asked: list[int] = []

    def recv_into(self, buf: memoryview) -> int:
        self.asked.append(len(buf))
        n = min(len(buf), len(self.data))
        buf[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


def read_all_sync(data: bytes) -> tuple[list[tuple[bytes, bytes]], BaseException, list[int]]:
    sock = FakeSocket(data)
    chan = SyncChannel(sock)  # type: ignore[arg-type]  # recv only reads
    frames = []
    while True:
        try:
            frames.append(chan.recv())
        except BaseException as exc:  # judged by the caller
            return frames, exc, sock.asked


def check_stream(data: bytes) -> list[tuple[bytes, bytes]]:
    frames, ended, asked = read_all(data)
    assert isinstance(ended, AgentError | asyncio.IncompleteReadError), repr(ended)
    if isinstance(ended, AgentError):
        assert ended.kind in ERROR_KINDS
    assert all(n <= max(HEADER.size, MAX_PAYLOAD) for n in asked), asked
    sync_frames, sync_ended, sync_asked = read_all_sync(data)
    assert sync_frames == frames
    assert type(sync_ended) is (AgentError if isinstance(ended, AgentError) else EOFError), repr(sync_ended)
    assert str(sync_ended) == str(ended) or not isinstance(ended, AgentError)
    assert all(n <= max(HEADER.size, MAX_PAYLOAD) for n in sync_asked), sync_asked
    for kind, payload in frames:
        assert kind in KINDS and len(payload) <= MAX_PAYLOAD
        assert kind != b"Z" or payload == b""
    return frames


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_give_frames_then_an_agent_error_or_the_end(data: bytes) -> None:
    check_stream(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(KIND_BYTES, st.binary(max_size=256), st.none() | LENGTHS), max_size=8))
def test_framed_sequences_with_lying_lengths(parts: list[tuple[bytes, bytes, int | None]]) -> None:
    data = b"".join(frame(kind, payload, length) for kind, payload, length in parts)
    frames = check_stream(data)
    # every honest, valid frame before the first bad one comes out exactly as sent
    expected = []
    for kind, payload, length in parts:
        if (length is not None and length != len(payload)) or kind not in KINDS or (kind == b"Z" and payload):
            break
        expected.append((kind, payload))
    assert frames[: len(expected)] == expected


@settings(max_examples=50, deadline=None)
@given(st.integers(MAX_PAYLOAD + 1, 2**32 - 1), KIND_BYTES)
def test_a_huge_length_is_refused_before_any_payload_is_read(length: int, kind: bytes) -> None:
    for read in (read_all, read_all_sync):
        frames, ended, asked = read(HEADER.pack(length, kind) + b"x" * 1024)
        assert frames == [] and isinstance(ended, AgentError) and asked == [HEADER.size]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_decode_json_gives_an_object_or_an_agent_error(payload: bytes) -> None:
    try:
        value = decode_json(payload)
    except AgentError as exc:
        assert exc.kind == "invalid"
    else:
        assert isinstance(value, dict)


def accessors(request: Request) -> None:
    """Call every typed accessor on every field name; each returns its type or raises AgentError."""
    checks: list[tuple[Callable[[str], Any], Callable[[Any], bool]]] = [
        (lambda n: request.text(n, "d"), lambda v: isinstance(v, str) and "\0" not in v and is_unicode(v)),
        (request.optional_text, lambda v: v is None or (isinstance(v, str) and is_unicode(v))),
        (request.path, lambda v: isinstance(v, str) and bool(v) and "\0" not in v and is_unicode(v)),
        (lambda n: request.integer(n, 0), lambda v: isinstance(v, int) and not isinstance(v, bool)),
        (lambda n: request.number(n, 0.0), lambda v: isinstance(v, float) and math.isfinite(v)),
        (lambda n: request.flag(n, False), lambda v: isinstance(v, bool)),
        (request.texts, lambda v: isinstance(v, list) and all(isinstance(i, str) and is_unicode(i) for i in v)),
        (request.text_map, lambda v: isinstance(v, dict) and all(is_unicode(k + x) for k, x in v.items())),
        (request.optional_object, lambda v: v is None or isinstance(v, dict)),
    ]
    for name in [*request.fields, "missing"]:
        for call, check in checks:
            try:
                value = call(name)
            except AgentError as exc:
                assert exc.kind == "invalid", exc
            else:
                assert check(value), (name, value)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([*OPS, "nope", ""]) | JSON_VALUES, st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6))
def test_request_fields_are_typed_or_an_agent_error(op: Any, fields: dict[str, Any]) -> None:
    try:
        request = Request({**fields, "op": op})
    except AgentError as exc:
        assert exc.kind == "invalid"
        return
    accessors(request)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["timeout", "pid", "cols"]), st.integers(2**1023, 10**400) | st.integers(-(10**400), -1))
def test_huge_numbers_are_refused_as_invalid(name: str, value: int) -> None:
    """JSON integers have no size limit: one past a float's range was an OverflowError (found here)."""
    request = Request(json.loads(json.dumps({"op": "exec", name: value})))
    accessors(request)


# -- a live agent ---------------------------------------------------------------------------------

# Ops whose fuzzed requests can't change the host: the agent under test runs as root outside any
# sandbox, so file writes, removes, renames, copies and exec are left to the sandboxed tests.
SAFE_OPS = ["ping", "attach", "stdin", "signal", "resize", "processes", "port_open", "nope", ""]
HOSTILE_FIELDS = st.dictionaries(
    st.sampled_from(["pid", "data", "eof", "signal", "cols", "rows", "port", "user", "path", "x"]),
    JSON_VALUES, max_size=5,
)


def first_frames() -> st.SearchStrategy[bytes]:
    requests = st.builds(lambda op, f: json.dumps({**f, "op": op}).encode(), st.sampled_from(SAFE_OPS), HOSTILE_FIELDS)
    payloads = requests | st.binary(max_size=64) | JSON_VALUES.map(lambda v: json.dumps(v).encode())
    framed = st.builds(frame, KIND_BYTES, payloads, st.none() | st.integers(0, 128))
    return st.lists(framed, min_size=1, max_size=3).map(b"".join) | st.binary(max_size=64)


@pytest.fixture(scope="module")
def live_agent() -> Iterator[RunningAgent]:
    """One agent for all examples; afterwards it must still exit cleanly and have logged no traceback."""
    with start_agent() as running:
        yield running
        assert "Traceback" not in running.log(), running.log()


def exchange(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


@settings(max_examples=200, deadline=None)
@given(data=first_frames())
def test_live_agent_answers_hostile_first_frames_with_protocol_errors(live_agent: RunningAgent, data: bytes) -> None:
    reply = exchange(live_agent.socket_path, data)
    if reply:
        length, kind = struct.unpack(">Ic", reply[: HEADER.size])
        assert kind == b"J" and len(reply) >= HEADER.size + length, reply[:200]
        message = json.loads(reply[HEADER.size : HEADER.size + length])
        if message.get("ok") is False:
            assert message["error"]["kind"] in ERROR_KINDS, message
            assert message["error"]["kind"] != "internal", message
    assert live_agent.process.poll() is None, live_agent.log()


@pytest.mark.parametrize(("user", "path", "kind"), [("no-such-user", "f", "not_found"), ("", "f", "invalid"),
                                                    ("user", "", "invalid")])
def test_a_write_refused_before_its_data_is_answered_not_dropped(
    live_agent: RunningAgent, user: str, path: str, kind: str
) -> None:
    """Found by fuzzing: a write whose user or path was bad closed the connection without draining
    the DATA frames, so the client's send failed (EPIPE) and it lost the reply: 'agent not reachable'
    (503) instead of the error. Nothing is written: the request fails before any file is opened."""

    async def write() -> None:
        await live_agent.client.write(path, b"x" * (8 << 20), user=user)

    with pytest.raises(AgentError) as caught:
        asyncio.run(write())
    assert not isinstance(caught.value, AgentUnavailable) and caught.value.kind == kind, caught.value


@settings(max_examples=300, deadline=None)
@given(st.none() | st.text(alphabet="0129²³¹٣:ab-", max_size=8) | st.text(max_size=8).filter(lambda t: "\0" not in t))
def test_chown_specs_give_ids_or_an_agent_error(spec: str | None) -> None:
    """COPY --chown=… (NUL never gets here: `Request.optional_text` refuses it). Found: "²" passed
    str.isdigit() and int() then raised, failing the build with an internal error."""
    try:
        uid, gid = owner_ids(spec)
    except AgentError as exc:
        assert exc.kind in ERROR_KINDS
    else:
        assert 0 <= uid < 65536 and 0 <= gid < 65536
