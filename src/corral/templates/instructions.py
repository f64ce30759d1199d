"""Dockerfile instructions: the frozen, typed steps a parse yields, the parsed file, heredocs and errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from corral.templates.bases import BaseRef

HEREDOC = re.compile(r"^(\d*)<<(-?)([^<]*)$")


class DockerfileError(ValueError):
    """The Dockerfile can't be built as written. ``line`` is 1-based (None: the whole file)."""

    def __init__(self, line: int | None, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"Dockerfile:{line}: {message}" if line is not None else f"Dockerfile: {message}")


class Problem(Exception):
    """A message for the instruction being parsed; the parser adds its line (internal to the package)."""


@dataclass(frozen=True)
class Heredoc:
    """An inline document: a RUN script or stdin, or a COPY source file named ``name``."""

    name: str
    content: str  # the body lines as written, each ending in "\n" (variables expanded for COPY)
    chomp: bool = False  # <<-EOF: leading tabs are removed from each line
    expand: bool = True  # unquoted delimiter: $VARs are expanded (by the shell for RUN, by the parser for COPY)

    @property
    def text(self) -> str:
        return re.sub(r"(?m)^\t+", "", self.content) if self.chomp else self.content


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """One instruction, with its 1-based line. ``key()`` is what it contributes to a layer's cache key."""

    keyword: ClassVar[str] = ""
    line: int = field(metadata={"key": False})

    def key(self) -> dict[str, object]:
        """The keyword and every field except the line (moving an instruction must not bust the cache)."""
        out: dict[str, object] = {"instruction": self.keyword}
        out.update({f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.metadata.get("key", True)})
        return out


def _plain(value: object) -> object:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, kw_only=True)
class From(Instruction):
    keyword: ClassVar[str] = "FROM"
    image: str  # after substitution
    base: BaseRef
    alias: str | None = None
    platform: str | None = None


@dataclass(frozen=True, kw_only=True)
class Run(Instruction):
    """``command`` is the shell text (shell form) or the argv (exec form). ``build_args`` are the ARGs in
    scope with a value: part of the step's environment (below ENV), and of its cache key through
    ``cache_key(..., build_args=...)`` rather than ``key()``."""

    keyword: ClassVar[str] = "RUN"
    command: str | tuple[str, ...]
    shell_form: bool
    heredocs: tuple[Heredoc, ...] = ()
    build_args: tuple[tuple[str, str], ...] = field(default=(), metadata={"key": False})
    # an exec-form ``/bin/bash -c CMD`` that runs ``/bin/sh -c CMD`` in an image without bash (E2B's RUN)
    sh_without_bash: bool = field(default=False, metadata={"key": False})

    @property
    def script(self) -> str | None:
        """What ``/bin/sh -c`` runs (None for exec form), by BuildKit's heredoc rules: a lone heredoc is
        the script itself (if it starts with ``#!``, write it to an executable file and run that);
        otherwise the command line is followed by each heredoc's body and terminator, for the shell."""
        if not isinstance(self.command, str):
            return None
        if not self.heredocs:
            return self.command
        words = self.command.split()
        if len(self.heredocs) == 1 and len(words) == 1 and HEREDOC.match(words[0]):
            return self.heredocs[0].text
        return self.command + "\n" + "".join(h.content + h.name + "\n" for h in self.heredocs)


@dataclass(frozen=True, kw_only=True)
class Copy(Instruction):
    """COPY, or ADD when ``add``: context ``sources`` (patterns) and inline ``heredocs`` into ``dest``."""

    keyword: ClassVar[str] = "COPY"
    sources: tuple[str, ...]
    dest: str
    chown: str | None = None
    chmod: int | None = None
    add: bool = False
    link: bool = False
    heredocs: tuple[Heredoc, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Env(Instruction):
    keyword: ClassVar[str] = "ENV"
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, kw_only=True)
class Arg(Instruction):
    """``value`` is what the ARG holds: the build arg, else its default, else (after FROM) the global one."""

    keyword: ClassVar[str] = "ARG"
    name: str
    default: str | None = None
    value: str | None = None


@dataclass(frozen=True, kw_only=True)
class Workdir(Instruction):
    keyword: ClassVar[str] = "WORKDIR"
    path: str  # as written after substitution; a relative one is relative to the previous WORKDIR


@dataclass(frozen=True, kw_only=True)
class User(Instruction):
    keyword: ClassVar[str] = "USER"
    user: str  # user[:group], names or ids


@dataclass(frozen=True, kw_only=True)
class Label(Instruction):
    keyword: ClassVar[str] = "LABEL"
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, kw_only=True)
class Expose(Instruction):
    keyword: ClassVar[str] = "EXPOSE"
    ports: tuple[str, ...]  # "80/tcp", "8000-8010/udp"


@dataclass(frozen=True, kw_only=True)
class Cmd(Instruction):
    keyword: ClassVar[str] = "CMD"
    command: str | tuple[str, ...]
    shell_form: bool


@dataclass(frozen=True, kw_only=True)
class Entrypoint(Instruction):
    keyword: ClassVar[str] = "ENTRYPOINT"
    command: str | tuple[str, ...]
    shell_form: bool


@dataclass(frozen=True)
class Dockerfile:
    """A parsed Dockerfile: ``instructions`` in order (global ARGs, the FROM, then the build ``steps``)."""

    instructions: tuple[Instruction, ...]
    warnings: tuple[str, ...] = ()
    escape: str = "\\"

    @property
    def base(self) -> From:
        return next(i for i in self.instructions if isinstance(i, From))

    @property
    def steps(self) -> tuple[Instruction, ...]:
        return self.instructions[self.instructions.index(self.base) + 1:]

    @property
    def start_command(self) -> tuple[str, ...] | None:
        """The template's start command from its last ENTRYPOINT and CMD, combined as Docker does
        (a shell-form ENTRYPOINT ignores CMD). None when this file sets neither."""
        entry = next((i for i in reversed(self.steps) if isinstance(i, Entrypoint)), None)
        cmd = next((i for i in reversed(self.steps) if isinstance(i, Cmd)), None)

        def argv(c: Cmd | Entrypoint | None) -> tuple[str, ...]:
            if c is None:
                return ()
            return ("/bin/sh", "-c", c.command) if isinstance(c.command, str) else c.command

        if entry is not None and entry.shell_form:
            return argv(entry)
        if entry is None and cmd is None:
            return None
        return argv(entry) + argv(cmd)
