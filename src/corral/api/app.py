"""The ASGI app: one port for the native API; its lifespan builds and tears down the services."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from corral.api import (
    NO_TELEMETRY,
    errors,
    routes_code,
    routes_commands,
    routes_files,
    routes_keys,
    routes_sandboxes,
    routes_templates,
)
from corral.api.deps import Services
from corral.api.e2b import control
from corral.api.e2b import templates as e2b_templates
from corral.api.e2b.envd import create_envd_app
from corral.api.e2b.interpreter import create_interpreter_app
from corral.api.fastpath import FastPath
from corral.api.ports import create_ports_app
from corral.api.routing import ENVD_PORT, INTERPRETER_PORT, SandboxRouter
from corral.config import VERSION, Settings
from corral.runtime.backend import RuntimeFailure
from corral.runtime.backends import node_backends
from corral.runtime.cgroups_priv import detect
from corral.runtime.host import check_host
from corral.runtime.network import start_network
from corral.runtime.plan import AgentRuntime
from corral.service.auth import Auth
from corral.service.builds import BuildService
from corral.service.e2b_templates import E2BTemplates
from corral.service.errors import Unavailable
from corral.service.sandboxes import SandboxService
from corral.service.templates import BASE, Templates
from corral.store.repo import Store
from corral.templates.layers import LayerStore

log = logging.getLogger("corral")


async def build_services(settings: Settings) -> Services:
    """Check the host, open the store, make sure the admin key exists, reconcile leftovers."""
    check_host()
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # keys, database: root only
    store = await asyncio.to_thread(Store, settings.db_url)
    auth = Auth(store)
    key_file = settings.data_dir / "api-key"
    _, created = await asyncio.to_thread(auth.ensure_admin_key, settings.api_key, key_file)
    if created:
        log.warning("generated an admin API key, stored in %s (mode 0600)", key_file)
    elif not settings.api_key:
        log.info("admin API key: %s", key_file)
    layers = LayerStore(settings.data_dir / "layers")
    templates = Templates(settings.templates_dir, layers, settings.data_dir / "images")
    base = templates.rootfs(BASE)
    if BASE not in templates.names():
        raise Unavailable(f"the base template is not built ({base}); run `make serve` or `corral template init`")
    service: SandboxService | None = None

    async def on_exit(sandbox_id: str, reason: str) -> None:
        if service is not None:
            await service.on_runtime_exit(sandbox_id, reason)

    cgroups = detect(instance=settings.instance)
    if settings.cgroup_favordynmods:
        log.info("cgroup2 favordynmods: %s", await asyncio.to_thread(cgroups.favor_migrations))
    network = await start_network(settings)
    try:
        backend = node_backends(
            settings.sandboxes_dir, settings.mounts_dir, settings.runsc_root, AgentRuntime.find(base),
            cgroups, settings.subid_base, on_exit, network, default=settings.backend,
            zygote=settings.agent_zygote, spare_disks=(settings.default_disk_mb, settings.spare_disks),
            spare_netns=settings.spare_netns,
        )
    except RuntimeFailure as exc:
        raise Unavailable(f"CORRAL_BACKEND={settings.backend}: {exc}") from exc
    service = SandboxService(settings, store, backend, templates)
    builds = BuildService(settings, store, backend, templates, layers)
    await builds.start()  # before the sandboxes' reconcile: templates loaded, interrupted builds closed
    await service.start()
    e2b_builds = E2BTemplates(settings.data_dir, builds, templates)
    await asyncio.to_thread(e2b_builds.prune)
    return Services(settings=settings, auth=auth, sandboxes=service, builds=builds, e2b_templates=e2b_builds)


def create_app(settings: Settings | None = None) -> SandboxRouter:
    """The ASGI app of ``corral serve``: the main FastAPI app behind the sandbox-port router."""
    settings = settings or Settings.from_env()
    ports = {ENVD_PORT: create_envd_app(), INTERPRETER_PORT: create_interpreter_app()}
    any_port = create_ports_app()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Store calls and privileged runtime steps run in threads; 2-core hosts get only 6 by default.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(64, thread_name_prefix="corral"))
        services = await build_services(settings)
        # What exists now (modules, routes, schemas: ~130,000 objects) lives as long as the server. Out
        # of the collector's view, a full collection walks only what came later instead of stalling
        # every request for ~80 ms (docs/performance.md, "Collector pauses").
        gc.collect()
        gc.freeze()
        for each in (app, any_port, *ports.values()):
            each.state.services = services
        try:
            yield
        finally:
            for each in (app, any_port, *ports.values()):
                each.state.services = None
            await services.builds.close()
            await services.sandboxes.close()
            services.auth.store.close()

    app = FastAPI(
        title="Corral", version=VERSION, lifespan=lifespan, telemetry=NO_TELEMETRY,
        description="Self-hosted sandboxes for untrusted code. Errors are JSON {code, message}.",
    )
    errors.install(app)

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, Any]:
        ready = getattr(app.state, "services", None) is not None
        if not ready:
            raise Unavailable("starting")
        return {"status": "ok"}

    for module in (routes_sandboxes, routes_commands, routes_files, routes_code, routes_keys, routes_templates):
        app.include_router(module.router)
    app.include_router(routes_sandboxes.pool_router)
    app.include_router(e2b_templates.router)  # ahead of control's catch-all 501s for the rest of /templates
    app.include_router(control.router)
    for sub_app in ports.values():
        errors.install(sub_app)
    errors.install(any_port)
    return SandboxRouter(app, ports, settings.domain, any_port, FastPath(app, ports[ENVD_PORT]))
