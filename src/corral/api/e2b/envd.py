"""envd emulation (sandbox port 49983): Connect RPC process/filesystem services and /files."""

from __future__ import annotations

from fastapi import FastAPI, Response


def create_envd_app() -> FastAPI:
    app = FastAPI(title="Corral envd", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=204)

    return app
