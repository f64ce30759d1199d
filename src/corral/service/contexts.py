"""Code contexts: one interpreter driver per context inside the sandbox (docs/interpreter-protocol.md).

A context's driver is a process started through the agent with stdin kept open. A reader task turns
its stdout into JSON events and hands those of the running cell to that cell's queue. Cells of one
context run one at a time (a lock); contexts run in parallel. If the driver dies, the running cell
gets a ``KernelDied`` error and the next cell starts a fresh driver. Used from the event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from corral.agent.client import AgentClient, ProcessStream
from corral.agent.protocol import AgentError, Output
from corral.service.agent_errors import translate
from corral.service.errors import Conflict, InvalidRequest, NotFound, Unavailable

log = logging.getLogger("corral.contexts")
DRIVERS = "/.corral/lib/corral_interp"
LANGUAGES = {"python": "python", "": "python", "py": "python", "javascript": "javascript", "js": "javascript",
             "typescript": "typescript", "ts": "typescript", "bash": "bash", "sh": "bash"}
MAX_LINE = 8 << 20  # a driver line longer than this is a broken driver
READY_TIMEOUT = 60.0
INTERRUPT_GRACE = 5.0
KEEPALIVE = 5.0
CELL_QUEUE = 64  # events (each at most ~64 KiB of text) buffered between the driver and the caller


# Variables an interpreter reads when it starts (or caches at import), which an already running
# kernel would not honour if they were only added to its os.environ.
_AT_START_PREFIXES = ("PYTHON", "LD_", "LC_", "JPY_", "JUPYTER", "IPYTHON", "MALLOC_", "OPENBLAS", "OMP_", "MKL_")
_AT_START_NAMES = frozenset({"LANG", "LANGUAGE", "TZ", "HOME", "TMPDIR", "TEMP", "TMP", "USER", "SHELL"})


def read_at_start(name: str) -> bool:
    return name in _AT_START_NAMES or name.startswith(_AT_START_PREFIXES)


def normalise_language(language: str | None) -> str:
    key = (language or "").strip().lower()
    if key not in LANGUAGES:
        raise InvalidRequest(f"language: {language!r} is not supported (python, javascript, typescript, bash)")
    return LANGUAGES[key]


def driver_argv(language: str, cwd: str) -> list[str]:
    if language in ("javascript", "typescript"):
        return ["/usr/bin/node", f"{DRIVERS}/js_driver.js", "--cwd", cwd]
    script = "py_driver.py" if language == "python" else "bash_driver.py"
    return ["/usr/bin/python3", "-u", f"{DRIVERS}/{script}", "--cwd", cwd]


def now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _error(name: str, value: str, traceback: str = "") -> dict[str, Any]:
    return {"type": "error", "name": name, "value": value, "traceback": traceback or f"{name}: {value}"}


@dataclass
class Context:
    id: str
    sandbox_id: str
    language: str
    cwd: str
    user: str
    envs: dict[str, str]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pid: int | None = None
    reader: asyncio.Task[None] | None = None
    stderr_tail: bytes = b""  # the driver's last stderr bytes (why it would not start)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    cell: asyncio.Queue[dict[str, Any] | None] | None = None  # events of the running cell; None = driver gone
    alive: bool = False

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}


class Contexts:
    """All contexts of all sandboxes of this server."""

    def __init__(self) -> None:
        self._by_sandbox: dict[str, dict[str, Context]] = {}
        self._defaults: dict[tuple[str, str], str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # lifecycle
    async def create(self, agent: AgentClient, sandbox_id: str, language: str | None, cwd: str | None,
                     user: str, envs: dict[str, str]) -> Context:
        ctx = Context(id=secrets.token_hex(8), sandbox_id=sandbox_id, language=normalise_language(language),
                      cwd=cwd or ("/root" if user == "root" else "/home/user"), user=user, envs=envs)
        await self._start(agent, ctx)
        self._by_sandbox.setdefault(sandbox_id, {})[ctx.id] = ctx
        return ctx

    def list(self, sandbox_id: str) -> list[Context]:
        return list(self._by_sandbox.get(sandbox_id, {}).values())

    def get(self, sandbox_id: str, context_id: str) -> Context:
        ctx = self._by_sandbox.get(sandbox_id, {}).get(context_id)
        if ctx is None:
            raise NotFound(f"sandbox {sandbox_id}: context {context_id} not found")
        return ctx

    async def restart(self, agent: AgentClient, ctx: Context) -> None:
        async with ctx.lock:
            await self.stop(agent, ctx)
            await self._start(agent, ctx)

    async def remove(self, agent: AgentClient, ctx: Context) -> None:
        self._by_sandbox.get(ctx.sandbox_id, {}).pop(ctx.id, None)
        self._defaults = {k: v for k, v in self._defaults.items() if v != ctx.id}
        await self.stop(agent, ctx)

    async def adopt_default(self, agent: AgentClient, sandbox_id: str, language: str,
                            envs: dict[str, str]) -> Context | None:
        """Give the sandbox's default context of ``language``, started ahead (the warm pool), the envs
        of the create that claimed the sandbox. A python one whose new or changed variables are only
        read at run time gets them in its running interpreter (``set_envs``); otherwise it is
        unregistered and returned (the caller stops it): the next cell starts a new one with them."""
        context_id = self._defaults.get((sandbox_id, language))
        ctx = self._by_sandbox.get(sandbox_id, {}).get(context_id or "")
        if ctx is None or ctx.envs == envs:
            return None
        changed = {k: v for k, v in envs.items() if ctx.envs.get(k) != v}
        if ctx.language == "python" and ctx.alive and ctx.pid is not None and set(ctx.envs) <= set(envs) \
                and not any(read_at_start(name) for name in changed):
            async with ctx.lock:
                with contextlib.suppress(AgentError):  # a driver gone meanwhile: started anew below
                    await agent.stdin(ctx.pid, (json.dumps({"op": "set_envs", "envs": changed}) + "\n").encode())
                    ctx.envs = dict(envs)
                    return None
        del self._defaults[sandbox_id, language], self._by_sandbox[sandbox_id][ctx.id]
        return ctx

    def forget(self, sandbox_id: str) -> None:
        """The sandbox is gone: drop its contexts (their processes died with it)."""
        for ctx in self._by_sandbox.pop(sandbox_id, {}).values():
            if ctx.reader is not None:
                ctx.reader.cancel()
        self._defaults = {k: v for k, v in self._defaults.items() if k[0] != sandbox_id}

    async def default(self, agent: AgentClient, sandbox_id: str, language: str | None, envs: dict[str, str]) -> Context:
        lang = normalise_language(language)
        existing = self._defaults.get((sandbox_id, lang))
        if existing and existing in self._by_sandbox.get(sandbox_id, {}):
            return self._by_sandbox[sandbox_id][existing]
        ctx = await self.create(agent, sandbox_id, lang, None, "user", envs)
        self._defaults[(sandbox_id, lang)] = ctx.id
        return ctx

    # execution
    async def execute(self, agent: AgentClient, ctx: Context, code: str, envs: dict[str, str],
                      timeout: float) -> AsyncIterator[dict[str, Any]]:
        """The cell's events; always ends with ``end_of_execution``. Closing it early interrupts the cell."""
        await ctx.lock.acquire()
        finished = False
        try:
            if not ctx.alive:
                await self._start(agent, ctx)
            cell_id = secrets.token_hex(6)
            ctx.cell = asyncio.Queue(maxsize=CELL_QUEUE)
            request = {"op": "execute", "id": cell_id, "code": code, "envs": envs,
                       "language": "typescript" if ctx.language == "typescript" else None}
            assert ctx.pid is not None
            with _translated(ctx):
                await agent.stdin(ctx.pid, (json.dumps(request) + "\n").encode())
            async for event in self._cell_events(agent, ctx, timeout):
                yield event
            finished = True
        finally:
            if finished:
                ctx.cell = None
                ctx.lock.release()
            else:  # the caller went away mid-cell: interrupt it, drain, then free the context
                task = asyncio.get_running_loop().create_task(self._abandon(agent, ctx))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _cell_events(self, agent: AgentClient, ctx: Context, timeout: float) -> AsyncIterator[dict[str, Any]]:
        assert ctx.cell is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout > 0 else None
        timed_out = False
        while True:
            step = 1.0 if timed_out else KEEPALIVE  # once interrupted, re-interrupt each second until it ends
            wait = step if deadline is None else max(0.0, min(step, deadline - loop.time()))
            try:
                event = await asyncio.wait_for(ctx.cell.get(), wait)
            except TimeoutError:
                event = {} if ctx.alive else None
            if event == {}:
                if deadline is not None and loop.time() >= deadline and not timed_out:
                    timed_out = True
                    await self._interrupt(agent, ctx)
                    deadline = loop.time() + INTERRUPT_GRACE
                elif timed_out and deadline is not None and loop.time() < deadline:
                    await self._interrupt(agent, ctx)  # a SIGINT that landed before the cell ran is lost
                elif timed_out and deadline is not None and loop.time() >= deadline:
                    await self.stop(agent, ctx)  # it ignored the interrupt: state is lost
                    yield _error("ExecutionTimeout", f"execution exceeded {timeout:g}s and did not stop when "
                                 "interrupted; the context was restarted")
                    yield {"type": "end_of_execution"}
                    return
                else:
                    yield {"type": "keepalive"}
                continue
            if event is None:  # the driver is gone
                yield _error("KernelDied", f"the {ctx.language} runtime of this context died; the next execution "
                             "starts a fresh one (state is lost)")
                yield {"type": "end_of_execution"}
                return
            event.pop("id", None)
            if timed_out and event["type"] == "error":
                event = _error("ExecutionTimeout", f"execution exceeded {timeout:g}s and was interrupted; "
                               "the context's state is kept", str(event.get("traceback", "")))
            yield event
            if event["type"] == "end_of_execution":
                return

    async def _abandon(self, agent: AgentClient, ctx: Context) -> None:
        """The caller left mid-cell: interrupt it (again each second: a SIGINT that lands before the
        runtime starts the cell is lost), drain its events; if it will not stop, restart the driver."""
        try:
            queue = ctx.cell
            ended = queue is None
            loop = asyncio.get_running_loop()
            give_up = loop.time() + INTERRUPT_GRACE
            while not ended and loop.time() < give_up:
                await self._interrupt(agent, ctx)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        while True:
                            event = await queue.get()  # type: ignore[union-attr]
                            if event is None or event["type"] == "end_of_execution":
                                ended = True
                                break
            if not ended:
                await self.stop(agent, ctx)  # the next cell gets a fresh runtime rather than a wait
        finally:
            ctx.cell = None
            ctx.lock.release()

    async def _interrupt(self, agent: AgentClient, ctx: Context) -> None:
        if ctx.pid is not None:
            with contextlib.suppress(AgentError):
                await agent.signal(ctx.pid, signal.SIGINT)

    # the driver process
    async def _start(self, agent: AgentClient, ctx: Context) -> None:
        ctx.ready = asyncio.Event()
        argv = driver_argv(ctx.language, ctx.cwd)
        try:
            stream = await agent.exec(argv, env=dict(ctx.envs), cwd=ctx.cwd, user=ctx.user, stdin=True,
                                      tag=f"context:{ctx.id}", timeout=0)
        except AgentError as exc:
            if exc.kind == "not_found" and exc.message.endswith(f": {argv[0]}"):
                raise Conflict(f"sandbox {ctx.sandbox_id}: its template cannot run {ctx.language} code ({argv[0]} "
                               "is missing); use the code-interpreter template or one built FROM it") from exc
            raise translate(exc, ctx.sandbox_id) from exc
        ctx.pid, ctx.alive, ctx.stderr_tail = stream.pid, True, b""
        ctx.reader = asyncio.get_running_loop().create_task(self._read(ctx, stream))
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await ctx.ready.wait()
        except TimeoutError as exc:
            await self.stop(agent, ctx)
            raise Unavailable(f"sandbox {ctx.sandbox_id}: the {ctx.language} interpreter did not start "
                              f"within {READY_TIMEOUT:.0f}s") from exc
        if not ctx.alive:
            lines = [line.strip() for line in ctx.stderr_tail.decode(errors="replace").splitlines() if line.strip()]
            missing = [line for line in lines if "No module named" in line or "Cannot find module" in line]
            if missing:
                raise Conflict(f"sandbox {ctx.sandbox_id}: its template cannot run {ctx.language} code "
                               f"({missing[-1]}); use the code-interpreter template or one built FROM it")
            last = lines[-1] if lines else "no output"
            raise Unavailable(f"sandbox {ctx.sandbox_id}: the {ctx.language} interpreter exited at start: {last}")

    async def stop(self, agent: AgentClient, ctx: Context) -> None:
        if ctx.pid is not None and ctx.alive:
            with contextlib.suppress(AgentError):
                await agent.signal(ctx.pid, signal.SIGKILL)
        if ctx.reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(ctx.reader, 5)
        ctx.alive, ctx.pid, ctx.reader = False, None, None

    async def _read(self, ctx: Context, stream: ProcessStream) -> None:
        buffer = b""
        try:
            async for event in stream:
                if not isinstance(event, Output):
                    break
                if event.stream == "stderr":
                    log.debug("context %s: %s", ctx.id, event.data[:500])
                    ctx.stderr_tail = (ctx.stderr_tail + event.data)[-2048:]
                    continue
                buffer += event.data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    await self._dispatch(ctx, line)
                if len(buffer) > MAX_LINE:
                    log.warning("context %s: driver line over %d bytes; dropping it", ctx.id, MAX_LINE)
                    buffer = b""
        except AgentError as exc:
            log.info("context %s: driver stream ended: %s", ctx.id, exc)
        finally:
            ctx.alive = False
            ctx.ready.set()
            if ctx.cell is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    ctx.cell.put_nowait(None)  # a full queue is being drained; its reader sees alive=False
            with contextlib.suppress(Exception):
                await stream.close()

    async def _dispatch(self, ctx: Context, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            log.warning("context %s: driver wrote a non-JSON line", ctx.id)
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return
        if event["type"] == "ready":
            ctx.ready.set()
        elif ctx.cell is not None:
            await ctx.cell.put(event)  # bounded: a slow caller slows the driver, memory stays flat


@contextlib.contextmanager
def _translated(ctx: Context):  # type: ignore[no-untyped-def]
    try:
        yield
    except AgentError as exc:
        raise translate(exc, ctx.sandbox_id) from exc
