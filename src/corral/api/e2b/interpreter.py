"""Code-interpreter emulation (sandbox port 49999): /execute and /contexts with E2B's shapes.

A thin adapter over the contexts service (``corral.service.contexts``), whose events already have
E2B's ``/execute`` shapes. What this module adds is E2B's request bodies and E2B's error style:
error bodies are **plain text**, because the SDKs read them as text (404 → ``NotFoundException(body)``,
502 → ``TimeoutException``, anything else → ``SandboxException("<status> <reason>: <body>")``).

Deliberate differences from E2B's server (docs/e2b-compatibility.md):
- defaults are created lazily: a language's default context starts on its first ``/execute``, and
  ``GET /contexts`` starts the python and javascript defaults (E2B starts both at boot) so a listing
  shows what E2B's would;
- ``typescript`` has a context kind of its own (E2B runs it on the javascript kernel);
- an unsupported language is a 400, and a runtime that cannot start is a 503;
- the server puts no deadline on a cell: the SDK's ``timeout`` closes the stream, and a closed
  stream interrupts the cell (the context keeps its state), as with E2B.

The sandbox comes from the router and is authenticated by ``deps.sandbox_caller`` (the sandbox's
access token, or an API key that may use it). A sandbox that is unknown or no longer running gets
E2B's edge answer, 502 ``{"sandboxId", "message": "The sandbox was not found", "code": 502}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel

from corral.agent.client import AgentClient
from corral.api import NO_TELEMETRY
from corral.api.deps import Services, ServicesDep, sandbox_caller
from corral.api.e2b import gone
from corral.api.e2b.gone import SandboxGone
from corral.api.streaming import event_response
from corral.service.contexts import Context, Contexts, normalise_language
from corral.service.errors import NotFound, ServiceError

LISTED_DEFAULTS = ("python", "javascript")  # the default contexts E2B's server has from boot

# One default context per (sandbox, language), even when requests race to make it. The locks live
# as long as someone waits on them.
_default_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()


class ExecuteBody(BaseModel):
    code: str
    context_id: str | None = None
    language: str | None = None
    env_vars: dict[str, str] | None = None


class ContextBody(BaseModel):
    language: str | None = None
    cwd: str | None = None


class PlainError(Exception):
    """An error answered as ``text/plain`` (never JSON), E2B-style."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@contextlib.contextmanager
def as_text() -> Iterator[None]:
    """Service errors become plain-text answers with the same status."""
    try:
        yield
    except ServiceError as exc:
        raise PlainError(exc.status, exc.message) from exc


class Target:
    """The sandbox of this request, with the handles the routes need."""

    def __init__(self, svc: Services, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id
        self.contexts: Contexts = svc.sandboxes.contexts
        self.agent: AgentClient = svc.sandboxes.backend.agent(sandbox_id)
        self.envs = svc.sandboxes.envs(sandbox_id)

    async def default(self, language: str | None) -> Context:
        with as_text():
            lang = normalise_language(language)
            lock = _default_locks.setdefault((self.sandbox_id, lang), asyncio.Lock())
            async with lock:
                return await self.contexts.default(self.agent, self.sandbox_id, lang, self.envs)

    def context(self, context_id: str) -> Context:
        try:
            return self.contexts.get(self.sandbox_id, context_id)
        except NotFound as exc:
            raise PlainError(404, f"Context {context_id} not found") from exc


async def target(request: Request, svc: ServicesDep) -> Target:
    try:
        caller = await sandbox_caller(request, svc)
    except NotFound as exc:
        target = request.scope.get("corral.sandbox")
        raise SandboxGone(target[0] if target else "") from exc
    except ServiceError as exc:
        raise PlainError(exc.status, exc.message) from exc
    return Target(svc, caller.sandbox_id)


TargetDep = Annotated[Target, Depends(target)]


def create_interpreter_app() -> FastAPI:
    app = FastAPI(title="Corral code interpreter", openapi_url=None, docs_url=None, redoc_url=None,
                  telemetry=NO_TELEMETRY)

    @app.exception_handler(PlainError)
    async def plain_error(_: Request, exc: PlainError) -> PlainTextResponse:
        return PlainTextResponse(exc.text, status_code=exc.status)

    gone.install(app)

    @app.get("/health")
    async def health() -> PlainTextResponse:
        return PlainTextResponse("OK")

    @app.post("/execute")
    async def execute(body: ExecuteBody, request: Request, sbx: TargetDep) -> StreamingResponse:
        if body.context_id and body.language:
            raise PlainError(400, "Only one of context_id or language can be provided, not both")
        if body.context_id:
            ctx = sbx.context(body.context_id)
        else:
            ctx = await sbx.default(body.language)
        events = sbx.contexts.execute(sbx.agent, ctx, body.code, body.env_vars or {}, 0)
        return event_response(request, events)

    @app.post("/contexts")
    async def create_context(body: ContextBody, sbx: TargetDep) -> dict[str, Any]:
        with as_text():
            ctx = await sbx.contexts.create(sbx.agent, sbx.sandbox_id, body.language, body.cwd, "user", sbx.envs)
        return ctx.describe()

    @app.get("/contexts")
    async def list_contexts(sbx: TargetDep) -> list[dict[str, Any]]:
        await asyncio.gather(*(sbx.default(lang) for lang in LISTED_DEFAULTS))
        return [c.describe() for c in sbx.contexts.list(sbx.sandbox_id)]

    @app.post("/contexts/{context_id}/restart")
    async def restart_context(context_id: str, sbx: TargetDep) -> Response:
        ctx = sbx.context(context_id)
        with as_text():
            await sbx.contexts.restart(sbx.agent, ctx)
        return Response(json.dumps(None), media_type="application/json")

    @app.delete("/contexts/{context_id}")
    async def remove_context(context_id: str, sbx: TargetDep) -> Response:
        ctx = sbx.context(context_id)
        with as_text():
            await sbx.contexts.remove(sbx.agent, ctx)
        return Response(json.dumps(None), media_type="application/json")

    return app
