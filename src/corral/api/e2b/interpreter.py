"""Code-interpreter emulation (sandbox port 49999): /execute and /contexts with E2B's shapes."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse


def create_interpreter_app() -> FastAPI:
    app = FastAPI(title="Corral code interpreter", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> PlainTextResponse:
        return PlainTextResponse("OK")

    return app
