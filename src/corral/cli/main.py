"""The ``corral`` command (entry point ``corral.cli.main:app``): top-level options, ``serve`` and ``exec``."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TextIO

import typer

from corral.sdk import CommandResult, Sandbox

from . import files, keys, sandbox, templates
from ._context import CorralGroup, Server, fail, pairs, server

app = typer.Typer(
    cls=CorralGroup,
    name="corral",
    help="Self-hosted sandboxes for untrusted code.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(sandbox.app, name="sandbox")
app.add_typer(files.app, name="files")
app.add_typer(keys.app, name="keys")
app.add_typer(templates.app, name="template")


@app.callback()
def main(
    ctx: typer.Context,
    api_url: Annotated[
        str | None,
        typer.Option("--api-url", envvar="CORRAL_API_URL", help="Server URL (default http://127.0.0.1:3000)."),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="CORRAL_API_KEY", help="API key.", show_default=False)
    ] = None,
) -> None:
    ctx.obj = Server(api_url=api_url, api_key=api_key)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (env CORRAL_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (env CORRAL_PORT).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Where state is kept (env CORRAL_DATA_DIR).")
    ] = None,
) -> None:
    """Run the Corral server (API, service and the local sandbox runtime) in this process."""
    for name, value in (("CORRAL_HOST", host), ("CORRAL_PORT", port), ("CORRAL_DATA_DIR", data_dir)):
        if value is not None:
            os.environ[name] = str(value)
    try:
        from corral.api.server import serve as run_server
    except ImportError as exc:
        fail(f"the server is not available in this installation: {exc}")
    run_server()


def _exit_status(result: CommandResult) -> int:
    """The process exit status for a command's result (signals as 128+N, like a shell)."""
    code = result.exit_code
    if code < 0:
        return min(128 - code, 255)
    if code == 0 and result.error:
        return 1
    return min(code, 255)


def _echo(stream: TextIO) -> Callable[[str], None]:
    """An output callback writing to ``stream`` as chunks arrive."""

    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write


@app.command("exec", context_settings={"allow_interspersed_args": False})
def exec_(
    ctx: typer.Context,
    sandbox_id: Annotated[str, typer.Argument(help="Sandbox ID.")],
    command: Annotated[list[str], typer.Argument(help="The command; put `--` before it.", show_default=False)],
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE for the command.")] = None,
    cwd: Annotated[str | None, typer.Option(help="Working directory in the sandbox.")] = None,
    user: Annotated[str | None, typer.Option(help="User to run as.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds before the command is killed (0: no limit).")] = 0,
) -> None:
    """Run a command in a sandbox, streaming its output; exit with its exit code.

    Several words are quoted and joined: `corral exec ID -- ls -l "my dir"`.
    A single word is run as a bash command line: `corral exec ID -- 'echo $HOME | wc -c'`.
    """
    words = command[1:] if command and command[0] == "--" else command
    if not words:
        raise typer.BadParameter("missing command", param_hint="COMMAND")
    cmd = words[0] if len(words) == 1 else shlex.join(words)
    envs = pairs(env, "--env")
    sbx = Sandbox.connect(sandbox_id, **server(ctx).kwargs())
    try:
        handle = sbx.commands.run(
            cmd,
            background=True,
            envs=envs,
            user=user,
            cwd=cwd,
            on_stdout=_echo(sys.stdout),
            on_stderr=_echo(sys.stderr),
            timeout=timeout,
            check=False,
        )
        try:
            result = handle.wait()
        except KeyboardInterrupt:
            handle.kill()
            fail(f"sandbox {sandbox_id}: interrupted; killed pid {handle.pid}", code=130)
    finally:
        sbx.close()
    if result.error:
        fail(f"sandbox {sandbox_id}: {result.error}", code=_exit_status(result))
    raise typer.Exit(_exit_status(result))
