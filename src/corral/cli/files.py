"""``corral files``: copy files into and out of a sandbox, list directories."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from corral.sdk import FileType, Sandbox

from ._context import out_console, server

app = typer.Typer(help="Copy files into and out of a sandbox; list directories.", no_args_is_help=True)

SandboxId = Annotated[str, typer.Argument(help="Sandbox ID.")]


def _connect(ctx: typer.Context, sandbox_id: str) -> Sandbox:
    return Sandbox.connect(sandbox_id, **server(ctx).kwargs())


@app.command()
def put(
    ctx: typer.Context,
    sandbox_id: SandboxId,
    local: Annotated[str, typer.Argument(help="Local file, or - for stdin.")],
    remote: Annotated[str, typer.Argument(help="Path in the sandbox.")],
    user: Annotated[str | None, typer.Option(help="Owner in the sandbox.")] = None,
) -> None:
    """Upload a file (streamed)."""
    sbx = _connect(ctx, sandbox_id)
    try:
        if local == "-":
            entry = sbx.files.write(remote, sys.stdin.buffer, user=user)
        else:
            entry = sbx.files.upload(local, remote, user=user)
    finally:
        sbx.close()
    typer.echo(f"{entry.path} ({entry.size} bytes)", err=True)


@app.command()
def get(
    ctx: typer.Context,
    sandbox_id: SandboxId,
    remote: Annotated[str, typer.Argument(help="Path in the sandbox.")],
    local: Annotated[str, typer.Argument(help="Local file, or - for stdout.")],
    user: Annotated[str | None, typer.Option(help="Read as this user.")] = None,
) -> None:
    """Download a file (streamed)."""
    sbx = _connect(ctx, sandbox_id)
    try:
        if local == "-":
            out = sys.stdout.buffer
            for chunk in sbx.files.read(remote, "stream", user=user):
                out.write(chunk)
            out.flush()
        else:
            sbx.files.download(remote, local, user=user)
    finally:
        sbx.close()


@app.command()
def ls(
    ctx: typer.Context,
    sandbox_id: SandboxId,
    path: Annotated[str, typer.Argument(help="Directory in the sandbox.")] = ".",
    depth: Annotated[int, typer.Option(help="Levels to descend.")] = 1,
    user: Annotated[str | None, typer.Option(help="List as this user.")] = None,
) -> None:
    """List a directory."""
    sbx = _connect(ctx, sandbox_id)
    try:
        entries = sbx.files.list(path, depth=depth, user=user)
    finally:
        sbx.close()
    table = Table("PERMISSIONS", "OWNER", "GROUP", "SIZE", "MODIFIED", "PATH", box=None)
    for e in sorted(entries, key=lambda e: e.path):
        name = e.path + ("/" if e.type is FileType.DIR else "")
        if e.symlink_target:
            name += f" -> {e.symlink_target}"
        modified = e.modified_time.astimezone().strftime("%Y-%m-%d %H:%M")
        table.add_row(e.permissions, e.owner, e.group, str(e.size), modified, name)
    out_console().print(table)
