"""Corral's Python SDK: one I/O-free core (``_core``, ``_calls``, ``_stream``) and two faces.

``Sandbox`` (blocking, thread-safe) and ``AsyncSandbox`` (asyncio) have the same methods with the
same signatures, named as in E2B's SDK so code moves over by changing the import; ``Template`` and
``AsyncTemplate`` build templates from Dockerfiles the same way.
Everything public is re-exported here and from ``corral``; the ``_modules`` are private.
"""

from ._builds import BuildEvent, BuildInfo, BuildStep, TemplateConfig, TemplateInfo
from ._errors import (
    AuthenticationException,
    BuildException,
    CommandExitException,
    ConflictException,
    InvalidArgumentException,
    NotEnoughSpaceException,
    NotFoundException,
    RateLimitException,
    SandboxException,
    ServerException,
    TimeoutException,
)
from ._execution import Context, Execution, ExecutionError, Logs, OutputMessage, Result
from ._handles import AsyncCommandHandle, CommandHandle
from ._models import (
    CommandResult,
    EntryInfo,
    FileType,
    NetworkInfo,
    ProcessInfo,
    SandboxInfo,
    SandboxMetrics,
    WriteEntry,
)
from ._sandbox import AsyncSandbox, Sandbox
from ._template import AsyncTemplate, Template

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

# Tracebacks name exceptions by their public home (``corral.NotFoundException``), as httpx does.
# Only exceptions: typing.get_type_hints resolves a class's annotations in its __module__.
for _name in __all__:
    if issubclass(_value := globals()[_name], BaseException):
        _value.__module__ = "corral"
del _name, _value
