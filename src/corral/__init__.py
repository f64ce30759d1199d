"""Corral: self-hosted sandboxes for untrusted code, compatible with the E2B SDKs.

    from corral import Sandbox

    with Sandbox.create() as sbx:
        print(sbx.commands.run("echo hello").stdout)

The SDK names below are imported on first use, so ``import corral.agent`` (which runs inside
sandboxes, with the standard library only) never pulls in httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.sdk import (
        AsyncCommandHandle,
        AsyncSandbox,
        AsyncTemplate,
        AuthenticationException,
        BuildEvent,
        BuildException,
        BuildInfo,
        BuildStep,
        CommandExitException,
        CommandHandle,
        CommandResult,
        ConflictException,
        Context,
        EntryInfo,
        Execution,
        ExecutionError,
        FileType,
        InvalidArgumentException,
        Logs,
        NetworkInfo,
        NotEnoughSpaceException,
        NotFoundException,
        OutputMessage,
        ProcessInfo,
        RateLimitException,
        Result,
        Sandbox,
        SandboxException,
        SandboxInfo,
        SandboxMetrics,
        ServerException,
        Template,
        TemplateConfig,
        TemplateInfo,
        TimeoutException,
        WriteEntry,
    )

__all__ = [
    "AsyncCommandHandle",
    "AsyncSandbox",
    "AsyncTemplate",
    "AuthenticationException",
    "BuildEvent",
    "BuildException",
    "BuildInfo",
    "BuildStep",
    "CommandExitException",
    "CommandHandle",
    "CommandResult",
    "ConflictException",
    "Context",
    "EntryInfo",
    "Execution",
    "ExecutionError",
    "FileType",
    "InvalidArgumentException",
    "Logs",
    "NetworkInfo",
    "NotEnoughSpaceException",
    "NotFoundException",
    "OutputMessage",
    "ProcessInfo",
    "RateLimitException",
    "Result",
    "Sandbox",
    "SandboxException",
    "SandboxInfo",
    "SandboxMetrics",
    "ServerException",
    "Template",
    "TemplateConfig",
    "TemplateInfo",
    "TimeoutException",
    "WriteEntry",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        value = getattr(importlib.import_module("corral.sdk"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'corral' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
