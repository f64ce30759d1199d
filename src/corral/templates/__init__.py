"""Templates: Dockerfiles parsed into typed steps, build contexts, and the cache keys of their layers.

Errors (both ``ValueError``; the builder maps them to a build failure naming the step)::

    ValueError
    ├── DockerfileError   the Dockerfile can't be built as written (``line``, ``message``)
    └── ContextError      a COPY/ADD source can't be used (``source``, ``message``)
"""

from corral.templates.context import BuildContext, ContextError, Entry, cache_key, parse_dockerignore
from corral.templates.dockerfile import (
    Arg,
    BaseRef,
    Cmd,
    Copy,
    Dockerfile,
    DockerfileError,
    Entrypoint,
    Env,
    Expose,
    From,
    Heredoc,
    Instruction,
    Label,
    Run,
    User,
    Workdir,
    base_of,
    parse,
)

__all__ = [
    "Arg",
    "BaseRef",
    "BuildContext",
    "Cmd",
    "ContextError",
    "Copy",
    "Dockerfile",
    "DockerfileError",
    "Entry",
    "Entrypoint",
    "Env",
    "Expose",
    "From",
    "Heredoc",
    "Instruction",
    "Label",
    "Run",
    "User",
    "Workdir",
    "base_of",
    "cache_key",
    "parse",
    "parse_dockerignore",
]
