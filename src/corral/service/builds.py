"""Template builds: accept a Dockerfile and context, run the build in the background, keep its log.

A build is a store record (state ``building`` → ``ready`` | ``failed``) plus a log of JSON events in
``<data>/builds/<id>/log.ndjson`` that callers can follow live. The template record is written only
when every step succeeded (one transaction), so a failed or interrupted build never shows a
half-built template; layers it finished stay in the cache. At start, builds a crash interrupted are
marked failed and their temp layers removed, and no build's working files are kept. One build per
template name at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from corral.agent.protocol import is_unicode
from corral.config import Settings
from corral.runtime.backend import ISOLATIONS, Backend
from corral.service.auth import Principal
from corral.service.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unavailable
from corral.service.ids import random_id
from corral.service.templates import BUILTIN, NAME, TemplateInfo, Templates
from corral.store.models import BuildRow, TemplateRow
from corral.store.repo import Store, now
from corral.templates import oci
from corral.templates.bases import DEFAULT_PATH, BaseRef
from corral.templates.builder import BaseImage, Builder, BuildFailed, BuildOptions, StepState
from corral.templates.context import BuildContext, ContextError
from corral.templates.dockerfile import parse
from corral.templates.instructions import Dockerfile, DockerfileError
from corral.templates.layers import LayerStore
from corral.templates.model import TemplateConfig
from corral.templates.upload_priv import UploadError, unpack_archives, unpack_context

log = logging.getLogger("corral.builds")
MAX_CONTEXT_BYTES = 2 << 30


@dataclass(frozen=True)
class BuildRequest:
    name: str
    dockerfile: str
    build_args: dict[str, str] = field(default_factory=dict)
    cpu: float | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    no_cache: bool = False
    timeout: float | None = None
    start_cmd: str | None = None
    ready_cmd: str | None = None
    ready_port: int | None = None
    public: bool = False
    isolation: str | None = None
    force_from: int | None = None  # rebuild this step (0-based, after FROM) and every later one


@dataclass(frozen=True)
class Plan:
    """A build given as instructions rather than a Dockerfile's text (the E2B SDK's ``Template``).
    ``dockerfile`` is used as it is (no re-parse: values are literal); the request's ``dockerfile``
    text is only its display, one line per instruction. ``archives`` are tars unpacked, in order, into
    one build context; ``build_id`` is the id announced before the build was started; ``extra`` goes
    into the build record's options."""

    dockerfile: Dockerfile
    archives: tuple[Path, ...] = ()
    build_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class BuildLog:
    """A build's events: appended to its file, followed by any number of readers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the build's life
        self._changed = asyncio.Condition()
        self.closed = False

    def emit(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        self._file.write(json.dumps(event, ensure_ascii=False) + "\n")
        self._file.flush()
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._file.close()
            asyncio.get_running_loop().create_task(self._notify())

    async def wait(self) -> None:
        async with self._changed:
            await self._changed.wait()


async def read_log(path: Path, live: BuildLog | None) -> AsyncIterator[dict[str, Any]]:
    """Every event of a build's log, then (while ``live`` is open) the new ones as they come."""
    offset = 0
    pending = b""
    while True:
        waiter = asyncio.ensure_future(live.wait()) if live is not None and not live.closed else None
        try:
            chunk = await asyncio.to_thread(read_from, path, offset)
            offset += len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)
            if waiter is None:
                if chunk:
                    continue
                return
            if not chunk:
                await waiter
        finally:
            if waiter is not None:
                waiter.cancel()


def read_from(path: Path, offset: int) -> bytes:
    """Up to 1 MiB of a build log from ``offset`` (nothing if it is not there)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(1 << 20)
    except FileNotFoundError:
        return b""


class BuildService:
    def __init__(
        self, settings: Settings, store: Store, backend: Backend, templates: Templates, layers: LayerStore,
    ) -> None:
        self.settings = settings
        self.store = store
        self.backend = backend
        self.templates = templates
        self.layers = layers
        self.dir = settings.data_dir / "builds"
        self._running: dict[str, str] = {}  # template name → build id
        self._logs: dict[str, BuildLog] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        interrupted = await asyncio.to_thread(self.store.fail_unfinished_builds,
                                              "the server stopped during the build")
        cleaned = await asyncio.to_thread(self.layers.clean)
        if interrupted or cleaned:
            log.warning("marked %d interrupted builds failed, removed %d partial layers", len(interrupted), cleaned)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        await asyncio.to_thread(self._remove_leftovers)
        self.templates.load(await asyncio.to_thread(self.store.templates))

    def _remove_leftovers(self) -> None:
        """What a crash left of builds: the dir of one whose context was being unpacked before its
        record was written, and the working files of any other (no build runs yet, every record is
        final by now: one that was interrupted, or one that crashed between its final record and
        the removal of its files)."""
        for folder in self.dir.iterdir():
            if not folder.is_dir():
                continue
            if self.store.build(folder.name) is None:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                shutil.rmtree(folder / "files", ignore_errors=True)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # submitting
    def validate(self, req: BuildRequest, principal: Principal,
                 plan: Plan | None = None) -> tuple[Dockerfile, BuildOptions]:
        if not NAME.match(req.name):
            raise InvalidRequest(f"name: {req.name!r} is not a valid template name (lowercase letters, digits, "
                                 "'.', '_', '-'; at most 63)")
        if req.name in BUILTIN or req.name in self.templates.directories():
            raise InvalidRequest(f"name: {req.name!r} is a built-in template and can't be rebuilt")
        texts = [req.name, req.dockerfile, req.start_cmd or "", req.ready_cmd or "",
                 *req.build_args, *req.build_args.values()]
        if not all(is_unicode(t) for t in texts):
            raise InvalidRequest("build: a field holds text that is not valid Unicode (a lone surrogate)")
        if plan is not None:
            dockerfile = plan.dockerfile
        elif not req.dockerfile.strip():
            raise InvalidRequest("dockerfile: the Dockerfile is empty (it needs at least FROM)")
        else:
            try:
                dockerfile = parse(req.dockerfile, req.build_args)
            except DockerfileError as exc:
                raise InvalidRequest(str(exc)) from None
        base = dockerfile.base.base
        if base.kind == "builtin" or base.kind == "template":
            if base.name == req.name:
                raise InvalidRequest(f"Dockerfile:{dockerfile.base.line}: a template can't be built FROM itself")
            self.templates.for_caller(base.name, principal)
        cores = os.cpu_count() or 1
        cpu = float(req.cpu if req.cpu is not None else cores)
        memory = req.memory_mb if req.memory_mb is not None else 2048
        disk = req.disk_mb if req.disk_mb is not None else 8192
        timeout = req.timeout if req.timeout is not None else 1800
        if not 0.1 <= cpu <= cores:
            raise InvalidRequest(f"cpu: must be between 0.1 and {cores} (this host's cores), got {cpu}")
        if not 128 <= memory <= 65536:
            raise InvalidRequest(f"memory_mb: must be between 128 and 65536, got {memory}")
        if not 64 <= disk <= 1_048_576:
            raise InvalidRequest(f"disk_mb: must be between 64 and 1048576, got {disk}")
        if not 1 <= timeout <= 6 * 3600:
            raise InvalidRequest(f"timeout: must be between 1 and 21600 seconds, got {timeout}")
        if req.isolation is not None and req.isolation not in ISOLATIONS:
            raise InvalidRequest(f"isolation: must be one of {', '.join(ISOLATIONS)}, got {req.isolation!r}")
        if req.ready_port is not None and not 1 <= req.ready_port <= 65535:
            raise InvalidRequest(f"ready_port: must be a TCP port (1..65535), got {req.ready_port}")
        for k, v in req.build_args.items():
            if not k or "=" in k or "\0" in k or "\0" in v:
                raise InvalidRequest(f"build_args: invalid build arg {k!r}")
        return dockerfile, BuildOptions(cpu=cpu, memory_mb=memory, disk_mb=disk, no_cache=req.no_cache,
                                        timeout=float(timeout), force_from=req.force_from)

    async def submit(self, principal: Principal, req: BuildRequest, context: BinaryIO | None,
                     plan: Plan | None = None) -> BuildRow:
        """Check the request, unpack the context and start the build; returns its record at once."""
        dockerfile, options = self.validate(req, principal, plan)
        existing = self.templates.get(req.name) if req.name in self.templates.names() else None
        if existing is not None and not principal.admin and existing.owner_key_id != principal.key_id:
            raise Conflict(f"the template name {req.name!r} is taken by another API key")
        if req.name in self._running:
            raise Conflict(f"template {req.name!r} is already being built (build {self._running[req.name]}); "
                           "wait for it to finish")
        build_id = plan.build_id if plan is not None and plan.build_id else random_id()
        self._running[req.name] = build_id
        folder = self.dir / build_id
        files = folder / "files"
        made = False
        try:
            await asyncio.to_thread(folder.mkdir, 0o700, True)  # not exist_ok: never another build's folder
            made = True
            await asyncio.to_thread(_make_files_dir, files, self.settings.subid_base)
            if context is not None:
                try:
                    await asyncio.to_thread(unpack_context, context, files / "context", self.settings.subid_base,
                                            MAX_CONTEXT_BYTES)
                except UploadError as exc:
                    raise InvalidRequest(f"context: {exc}") from None
            row = BuildRow(
                id=build_id, template=req.name, state="building", owner_key_id=principal.key_id, created_at=now(),
                steps=[], dockerfile=req.dockerfile,
                options={"build_args": req.build_args, "cpu": options.cpu, "memory_mb": options.memory_mb,
                         "disk_mb": options.disk_mb, "no_cache": options.no_cache, "timeout": options.timeout,
                         "start_cmd": req.start_cmd, "ready_cmd": req.ready_cmd, "ready_port": req.ready_port,
                         "public": req.public, "isolation": req.isolation, "force_from": req.force_from,
                         **(plan.extra if plan else {})},
            )
            await asyncio.to_thread(self.store.add_build, row)
        except BaseException:
            self._running.pop(req.name, None)
            if made:  # nothing of a refused build stays (its id may be tried again: an E2B build's is fixed)
                await asyncio.to_thread(shutil.rmtree, folder, True)
            raise
        blog = BuildLog(folder / "log.ndjson")
        self._logs[build_id] = blog
        for warning in dockerfile.warnings:
            blog.emit({"type": "log", "step": None, "stream": "system", "text": f"warning: {warning}\n",
                       "ts": now().timestamp()})
        task = asyncio.get_running_loop().create_task(
            self._run(row, req, dockerfile, options, principal, files, context is not None, plan))
        self._tasks[build_id] = task
        return row

    # reading
    async def get(self, principal: Principal, build_id: str) -> BuildRow:
        row = await asyncio.to_thread(self.store.build, build_id)
        if row is None or (not principal.admin and row.owner_key_id != principal.key_id):
            raise NotFound(f"build {build_id} not found")
        return row

    async def builds_of(self, principal: Principal, template: str, limit: int = 10) -> list[BuildRow]:
        rows = await asyncio.to_thread(self.store.builds, template, limit)
        return [r for r in rows if principal.admin or r.owner_key_id == principal.key_id]

    async def events(self, principal: Principal, build_id: str, follow: bool) -> AsyncIterator[dict[str, Any]]:
        await self.get(principal, build_id)
        live = self._logs.get(build_id) if follow else None
        return read_log(self.dir / build_id / "log.ndjson", live)

    def log_path(self, build_id: str) -> Path:
        return self.dir / build_id / "log.ndjson"

    def running(self, build_id: str) -> bool:
        """Whether the build's log may still grow (its record can say ``ready`` a moment earlier)."""
        return build_id in self._logs

    async def wait(self, build_id: str) -> None:
        task = self._tasks.get(build_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def delete_template(self, principal: Principal, name: str) -> None:
        info = self.templates.for_caller(name, principal)
        if info.builtin:
            raise Conflict(f"template {name!r} is built in and can't be deleted")
        if not principal.admin and info.owner_key_id != principal.key_id:
            raise Forbidden(f"template {name!r} belongs to another API key")
        if name in self._running:
            raise Conflict(f"template {name!r} is being built (build {self._running[name]}); wait for it")
        users = await asyncio.to_thread(self.store.live_sandboxes_of, name)
        if users:
            shown = ", ".join(users[:5]) + (" …" if len(users) > 5 else "")
            raise Conflict(f"template {name!r} is used by {len(users)} running sandbox(es) ({shown}); "
                           "kill them first")
        await asyncio.to_thread(self.store.delete_template, name)
        self.templates.forget(name)

    # the build itself
    async def _run(
        self, row: BuildRow, req: BuildRequest, dockerfile: Dockerfile, options: BuildOptions,
        principal: Principal, files: Path, has_context: bool, plan: Plan | None = None,
    ) -> None:
        blog = self._logs[row.id]
        steps: list[StepState] = []
        state, error, detail = "failed", None, None
        finished = None  # set once the record is final (a ready build's, with its template)
        try:
            base = await self._base(dockerfile.base.base, blog, principal)
            env = dict(base.config.env) or {"PATH": DEFAULT_PATH}
            if plan is None:
                dockerfile = parse(req.dockerfile, req.build_args, base_env=lambda _: env)
            elif plan.archives:  # here, not in the request: many big archives may take a while
                await asyncio.to_thread(unpack_archives, list(plan.archives), files / "context",
                                        self.settings.subid_base, MAX_CONTEXT_BYTES)
                has_context = True
            lines = req.dockerfile.split("\n")
            steps = [StepState(i, s.line, _text(lines, s.line)) for i, s in enumerate(dockerfile.steps)]
            await asyncio.to_thread(self.store.update_build, row.id, steps=[s.to_json() for s in steps])
            context = BuildContext.load(files / "context") if has_context else None
            builder = Builder(self.backend, self.layers, files, blog.emit, options)
            built = await builder.build(dockerfile, base, context, steps)
            config = _with_options(built.config, req, options)
            created = now()
            previous = self.templates.get(req.name) if req.name in self.templates.names() else None
            record = TemplateRow(
                name=req.name, base=dockerfile.base.image, refs=list(built.refs), key=built.key,
                config=config.to_json(), build_id=row.id, owner_key_id=principal.key_id, public=req.public,
                created_at=previous.created_at if previous and previous.created_at else created, updated_at=created,
            )
            done = now()
            await asyncio.to_thread(
                self.store.finish_build, row.id, record, state="ready", error=None, error_detail=None,
                finished_at=done, steps=[s.to_json() for s in steps],
            )
            finished, state = done, "ready"
            self.templates.put(TemplateInfo.from_row(record))
            blog.emit({"type": "log", "step": None, "stream": "system", "ts": now().timestamp(),
                       "text": f"template {req.name!r} is ready: {built.steps_run} steps run, "
                               f"{built.steps_cached} from the cache\n"})
        except BuildFailed as exc:
            error = exc.message
            detail = {"step": exc.step.index if exc.step else None, "line": exc.step.line if exc.step else None,
                      "exit_code": exc.step.exit_code if exc.step else None, "output_tail": exc.output_tail}
        except (DockerfileError, ContextError) as exc:
            error = str(exc)
        except UploadError as exc:
            error = f"files: {exc}"
        except (NotFound, InvalidRequest, Unavailable) as exc:
            error = exc.message
        except asyncio.CancelledError:
            error = "the build was cancelled (server shutting down)"
        except Exception as exc:
            log.exception("build %s failed unexpectedly", row.id)
            error = f"internal error: {exc}"
        finally:
            recorded = finished is not None
            ts = now()  # events stay in time order (a ready build's record was closed before its last log line)
            finished = finished or ts
            if error:
                blog.emit({"type": "log", "step": None, "stream": "system", "text": f"error: {error}\n",
                           "ts": ts.timestamp()})
            try:
                if not recorded:
                    await asyncio.to_thread(
                        self.store.update_build, row.id, state=state, error=error, error_detail=detail,
                        finished_at=finished, steps=[s.to_json() for s in steps],
                    )
                await asyncio.to_thread(shutil.rmtree, files, True)
            finally:
                # the record is final before the log says so: a follower may read it right after
                self._running.pop(req.name, None)
                blog.emit({"type": "status", "state": state, "error": error, "ts": ts.timestamp()})
                blog.close()
                self._logs.pop(row.id, None)
                self._tasks.pop(row.id, None)

    async def _base(self, ref: BaseRef, blog: BuildLog, principal: Principal) -> BaseImage:
        if ref.kind in ("builtin", "template"):
            info = self.templates.for_caller(ref.name, principal)
            layers = tuple(self.templates.path(r) for r in info.refs)
            return BaseImage(layers=layers, refs=info.refs, key=info.key, config=info.config)
        return await self._pull(ref.name, blog)

    async def _pull(self, reference: str, blog: BuildLog) -> BaseImage:
        images = self.settings.data_dir / "images"

        def progress(text: str) -> None:
            blog.emit({"type": "log", "step": None, "stream": "system", "text": text.rstrip("\n") + "\n",
                       "ts": now().timestamp()})

        try:
            pulled = await oci.pull(reference, images, id_offset=self.settings.subid_base, on_progress=progress,
                                    ca_bundle=self.settings.ca_bundle, insecure=self.settings.insecure_registries)
        except oci.PullError as exc:
            raise InvalidRequest(f"FROM {reference}: {exc}") from None
        c = pulled.config
        config = TemplateConfig(env=tuple(c.env), workdir=c.workdir, user=c.user or "root",
                                start_cmd=(tuple(c.entrypoint or ()) + tuple(c.cmd or ())) or None,
                                labels=dict(c.labels), exposed_ports=tuple(c.exposed_ports))
        refs = tuple(f"oci:{p.parent.name}" for p in pulled.layers)
        return BaseImage(layers=tuple(pulled.layers), refs=refs, key=f"oci:{pulled.manifest_digest}", config=config)


def _make_files_dir(files: Path, owner: int) -> None:
    files.mkdir(mode=0o755)
    os.chown(files, owner, owner)


def _text(lines: list[str], line: int) -> str:
    text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
    return text if len(text) <= 200 else text[:197] + "..."


def _with_options(config: TemplateConfig, req: BuildRequest, options: BuildOptions) -> TemplateConfig:
    if req.start_cmd:
        config = replace(config, start_cmd=("/bin/sh", "-c", req.start_cmd))
    if req.ready_cmd is not None:
        config = replace(config, ready_cmd=req.ready_cmd or None)
    if req.ready_port is not None:
        config = replace(config, ready_port=req.ready_port)
    if req.isolation is not None:
        config = replace(config, isolation=req.isolation)
    if req.cpu is not None:
        config = replace(config, cpu=options.cpu)
    if req.memory_mb is not None:
        config = replace(config, memory_mb=options.memory_mb)
    return config

