"""Code execution without I/O: the models of ``run_code`` and the fold of its event stream.

The names and fields are those of ``e2b_code_interpreter`` (``Execution``, ``Result``, ``Logs``,
``ExecutionError``, ``OutputMessage``, ``Context``), so code written for it moves over by changing
the import. ``parse_code_event`` turns one line of the ``/code`` NDJSON stream into one of them;
``ExecutionState`` folds those into an ``Execution``. An error raised by the executed code is data
(``Execution.error``), never an exception. Nothing here is thread-safe: an ``ExecutionState``
belongs to one stream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ._errors import ServerException, prefix
from ._models import _require, _wrap

__all__ = [
    "DEFAULT_CODE_TIMEOUT",
    "Context",
    "EndOfExecution",
    "Execution",
    "ExecutionCount",
    "ExecutionError",
    "ExecutionState",
    "Logs",
    "OutputMessage",
    "Result",
    "callback_for",
    "context_id",
    "parse_code_event",
    "parse_context",
]

DEFAULT_CODE_TIMEOUT = 300
"""Seconds a cell may run before the server interrupts it, when ``run_code`` is given no timeout."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class OutputMessage:
    """One piece of a cell's stdout or stderr, as passed to ``on_stdout``/``on_stderr``."""

    line: str
    """The text, with its newline if it had one."""
    timestamp: int
    """When the sandbox produced it, in nanoseconds since the Unix epoch."""
    error: bool = False
    """True for stderr."""

    def __str__(self) -> str:
        return self.line


@dataclass(frozen=True)
class ExecutionError:
    """An error raised by the executed code (or ``ExecutionTimeout``/``KernelDied`` from the server)."""

    name: str
    """The exception's class name, e.g. ``ZeroDivisionError``."""
    value: str
    """The exception's message."""
    traceback: str
    """The whole traceback as text."""

    def to_json(self) -> str:
        """The error as a JSON object: ``{"name", "value", "traceback"}``."""
        return json.dumps(self._data())

    def _data(self) -> dict[str, str]:
        return {"name": self.name, "value": self.value, "traceback": self.traceback}


_FORMATS = ("text", "html", "markdown", "svg", "png", "jpeg", "pdf", "latex", "json", "javascript", "data", "chart")


@dataclass(frozen=True, repr=False)
class Result:
    """One thing a cell displayed: its value (``is_main_result``) or a ``display()``/plot output.

    Each representation is ``None`` unless the cell produced it; ``png``, ``jpeg`` and ``pdf`` are
    base64. MIME types without a field of their own are in ``extra``. In a notebook the
    ``_repr_*_`` methods let IPython show the richest one.
    """

    text: str | None = None
    html: str | None = None
    markdown: str | None = None
    svg: str | None = None
    png: str | None = None
    jpeg: str | None = None
    pdf: str | None = None
    latex: str | None = None
    json: Any = None
    javascript: str | None = None
    data: Any = None
    chart: Any = None
    """The chart description (``e2b/chart``) as plain JSON data, if the server sent one."""
    is_main_result: bool = False
    """Whether this is the value of the cell's last expression (else a display call's output)."""
    extra: dict[str, Any] | None = None
    """Representations by MIME type that have no field of their own."""

    def __getitem__(self, item: str) -> Any:
        return getattr(self, item)

    def formats(self) -> list[str]:
        """Names of the representations present: field names, then the MIME types in ``extra``."""
        present = [name for name in _FORMATS if getattr(self, name)]
        return present + list(self.extra or ())

    def _data(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in _FORMATS if getattr(self, name)}
        out["text"] = self.text
        out["is_main_result"] = self.is_main_result
        if self.extra:
            out["extra"] = self.extra
        return out

    def __repr__(self) -> str:
        if self.text:
            return f"Result({self.text})"
        return f"Result(Formats: {', '.join(self.formats())})"

    def __str__(self) -> str:
        return repr(self)

    def _repr_html_(self) -> str | None:
        return self.html

    def _repr_markdown_(self) -> str | None:
        return self.markdown

    def _repr_svg_(self) -> str | None:
        return self.svg

    def _repr_png_(self) -> str | None:
        return self.png

    def _repr_jpeg_(self) -> str | None:
        return self.jpeg

    def _repr_pdf_(self) -> str | None:
        return self.pdf

    def _repr_latex_(self) -> str | None:
        return self.latex

    def _repr_json_(self) -> Any:
        return self.json

    def _repr_javascript_(self) -> str | None:
        return self.javascript


@dataclass
class Logs:
    """What a cell printed: one entry per piece of output as it arrived (not split into lines)."""

    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """The logs as a JSON object: ``{"stdout": [...], "stderr": [...]}``."""
        return json.dumps(self._data())

    def _data(self) -> dict[str, list[str]]:
        return {"stdout": self.stdout, "stderr": self.stderr}


@dataclass
class Execution:
    """The outcome of one ``run_code``: results, output, the code's error if any, its number."""

    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    """The error the code raised (or the server's ``ExecutionTimeout``/``KernelDied``), else None."""
    execution_count: int | None = None
    """The cell's number in its context (``In [N]``), if the language counts cells."""

    @property
    def text(self) -> str | None:
        """The text of the main result (the value of the last expression), if any."""
        for result in self.results:
            if result.is_main_result:
                return result.text
        return None

    def to_json(self) -> str:
        """The execution as one JSON object (results, logs, error, execution_count)."""
        return json.dumps(
            {
                "results": [r._data() for r in self.results],
                "logs": self.logs._data(),
                "error": self.error._data() if self.error else None,
                "execution_count": self.execution_count,
            }
        )


@dataclass(frozen=True)
class Context:
    """A stateful interpreter in a sandbox: variables and imports persist across its cells."""

    id: str
    language: str
    cwd: str


@dataclass(frozen=True)
class ExecutionCount:
    """The ``number_of_executions`` event."""

    count: int


@dataclass(frozen=True)
class EndOfExecution:
    """The ``end_of_execution`` event: always the last of a cell."""


CodeEvent = OutputMessage | Result | ExecutionError | ExecutionCount | EndOfExecution
_RESULT_FIELDS = frozenset(_FORMATS) | {"is_main_result", "extra"}


def parse_context(data: Any, sandbox_id: str) -> Context:
    """Context JSON → ``Context``."""
    d = _require(data, ("id",), "context", sandbox_id)
    return _wrap(
        lambda: Context(id=str(d["id"]), language=str(d.get("language") or ""), cwd=str(d.get("cwd") or "")),
        "context",
        sandbox_id,
    )


def context_id(context: Context | str | None) -> str | None:
    """The ID of a context given as a ``Context`` or its ID."""
    if context is None or isinstance(context, str):
        return context or None
    if isinstance(context, Context):
        return context.id
    raise TypeError(f"context must be a Context or a context ID, not {type(context).__name__}")


def _timestamp_ns(value: Any) -> int:
    """An event's ``timestamp`` (ISO 8601, or nanoseconds) → ns since the epoch; now if absent or unreadable."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
        except ValueError:
            return time.time_ns()
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return (moment - _EPOCH) // timedelta(microseconds=1) * 1000
    return time.time_ns()


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def parse_code_event(obj: object, sandbox_id: str | None) -> CodeEvent | None:
    """One decoded line of the ``/code`` stream → an event; ``None`` for ``keepalive`` and unknown types."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("type"), str):
        raise ServerException(f"{prefix(sandbox_id)}malformed code event {obj!r:.200}", sandbox_id=sandbox_id)
    kind = obj["type"]
    try:
        if kind in ("stdout", "stderr"):
            return OutputMessage(_text(obj["text"]), _timestamp_ns(obj.get("timestamp")), kind == "stderr")
        if kind == "result":
            fields = {k: v for k, v in obj.items() if k in _RESULT_FIELDS}
            fields["is_main_result"] = bool(fields.get("is_main_result", False))
            if fields.get("extra") is not None and not isinstance(fields["extra"], Mapping):
                raise TypeError("extra is not an object")
            return Result(**fields)
        if kind == "error":
            return ExecutionError(_text(obj["name"]), _text(obj.get("value")), _text(obj.get("traceback")))
        if kind == "number_of_executions":
            return ExecutionCount(int(obj["execution_count"]))
        if kind == "end_of_execution":
            return EndOfExecution()
    except (KeyError, TypeError, ValueError) as exc:
        raise ServerException(
            f"{prefix(sandbox_id)}malformed {kind} event {obj!r:.200}", sandbox_id=sandbox_id
        ) from exc
    return None  # keepalive, and types a newer server may add


class ExecutionState:
    """Folds one cell's events into its ``Execution``, as E2B's SDK does.

    ``feed`` returns the object a callback should receive for that event (an ``OutputMessage``,
    ``Result`` or ``ExecutionError``), or ``None``. ``result`` raises ``ServerException`` if the
    stream ended before ``end_of_execution`` (a cut connection), so a truncated cell never passes
    for a finished one.
    """

    def __init__(self, sandbox_id: str, what: str = "code") -> None:
        self.sandbox_id = sandbox_id
        self.what = what
        self.execution = Execution()
        self.finished = False

    def feed(self, event: CodeEvent) -> OutputMessage | Result | ExecutionError | None:
        execution = self.execution
        if isinstance(event, OutputMessage):
            (execution.logs.stderr if event.error else execution.logs.stdout).append(event.line)
            return event
        if isinstance(event, Result):
            execution.results.append(event)
            return event
        if isinstance(event, ExecutionError):
            execution.error = event
            return event
        if isinstance(event, ExecutionCount):
            execution.execution_count = event.count
        elif isinstance(event, EndOfExecution):
            self.finished = True
        return None

    def result(self) -> Execution:
        if not self.finished:
            raise ServerException(
                f"{prefix(self.sandbox_id)}the stream of {self.what} ended before end_of_execution "
                "(connection lost?); the cell may still be running",
                sandbox_id=self.sandbox_id,
            )
        return self.execution


Handler = Callable[[Any], Awaitable[Any] | Any]


def callback_for(
    item: OutputMessage | Result | ExecutionError,
    on_stdout: Handler | None,
    on_stderr: Handler | None,
    on_result: Handler | None,
    on_error: Handler | None,
) -> Handler | None:
    """The callback that receives ``item`` (returned by ``ExecutionState.feed``), if one was given."""
    if isinstance(item, OutputMessage):
        return on_stderr if item.error else on_stdout
    if isinstance(item, Result):
        return on_result
    return on_error
