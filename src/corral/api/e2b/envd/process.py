"""``process.Process``: Start, Connect, List, SendInput, StreamInput, SendSignal, CloseStdin, Update.

Mapped onto the sandbox's agent: the pids reported are the agent's, a Start's ``Connect-Timeout-Ms``
becomes the process's lifetime (the agent kills its group when it passes, as envd does), and a
stream closed by the caller detaches without killing. Message shapes: ``proto/process/process.proto``.
"""

from __future__ import annotations

import asyncio
import signal as signals
from collections.abc import AsyncIterator
from dataclasses import dataclass

from corral.agent.client import ProcessStream
from corral.agent.protocol import AgentError, Exit, Output

from . import pjson
from .connect import ConnectError
from .rpc import Call, Message, Method

SIGNALS = {"SIGNAL_UNSPECIFIED": 0, "SIGNAL_SIGTERM": 15, "SIGNAL_SIGKILL": 9}
PING: Message = {"event": {"keepalive": {}}}


@dataclass(frozen=True)
class Selector:
    """ProcessSelector: a oneof of pid and tag."""

    pid: int | None
    tag: str | None

    @classmethod
    def from_json(cls, message: Message, name: str = "process") -> Selector:
        selector = pjson.sub(message, name) or {}
        if pjson.has(selector, "pid"):
            return cls(pjson.uint32(selector, "pid"), None)
        if pjson.has(selector, "tag"):
            return cls(None, pjson.text(selector, "tag"))
        raise ConnectError("invalid_argument", f"field {name!r} must select a process by pid or tag")


@dataclass(frozen=True)
class StartCommand:
    cmd: str
    args: list[str]
    envs: dict[str, str]
    cwd: str | None
    pty: tuple[int, int] | None  # (cols, rows)
    tag: str | None
    stdin: bool

    @classmethod
    def from_json(cls, message: Message) -> StartCommand:
        config = pjson.sub(message, "process") or {}
        cmd = pjson.text(config, "cmd")
        if not cmd:
            raise ConnectError("invalid_argument", "field 'process.cmd' must not be empty")
        envs = pjson.text_map(config, "envs")
        if any(not k or "=" in k for k in envs):
            raise ConnectError("invalid_argument", "field 'process.envs' has an empty name or one with '='")
        pty = pjson.sub(message, "pty")
        size = (pjson.sub(pty, "size") or {}) if pty is not None else None
        return cls(
            cmd=cmd,
            args=pjson.texts(config, "args"),
            envs=envs,
            cwd=pjson.optional_text(config, "cwd"),
            pty=None if size is None else (pjson.uint32(size, "cols") or 80, pjson.uint32(size, "rows") or 24),
            tag=pjson.optional_text(message, "tag"),
            stdin=pjson.flag(message, "stdin", default=True),  # absent: a stdin pipe, like envd
        )

    def config(self) -> Message:
        config: Message = {"cmd": self.cmd, "args": self.args, "envs": self.envs}
        if self.cwd is not None:
            config["cwd"] = self.cwd
        return config


def home_relative(path: str) -> str:
    """``~`` and ``~/x`` as the agent takes them: relative paths start at the user's home."""
    if path == "~":
        return "."
    return path[2:] or "." if path.startswith("~/") else path


async def global_envs(call: Call) -> dict[str, str]:
    """What envd puts in every process's environment: E2B's markers, then the sandbox's envs."""
    sandboxes = call.services.sandboxes
    template = sandboxes.template_of(call.sandbox_id)  # kept in memory: no store read (and thread hop) per call
    if template is None:
        row = await asyncio.to_thread(sandboxes.store.sandbox, call.sandbox_id)
        template = None if row is None else row.template
    envs = {"E2B_SANDBOX": "true", "E2B_SANDBOX_ID": call.sandbox_id}
    if template is not None:
        envs["E2B_TEMPLATE_ID"] = template
    return {**envs, **sandboxes.envs(call.sandbox_id)}


def end_event(result: Exit) -> Message:
    """EndEvent the way envd fills it from Go's ProcessState: a signal death is exit code -1."""
    if result.signal is not None:
        try:
            reason = signals.strsignal(result.signal) or f"signal {result.signal}"
        except ValueError:
            reason = f"signal {result.signal}"
        end: Message = {"exitCode": -1, "exited": False, "status": f"signal: {reason[:1].lower()}{reason[1:]}"}
    else:
        end = {"exitCode": result.exit_code, "exited": True, "status": f"exit status {result.exit_code}"}
    error = result.error or (None if end["exitCode"] == 0 else end["status"])
    if error is not None:
        end["error"] = error
    return {"event": {"end": end}}


async def _events(stream: ProcessStream, pty: bool, deadline_kills: bool) -> AsyncIterator[Message]:
    """start, data…, end: one process's stream as ProcessEvents. Closing it detaches."""
    try:
        yield {"event": {"start": {"pid": stream.pid}}}
        async for item in stream:
            if isinstance(item, Output):
                yield {"event": {"data": {"pty" if pty else item.stream: pjson.b64(item.data)}}}
            elif isinstance(item, Exit):
                if deadline_kills and item.error is not None:  # the agent's timer: our deadline
                    raise ConnectError("deadline_exceeded", f"process {stream.pid}: {item.error}")
                yield end_event(item)
                return
    finally:
        await stream.close()


async def start(call: Call, message: Message) -> AsyncIterator[Message]:
    req = StartCommand.from_json(message)
    envs = {**await global_envs(call), **req.envs}
    try:
        stream = await call.agent.exec_shell(  # the SDKs' /bin/bash -l -c CMD: sh -c CMD without bash
            [req.cmd, *req.args], env=envs,
            cwd=call.services.sandboxes.default_cwd(call.sandbox_id) if req.cwd is None else home_relative(req.cwd),
            user=call.user, stdin=req.stdin and req.pty is None,
            pty=None if req.pty is None else {"cols": req.pty[0], "rows": req.pty[1]},
            tag=req.tag, timeout=call.timeout or 0,
        )
    except AgentError as exc:
        if exc.kind in ("not_found", "not_dir", "permission") and not exc.message.startswith("unknown user"):
            raise ConnectError("invalid_argument", f"sandbox {call.sandbox_id}: cannot start: {exc.message}") from exc
        raise
    call.state.configs.remember(call.sandbox_id, stream.pid, req.config())
    async for event in _events(stream, req.pty is not None, deadline_kills=True):
        yield event


async def _find(call: Call, selector: Selector) -> tuple[int, bool]:
    """(pid, whether it runs on a PTY) of the selected process."""
    running = await call.agent.processes()
    for info in running:
        if info.get("pid") == selector.pid or (selector.tag is not None and info.get("tag") == selector.tag):
            return int(info["pid"]), info.get("pty") is not None
    if selector.pid is not None:
        return selector.pid, False  # maybe finished: the agent still knows its exit
    raise ConnectError("not_found", f"sandbox {call.sandbox_id}: no process with tag {selector.tag!r:.100}")


async def connect(call: Call, message: Message) -> AsyncIterator[Message]:
    pid, pty = await _find(call, Selector.from_json(message))
    stream = await call.agent.attach(pid)
    async for event in _events(stream, pty, deadline_kills=False):
        yield event


async def list_(call: Call, message: Message) -> Message:
    running = await call.agent.processes()
    call.state.configs.keep_only(call.sandbox_id, {int(p["pid"]) for p in running})
    processes = []
    for info in running:
        argv = [str(a) for a in info.get("cmd") or [""]]
        config = call.state.configs.get(call.sandbox_id, int(info["pid"])) or {
            "cmd": argv[0], "args": argv[1:], "envs": {}, "cwd": info.get("cwd"),
        }
        entry: Message = {"config": {k: v for k, v in config.items() if v is not None}, "pid": info["pid"]}
        if info.get("tag") is not None:
            entry["tag"] = info["tag"]
        processes.append(entry)
    return {"processes": processes}


async def _pid(call: Call, message: Message) -> int:
    selector = Selector.from_json(message)
    return selector.pid if selector.pid is not None else (await _find(call, selector))[0]


def _input(message: Message, name: str = "input") -> bytes:
    given = pjson.sub(message, name) or {}
    return pjson.bytes_field(given, "pty") if pjson.has(given, "pty") else pjson.bytes_field(given, "stdin")


async def send_input(call: Call, message: Message) -> Message:
    await call.agent.stdin(await _pid(call, message), _input(message))
    return {}


async def stream_input(call: Call, messages: AsyncIterator[Message]) -> Message:
    pid: int | None = None
    async for message in messages:
        if (start_event := pjson.sub(message, "start")) is not None:
            pid = await _pid(call, start_event)
        elif (data := pjson.sub(message, "data")) is not None:
            if pid is None:
                raise ConnectError("invalid_argument", "the first StreamInput message must be 'start'")
            await call.agent.stdin(pid, _input(data))
    return {}


async def send_signal(call: Call, message: Message) -> Message:
    number = pjson.enum(message, "signal", SIGNALS)
    if number not in (signals.SIGKILL, signals.SIGTERM):
        raise ConnectError("invalid_argument", "field 'signal' must be SIGNAL_SIGKILL or SIGNAL_SIGTERM")
    await call.agent.signal(await _pid(call, message), number)
    return {}


async def close_stdin(call: Call, message: Message) -> Message:
    await call.agent.stdin(await _pid(call, message), b"", eof=True)
    return {}


async def update(call: Call, message: Message) -> Message:
    pid = await _pid(call, message)
    size = pjson.sub(pjson.sub(message, "pty") or {}, "size")
    if size is not None:
        await call.agent.resize(pid, pjson.uint32(size, "cols"), pjson.uint32(size, "rows"))
    return {}


METHODS: dict[str, Method] = {
    "Start": Method("server_stream", start, PING),
    "Connect": Method("server_stream", connect, PING),
    "List": Method("unary", list_),
    "SendInput": Method("unary", send_input),
    "StreamInput": Method("client_stream", stream_input),
    "SendSignal": Method("unary", send_signal),
    "CloseStdin": Method("unary", close_stdin),
    "Update": Method("unary", update),
}
