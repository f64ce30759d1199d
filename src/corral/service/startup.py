"""A template's start command and readiness check, run when one of its sandboxes is created.

The start command (Dockerfile ENTRYPOINT/CMD, or the build's ``start_cmd``) runs in the background as
the template's user in its workdir. Create returns once the readiness check passes: ``ready_cmd``
exits 0, or ``ready_port`` accepts connections; with neither, as soon as the command has started. If
the start command exits first, or the check does not pass within ``ready_timeout``, create fails and
says why (with the end of the command's output).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from corral.agent.client import AgentClient, ProcessStream
from corral.agent.protocol import AgentError, Exit, Output
from corral.service.errors import Unavailable
from corral.templates.model import TemplateConfig

POLL = 0.05  # between readiness probes (each probe is a round trip into the sandbox)
TAIL = 20


async def start_and_wait(agent: AgentClient, sandbox_id: str, template: str, config: TemplateConfig,
                         env: dict[str, str]) -> None:
    user = (config.user or "user").partition(":")[0] or "user"
    tail: deque[str] = deque(maxlen=TAIL)
    exited: asyncio.Future[Exit] = asyncio.get_running_loop().create_future()
    drain: asyncio.Task[None] | None = None
    try:
        if config.start_cmd:
            try:
                stream = await agent.exec(list(config.start_cmd), env=env, cwd=config.workdir, user=user,
                                          tag="start")
            except AgentError as exc:
                raise Unavailable(f"sandbox {sandbox_id}: template {template!r} start command could not start: "
                                  f"{exc.message}") from exc
            drain = asyncio.ensure_future(_drain(stream, tail, exited))
        await asyncio.wait_for(_ready(agent, config, env, user, exited), config.ready_timeout)
    except TimeoutError:
        raise Unavailable(f"sandbox {sandbox_id}: template {template!r} was not ready within "
                          f"{config.ready_timeout:.0f} s ({_check(config)}){_output(tail)}") from None
    except _StartExited as exc:
        raise Unavailable(f"sandbox {sandbox_id}: template {template!r} start command exited with code "
                          f"{exc.code} before it was ready{_output(tail)}") from None
    finally:
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await drain


class _StartExited(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


async def _ready(agent: AgentClient, config: TemplateConfig, env: dict[str, str], user: str,
                 exited: asyncio.Future[Exit]) -> None:
    if config.ready_cmd is None and config.ready_port is None:
        return
    while True:
        if exited.done():
            raise _StartExited(exited.result().exit_code)
        if config.ready_port is not None and await agent.port_open(config.ready_port):
            return
        if config.ready_cmd is not None and await _succeeds(agent, config, env, user):
            return
        await asyncio.sleep(POLL)


async def _succeeds(agent: AgentClient, config: TemplateConfig, env: dict[str, str], user: str) -> bool:
    assert config.ready_cmd is not None
    stream = await agent.exec(["/bin/sh", "-c", config.ready_cmd], env=env, cwd=config.workdir, user=user)
    async with stream:
        return (await stream.wait()).exit_code == 0


async def _drain(stream: ProcessStream, tail: deque[str], exited: asyncio.Future[Exit]) -> None:
    """Keep the start command's last lines (for errors); closing the stream leaves it running."""
    async with stream:
        async for event in stream:
            if isinstance(event, Output):
                tail.extend(event.data.decode(errors="replace").splitlines())
            elif isinstance(event, Exit) and not exited.done():
                exited.set_result(event)


def _check(config: TemplateConfig) -> str:
    if config.ready_port is not None:
        return f"nothing accepted connections on port {config.ready_port}"
    return f"ready_cmd {config.ready_cmd!r} did not exit 0"


def _output(tail: deque[str]) -> str:
    return ("; its last output:\n" + "\n".join(tail)) if tail else ""
