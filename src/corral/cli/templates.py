"""``corral template``: build templates from Dockerfiles, list, inspect and delete them.

``build`` shows the build as it happens: on a terminal a live step list (a spinner on the running
step, its latest output below it); otherwise plain lines (``#N`` per step, no ANSI), one per event.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Column, Table
from rich.text import Text

from corral.sdk import BuildEvent, BuildException, BuildInfo, Template

from ._context import err_console, fail, out_console, pairs, server

app = typer.Typer(help="Build templates from Dockerfiles; list, inspect and delete them.", no_args_is_help=True)

OUTPUT_LINES = 8
"""Lines of the running step's output the live view shows."""


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _took(build: BuildInfo) -> str:
    return f"{(build.finished_at - build.created_at).total_seconds():.1f}s" if build.finished_at else "-"


def _lines(pending: dict[int | None, str], step: int | None, text: str, final: bool = False) -> list[str]:
    """Complete lines of a step's output; a partial last line waits in ``pending`` (until ``final``)."""
    *done, rest = (pending.pop(step, "") + text).split("\n")
    if final and rest:
        done.append(rest)
    elif rest:
        pending[step] = rest
    return done


class PlainView:
    """Build progress as plain lines on ``console``: ``#N line L: INSTRUCTION``, its output, its end."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._pending: dict[int | None, str] = {}

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def __call__(self, event: BuildEvent) -> None:
        if event.type == "step" and event.step is not None:
            n = event.step + 1
            if event.state == "running":
                self._print(f"#{n} line {event.line}: {event.instruction}")
                return
            for line in _lines(self._pending, event.step, "", final=True):
                self._print(f"#{n} {line}")
            if event.state == "done":
                self._print(f"#{n} DONE {event.seconds or 0:.2f}s")
            elif event.state == "cached":
                self._print(f"#{n} CACHED")
            elif event.state == "failed":
                code = f" (exit code {event.exit_code})" if event.exit_code is not None else ""
                self._print(f"#{n} FAILED{code}")
        elif event.type == "log":
            where = f"#{event.step + 1} " if event.step is not None else ""
            for line in _lines(self._pending, event.step, event.text):
                self._print(f"{where}{line}")

    def close(self) -> None:
        """Print what is left of unfinished lines."""
        for step, rest in list(self._pending.items()):
            self._print(f"#{step + 1} {rest}" if step is not None else rest)
        self._pending.clear()

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclasses.dataclass
class _Step:
    line: int | None
    instruction: str
    state: str
    seconds: float | None = None
    exit_code: int | None = None
    started: float = dataclasses.field(default_factory=time.monotonic)
    spinner: Spinner = dataclasses.field(default_factory=lambda: Spinner("dots", style="cyan"))


class LiveView:
    """Build progress as a live step list (rich ``Live``): use as a context manager, call per event."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.steps: dict[int, _Step] = {}
        self.output: list[str] = []  # the running step's latest output lines
        self._pending: dict[int | None, str] = {}
        self._running: int | None = None
        self.live = Live(console=console, refresh_per_second=10, get_renderable=self.render)

    def __enter__(self) -> LiveView:
        self.live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.output = []
        self.live.stop()  # leaves the final step list on the screen

    def __call__(self, event: BuildEvent) -> None:
        if event.type == "step" and event.step is not None:
            known = self.steps.get(event.step)
            if event.state == "running" or known is None:
                self.steps[event.step] = known = _Step(event.line, event.instruction or "", event.state or "")
            known.state, known.seconds, known.exit_code = event.state or "", event.seconds, event.exit_code
            if event.state == "running":
                self._running, self.output = event.step, []
                self._pending.pop(event.step, None)
        elif event.type == "log" and event.step is None:
            for line in _lines(self._pending, None, event.text):
                self.live.console.print(Text(line, style="dim"))
        elif event.type == "log" and event.step == self._running and event.stream != "system":
            self.output = (self.output + _lines(self._pending, event.step, event.text))[-OUTPUT_LINES:]
        self.live.refresh()

    def _status(self, step: _Step) -> tuple[RenderableType, Text]:
        if step.state == "running":
            return step.spinner, Text(f"{time.monotonic() - step.started:.1f}s", style="cyan")
        if step.state == "cached":
            return Text("✓", style="green"), Text("cached", style="dim")
        if step.state == "done":
            return Text("✓", style="green"), Text(f"{step.seconds or 0:.2f}s")
        if step.state == "failed":
            code = f"exit code {step.exit_code}" if step.exit_code is not None else "failed"
            return Text("✗", style="bold red"), Text(code, style="red")
        return Text("·", style="dim"), Text(step.state, style="dim")

    def render(self) -> RenderableType:
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(width=1)
        grid.add_column(no_wrap=True, style="dim")
        grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
        grid.add_column(no_wrap=True, justify="right")
        for index in sorted(self.steps):
            step = self.steps[index]
            icon, status = self._status(step)
            grid.add_row(icon, f"#{index + 1} line {step.line}", Text(step.instruction), status)
            if index == self._running and step.state == "running":
                for line in self.output:
                    grid.add_row("", "", Text(f"│ {line}", style="dim"), "")
        return Group(grid)


def _check_file(path: Path, option: str, kind: str) -> None:
    ok = path.is_dir() if kind == "directory" else path.is_file()
    if not ok:
        problem = "does not exist" if not path.exists() else f"is not a {kind}"
        raise typer.BadParameter(f"{str(path)!r} {problem}", param_hint=option)


@app.command()
def build(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", "-n", help="The template's name.", show_default=False)],
    file: Annotated[Path, typer.Option("--file", "-f", help="The Dockerfile.")] = Path("Dockerfile"),
    context: Annotated[
        Path | None, typer.Option("--context", "-c", help="Build context (default: the Dockerfile's directory).")
    ] = None,
    build_arg: Annotated[list[str] | None, typer.Option("--build-arg", help="KEY=VALUE for an ARG.")] = None,
    cpu: Annotated[float | None, typer.Option(help="CPU cores for the build and the template's sandboxes.")] = None,
    memory_mb: Annotated[int | None, typer.Option("--memory-mb", help="Memory limit in MiB (build and sandboxes).")]
    = None,
    disk_mb: Annotated[int | None, typer.Option("--disk-mb", help="Disk limit of each build step, in MiB.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Run every step again.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds the whole build may take.")] = None,
    start_cmd: Annotated[str | None, typer.Option("--start-cmd", help="Run when a sandbox starts (sh -c).")] = None,
    ready_cmd: Annotated[str | None, typer.Option("--ready-cmd", help="Sandboxes are ready once it exits 0.")]
    = None,
    ready_port: Annotated[int | None, typer.Option("--ready-port", help="Sandboxes are ready once it accepts.")]
    = None,
    public: Annotated[bool, typer.Option("--public", help="Visible to every API key, not just this one.")] = False,
    isolation: Annotated[str | None, typer.Option(help="Default isolation of its sandboxes: bwrap or gvisor.")]
    = None,
) -> None:
    """Build (or rebuild) a template from a Dockerfile, showing each step as it runs."""
    _check_file(file, "'--file' / '-f'", "file")
    root = context if context is not None else file.parent
    _check_file(root, "'--context' / '-c'", "directory")
    options: dict[str, Any] = dict(
        context=root, build_args=pairs(build_arg, "--build-arg"), cpu=cpu, memory_mb=memory_mb, disk_mb=disk_mb,
        no_cache=no_cache, timeout=timeout, start_cmd=start_cmd, ready_cmd=ready_cmd, ready_port=ready_port,
        public=public, isolation=isolation,
    )
    console = out_console()
    live = console.is_terminal
    view: LiveView | PlainView = LiveView(Console()) if live else PlainView(console)
    started = time.monotonic()
    try:
        with view:
            info = Template.build(file, name, on_progress=view, **options, **server(ctx).kwargs())
    except BuildException as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail(f"interrupted; the build of {name!r} goes on on the server (see `corral template info {name}`)", 130)
    took = time.monotonic() - started
    if live:
        console.print(f"[green]✓[/green] template [bold]{escape(info.name)}[/bold] is ready "
                      f"[dim](build {info.build_id}, {took:.1f}s)[/dim]")
    else:
        typer.echo(f"ready: template {info.name} (build {info.build_id}, {took:.1f}s)")


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List templates."""
    table = Table(Column("NAME", no_wrap=True), "BASE", "LAYERS", Column("UPDATED", no_wrap=True),
                  Column("BUILD", no_wrap=True), box=None)
    for t in Template.list(**server(ctx).kwargs()):
        table.add_row(t.name, t.base or "-", str(t.layers), _when(t.updated_at), "built in" if t.builtin else
                      (t.build_id or "-"))
    out_console().print(table)


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else str(value)


@app.command()
def info(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Template name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a template: what its sandboxes get, and its recent builds."""
    t = Template.get(name, **server(ctx).kwargs())
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(t), indent=2, default=_jsonable))
        return
    c = t.config
    rows = [
        ("name", t.name), ("base", t.base or "-"), ("layers", str(t.layers)),
        ("build", "built in" if t.builtin else t.build_id or "-"),
        ("created", _when(t.created_at)), ("updated", _when(t.updated_at)),
        ("env", " ".join(f"{k}={v}" for k, v in c.env.items()) or "-"), ("workdir", c.workdir or "-"),
        ("user", c.user or "-"), ("start cmd", " ".join(c.start_cmd) if c.start_cmd else "-"),
        ("ready cmd", c.ready_cmd or "-"), ("ready port", str(c.ready_port or "-")),
        ("cpu", str(c.cpu or "-")), ("memory", f"{c.memory_mb} MiB" if c.memory_mb else "-"),
        ("labels", " ".join(f"{k}={v}" for k, v in c.labels.items()) or "-"),
        ("ports", " ".join(c.exposed_ports) or "-"), ("isolation", c.isolation or "server default"),
    ]
    console = out_console()
    grid = Table.grid(padding=(0, 2))
    for key, value in rows:
        grid.add_row(Text(key, style="bold"), Text(value))
    console.print(grid)
    if t.builds:
        builds = Table(Column("BUILD", no_wrap=True), "STATE", Column("STARTED", no_wrap=True), "TOOK", "STEPS",
                       "ERROR", box=None, title="recent builds", title_justify="left")
        for b in t.builds:
            builds.add_row(b.build_id, b.state, _when(b.created_at), _took(b), str(len(b.steps)), b.error or "")
        console.print()
        console.print(builds)


@app.command()
def delete(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Template name.")]) -> None:
    """Delete a template (refused while running sandboxes use it)."""
    Template.delete(name, **server(ctx).kwargs())
    typer.echo(f"deleted template {name}")


@app.command()
def logs(
    ctx: typer.Context,
    build_id: Annotated[str, typer.Argument(help="Build ID (see `template info`).")],
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Wait for new events until the build ends.")]
    = True,
) -> None:
    """Print a build's log (plain lines), following it while it runs."""
    ended: BuildEvent | None = None
    events = Template.build_logs(build_id, follow=follow, **server(ctx).kwargs())
    try:
        with PlainView(out_console()) as view:
            for event in events:
                view(event)
                ended = event if event.type == "status" else ended
    finally:
        events.close()  # type: ignore[attr-defined]
    if ended is not None and ended.state == "failed":
        err_console().print(f"[red]build {escape(build_id)} failed:[/red] {escape(ended.error or '')}")
        raise typer.Exit(1)
