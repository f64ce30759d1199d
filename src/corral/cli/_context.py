"""What every ``corral`` command shares: the server connection, output, and error handling.

Errors never print tracebacks: an SDK exception or a local OS error becomes one red line on
stderr and exit code 1.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from corral.sdk import SandboxException

__all__ = ["CorralGroup", "Server", "err_console", "fail", "out_console", "pairs", "server"]


@dataclass(frozen=True)
class Server:
    """The ``--api-url``/``--api-key`` given to ``corral`` (``None``: the SDK reads the environment)."""

    api_url: str | None = None
    api_key: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"api_url": self.api_url, "api_key": self.api_key}


def server(ctx: typer.Context) -> Server:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Server) else Server()


def out_console() -> Console:
    return Console(soft_wrap=True)


def err_console() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` in red on stderr and exit with ``code``."""
    err_console().print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def pairs(values: Iterable[str] | None, option: str) -> dict[str, str]:
    """``["K=V", ...]`` → ``{"K": "V"}``; anything without ``=`` is a usage error naming ``option``."""
    result: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        result[key] = value
    return result


class CorralGroup(TyperGroup):
    """A command group that turns SDK and OS errors raised by any subcommand into ``fail``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SandboxException as exc:
            fail(str(exc))
        except BrokenPipeError:  # e.g. `corral files get ID f - | head`: the reader left; stop quietly
            with contextlib.suppress(Exception):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or exc}")
