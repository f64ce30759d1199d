"""Template builds without I/O: the models of templates and builds, and the fold of a build's log.

``parse_build_event`` turns one line of ``/v1/builds/{id}/logs`` into a ``BuildEvent``;
``BuildFollower`` folds those into how the build ended (a ``BuildException`` for a failure) and
knows which events a reconnected stream replays (the server sends a build's log from its start).
Nothing here is thread-safe: a ``BuildFollower`` belongs to one build being followed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._errors import BuildException, ServerException
from ._models import _require, _time, _wrap

__all__ = [
    "TAIL_LINES",
    "BuildEvent",
    "BuildFollower",
    "BuildInfo",
    "BuildStep",
    "TemplateConfig",
    "TemplateInfo",
    "parse_build",
    "parse_build_event",
    "parse_template",
]

TAIL_LINES = 20
"""Lines of a failed step's output a ``BuildException`` carries (as many as the server keeps)."""
MAX_RECONNECTS = 3
"""Times ``build`` reopens a log stream that ended before the build did."""


@dataclass(frozen=True)
class BuildStep:
    """One Dockerfile step of a build; ``state`` is pending, running, cached, done or failed."""

    index: int
    line: int
    """Its line in the Dockerfile (1-based)."""
    instruction: str
    state: str
    seconds: float | None = None
    exit_code: int | None = None
    """A RUN step's exit code, once it has run."""


@dataclass(frozen=True)
class BuildInfo:
    """A build as the server records it; ``state`` is ``"building"``, ``"ready"`` or ``"failed"``.

    For a failed build, ``error`` says why; ``failed_step``/``failed_line``/``exit_code``/``output_tail``
    describe the failed step when a step failed.
    """

    build_id: str
    template: str
    state: str
    created_at: datetime
    finished_at: datetime | None
    error: str | None
    steps: list[BuildStep]
    options: dict[str, Any]
    """The options the build ran with (cpu, memory_mb, disk_mb, timeout, build_args…)."""
    failed_step: int | None = None
    failed_line: int | None = None
    exit_code: int | None = None
    output_tail: str = ""


@dataclass(frozen=True)
class BuildEvent:
    """One event of a build's log, as passed to ``on_progress``.

    ``type`` is ``"step"`` (a step changed ``state``: running, cached, done or failed), ``"log"``
    (``text`` a step printed on ``stream`` stdout/stderr, or a ``"system"`` note) or ``"status"``
    (the last event: ``state`` ready or failed, with ``error``). A newer server may send other types;
    skip those you don't know. ``step`` is the step's index for step and log events (``None`` for a
    log line about the whole build); ``ts`` is a Unix time.
    """

    type: str
    ts: float | None = None
    step: int | None = None
    line: int | None = None
    instruction: str | None = None
    state: str | None = None
    seconds: float | None = None
    exit_code: int | None = None
    stream: str | None = None
    text: str = ""
    error: str | None = None


@dataclass(frozen=True)
class TemplateConfig:
    """What a template gives every sandbox started from it (from its Dockerfile and build options)."""

    env: dict[str, str]
    workdir: str | None
    user: str | None
    start_cmd: list[str] | None
    ready_cmd: str | None
    ready_port: int | None
    ready_timeout: float | None
    cpu: float | None
    memory_mb: int | None
    labels: dict[str, str]
    exposed_ports: list[str]
    isolation: str | None = None


@dataclass(frozen=True)
class TemplateInfo:
    """A template on the server. ``builds`` (most recent first) is filled by ``Template.get`` only."""

    name: str
    builtin: bool
    base: str | None
    layers: int
    build_id: str | None
    created_at: datetime | None
    updated_at: datetime | None
    config: TemplateConfig
    builds: list[BuildInfo] = field(default_factory=list)
    public: bool = False  # visible to every API key (built-in templates always are)


def _opt(cast: Any, value: Any) -> Any:
    return None if value is None else cast(value)


def parse_step(data: Any) -> BuildStep:
    d = _require(data, ("index", "line", "state"), "build step", None)
    return BuildStep(
        index=int(d["index"]),
        line=int(d["line"]),
        instruction=str(d.get("instruction") or ""),
        state=str(d["state"]),
        seconds=_opt(float, d.get("seconds")),
        exit_code=_opt(int, d.get("exit_code")),
    )


def parse_build(data: Any) -> BuildInfo:
    """Build record JSON → ``BuildInfo``."""
    d = _require(data, ("id", "template", "state", "created_at"), "build", None)

    def build() -> BuildInfo:
        detail = d.get("error_detail") or {}
        return BuildInfo(
            build_id=str(d["id"]),
            template=str(d["template"]),
            state=str(d["state"]),
            created_at=_time(d["created_at"]),  # type: ignore[arg-type]
            finished_at=_time(d.get("finished_at")),
            error=d.get("error"),
            steps=[parse_step(s) for s in d.get("steps") or ()],
            options=dict(d.get("options") or {}),
            failed_step=_opt(int, detail.get("step")),
            failed_line=_opt(int, detail.get("line")),
            exit_code=_opt(int, detail.get("exit_code")),
            output_tail=str(detail.get("output_tail") or ""),
        )

    return _wrap(build, "build", None)


def _config(data: Any) -> TemplateConfig:
    c = data if isinstance(data, dict) else {}
    start = c.get("start_cmd")
    return TemplateConfig(
        env={str(k): str(v) for k, v in (c.get("env") or {}).items()},
        workdir=c.get("workdir"),
        user=c.get("user"),
        start_cmd=None if start is None else [str(a) for a in start],
        ready_cmd=c.get("ready_cmd"),
        ready_port=_opt(int, c.get("ready_port")),
        ready_timeout=_opt(float, c.get("ready_timeout")),
        cpu=_opt(float, c.get("cpu")),
        memory_mb=_opt(int, c.get("memory_mb")),
        labels={str(k): str(v) for k, v in (c.get("labels") or {}).items()},
        exposed_ports=[str(p) for p in c.get("exposed_ports") or ()],
        isolation=c.get("isolation") or None,
    )


def parse_template(data: Any) -> TemplateInfo:
    """Template JSON (listed, or got with its ``builds``) → ``TemplateInfo``."""
    d = _require(data, ("name",), "template", None)
    return _wrap(
        lambda: TemplateInfo(
            name=str(d["name"]),
            builtin=bool(d.get("builtin", False)),
            base=d.get("base"),
            layers=int(d.get("layers") or 0),
            build_id=d.get("build_id"),
            created_at=_time(d.get("created_at")),
            updated_at=_time(d.get("updated_at")),
            config=_config(d.get("config")),
            builds=[parse_build(b) for b in d.get("builds") or ()],
            public=bool(d.get("public", False)),
        ),
        "template",
        None,
    )


def parse_build_event(obj: object, _sandbox_id: str | None = None) -> BuildEvent:
    """One decoded log line → a ``BuildEvent`` (unknown types are kept, with their ``type``)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ServerException(f"malformed build event {obj!r:.200}")
    kind = obj["type"]
    try:
        ts = _opt(float, obj.get("ts"))
        if kind == "step":
            return BuildEvent(
                type=kind, ts=ts, step=int(obj["index"]), line=_opt(int, obj.get("line")),
                instruction=str(obj.get("instruction") or ""), state=str(obj["state"]),
                seconds=_opt(float, obj.get("seconds")), exit_code=_opt(int, obj.get("exit_code")),
            )
        if kind == "log":
            return BuildEvent(type=kind, ts=ts, step=_opt(int, obj.get("step")), stream=str(obj.get("stream") or ""),
                              text=str(obj.get("text") or ""))
        if kind == "status":
            return BuildEvent(type=kind, ts=ts, state=str(obj["state"]), error=_opt(str, obj.get("error")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ServerException(f"malformed build {kind} event {obj!r:.200}") from exc
    return BuildEvent(type=kind, ts=ts)


class BuildFollower:
    """Folds the log of build ``build_id`` of ``template``; see ``feed``, ``reopen`` and ``outcome``."""

    def __init__(self, build_id: str, template: str) -> None:
        self.build_id = build_id
        self.template = template
        self.status: BuildEvent | None = None
        self.steps: dict[int, BuildEvent] = {}
        """The latest step event of each step."""
        self._seen = 0  # events received so far, over every stream
        self._replayed = 0  # events of the current stream (a reopened one starts from the first)
        self._reopened = 0
        self._tails: dict[int, deque[str]] = {}
        self._partial: dict[int, str] = {}

    @property
    def finished(self) -> bool:
        return self.status is not None

    def feed(self, event: BuildEvent) -> bool:
        """Take one event; False if it is a replay of one already taken (don't hand it on)."""
        self._replayed += 1
        if self._replayed <= self._seen:
            return False
        self._seen += 1
        if event.type == "step" and event.step is not None:
            self.steps[event.step] = event
        elif event.type == "log" and event.step is not None and event.stream in ("stdout", "stderr"):
            self._output(event.step, event.text)
        elif event.type == "status":
            self.status = event
        return True

    def _output(self, step: int, text: str) -> None:
        tail = self._tails.setdefault(step, deque(maxlen=TAIL_LINES))
        *done, rest = (self._partial.pop(step, "") + text).split("\n")
        tail.extend(done)
        if rest:
            self._partial[step] = rest[-4096:]

    def reopen(self) -> None:
        """The stream ended before the status event: the next stream replays the log from its start."""
        self._reopened += 1
        if self._reopened > MAX_RECONNECTS:
            raise ServerException(
                f"template {self.template!r}: the log of build {self.build_id} ended {self._reopened} times "
                "before the build did"
            )
        self._replayed = 0

    def output_tail(self, step: int) -> str:
        lines = list(self._tails.get(step, ()))
        if self._partial.get(step):
            lines.append(self._partial[step])
        return "\n".join(lines[-TAIL_LINES:])

    def outcome(self) -> BuildException | None:
        """``None`` if the build is ready, else the exception describing its failure."""
        if self.status is None:
            raise ServerException(f"template {self.template!r}: build {self.build_id} has not ended")
        if self.status.state == "ready":
            return None
        failed = next((s for s in self.steps.values() if s.state == "failed"), None)
        error = self.status.error
        where = f"template {self.template!r}: build {self.build_id} failed"
        if failed is None:
            return BuildException(f"{where}: {error or 'no reason given'}", build_id=self.build_id,
                                  template=self.template, error=error)
        tail = self.output_tail(failed.step or 0)
        message = f"{where} at line {failed.line} ({failed.instruction:.120})"
        if failed.exit_code is not None and failed.exit_code != 0:
            message += f" with exit code {failed.exit_code}"
        elif error:
            message += f": {error}"
        if tail:
            message += "\n" + "\n".join(f"  | {line}" for line in tail.split("\n"))
        return BuildException(
            message, build_id=self.build_id, template=self.template, error=error, step=failed.step,
            line=failed.line, exit_code=failed.exit_code, output_tail=tail,
        )
