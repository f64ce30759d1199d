"""``corral sandbox``: create, list, inspect and kill sandboxes."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from corral.sdk import Sandbox, SandboxInfo

from ._context import fail, out_console, pairs, server

app = typer.Typer(help="Create, list, inspect and kill sandboxes.", no_args_is_help=True)


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@app.command()
def create(
    ctx: typer.Context,
    template: Annotated[str, typer.Option(help="Template to start from.")] = "base",
    timeout: Annotated[int, typer.Option(help="Seconds until the sandbox ends.")] = 300,
    cpu: Annotated[float | None, typer.Option(help="CPU cores (e.g. 0.5).")] = None,
    memory_mb: Annotated[int | None, typer.Option("--memory-mb", help="Memory limit in MiB.")] = None,
    disk_mb: Annotated[int | None, typer.Option("--disk-mb", help="Disk limit in MiB.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE for every command.")] = None,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", "-m", help="KEY=VALUE label.")] = None,
) -> None:
    """Create a sandbox and print its ID (it keeps running until its timeout or `sandbox kill`)."""
    sbx = Sandbox.create(
        template=template,
        timeout=timeout,
        envs=pairs(env, "--env"),
        metadata=pairs(metadata, "--metadata"),
        cpu=cpu,
        memory_mb=memory_mb,
        disk_mb=disk_mb,
        **server(ctx).kwargs(),
    )
    sbx.close()
    typer.echo(sbx.sandbox_id)


@app.command("list")
def list_(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", "-a", help="Include ended sandboxes.")] = False,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", "-m", help="Only KEY=VALUE.")] = None,
) -> None:
    """List sandboxes."""
    infos = Sandbox.list(
        state="all" if all_ else "running", metadata=pairs(metadata, "--metadata"), **server(ctx).kwargs()
    )
    table = Table(Column("ID", no_wrap=True, min_width=20), "TEMPLATE", "STATE", "STARTED", "ENDS", "METADATA",
                  box=None)
    for info in infos:
        labels = " ".join(f"{k}={v}" for k, v in sorted(info.metadata.items()))
        ends = info.ended_at or info.end_at
        table.add_row(info.sandbox_id, info.template, info.state, _when(info.started_at), _when(ends), labels)
    out_console().print(table)


def info_json(info: SandboxInfo) -> str:
    return json.dumps(dataclasses.asdict(info), indent=2, default=_jsonable)


@app.command()
def info(ctx: typer.Context, sandbox_id: Annotated[str, typer.Argument(help="Sandbox ID.")]) -> None:
    """Show a sandbox as JSON."""
    typer.echo(info_json(Sandbox.get_info(sandbox_id, **server(ctx).kwargs())))


@app.command()
def kill(ctx: typer.Context, sandbox_id: Annotated[str, typer.Argument(help="Sandbox ID.")]) -> None:
    """Kill a sandbox."""
    if not Sandbox.kill(sandbox_id, **server(ctx).kwargs()):
        fail(f"sandbox {sandbox_id}: no such sandbox")
    typer.echo(f"killed {sandbox_id}")
