"""envd emulation (sandbox port 49983): Connect RPC process/filesystem services, /files, /health.

Modules: `connect` (the Connect protocol, JSON codec), `pjson` (proto3 JSON by hand), `rpc`
(dispatch, the call context, error codes), `process` and `filesystem` (the two services),
`watchers` and `state` (memory between calls), `files` and `uploads` (HTTP file transfer).
Every sandbox-side action goes through the sandbox's agent. docs/e2b-envd.md explains the choices.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

from corral.api.deps import SandboxCallerDep, ServicesDep

from . import files, filesystem, process, rpc
from .connect import ConnectError, error_response
from .process import global_envs
from .state import State

SERVICES: dict[str, dict[str, rpc.Method]] = {
    "process.Process": process.METHODS,
    "filesystem.Filesystem": filesystem.METHODS,
}


def create_envd_app() -> FastAPI:
    state = State()  # watchers end with their sandboxes; the router sends sub-apps no lifespan events
    app = FastAPI(title="Corral envd", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=204, headers={"Cache-Control": "no-store"})

    @app.get("/envs")
    async def envs(request: Request, caller: SandboxCallerDep, svc: ServicesDep) -> dict[str, str]:
        call = rpc.make_call(request, caller.sandbox_id, svc, state)
        return await global_envs(call)

    @app.get("/files")
    async def download(request: Request, svc: ServicesDep) -> Response:
        return await files.download(request, svc)

    @app.post("/files")
    async def upload(request: Request, svc: ServicesDep) -> Response:
        return await files.upload(request, svc)

    @app.post("/{service}/{method}")
    async def call(service: str, method: str, request: Request, caller: SandboxCallerDep, svc: ServicesDep) -> Response:
        found = SERVICES.get(service, {}).get(method)
        if found is None:
            return error_response(ConnectError("unimplemented", f"{service}/{method} is not served"))
        return await rpc.dispatch(request, found, f"{service}/{method}", caller.sandbox_id, svc, state)

    return app
