"""``corral keys``: create, list and revoke API keys (needs an admin key)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from corral.sdk._keys import ApiKeys

from ._context import err_console, out_console, server

app = typer.Typer(help="Create, list and revoke API keys (needs an admin key).", no_args_is_help=True)


def _keys(ctx: typer.Context) -> ApiKeys:
    return ApiKeys(**server(ctx).kwargs())


@app.command()
def create(ctx: typer.Context, name: Annotated[str, typer.Argument(help="A name for the key.")]) -> None:
    """Create a key and print it. It is shown only this once."""
    with _keys(ctx) as keys:
        created = keys.create(name)
    typer.echo(created.key)
    err_console().print(f"[yellow]key {created.id} ({created.name}): store it now, it is not shown again[/]")


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List keys (their secrets are never shown)."""
    with _keys(ctx) as keys:
        infos = keys.list()
    table = Table("ID", "NAME", "PREFIX", "CREATED", "REVOKED", "ADMIN", box=None)
    for k in infos:
        revoked = k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-"
        table.add_row(
            k.id, k.name, k.prefix or "", k.created_at.isoformat(timespec="seconds"), revoked, "yes" if k.admin else ""
        )
    out_console().print(table)


@app.command()
def revoke(ctx: typer.Context, key_id: Annotated[str, typer.Argument(help="Key ID (see `keys list`).")]) -> None:
    """Revoke a key; requests with it fail from now on."""
    with _keys(ctx) as keys:
        keys.revoke(key_id)
    typer.echo(f"revoked {key_id}")
