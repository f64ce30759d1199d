"""Incremental NDJSON/SSE decoding across arbitrary chunk boundaries, and the command state machine."""

import itertools
import json
import random

import pytest

from corral import CommandExitException, CommandResult, ServerException, TimeoutException
from corral.sdk._stream import (
    CommandState,
    EventDecoder,
    ExitEvent,
    OutputEvent,
    StartEvent,
    events,
)

EVENTS = [
    {"type": "start", "pid": 12},
    {"type": "stdout", "data": "héllo wörld ✓ 🦀\n"},
    {"type": "stderr", "data": "warn: ünïcode\n"},
    {"type": "future-event", "x": 1},  # unknown types are skipped
    {"type": "stdout", "data": ""},
    {"type": "exit", "exit_code": 0, "error": None},
]
EXPECTED = [
    StartEvent(12),
    OutputEvent("stdout", "héllo wörld ✓ 🦀\n"),
    OutputEvent("stderr", "warn: ünïcode\n"),
    OutputEvent("stdout", ""),
    ExitEvent(0, None),
]


def ndjson() -> bytes:
    return b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in EVENTS)


def sse() -> bytes:
    out = b": keep-alive\r\n\r\n"
    for e in EVENTS:
        out += b"event: message\r\ndata: " + json.dumps(e, ensure_ascii=False).encode() + b"\r\n\r\n"
    return out


def decode(data: bytes, cuts: list[int], *, sse_mode: bool = False) -> list[object]:
    decoder = EventDecoder(sse=sse_mode, sandbox_id="s")
    bounds = [0, *sorted(cuts), len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    return list(events(iter(chunks), decoder))


@pytest.mark.parametrize("sse_mode", [False, True], ids=["ndjson", "sse"])
def test_every_single_split_point(sse_mode: bool) -> None:
    data = sse() if sse_mode else ndjson()
    for cut in range(len(data) + 1):
        assert decode(data, [cut], sse_mode=sse_mode) == EXPECTED, cut


@pytest.mark.parametrize("sse_mode", [False, True], ids=["ndjson", "sse"])
def test_random_chunkings_including_byte_by_byte(sse_mode: bool) -> None:
    data = sse() if sse_mode else ndjson()
    assert decode(data, list(range(1, len(data))), sse_mode=sse_mode) == EXPECTED
    rng = random.Random(1234)
    for _ in range(200):
        cuts = rng.sample(range(1, len(data)), rng.randint(1, 12))
        assert decode(data, cuts, sse_mode=sse_mode) == EXPECTED


def test_multibyte_characters_split_between_chunks() -> None:
    line = json.dumps({"type": "stdout", "data": "🦀"}, ensure_ascii=False).encode() + b"\n"
    crab = line.index("🦀".encode())
    decoder = EventDecoder()
    assert decoder.feed(line[: crab + 1]) == []
    assert decoder.feed(line[crab + 1 : crab + 3]) == []
    assert decoder.feed(line[crab + 3 :]) == [OutputEvent("stdout", "🦀")]


def test_events_are_returned_as_soon_as_their_line_is_complete() -> None:
    decoder = EventDecoder()
    assert decoder.feed(b'{"type": "start", "pid": 1}\n{"type": "std') == [StartEvent(1)]
    assert decoder.feed(b'out", "data": "a"}') == []
    assert decoder.feed(b"\n") == [OutputEvent("stdout", "a")]


def test_final_line_without_newline_and_blank_lines() -> None:
    decoder = EventDecoder()
    assert decoder.feed(b'\n\r\n{"type": "exit", "exit_code": 1, "error": "x"}') == []
    assert decoder.close() == [ExitEvent(1, "x")]


def test_sse_multiline_data_and_ignored_fields() -> None:
    decoder = EventDecoder(sse=True)
    assert decoder.feed(b'id: 1\nretry: 10\ndata: {"type":\ndata: "start", "pid": 5}\n\n') == [StartEvent(5)]
    assert decoder.feed(b'data:{"type": "exit", "exit_code": 0}') == []
    assert decoder.close() == [ExitEvent(0, None)]


@pytest.mark.parametrize(
    "line",
    [b"not json\n", b"[1, 2]\n", b'{"type": "start"}\n', b'{"type": "exit", "exit_code": "x"}\n', b'{"no": 1}\n'],
)
def test_malformed_lines_raise_server_exception_naming_the_sandbox(line: bytes) -> None:
    with pytest.raises(ServerException, match=r"^sandbox sbx_3: malformed"):
        EventDecoder(sandbox_id="sbx_3").feed(line)


def test_overlong_line_is_refused() -> None:
    decoder = EventDecoder(sandbox_id="s")
    with pytest.raises(ServerException, match="longer than"):
        for _ in range(17):
            decoder.feed(b"x" * (1024 * 1024))


def fold(evts: list[object], cmd: str = "make", timeout: float | None = 60) -> CommandState:
    state = CommandState("sbx_1", cmd, timeout)
    for e in evts:
        state.feed(e)  # type: ignore[arg-type]
    return state


def test_state_collects_output_and_returns_chunks() -> None:
    state = CommandState("s", "c")
    assert state.feed(StartEvent(3)) is None and state.pid == 3
    assert state.feed(OutputEvent("stdout", "a")) == ("a", None)
    assert state.feed(OutputEvent("stderr", "b")) == (None, "b")
    assert state.feed(OutputEvent("stdout", "")) is None
    assert state.feed(ExitEvent(0, None)) is None and state.finished
    assert state.result() == CommandResult(stdout="a", stderr="b", exit_code=0, error=None)


def test_nonzero_exit_raises_with_output_unless_unchecked() -> None:
    state = fold(
        [StartEvent(9), OutputEvent("stdout", "out"), OutputEvent("stderr", "bad thing\n"), ExitEvent(2, None)]
    )
    with pytest.raises(CommandExitException) as ei:
        state.result()
    exc = ei.value
    assert (exc.exit_code, exc.stdout, exc.stderr, exc.error, exc.sandbox_id) == (
        2,
        "out",
        "bad thing\n",
        None,
        "sbx_1",
    )
    assert str(exc) == "sandbox sbx_1: command 'make' (pid 9) exited with code 2; stderr: bad thing"
    assert state.result(check=False).exit_code == 2


def test_timeout_is_recognised_by_message_or_elapsed_time() -> None:
    by_message = fold([StartEvent(1), ExitEvent(-9, "command timed out after 5s")], timeout=5)
    with pytest.raises(TimeoutException, match=r"^sandbox sbx_1: command 'make' \(pid 1\) timed out after 5s"):
        by_message.result()
    assert by_message.result(check=False).error == "command timed out after 5s"
    by_time = fold([StartEvent(1), ExitEvent(137, "killed")], timeout=5)
    with pytest.raises(TimeoutException):
        by_time.result(elapsed=5.2)
    with pytest.raises(CommandExitException):
        by_time.result(elapsed=1.0)


def test_stream_without_exit_or_start() -> None:
    with pytest.raises(ServerException, match="ended without an exit event"):
        fold([StartEvent(1), OutputEvent("stdout", "x")]).result()
    with pytest.raises(ServerException, match="ended before the command started"):
        fold([]).check_started()
    with pytest.raises(CommandExitException, match="spawn failed"):
        fold([ExitEvent(127, "spawn failed")]).check_started()
    fold([StartEvent(1)]).check_started()


def test_attached_state_describes_by_pid() -> None:
    state = CommandState("s", None, pid=44)
    state.feed(ExitEvent(1, None))
    with pytest.raises(CommandExitException, match=r"^sandbox s: command with pid 44 exited with code 1$"):
        state.result()
