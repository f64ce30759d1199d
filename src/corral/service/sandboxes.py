"""Sandboxes: create, look up, list, time out, pause/resume, kill, metrics; reconcile on start.

One ``SandboxService`` per server process, used from its event loop (not thread-safe). The store is
the record; the backend holds the live sandboxes. Every running record has a timer that kills it at
its deadline; a paused sandbox (frozen in place) has none: it never expires while paused, and
resuming it sets a new deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from corral.agent.client import AgentClient
from corral.agent.protocol import is_unicode
from corral.config import Settings
from corral.runtime.backend import ISOLATIONS, Backend, RuntimeFailure, SandboxSpec, SandboxUsage
from corral.runtime.netpolicy import INTERNET, NONE, NetworkPolicy
from corral.service import startup
from corral.service.auth import Principal
from corral.service.contexts import Contexts
from corral.service.errors import Conflict, InvalidRequest, NotFound, ServiceError, TooMany, Unavailable, Unreachable
from corral.service.ids import random_id
from corral.service.pool import PoolKey, WarmPool
from corral.service.templates import Templates
from corral.store.models import SandboxRow
from corral.store.repo import LIVE_STATES, Store, iso, now, utc
from corral.templates.model import TemplateConfig

log = logging.getLogger("corral.sandboxes")
_T = TypeVar("_T")
# Pooled sandboxes of templates with the built-in code interpreter's layers get this language's
# default context started while they wait (``_warm_context``).
INTERPRETER_REF = "builtin:code-interpreter"
WARM_LANGUAGE = "python"


@dataclass(frozen=True)
class CreateRequest:
    template: str = "base"
    timeout: int | None = None
    envs: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    cpu: float | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    isolation: str | None = None  # bwrap or gvisor; None = the template's, else the server's default
    network: NetworkPolicy | None = None  # None: the default (internet); see service/network.py


class SandboxService:
    def __init__(self, settings: Settings, store: Store, backend: Backend, templates: Templates) -> None:
        self.settings = settings
        self.store = store
        self.backend = backend
        self.templates = templates
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._envs: dict[str, dict[str, str]] = {}
        self._defaults: dict[str, tuple[str | None, str | None]] = {}  # the template's user and workdir
        self._tokens: dict[str, str] = {}  # per-sandbox access token for its data plane (ports)
        self._ooms_seen: dict[str, int] = {}  # OOM kills already reported per sandbox
        self._owners: dict[str, str] = {}  # live sandbox → owner key id (no store read on the exec path)
        self._templates: dict[str, str] = {}  # live sandbox → its template (no store read on the exec path)
        self._creating = 0
        self._paused: set[str] = set()  # frozen in place, no timer
        self._changing: set[str] = set()  # being paused or resumed right now
        self.contexts = Contexts()
        self._tasks: set[asyncio.Task[None]] = set()
        # Sandboxes being ended (record, then teardown): a second end, or a DELETE of one already
        # marked ended, waits for the same teardown instead of answering while it still runs.
        self._ending: dict[str, asyncio.Task[None]] = {}
        self._pooled: set[str] = set()  # served from the warm pool (reported by create)
        self._pool_starting: dict[str, str | None] = {}  # getting ready for the pool -> why it died, if it did
        self.pool: WarmPool | None = None
        if settings.pool is not None:
            self.pool = WarmPool(self._start_pooled, self._destroy_pooled, self._room, max_size=settings.pool_max)

    # lifecycle of the service
    async def start(self) -> list[str]:
        """Close records of sandboxes a previous run left and remove their runtime leftovers."""
        stale = await asyncio.to_thread(self.store.sandboxes, True)
        for row in stale:
            await asyncio.to_thread(
                self.store.end_sandbox, row.id, "failed", "server restarted while the sandbox was running"
            )
        cleaned = await self.backend.reconcile(keep=set())
        if stale or cleaned:
            log.warning("reconciled %d stale records, cleaned %d runtime leftovers", len(stale), len(cleaned))
        if self.pool is not None and self.settings.pool is not None:
            for name, size in self.settings.pool.items():
                try:
                    self.pool.want(self._pool_key(name), size)
                except (NotFound, InvalidRequest) as exc:
                    log.warning("pool: %s", exc.message)
            self.pool.start()
        return cleaned

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        for sandbox_id in [*self._timers, *self._paused]:
            await self._end(sandbox_id, "ended", "server shut down")
        await self.backend.close()

    # the API
    def validate(self, req: CreateRequest, principal: Principal) -> SandboxSpec:
        s = self.settings
        timeout = s.default_timeout if req.timeout is None else req.timeout
        if not 1 <= timeout <= s.max_timeout:
            raise InvalidRequest(f"timeout: must be between 1 and {s.max_timeout} seconds, got {timeout}")
        template = self.templates.for_caller(req.template, principal)
        cpu = (template.config.cpu or s.default_cpu) if req.cpu is None else req.cpu
        cores = os.cpu_count() or 1
        if not 0.1 <= cpu <= cores:
            raise InvalidRequest(f"cpu: must be between 0.1 and {cores} (this host's cores), got {cpu}")
        memory = (template.config.memory_mb or s.default_memory_mb) if req.memory_mb is None else req.memory_mb
        if not 64 <= memory <= 65536:
            raise InvalidRequest(f"memory_mb: must be between 64 and 65536, got {memory}")
        disk = s.default_disk_mb if req.disk_mb is None else req.disk_mb
        if not 64 <= disk <= 1_048_576:
            raise InvalidRequest(f"disk_mb: must be between 64 and 1048576, got {disk}")
        for name, mapping in (("envs", req.envs), ("metadata", req.metadata)):
            for k in mapping:
                if not k or "=" in k or "\0" in k or "\0" in str(mapping[k]) or not is_unicode(k + str(mapping[k])):
                    raise InvalidRequest(f"{name}: invalid key {k!r}")
        isolation = req.isolation or template.config.isolation or ""  # "": the server's default
        if isolation and isolation not in ISOLATIONS:
            raise InvalidRequest(f"isolation: must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
        network = self._network(req.network)
        return SandboxSpec(
            sandbox_id=random_id(), layers=tuple(self.templates.path(r) for r in template.refs), cpu=cpu,
            memory_mb=memory, disk_mb=disk, network=network, isolation=isolation,
        )

    async def create(self, principal: Principal, req: CreateRequest) -> SandboxRow:
        spec = self.validate(req, principal)
        if self.live_count() + self._creating >= self.settings.max_sandboxes:
            raise TooMany(f"this server runs at most {self.settings.max_sandboxes} sandboxes")
        timeout = self.settings.default_timeout if req.timeout is None else req.timeout
        pooled = self._from_pool(req, spec)
        if pooled is not None:
            return await self._claim_pooled(principal, req, replace(spec, sandbox_id=pooled), timeout)
        # written by its first update (running) or its end (failed, killed)
        self.store.hold_sandbox(_new_row(principal, req, spec, "starting", timeout))
        self._creating += 1
        try:
            await self.backend.create(spec)
        except RuntimeFailure as exc:
            await asyncio.to_thread(self.store.end_sandbox, spec.sandbox_id, "failed", str(exc))
            raise Unavailable(str(exc)) from exc
        except BaseException:
            await asyncio.to_thread(self.store.end_sandbox, spec.sandbox_id, "failed", "creation cancelled")
            raise
        finally:
            self._creating -= 1
        config = self._register(principal, req, spec)
        if config.start_cmd or config.ready_cmd or config.ready_port:
            try:
                await startup.start_and_wait(
                    self.backend.agent(spec.sandbox_id), spec.sandbox_id, req.template, config,
                    self._envs[spec.sandbox_id],
                )
            except BaseException as exc:
                reason = exc.message if isinstance(exc, Unavailable) else "creation cancelled"
                await self._end(spec.sandbox_id, "failed", reason)
                raise
        expires = now() + timedelta(seconds=timeout)
        self._schedule(spec.sandbox_id, expires)
        updated = await self._answer_write(self.store.update_sandbox, spec.sandbox_id, state="running",
                                           expires_at=expires)
        return self._still_live(updated, spec.sandbox_id, "starting")

    async def get(self, principal: Principal, sandbox_id: str, live: bool = True) -> SandboxRow:
        row = self.store.live_sandbox(sandbox_id) or await asyncio.to_thread(self.store.sandbox, sandbox_id)
        if row is None or (not principal.admin and row.owner_key_id != principal.key_id):
            raise NotFound(f"sandbox {sandbox_id} not found")
        if live and row.state not in LIVE_STATES:
            ended = utc(row.ended_at)
            when = ended.isoformat(timespec="seconds") if ended else "earlier"
            raise NotFound(f"sandbox {sandbox_id} is no longer running: {row.state} at {when} ({row.end_reason})")
        return row

    async def list(
        self, principal: Principal, live_only: bool = True, metadata: dict[str, str] | None = None
    ) -> list[SandboxRow]:
        owner = None if principal.admin else principal.key_id
        if live_only:  # from memory
            rows = self.store.sandboxes(True, owner)
        else:
            rows = await asyncio.to_thread(self.store.sandboxes, False, owner)
        if metadata:
            rows = [r for r in rows if all(r.meta.get(k) == v for k, v in metadata.items())]
        return rows

    async def kill(self, principal: Principal, sandbox_id: str) -> None:
        row = await self.get(principal, sandbox_id, live=False)
        if row.state in LIVE_STATES or sandbox_id in self._ending:
            await self._end(sandbox_id, "ended", "killed by request")

    async def set_timeout(self, principal: Principal, sandbox_id: str, timeout: int) -> SandboxRow:
        if not 1 <= timeout <= self.settings.max_timeout:
            raise InvalidRequest(f"timeout: must be between 1 and {self.settings.max_timeout} seconds")
        await self.get(principal, sandbox_id)
        if sandbox_id in self._paused:
            raise Conflict(f"sandbox {sandbox_id} is paused and does not time out; resume it (connect) with a timeout")
        expires = now() + timedelta(seconds=timeout)
        self._schedule(sandbox_id, expires)
        row = await asyncio.to_thread(self.store.update_sandbox, sandbox_id, expires_at=expires)
        return self._still_live(row, sandbox_id, "its timeout was set")

    async def pause(self, principal: Principal, sandbox_id: str) -> SandboxRow:
        """Freeze every process of the sandbox and stop its timer. Conflict if already paused."""
        row = await self.get(principal, sandbox_id)
        self._claim(sandbox_id, row)
        if sandbox_id in self._paused:
            self._changing.discard(sandbox_id)
            raise Conflict(f"sandbox {sandbox_id} is already paused")
        try:
            await self.backend.freeze(sandbox_id)
        except RuntimeFailure as exc:
            if sandbox_id not in self._timers:
                raise NotFound(f"sandbox {sandbox_id} ended while being paused") from exc
            raise Unavailable(str(exc)) from exc
        finally:
            self._changing.discard(sandbox_id)
        timer = self._timers.pop(sandbox_id, None)
        if timer is None:  # it ended (timeout, kill, crash) while being frozen
            raise NotFound(f"sandbox {sandbox_id} ended while being paused")
        timer.cancel()
        self._paused.add(sandbox_id)
        paused = await asyncio.to_thread(self.store.update_sandbox, sandbox_id, state="paused")
        return self._still_live(paused, sandbox_id, "being paused")

    async def resume(
        self, principal: Principal, sandbox_id: str, timeout: int | None = None
    ) -> tuple[SandboxRow, bool]:
        """Thaw a paused sandbox with a new deadline (now + timeout), or, if it runs, move its deadline
        to now + timeout when that is later. Returns the record and whether it was paused."""
        timeout = self.settings.default_timeout if timeout is None else timeout
        if not 1 <= timeout <= self.settings.max_timeout:
            raise InvalidRequest(f"timeout: must be between 1 and {self.settings.max_timeout} seconds")
        row = await self.get(principal, sandbox_id)
        expires = now() + timedelta(seconds=timeout)
        if sandbox_id not in self._paused:
            current = utc(row.expires_at)
            if sandbox_id not in self._timers or (current is not None and current >= expires):
                return row, False
            self._schedule(sandbox_id, expires)
            longer = await asyncio.to_thread(self.store.update_sandbox, sandbox_id, expires_at=expires)
            return self._still_live(longer, sandbox_id, "its timeout was extended"), False
        self._claim(sandbox_id, row)
        try:
            await self.backend.thaw(sandbox_id)
        except RuntimeFailure as exc:
            if sandbox_id not in self._paused:
                raise NotFound(f"sandbox {sandbox_id} ended while being resumed") from exc
            raise Unavailable(str(exc)) from exc
        finally:
            self._changing.discard(sandbox_id)
        if sandbox_id not in self._paused:  # killed while being thawed
            raise NotFound(f"sandbox {sandbox_id} ended while being resumed")
        self._paused.discard(sandbox_id)
        self._schedule(sandbox_id, expires)
        resumed = await asyncio.to_thread(
            self.store.update_sandbox, sandbox_id, state="running", expires_at=expires
        )
        return self._still_live(resumed, sandbox_id, "being resumed"), True

    def is_paused(self, sandbox_id: str) -> bool:
        return sandbox_id in self._paused

    def _claim(self, sandbox_id: str, row: SandboxRow) -> None:
        if row.state == "starting" or sandbox_id in self._changing:
            raise Conflict(f"sandbox {sandbox_id} is changing state ({row.state}); try again")
        self._changing.add(sandbox_id)

    async def metrics(self, principal: Principal, sandbox_id: str) -> SandboxUsage:
        await self.get(principal, sandbox_id)
        try:
            return await self.backend.usage(sandbox_id)
        except (RuntimeFailure, OSError) as exc:
            raise Unavailable(f"sandbox {sandbox_id}: metrics unavailable: {exc}") from exc

    async def agent(self, principal: Principal, sandbox_id: str) -> AgentClient:
        owner = self._owners.get(sandbox_id)
        if owner is None or not (principal.admin or owner == principal.key_id):
            await self.get(principal, sandbox_id)  # the store says why not (unknown, ended, not yours)
        if sandbox_id in self._paused:
            raise Conflict(f"sandbox {sandbox_id} is paused; resume it (connect) first")
        return self.backend.agent(sandbox_id)

    async def update_network(self, principal: Principal, sandbox_id: str, policy: NetworkPolicy) -> dict[str, Any]:
        """Replace a running sandbox's egress policy (Conflict for a sandbox made with network 'none')."""
        await self.get(principal, sandbox_id)
        if not self.settings.network:
            raise Conflict("networking is disabled on this server (CORRAL_NETWORK=off): sandboxes have loopback only")
        if not policy.networked:
            raise InvalidRequest("network: a running sandbox cannot be switched to 'none'; use an empty allow_out")
        try:
            await self.backend.update_network(
                sandbox_id, replace(policy, max_connections=self.settings.net_max_connections)
            )
        except RuntimeFailure as exc:
            raise Conflict(str(exc)) from exc
        return self.backend.network_info(sandbox_id)

    async def network_info(self, principal: Principal, sandbox_id: str) -> dict[str, Any]:
        await self.get(principal, sandbox_id)
        try:
            return self.backend.network_info(sandbox_id)
        except RuntimeFailure as exc:
            raise NotFound(str(exc)) from exc

    async def connect_port(self, sandbox_id: str, port: int) -> socket.socket:
        """A connection to ``port`` inside the sandbox (caller already authorised); 502 if nothing listens."""
        if not 1 <= port <= 65535:
            raise InvalidRequest(f"port: must be between 1 and 65535, got {port}")
        if sandbox_id in self._paused:
            raise Unreachable(f"sandbox {sandbox_id} is paused; connect to resume it")
        try:
            return await self.backend.connect_port(sandbox_id, port)
        except RuntimeFailure as exc:
            raise NotFound(str(exc)) from exc
        except OSError as exc:
            raise Unreachable(f"sandbox {sandbox_id}: nothing answers on port {port} ({exc.strerror})") from exc

    def oom_check(self, sandbox_id: str) -> Callable[[], Awaitable[bool]]:
        """For a process that died of SIGKILL: did the kernel's OOM killer do it? True when the
        sandbox's OOM-kill counter rose since the last check (a fresh sandbox's cgroup starts at 0;
        each OOM kill is counted once, so no read is needed while commands run normally)."""

        async def killed_by_oom() -> bool:
            try:
                count = await self.backend.oom_kills(sandbox_id)
            except (RuntimeFailure, OSError):
                return False
            seen = self._ooms_seen.get(sandbox_id, 0)
            if count <= seen:
                return False
            self._ooms_seen[sandbox_id] = seen + 1
            return True

        return killed_by_oom

    def access_token(self, sandbox_id: str) -> str | None:
        """The token that opens this sandbox's ports (envd, interpreter); useless for any other."""
        return self._tokens.get(sandbox_id)

    def check_access_token(self, sandbox_id: str, token: str | None) -> bool:
        expected = self._tokens.get(sandbox_id)
        if not token or expected is None:
            return False
        # as bytes: compare_digest refuses str with non-ASCII characters (a header is any latin-1 text)
        return secrets.compare_digest(expected.encode(), token.encode())

    def envs(self, sandbox_id: str) -> dict[str, str]:
        return dict(self._envs.get(sandbox_id, {}))

    def template_of(self, sandbox_id: str) -> str | None:
        """The template of a live sandbox this server created (None: not known here, ask the store)."""
        return self._templates.get(sandbox_id)

    def default_user(self, sandbox_id: str) -> str:
        """Who commands run as when the caller names nobody: the template's USER, else ``user``."""
        user = self._defaults.get(sandbox_id, (None, None))[0]
        return (user or "user").partition(":")[0] or "user"

    def default_cwd(self, sandbox_id: str) -> str | None:
        """Where commands start when the caller names no cwd: the template's WORKDIR (else the home)."""
        return self._defaults.get(sandbox_id, (None, None))[1]

    async def on_runtime_exit(self, sandbox_id: str, reason: str) -> None:
        """The backend saw a sandbox die on its own (agent crash, runtime failure)."""
        if sandbox_id in self._pool_starting:  # not pooled yet: ``_start_pooled`` gives it up
            self._pool_starting[sandbox_id] = reason
            return
        if self.pool is not None and self.pool.forget(sandbox_id):
            log.warning("pooled sandbox %s died while idle: %s", sandbox_id, reason)
            await self._destroy_pooled(sandbox_id)
            return
        log.warning("sandbox %s died: %s", sandbox_id, reason)
        await self._end(sandbox_id, "failed", reason)

    # internals
    def _still_live(self, row: SandboxRow | None, sandbox_id: str, during: str) -> SandboxRow:
        """The updated record, or NotFound when the sandbox ended (kill, timeout, crash) meanwhile:
        the store updates live records only, so an end is never undone by a late update."""
        if row is not None:
            return row
        timer = self._timers.pop(sandbox_id, None)
        if timer is not None:
            timer.cancel()
        raise NotFound(f"sandbox {sandbox_id} ended while {during}")

    def _schedule(self, sandbox_id: str, expires: datetime) -> None:
        old = self._timers.pop(sandbox_id, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, (expires - now()).total_seconds())
        loop = asyncio.get_running_loop()
        self._timers[sandbox_id] = loop.call_later(delay, self._expire, sandbox_id)

    def _expire(self, sandbox_id: str) -> None:
        self._background(self._end(sandbox_id, "ended", "timeout reached"))

    async def _answer_write(self, write: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """A store write a create's answer waits for. On the event loop when the store is a local
        SQLite file: awaited in a thread, it would be picked up only once the loop has served every
        other request ready then, so each of 50 creates at once waited for all 50 (docs/performance.md,
        "A create's record on the event loop")."""
        if self.store.inline_writes:
            return write(*args, **kwargs)
        return await asyncio.to_thread(write, *args, **kwargs)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _end(self, sandbox_id: str, state: str, reason: str) -> None:
        """Mark the sandbox ended and tear it down; returns once it is gone (a sandbox already
        ending is waited for, keeping the first state and reason)."""
        task = self._ending.get(sandbox_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._end_now(sandbox_id, state, reason))
            self._ending[sandbox_id] = task
            task.add_done_callback(lambda _: self._ending.pop(sandbox_id, None))
        await asyncio.shield(task)

    async def _end_now(self, sandbox_id: str, state: str, reason: str) -> None:
        timer = self._timers.pop(sandbox_id, None)
        if timer is not None:
            timer.cancel()
        self._paused.discard(sandbox_id)
        self._envs.pop(sandbox_id, None)
        self._defaults.pop(sandbox_id, None)
        self._tokens.pop(sandbox_id, None)
        self._ooms_seen.pop(sandbox_id, None)
        self._owners.pop(sandbox_id, None)
        self._templates.pop(sandbox_id, None)
        self.contexts.forget(sandbox_id)
        await asyncio.to_thread(self.store.end_sandbox, sandbox_id, state, reason)
        try:
            await self.backend.destroy(sandbox_id)
        except Exception:
            log.exception("destroying sandbox %s failed; the next start's reconcile will retry", sandbox_id)

    def live_count(self) -> int:
        return len(self._timers) + len(self._paused)

    def was_pooled(self, sandbox_id: str) -> bool:
        return sandbox_id in self._pooled

    # the warm pool
    def _pool_key(self, template: str) -> PoolKey:
        """The key of a create that asks for nothing but ``template`` (its default resources)."""
        info = self.templates.get(template)
        s = self.settings
        return PoolKey(template=template, template_key=info.key, cpu=info.config.cpu or s.default_cpu,
                       memory_mb=info.config.memory_mb or s.default_memory_mb, disk_mb=s.default_disk_mb)

    def _from_pool(self, req: CreateRequest, spec: SandboxSpec) -> str | None:
        if self.pool is None or req.cpu is not None or req.memory_mb is not None or req.disk_mb is not None:
            return None
        if req.network is not None and not req.network.plain_internet:
            return None
        pooled = self.templates.config(req.template).isolation or self.settings.backend
        if (spec.isolation or self.settings.backend) != pooled:
            return None
        key = self._pool_key(req.template)
        if (key.cpu, key.memory_mb, key.disk_mb) != (spec.cpu, spec.memory_mb, spec.disk_mb):
            return None
        return self.pool.take(key)

    def _network(self, requested: NetworkPolicy | None) -> NetworkPolicy:
        """The network a sandbox gets: the request's (default internet), on either backend; loopback
        only, whatever was asked, on a server without networking (``CORRAL_NETWORK=off``)."""
        if not self.settings.network:
            return NONE
        return replace(requested or INTERNET, max_connections=self.settings.net_max_connections)

    def _room(self) -> int:
        pool = self.pool.size() if self.pool is not None else 0
        return self.settings.max_sandboxes - self.live_count() - self._creating - pool

    async def _start_pooled(self, key: PoolKey) -> str:
        """Start one sandbox for the pool: what a create of ``key.template`` with defaults would start."""
        info = self.templates.get(key.template)
        network = self._network(None)
        spec = SandboxSpec(  # the isolation a create with defaults gets: the template's, else the server's
            sandbox_id=random_id(), layers=tuple(self.templates.path(r) for r in info.refs), cpu=key.cpu,
            memory_mb=key.memory_mb, disk_mb=key.disk_mb, network=network, isolation=info.config.isolation or "",
        )
        await self.backend.create(spec)
        config = info.config
        env = {**self.backend.default_env(spec), **dict(config.env)}
        self._pool_starting[spec.sandbox_id] = None
        try:
            if config.start_cmd or config.ready_cmd or config.ready_port:
                await startup.start_and_wait(self.backend.agent(spec.sandbox_id), spec.sandbox_id, key.template,
                                             config, env)
            if INTERPRETER_REF in info.refs:
                await self._warm_context(spec.sandbox_id, env)
            died = self._pool_starting[spec.sandbox_id]
            if died is not None:
                raise RuntimeFailure(f"pooled sandbox {spec.sandbox_id} died while getting ready: {died}")
        except BaseException:
            await self._destroy_pooled(spec.sandbox_id)
            raise
        finally:
            self._pool_starting.pop(spec.sandbox_id, None)
        return spec.sandbox_id

    async def _warm_context(self, sandbox_id: str, envs: dict[str, str]) -> None:
        """Start the default python context of a pooled code-interpreter sandbox before anyone asks
        (E2B's have theirs from boot): its first cell then runs at once instead of after ~2 s of
        kernel start. ``envs``: those of a create with defaults; a claim adds its own to the running
        kernel, or drops it if they are read at start (``Contexts.adopt_default``). A kernel that
        cannot start leaves the sandbox as a cold one is."""
        try:
            await self.contexts.default(self.backend.agent(sandbox_id), sandbox_id, WARM_LANGUAGE, envs)
        except (ServiceError, RuntimeFailure) as exc:  # the first cell will start it, or say why not
            log.warning("pool: sandbox %s: its %s context did not start ahead: %s", sandbox_id, WARM_LANGUAGE, exc)

    async def _destroy_pooled(self, sandbox_id: str) -> None:
        """Destroy a sandbox that was never handed out (drained, died idle, or failed to get ready)."""
        self.contexts.forget(sandbox_id)
        await self.backend.destroy(sandbox_id)

    def _register(self, principal: Principal, req: CreateRequest, spec: SandboxSpec) -> TemplateConfig:
        """Keep what calls to a new sandbox need without a store read: its environment, default user
        and workdir, access token, owner and template. Returns the template's config."""
        config = self.templates.config(req.template)
        self._envs[spec.sandbox_id] = {**self.backend.default_env(spec), **dict(config.env), **req.envs}
        self._defaults[spec.sandbox_id] = (config.user, config.workdir)
        self._tokens[spec.sandbox_id] = secrets.token_urlsafe(24)
        self._owners[spec.sandbox_id] = principal.key_id
        self._templates[spec.sandbox_id] = req.template
        return config

    async def _claim_pooled(self, principal: Principal, req: CreateRequest, spec: SandboxSpec,
                            timeout: int) -> SandboxRow:
        """Give a pooled sandbox its owner, record, environment, token and deadline."""
        row = _new_row(principal, req, spec, "running", timeout)
        self.store.hold_sandbox(row)
        try:
            await self._answer_write(self.store.write_held, spec.sandbox_id)
        except BaseException:
            await asyncio.to_thread(self.store.end_sandbox, spec.sandbox_id, "failed", "creation failed")
            await self._destroy_pooled(spec.sandbox_id)
            raise
        self._register(principal, req, spec)
        self._pooled.add(spec.sandbox_id)
        agent = self.backend.agent(spec.sandbox_id)
        stale = await self.contexts.adopt_default(agent, spec.sandbox_id, WARM_LANGUAGE, self._envs[spec.sandbox_id])
        if stale is not None:  # its kernel cannot take the caller's envs: the first cell starts a new one
            self._background(self.contexts.stop(agent, stale))
        self._schedule(spec.sandbox_id, row.expires_at)
        return row


def _new_row(principal: Principal, req: CreateRequest, spec: SandboxSpec, state: str, timeout: int) -> SandboxRow:
    """The record of a sandbox created now for ``principal``, its deadline ``timeout`` seconds away."""
    created = now()
    return SandboxRow(
        id=spec.sandbox_id, template=req.template, state=state, owner_key_id=principal.key_id, node="local",
        created_at=created, expires_at=created + timedelta(seconds=timeout), meta=dict(req.metadata), cpu=spec.cpu,
        memory_mb=spec.memory_mb, disk_mb=spec.disk_mb,
    )


def describe(row: SandboxRow) -> dict[str, Any]:
    """The ``Sandbox`` JSON object of the API."""
    return {
        "id": row.id, "template": row.template, "state": row.state, "created_at": iso(row.created_at),
        "expires_at": iso(row.expires_at), "ended_at": iso(row.ended_at), "end_reason": row.end_reason,
        "metadata": row.meta or {}, "cpu": row.cpu, "memory_mb": row.memory_mb, "disk_mb": row.disk_mb,
    }
