"""The code-execution stream fold and models, without I/O: every event type, any chunking."""

import itertools
import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from corral import Context, Execution, ExecutionError, Logs, OutputMessage, Result, ServerException
from corral.sdk._execution import (
    EndOfExecution,
    ExecutionCount,
    ExecutionState,
    callback_for,
    context_id,
    parse_code_event,
    parse_context,
)
from corral.sdk._stream import EventDecoder, events

STAMP = "2026-11-29T10:00:00.123456Z"
STAMP_NS = int(datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC).timestamp()) * 10**9 + 123456000
LINES: list[dict[str, Any]] = [
    {"type": "number_of_executions", "execution_count": 3},
    {"type": "stdout", "text": "héllo ✓ 🦀\n", "timestamp": STAMP},
    {"type": "keepalive"},
    {"type": "stderr", "text": "warn\n", "timestamp": STAMP},
    {"type": "result", "is_main_result": False, "png": "iVBORw0KGgo=", "text": "<Figure>", "id": "exec-1"},
    {"type": "future-event", "x": 1},
    {
        "type": "result",
        "is_main_result": True,
        "text": "42",
        "html": "<b>42</b>",
        "markdown": "**42**",
        "svg": "<svg/>",
        "jpeg": "/9j/",
        "pdf": "JVBERi0=",
        "latex": "$42$",
        "json": {"v": 42},
        "javascript": "console.log(42)",
        "data": {"a": [1, 2]},
        "chart": {"type": "line", "title": "t"},
        "extra": {"image/gif": "R0lGOD=="},
        "unknown_field": "ignored",
    },
    {"type": "error", "name": "ZeroDivisionError", "value": "division by zero", "traceback": "Traceback...\n"},
    {"type": "end_of_execution"},
]


def ndjson() -> bytes:
    return b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in LINES)


def fold(data: bytes, cuts: list[int]) -> tuple[Execution, list[object]]:
    decoder = EventDecoder(sandbox_id="s", parse=parse_code_event)
    bounds = [0, *sorted(cuts), len(data)]
    state = ExecutionState("s")
    delivered = []
    for event in events(iter(data[a:b] for a, b in itertools.pairwise(bounds)), decoder):
        item = state.feed(event)
        if item is not None:
            delivered.append(item)
    return state.result(), delivered


def check(execution: Execution, delivered: list[object]) -> None:
    assert execution.execution_count == 3
    assert execution.logs == Logs(stdout=["héllo ✓ 🦀\n"], stderr=["warn\n"])
    assert execution.error == ExecutionError("ZeroDivisionError", "division by zero", "Traceback...\n")
    assert len(execution.results) == 2
    display, main = execution.results
    assert (display.png, display.is_main_result) == ("iVBORw0KGgo=", False)
    assert main.is_main_result and execution.text == "42"
    assert (main.html, main.markdown, main.svg, main.jpeg, main.pdf, main.latex) == (
        "<b>42</b>",
        "**42**",
        "<svg/>",
        "/9j/",
        "JVBERi0=",
        "$42$",
    )
    assert main.json == {"v": 42} and main.javascript == "console.log(42)" and main.data == {"a": [1, 2]}
    assert main.chart == {"type": "line", "title": "t"} and main.extra == {"image/gif": "R0lGOD=="}
    assert delivered == [
        OutputMessage("héllo ✓ 🦀\n", STAMP_NS, False),
        OutputMessage("warn\n", STAMP_NS, True),
        display,
        main,
        execution.error,
    ]


def test_every_event_type_folds_like_e2b() -> None:
    check(*fold(ndjson(), []))


def test_every_single_split_point() -> None:
    data = ndjson()
    for cut in range(len(data) + 1):
        check(*fold(data, [cut]))


def test_random_chunkings_and_byte_by_byte() -> None:
    data = ndjson()
    check(*fold(data, list(range(1, len(data)))))
    rng = random.Random(7)
    for _ in range(100):
        check(*fold(data, rng.sample(range(1, len(data)), rng.randint(1, 15))))


def test_an_event_is_complete_as_soon_as_its_line_is() -> None:
    decoder = EventDecoder(parse=parse_code_event)
    line = json.dumps({"type": "stdout", "text": "a", "timestamp": STAMP}).encode()
    assert decoder.feed(line) == []
    assert decoder.feed(b"\n") == [OutputMessage("a", STAMP_NS, False)]
    assert decoder.feed(b'{"type": "keepalive"}\n{"type": "end_of_execution"}\n') == [EndOfExecution()]


def test_stream_cut_before_end_of_execution_is_a_server_exception() -> None:
    state = ExecutionState("sbx_1", "code 'x = 1'")
    state.feed(ExecutionCount(1))
    with pytest.raises(ServerException, match=r"^sandbox sbx_1: the stream of code 'x = 1' ended before end_of"):
        state.result()
    state.feed(EndOfExecution())
    assert state.result().execution_count == 1


def test_an_error_is_data_and_a_run_without_result_has_no_text() -> None:
    state = ExecutionState("s")
    for line in ({"type": "error", "name": "E", "value": "v", "traceback": "t"}, {"type": "end_of_execution"}):
        event = parse_code_event(line, "s")
        assert event is not None
        state.feed(event)
    execution = state.result()
    assert execution.error == ExecutionError("E", "v", "t") and execution.text is None and execution.results == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (STAMP, STAMP_NS),
        ("2026-11-29T10:00:00.123456+00:00", STAMP_NS),
        ("2026-11-29T10:00:00.123456", STAMP_NS),
        (STAMP_NS, STAMP_NS),
    ],
)
def test_timestamps_become_epoch_nanoseconds(value: object, expected: int) -> None:
    assert parse_code_event({"type": "stdout", "text": "x", "timestamp": value}, None) == OutputMessage(
        "x", expected, False
    )


def test_missing_or_unreadable_timestamp_is_the_receive_time() -> None:
    before = datetime.now(UTC).timestamp() * 1e9
    for stamp in (None, "not a time"):
        event = parse_code_event({"type": "stderr", "text": "x", "timestamp": stamp}, None)
        assert isinstance(event, OutputMessage) and event.error and event.timestamp >= before - 1e9


@pytest.mark.parametrize(
    "line",
    [
        [1],
        {"no": "type"},
        {"type": "stdout"},
        {"type": "error", "value": "v"},
        {"type": "number_of_executions", "execution_count": "x"},
        {"type": "result", "extra": [1]},
    ],
)
def test_malformed_events_name_the_sandbox(line: object) -> None:
    with pytest.raises(ServerException, match=r"^sandbox sbx_9: malformed"):
        parse_code_event(line, "sbx_9")


def test_malformed_json_line_is_a_server_exception() -> None:
    with pytest.raises(ServerException, match="malformed stream line"):
        EventDecoder(sandbox_id="s", parse=parse_code_event).feed(b"{nope\n")


def test_callbacks_are_chosen_by_what_arrived() -> None:
    handlers = {name: (lambda x, n=name: n) for name in ("out", "err", "res", "error")}
    pick = lambda item: callback_for(item, handlers["out"], handlers["err"], handlers["res"], handlers["error"])  # noqa: E731
    assert pick(OutputMessage("a", 1))(None) == "out"
    assert pick(OutputMessage("a", 1, True))(None) == "err"
    assert pick(Result(text="1"))(None) == "res"
    assert pick(ExecutionError("E", "v", "t"))(None) == "error"
    assert callback_for(Result(), None, None, None, None) is None


def test_result_formats_repr_and_notebook_hooks() -> None:
    result = Result(text="t", html="<p/>", png="iVBO", json={"a": 1}, is_main_result=True, extra={"image/gif": "R0"})
    assert result.formats() == ["text", "html", "png", "json", "image/gif"]
    assert repr(result) == str(result) == "Result(t)"
    assert repr(Result(png="x")) == "Result(Formats: png)"
    assert result["html"] == "<p/>"
    assert (result._repr_html_(), result._repr_png_(), result._repr_json_()) == ("<p/>", "iVBO", {"a": 1})
    assert all(
        getattr(Result(), f"_repr_{name}_")() is None
        for name in ("html", "markdown", "svg", "png", "jpeg", "pdf", "latex", "json", "javascript")
    )


def test_to_json_is_one_json_document() -> None:
    execution = Execution(
        results=[Result(text="42", html="<b>42</b>", is_main_result=True), Result(png="iVBO")],
        logs=Logs(stdout=["hi\n"], stderr=[]),
        error=ExecutionError("E", "v", "tb"),
        execution_count=2,
    )
    assert json.loads(execution.to_json()) == {
        "results": [
            {"text": "42", "html": "<b>42</b>", "is_main_result": True},
            {"png": "iVBO", "text": None, "is_main_result": False},
        ],
        "logs": {"stdout": ["hi\n"], "stderr": []},
        "error": {"name": "E", "value": "v", "traceback": "tb"},
        "execution_count": 2,
    }
    assert json.loads(Execution().to_json())["error"] is None
    assert json.loads(execution.logs.to_json()) == {"stdout": ["hi\n"], "stderr": []}
    assert json.loads(execution.error.to_json()) == {"name": "E", "value": "v", "traceback": "tb"}  # type: ignore[union-attr]


def test_output_message_reads_as_its_line() -> None:
    assert str(OutputMessage("hi\n", 5)) == "hi\n" and not OutputMessage("hi\n", 5).error


def test_contexts_parse_and_resolve_to_ids() -> None:
    ctx = parse_context({"id": "c1", "language": "python", "cwd": "/home/user", "extra": 1}, "s")
    assert ctx == Context(id="c1", language="python", cwd="/home/user")
    assert context_id(ctx) == "c1" and context_id("c2") == "c2" and context_id(None) is None
    with pytest.raises(TypeError, match="Context or a context ID"):
        context_id(3)  # type: ignore[arg-type]
    with pytest.raises(ServerException, match=r"^sandbox s: the server's context lacks id"):
        parse_context({"language": "python"}, "s")
