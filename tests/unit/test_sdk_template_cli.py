"""``corral template build``'s progress views, fed build events without a server."""

from __future__ import annotations

import io

from rich.console import Console

from corral.cli.templates import OUTPUT_LINES, LiveView, PlainView
from corral.sdk._builds import BuildEvent


def step(index: int, state: str, instruction: str = "RUN make", **more: object) -> BuildEvent:
    return BuildEvent(type="step", step=index, line=index + 2, instruction=instruction, state=state,
                      **more)  # type: ignore[arg-type]


def log(index: int | None, text: str, stream: str = "stdout") -> BuildEvent:
    return BuildEvent(type="log", step=index, stream=stream, text=text)


BUILD = [
    step(0, "running", "ENV A=1"), step(0, "done", "ENV A=1", seconds=0.0),
    step(1, "running", "COPY . /app"), log(1, "cached layer abc\n", "system"), step(1, "cached", "COPY . /app"),
    step(2, "running"), log(2, "comp"), log(2, "iling\nlinking\n"), log(2, "warn\n", "stderr"),
    step(2, "done", seconds=1.25, exit_code=0), log(None, "template 't' is ready\n", "system"),
    BuildEvent(type="status", state="ready"),
]


def test_plain_view_prints_one_line_per_event_without_ansi() -> None:
    out = io.StringIO()
    with PlainView(Console(file=out, width=200)) as view:
        for event in BUILD:
            view(event)
    assert out.getvalue().splitlines() == [
        "#1 line 2: ENV A=1",
        "#1 DONE 0.00s",
        "#2 line 3: COPY . /app",
        "#2 cached layer abc",
        "#2 CACHED",
        "#3 line 4: RUN make",
        "#3 compiling",
        "#3 linking",
        "#3 warn",
        "#3 DONE 1.25s",
        "template 't' is ready",
    ]


def test_plain_view_flushes_a_partial_line_when_the_step_ends() -> None:
    out = io.StringIO()
    with PlainView(Console(file=out, width=200)) as view:
        for event in (step(0, "running"), log(0, "no newline"), step(0, "failed", exit_code=2)):
            view(event)
    assert out.getvalue().splitlines()[1:] == ["#1 no newline", "#1 FAILED (exit code 2)"]


def text(view: LiveView) -> str:
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(view.render())
    return out.getvalue()


def test_live_view_shows_states_and_only_the_running_steps_latest_output() -> None:
    terminal = io.StringIO()
    with LiveView(Console(file=terminal, width=100, force_terminal=True)) as view:
        for event in BUILD[:6]:
            view(event)
        view(log(2, "".join(f"out {i}\n" for i in range(20))))
        shown = text(view)
        assert "✓ #1 line 2 ENV A=1" in shown and "cached" in shown and "#3 line 4 RUN make" in shown
        assert [line.strip() for line in shown.splitlines() if "│" in line] == [
            f"│ out {i}" for i in range(20 - OUTPUT_LINES, 20)]
        for event in BUILD[6:]:
            view(event)
        final = text(view)
        assert "│" not in final and "1.25s" in final
        view(step(3, "running", "RUN false"))
        view(step(3, "failed", "RUN false", exit_code=1))
        assert "✗ #4 line 5 RUN false" in text(view) and "exit code 1" in text(view)
    assert "\x1b[" in terminal.getvalue()  # drawn live, with cursor control
    assert "template 't' is ready" in terminal.getvalue()  # build-wide notes go above the list
