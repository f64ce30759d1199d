"""Commands: start processes through the agent and turn their output into API events.

Events (dicts, the same for NDJSON and SSE): ``start`` {pid}, ``stdout``/``stderr`` {data: text},
``exit`` {exit_code, error}. Output is decoded incrementally as UTF-8, so a character split across
chunks arrives whole; memory per stream is one chunk.
"""

from __future__ import annotations

import codecs
import signal as signals
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from corral.agent.client import AgentClient, ProcessStream
from corral.agent.protocol import AgentError, Exit, Output
from corral.service.agent_errors import translate
from corral.service.errors import InvalidRequest

SHELL = ("/bin/bash", "-l", "-c")


@dataclass(frozen=True)
class CommandRequest:
    cmd: str
    envs: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str = "user"
    timeout: float = 60
    stdin: bool = False
    tag: str | None = None


def parse_signal(value: str | int) -> int:
    if isinstance(value, int) or (value.isascii() and value.isdigit()):
        num = int(value)
        if not 1 <= num <= 64:
            raise InvalidRequest(f"signal: {value} is not a signal number")
        return num
    name = value.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signals.Signals[name])
    except KeyError as exc:
        raise InvalidRequest(f"signal: unknown signal {value!r}") from exc


async def start(
    agent: AgentClient, sandbox_id: str, req: CommandRequest, sandbox_envs: dict[str, str]
) -> ProcessStream:
    if req.timeout < 0:
        raise InvalidRequest("timeout: must be >= 0 seconds (0 = no limit)")
    if "\0" in req.cmd:
        raise InvalidRequest("cmd: must not contain NUL bytes")
    try:
        return await agent.exec_shell(  # POSIX sh in a template without bash
            [*SHELL, req.cmd], env={**sandbox_envs, **req.envs}, cwd=req.cwd, user=req.user,
            stdin=req.stdin, tag=req.tag, timeout=req.timeout,
        )
    except AgentError as exc:
        if exc.kind in ("not_found", "not_dir", "permission"):  # a bad cwd, user or shell: the request's fault
            raise InvalidRequest(f"sandbox {sandbox_id}: cannot start the command: {exc.message}") from exc
        raise translate(exc, sandbox_id) from exc


def is_exit(event: dict[str, Any]) -> bool:
    """Whether `event` is the exit, the last event of a stream from `events`."""
    return event.get("type") == "exit"


async def events(
    sandbox_id: str, stream: ProcessStream, oom_killed: Callable[[], Awaitable[bool]] | None = None,
    announce: bool = True,
) -> AsyncIterator[dict[str, Any]]:
    """The event stream of one process; closes (detaches from) the process stream when done."""
    decoders = {
        "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
        "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
    }
    try:
        if announce:
            yield {"type": "start", "pid": stream.pid}
        async for event in stream:
            if isinstance(event, Output):
                text = decoders[event.stream].decode(event.data)
                if text:
                    yield {"type": event.stream, "data": text}
            elif isinstance(event, Exit):
                for name, dec in decoders.items():
                    rest = dec.decode(b"", final=True)
                    if rest:
                        yield {"type": name, "data": rest}
                error = event.error
                if error is None and event.signal is not None:
                    error = await _signal_reason(event.signal, oom_killed)
                yield {"type": "exit", "exit_code": event.exit_code, "error": error}
                return
        yield {"type": "exit", "exit_code": -1, "error": f"sandbox {sandbox_id}: lost contact with the process"}
    except AgentError as exc:
        yield {"type": "exit", "exit_code": -1, "error": translate(exc, sandbox_id).message}
    finally:
        await stream.close()


async def _signal_reason(sig: int, oom_killed: Callable[[], Awaitable[bool]] | None) -> str:
    if sig == signals.SIGKILL and oom_killed is not None and await oom_killed():
        return "killed: out of memory (the sandbox's memory limit was reached)"
    try:
        return f"terminated by signal {signals.Signals(sig).name}"
    except ValueError:
        return f"terminated by signal {sig}"
