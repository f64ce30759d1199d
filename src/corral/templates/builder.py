"""Build a template from a parsed Dockerfile: one Corral sandbox per filesystem step, one layer per step.

Each RUN/COPY/ADD runs in a fresh sandbox whose root is the layers so far (read-only overlay lowers)
under an empty writable disk; when the step succeeds its writable layer is committed to the layer
store under the step's cache key (parent key + instruction + copied files' hashes + build args). A
step whose key is already in the store is not run (a cache hit), so an unchanged rebuild runs no
sandbox at all. ENV, ARG, WORKDIR, USER, LABEL, EXPOSE, CMD and ENTRYPOINT change only the image's
config, but are part of the key chain, so changing one rebuilds every later step. WORKDIR's directory
is made in the next filesystem step (or in a last step of its own).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import posixpath
import secrets
import string
import tarfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from corral.agent.client import AgentClient
from corral.agent.protocol import AgentError, Exit, Output
from corral.runtime.backend import Backend, RuntimeFailure, SandboxSpec
from corral.runtime.netpolicy import parse_policy
from corral.templates.context import BuildContext, ContextError, cache_key
from corral.templates.instructions import (
    Arg,
    Cmd,
    Copy,
    Dockerfile,
    Entrypoint,
    Env,
    Expose,
    Instruction,
    Label,
    Run,
    User,
    Workdir,
)
from corral.templates.layers import LayerStore, key_hex
from corral.templates.model import TemplateConfig

BUILD_MOUNT = "/.corral/build"
TAIL_LINES = 20
_ID = string.ascii_lowercase + string.digits


@dataclass(frozen=True)
class BaseImage:
    """What FROM resolved to: its layers (topmost first), their references, key and config."""

    layers: tuple[Path, ...]
    refs: tuple[str, ...]
    key: str
    config: TemplateConfig


@dataclass(frozen=True)
class BuildOptions:
    cpu: float = 2.0
    memory_mb: int = 2048
    disk_mb: int = 8192
    no_cache: bool = False
    timeout: float = 1800.0
    network: str = "internet"
    force_from: int | None = None  # steps from this index on run whatever the cache holds (E2B's per-step force)


@dataclass
class StepState:
    index: int
    line: int
    text: str
    state: str = "pending"  # pending | running | cached | done | failed
    seconds: float | None = None
    exit_code: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "line": self.line, "instruction": self.text, "state": self.state,
                "seconds": self.seconds, "exit_code": self.exit_code}


@dataclass(frozen=True)
class Built:
    refs: tuple[str, ...]  # layer references, topmost first ("layer:<hex>", then the base's)
    key: str  # the last step's cache key: a build FROM this template continues the chain from it
    config: TemplateConfig
    steps_run: int
    steps_cached: int


class BuildFailed(Exception):
    """A step failed; the message says which, with its exit code and the end of its output."""

    def __init__(self, message: str, step: StepState | None = None, output_tail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.step = step
        self.output_tail = output_tail


Emit = Callable[[dict[str, Any]], None]


@dataclass
class _Image:
    layers: list[Path]
    refs: list[str]
    key: str
    config: TemplateConfig
    args: dict[str, str] = field(default_factory=dict)
    pending_dirs: list[str] = field(default_factory=list)


class Builder:
    """Runs one build. ``emit`` receives log events (``{"type": "log"|"step", ...}``) as they happen."""

    def __init__(
        self, backend: Backend, layers: LayerStore, build_dir: Path, emit: Emit, options: BuildOptions,
    ) -> None:
        self.backend = backend
        self.layers = layers
        self.build_dir = build_dir
        self.emit = emit
        self.options = options
        self.deadline = time.monotonic() + options.timeout
        self.context: BuildContext | None = None
        self.current = 0
        self.current_state: StepState | None = None
        self.sandbox_env: dict[str, str] = {}

    async def build(
        self, dockerfile: Dockerfile, base: BaseImage, context: BuildContext | None, steps: list[StepState],
    ) -> Built:
        self.context = context
        image = _Image(list(base.layers), list(base.refs), base.key, base.config)
        ran = cached = 0
        for state, step in zip(steps, dockerfile.steps, strict=True):
            state.state = "running"
            self._step_event(state)
            started = time.monotonic()
            try:
                hit = await self._step(step, image, state)
            except BuildFailed as exc:
                state.state, state.seconds = "failed", round(time.monotonic() - started, 3)
                self._step_event(state)
                exc.step = exc.step or state
                raise
            state.seconds = round(time.monotonic() - started, 3)
            state.state = "cached" if hit else "done"
            ran += not hit and _touches_fs(step)
            cached += hit
            self._step_event(state)
        if image.pending_dirs:  # a WORKDIR after the last filesystem step still needs its directory
            tail = StepState(len(steps), 0, f"WORKDIR {image.pending_dirs[-1]} (create)")
            key = _derived_key(image.key, {"mkdir": image.pending_dirs})
            await self._layer(key, image, None, tail, self._mkdirs_only)
        start = dockerfile.start_command
        config = image.config
        if start is not None:
            config = replace(config, start_cmd=start)
        return Built(tuple(image.refs), image.key, config, ran, cached)

    # one step
    async def _step(self, step: Instruction, image: _Image, state: StepState) -> bool:
        cfg = image.config
        if isinstance(step, Arg):
            if step.value is not None:
                image.args[step.name] = step.value
        elif isinstance(step, Env):
            image.config = cfg.with_env(step.pairs)
        elif isinstance(step, Workdir):
            path = posixpath.normpath(posixpath.join(cfg.workdir or "/", step.path))
            image.config = replace(cfg, workdir=path)
            image.pending_dirs.append(path)
        elif isinstance(step, User):
            image.config = replace(cfg, user=step.user)
        elif isinstance(step, Label):
            image.config = replace(cfg, labels={**cfg.labels, **dict(step.pairs)})
        elif isinstance(step, Expose):
            image.config = replace(cfg, exposed_ports=tuple(dict.fromkeys((*cfg.exposed_ports, *step.ports))))
        elif isinstance(step, Cmd | Entrypoint):
            pass  # combined at the end (Dockerfile.start_command)
        elif isinstance(step, Run):
            key = cache_key(image.key, step, None, dict(step.build_args))
            return await self._layer(key, image, step, state, self._run)
        elif isinstance(step, Copy):
            if self.context is None and step.sources:
                raise BuildFailed(f"line {step.line}: {step.keyword} needs a build context (--context DIR)")
            copied = self._copied_hash(step)
            key = cache_key(image.key, step, copied, image.args)
            return await self._layer(key, image, step, state, self._copy)
        else:
            raise BuildFailed(f"line {step.line}: {step.keyword} is not supported")
        image.key = cache_key(image.key, step, None, image.args)
        return False

    async def _layer(
        self, key: str, image: _Image, step: Instruction | None, state: StepState,
        action: Callable[[AgentClient, Instruction | None, _Image, str], Awaitable[None]],
    ) -> bool:
        force_from = self.options.force_from
        forced = self.options.no_cache or (force_from is not None and state.index >= force_from)
        # A forced step makes a new layer under a key of its own and points its cache key at it: the
        # layer it replaces may be mounted by running sandboxes and named by other templates (keys
        # are shared), so it is never changed or removed here.
        rebuilt = _derived_key(key, {"rebuilt": secrets.token_hex(16)}) if forced else None
        if rebuilt is None:
            key = self.layers.current(key)
        hit = rebuilt is None and self.layers.has(key)
        if hit:
            self._log(state, "system", f"cached layer {key_hex(key)[:12]}")
        else:
            async def produce(dest: Path) -> None:
                await self._in_sandbox(image, step, state, dest, action)

            about = {"instruction": state.text, "line": state.line}
            await self.layers.make(rebuilt or key, produce, about)
            if rebuilt is not None:
                self.layers.point(key, rebuilt)
                key = rebuilt
        image.layers.insert(0, self.layers.fs(key))
        image.refs.insert(0, f"layer:{key_hex(key)}")
        image.key = key
        image.pending_dirs.clear()
        return hit

    async def _in_sandbox(
        self, image: _Image, step: Instruction | None, state: StepState, dest: Path,
        action: Callable[[AgentClient, Instruction | None, _Image, str], Awaitable[None]],
    ) -> None:
        sandbox_id = "".join(secrets.choice(_ID) for _ in range(20))
        spec = SandboxSpec(
            sandbox_id=sandbox_id, layers=tuple(image.layers), cpu=self.options.cpu,
            memory_mb=self.options.memory_mb, disk_mb=self.options.disk_mb, network=parse_policy(self.options.network),
            binds=((self.build_dir, BUILD_MOUNT),),
            # Dockerfile steps run coreutils (ls, stat, install...), whose statx flags this runsc
            # rejects: builds stay on bwrap whatever the default (docs/gvisor.md)
            isolation="bwrap",
        )
        self.sandbox_env = self.backend.default_env(spec)  # e.g. the host CA bundle for pip/npm/curl
        try:
            await self._bounded(self.backend.create(spec), state, "starting the step's sandbox")
        except RuntimeFailure as exc:
            raise BuildFailed(f"line {state.line}: the step's sandbox did not start: {exc}") from exc
        committed = False
        try:
            agent = self.backend.agent(sandbox_id)
            user = _user_name(image.config.user)
            for path in image.pending_dirs:
                await agent.mkdir(path, user=user)
            await self._bounded(action(agent, step, image, sandbox_id), state, "running")
            await self.backend.commit(sandbox_id, dest)
            committed = True
        except AgentError as exc:
            raise BuildFailed(f"line {state.line}: {state.text}: {exc.message}") from exc
        except RuntimeFailure as exc:
            raise BuildFailed(f"line {state.line}: {exc}") from exc
        finally:
            if not committed:
                await self.backend.destroy(sandbox_id)

    async def _bounded(self, work: Awaitable[Any], state: StepState, doing: str) -> Any:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise BuildFailed(f"build timed out after {self.options.timeout:.0f} s (at line {state.line})")
        try:
            return await asyncio.wait_for(work, remaining)
        except TimeoutError:
            raise BuildFailed(f"build timed out after {self.options.timeout:.0f} s while {doing} "
                              f"line {state.line}: {state.text}") from None

    # the filesystem steps
    async def _run(self, agent: AgentClient, step: Instruction | None, image: _Image, sandbox_id: str) -> None:
        assert isinstance(step, Run)
        env = {**self.sandbox_env, **dict(step.build_args), **dict(image.config.env)}  # ENV beats ARG
        script = step.script
        if script is None:
            argv = list(step.command)
        elif script.startswith("#!") and len(step.heredocs) == 1 and script is step.heredocs[0].text:
            path = f"/tmp/.corral-run-{secrets.token_hex(4)}"
            await agent.write(path, script.encode(), user="root", mode=0o755)
            argv = [path]
        else:
            argv = ["/bin/sh", "-c", script]
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        start = agent.exec_shell if step.sh_without_bash else agent.exec  # E2B steps: sh without bash
        stream = await start(argv, env=env, cwd=image.config.workdir, user=_user_name(image.config.user))
        code = -1
        async with stream:
            async for event in stream:
                if isinstance(event, Output):
                    text = event.data.decode(errors="replace")
                    for line in text.splitlines():
                        tail.append(line)
                    self.emit({"type": "log", "step": self.current, "stream": event.stream, "text": text,
                               "ts": time.time()})
                elif isinstance(event, Exit):
                    code = event.exit_code
        if self.current_state is not None:
            self.current_state.exit_code = code
        if code != 0:
            usage = await self._disk_note(sandbox_id)
            raise BuildFailed(
                f"RUN failed with exit code {code} (line {step.line}){usage}", None, "\n".join(tail),
            )

    async def _disk_note(self, sandbox_id: str) -> str:
        try:
            use = await self.backend.usage(sandbox_id)
        except (RuntimeFailure, OSError):
            return ""
        if use.disk_limit_bytes and use.disk_bytes >= 0.97 * use.disk_limit_bytes:
            return f"; the build's disk limit of {self.options.disk_mb} MB is full (raise it with --disk-mb)"
        if use.oom_kills:
            return f"; the step ran out of memory ({self.options.memory_mb} MB; raise it with --memory-mb)"
        return ""

    async def _copy(self, agent: AgentClient, step: Instruction | None, image: _Image, sandbox_id: str) -> None:
        assert isinstance(step, Copy)
        try:
            items = copy_items(step, self.context, image.config.workdir or "/")
        except ContextError as exc:
            raise BuildFailed(f"line {step.line}: {step.keyword} {exc}") from None
        await agent.copy_in(items, chown=step.chown, chmod=step.chmod)

    async def _mkdirs_only(self, agent: AgentClient, step: Instruction | None, image: _Image, sandbox_id: str) -> None:
        return None  # the pending WORKDIR dirs were made before the action

    # COPY helpers
    def _copied_hash(self, step: Copy) -> str:
        context = self.context
        digest = hashlib.sha256(b"corral-copy-v1\0")
        if step.sources:
            assert context is not None
            try:
                paths = context.resolve_sources(step.sources)
                digest.update(context.content_hash(paths).encode())
            except ContextError as exc:
                raise BuildFailed(f"line {step.line}: {step.keyword} {exc}") from None
        for doc in step.heredocs:
            digest.update(f"{doc.name}\0{doc.text}\0".encode())
        self._write_inline(step)
        return "sha256:" + digest.hexdigest()

    def _inline_dir(self, step: Copy) -> Path:
        return self.build_dir / "inline" / str(step.line)

    def _write_inline(self, step: Copy) -> None:
        if not step.heredocs:
            return
        folder = self._inline_dir(step)
        folder.mkdir(parents=True, exist_ok=True)
        for doc in step.heredocs:
            if "/" in doc.name or doc.name in ("", ".", ".."):
                raise BuildFailed(f"line {step.line}: heredoc name {doc.name!r} is not a file name")
            (folder / doc.name).write_text(doc.text)

    # events
    def _log(self, state: StepState, stream: str, text: str) -> None:
        self.emit({"type": "log", "step": state.index, "stream": stream, "text": text + "\n", "ts": time.time()})

    def _step_event(self, state: StepState) -> None:
        self.current = state.index
        self.current_state = state
        self.emit({"type": "step", "ts": time.time(), **state.to_json()})


def copy_items(step: Copy, context: BuildContext | None, workdir: str) -> list[dict[str, Any]]:
    """The flat list of what a COPY/ADD writes, for the agent's ``copy_in`` (Docker's rules: a source
    directory's contents go into the destination; a single file goes to the destination path, or into
    it when it ends in ``/`` or is an existing directory)."""
    dest = step.dest if posixpath.isabs(step.dest) else posixpath.join(workdir, step.dest)
    into_dir = step.dest.endswith("/") or len(step.sources) + len(step.heredocs) > 1
    dest = posixpath.normpath(dest)
    items: list[dict[str, Any]] = []
    if step.sources:
        assert context is not None
        root = context.root
        for source in context.resolve_sources(step.sources):
            rel = Path(source).relative_to(root).as_posix() if Path(source).is_absolute() else str(source)
            entries = context.entries([Path(source)])
            for entry in entries:
                top = entry.rel == rel
                where = posixpath.join(BUILD_MOUNT, "context", _real_rel(entry.path, root) if top else entry.rel)
                if top:
                    if entry.kind == "dir":
                        items.append({"src": where, "dst": dest, "kind": "dir", "mode": entry.mode})
                        continue
                    kind = "archive" if step.add and _is_archive(entry.path) else entry.kind
                    if kind == "archive":
                        items.append({"src": where, "dst": dest, "kind": kind, "mode": entry.mode})
                        continue
                    target = posixpath.join(dest, posixpath.basename(rel)) if into_dir else dest
                    items.append({"src": where, "dst": target, "kind": kind, "mode": entry.mode,
                                  "target": entry.target, "into_dir": not into_dir})
                    continue
                below = entry.rel[len(rel) + 1:] if rel != "." else entry.rel
                items.append({"src": where, "dst": posixpath.join(dest, below), "kind": entry.kind,
                              "mode": entry.mode, "target": entry.target})
    for doc in step.heredocs:
        where = posixpath.join(BUILD_MOUNT, "inline", str(step.line), doc.name)
        target = posixpath.join(dest, doc.name) if into_dir else dest
        items.append({"src": where, "dst": target, "kind": "file", "mode": 0o644, "into_dir": not into_dir})
    return items


def _real_rel(path: Path, root: Path) -> str:
    """A top-level source is followed if it is a symlink (to inside the context: checked before)."""
    return Path(path).resolve().relative_to(root.resolve()).as_posix()


def _is_archive(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _touches_fs(step: Instruction) -> bool:
    return isinstance(step, Run | Copy)


def _user_name(user: str | None) -> str:
    """USER may be ``name[:group]``; processes run as the user (its own groups)."""
    return (user or "root").partition(":")[0] or "root"


def _derived_key(parent: str, what: dict[str, Any]) -> str:
    doc = json.dumps({"format": "corral-layer-v1", "parent": parent, "extra": what}, sort_keys=True)
    return "sha256:" + hashlib.sha256(doc.encode()).hexdigest()
