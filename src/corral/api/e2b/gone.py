"""Traffic for a sandbox that is unknown, no longer running, or paused: answered 502 with the body of
E2B's edge proxy, which the SDKs read as "the sandbox is not running"."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class SandboxGone(Exception):
    """`why` (optional) says which: e.g. that the sandbox is paused."""

    def __init__(self, sandbox_id: str, why: str = "") -> None:
        super().__init__(sandbox_id)
        self.sandbox_id = sandbox_id
        self.why = why


def install(app: FastAPI) -> None:
    @app.exception_handler(SandboxGone)
    async def sandbox_gone(_: Request, exc: SandboxGone) -> JSONResponse:
        message = "The sandbox was not found" + (f": {exc.why}" if exc.why else "")
        return JSONResponse({"sandboxId": exc.sandbox_id, "message": message, "code": 502}, status_code=502)
