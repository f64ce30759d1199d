"""envd emulation (sandbox port 49983): Connect RPC process/filesystem services, /files, /health.

Modules: `connect` (the Connect protocol, JSON codec), `pjson` (proto3 JSON by hand), `rpc`
(dispatch, the call context, error codes), `process` and `filesystem` (the two services),
`watchers` and `state` (memory between calls), `files` and `uploads` (HTTP file transfer).
Every sandbox-side action goes through the sandbox's agent. docs/e2b-envd.md explains the choices.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Request, Response

from corral.api import NO_TELEMETRY
from corral.api.deps import SandboxCaller, ServicesDep
from corral.api.e2b import gone
from corral.api.e2b.gone import SandboxGone

from . import files, filesystem, process, rpc
from .access import caller, sandbox_of
from .connect import ConnectError, error_response
from .process import global_envs
from .state import State

SERVICES: dict[str, dict[str, rpc.Method]] = {
    "process.Process": process.METHODS,
    "filesystem.Filesystem": filesystem.METHODS,
}


CallerDep = Annotated[SandboxCaller, Depends(caller)]


def create_envd_app() -> FastAPI:
    state = State()  # watchers end with their sandboxes; the router sends sub-apps no lifespan events
    app = FastAPI(title="Corral envd", openapi_url=None, docs_url=None, redoc_url=None,
                  telemetry=NO_TELEMETRY)

    app.state.envd = state  # for ``api.fastpath``
    gone.install(app)

    @app.get("/health")
    async def health(request: Request, svc: ServicesDep) -> Response:
        """Needs no credentials (like envd's); 502 once the sandbox is gone or while it is paused
        (like E2B's edge: the SDKs' ``is_running()`` is then False)."""
        sandbox_id = sandbox_of(request)
        if svc.sandboxes.access_token(sandbox_id) is None:
            raise SandboxGone(sandbox_id)
        if svc.sandboxes.is_paused(sandbox_id):
            raise SandboxGone(sandbox_id, "it is paused (connect to resume it)")
        return Response(status_code=204, headers={"Cache-Control": "no-store"})

    @app.get("/envs")
    async def envs(request: Request, who: CallerDep, svc: ServicesDep) -> dict[str, str]:
        call = rpc.make_call(request, who.sandbox_id, svc, state)
        return await global_envs(call)

    @app.get("/files")
    async def download(request: Request, svc: ServicesDep) -> Response:
        return await files.download(request, svc)

    @app.post("/files")
    async def upload(request: Request, svc: ServicesDep) -> Response:
        return await files.upload(request, svc)

    @app.post("/{service}/{method}")
    async def call(service: str, method: str, request: Request, who: CallerDep, svc: ServicesDep) -> Response:
        found = SERVICES.get(service, {}).get(method)
        if found is None:
            return error_response(ConnectError("unimplemented", f"{service}/{method} is not served"))
        return await rpc.dispatch(request, found, f"{service}/{method}", who.sandbox_id, svc, state)

    return app
