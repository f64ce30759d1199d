"""Dockerfile parsing: text → a frozen, typed list of the instructions a Corral template build runs.

Pure (no I/O) and faithful to BuildKit's front end for what Corral supports:

- the ``# escape=`` parser directive at the top of the file (``# syntax=`` and ``# check=`` choose
  BuildKit frontends and lint rules: accepted, without effect);
- line continuations, with comment lines and (with a warning) empty lines inside them skipped;
- JSON exec form vs shell form for RUN, CMD and ENTRYPOINT: text that is not a valid JSON array of
  strings is shell form (Docker's rule; a warning when it looks like a failed exec form), a valid JSON
  array holding a non-string is an error;
- substitution (``$V``, ``${V}``, ``${V:-w}``, ``${V-w}``, ``${V:+w}``, ``${V+w}``, ``${V:?m}``,
  ``${V?m}``, with quotes and escapes; BuildKit's ``#``/``%``/``/`` pattern modifiers are refused with
  the line, not yet supported) in FROM, ARG, ENV, LABEL, COPY, ADD, WORKDIR, USER, EXPOSE and the
  ``--chown``/``--chmod``/``--platform`` flags; never in RUN, CMD or ENTRYPOINT (the shell does that);
- ARG scoping: an ARG before FROM is visible to FROM only, unless re-declared (``ARG NAME``) after it;
  ``build_args`` set declared ARGs only (others become warnings, as in Docker); ENV beats ARG;
  BuildKit's automatic ``TARGETARCH``/``BUILDPLATFORM``… are global ARGs (from this host's machine);
- heredocs (``<<EOF``, ``<<-EOF``, ``<<'EOF'``) on RUN, COPY and ADD.

Anything Corral can't build yet fails with ``DockerfileError`` naming its line (HEALTHCHECK, ONBUILD,
SHELL, STOPSIGNAL, VOLUME, a second FROM, ``COPY --from``, ``RUN --mount``, ADD from a URL…): nothing is
silently ignored. ``MAINTAINER`` becomes ``LABEL maintainer=…``. ``base_of`` maps a FROM image to what
a build starts from. Objects here are immutable and safe to share between threads.
"""

from __future__ import annotations

import difflib
import json
import platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import ClassVar, Literal

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILTIN_BASES = ("base", "code-interpreter")
# Docker passes these to RUN without an ARG declaration, so giving them is not "unused".
PREDEFINED_ARGS = frozenset(
    n for p in ("HTTP", "HTTPS", "FTP", "NO", "ALL") for n in (f"{p}_PROXY", f"{p.lower()}_proxy")
)
UNSUPPORTED = {
    "HEALTHCHECK": "sandboxes have no health checks",
    "ONBUILD": "triggers for later builds are not kept",
    "STOPSIGNAL": "a sandbox is stopped by killing its cgroup",
    "SHELL": "RUN always uses /bin/sh -c",
    "VOLUME": "a sandbox's files are its template plus a private copy-on-write layer",
}
SUPPORTED = ("FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "LABEL", "EXPOSE", "CMD", "ENTRYPOINT",
             "MAINTAINER")

_HEREDOC = re.compile(r"^(\d*)<<(-?)([^<]*)$")
_NAME = re.compile(r"\d+|[@*#?$!-]|\w+")  # BuildKit: digits, one special parameter, or a name
_PORT = re.compile(r"^(\d+)(?:-(\d+))?(?:/(tcp|udp|sctp))?$", re.I)
_STAGE = re.compile(r"^[a-z][a-z0-9._-]*$")
_TEMPLATE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")  # corral.service.templates.NAME
_DEBIAN_TAG = re.compile(r"^(?:latest|bookworm|12(?:\.\d+)*)(?:-\d{8})?(?:-slim)?$")
_PYTHON_TAG = re.compile(r"^3(?:\.11(?:\.\d+)?)?(?:-slim)?(?:-bookworm)?$")
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^\w[\w.-]{0,127}$")
_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-f]{32,}$")
_REGISTRY = re.compile(r"^(?:localhost|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*)(?::\d+)?$")

Lookup = Callable[[str], "str | None"]


class DockerfileError(ValueError):
    """The Dockerfile can't be built as written. ``line`` is 1-based (None: the whole file)."""

    def __init__(self, line: int | None, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"Dockerfile:{line}: {message}" if line is not None else f"Dockerfile: {message}")


class _Problem(Exception):
    """A message for the instruction being parsed; the parser adds its line."""


@dataclass(frozen=True)
class BaseRef:
    """What a build starts from: a built-in base, a previously built template, or an OCI image to pull."""

    kind: Literal["builtin", "template", "oci"]
    name: str  # "base"/"code-interpreter", a template name, or a normalised reference (docker.io/library/x:tag)


def base_of(image: str) -> BaseRef:
    """Map a FROM image to a ``BaseRef``; raises ``DockerfileError`` (line None) for what Corral lacks.

    ``base``/``code-interpreter`` are the built-in bases; ``debian``, ``debian:bookworm``, ``debian:12``
    (``-slim`` and dated variants too) and ``python:3``/``python:3.11…`` map to ``base`` (Debian 12 with
    Python 3.11; upstream ``debian:latest`` and ``python:3`` have since moved on, but a build here gets
    the nearest base rather than a surprise pull). A bare name is a template built earlier (the builder
    checks it exists). Anything with a registry, a ``/`` or a digest is an OCI image. Any other
    ``name:tag`` is refused with a hint to spell out its registry, so no image is pulled by accident.
    """
    image = image.strip()
    if not image:
        raise DockerfileError(None, "FROM needs an image")
    if "/" in image or "@" in image:
        return BaseRef("oci", _oci_reference(image))
    name, _, tag = image.partition(":")
    full = f"docker.io/library/{image}"
    if name != name.lower():
        raise DockerfileError(None, f"invalid image {image!r}: repository names must be lowercase")
    if name == "scratch":
        raise DockerfileError(None, "FROM scratch is not supported: start from base, code-interpreter, "
                                    "a template or an OCI image")
    if name in BUILTIN_BASES and not tag:
        return BaseRef("builtin", name)
    if name in BUILTIN_BASES:
        raise DockerfileError(None, f"{image}: built-in templates have no tags; write FROM {name}")
    if name == "debian" and (not tag or _DEBIAN_TAG.match(tag)):
        return BaseRef("builtin", "base")
    if name == "python" and _PYTHON_TAG.match(tag):
        return BaseRef("builtin", "base")
    if name in ("debian", "python", "ubuntu"):
        raise DockerfileError(None, f"{image} is not available: Corral's bases are Debian 12 (bookworm) with "
                                    f"Python 3.11 (FROM base, debian:bookworm or python:3.11); write {full} to "
                                    "pull the image from a registry instead")
    if tag:
        raise DockerfileError(None, f"{image} is neither a Corral base nor a template; write {full} to pull "
                                    "the image from a registry")
    if not _TEMPLATE.match(name):
        raise DockerfileError(None, f"invalid image {image!r}: not a template name or an image reference")
    return BaseRef("template", name)


def _oci_reference(image: str) -> str:
    rest, _, digest = image.partition("@")
    if digest and not _DIGEST.match(digest):
        raise DockerfileError(None, f"invalid image {image!r}: bad digest {digest!r}")
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    path, tag = (rest[:colon], rest[colon + 1:]) if colon > slash else (rest, "")
    parts = path.split("/")
    registry = "docker.io"
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry = parts.pop(0)
    elif len(parts) == 1:
        parts.insert(0, "library")
    if not _REGISTRY.match(registry) or not all(_COMPONENT.match(p) for p in parts) or (tag and not _TAG.match(tag)):
        raise DockerfileError(None, f"invalid image reference {image!r}")
    ref = f"{registry}/{'/'.join(parts)}"
    if tag or not digest:
        ref += f":{tag or 'latest'}"
    return ref + (f"@{digest}" if digest else "")


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
        if len(self.heredocs) == 1 and len(words) == 1 and _HEREDOC.match(words[0]):
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


def parse(
    text: str,
    build_args: Mapping[str, str] | None = None,
    *,
    base_env: Callable[[BaseRef], Mapping[str, str]] | None = None,
) -> Dockerfile:
    """Parse ``text``; ``build_args`` are ``--build-arg`` values. ``base_env`` gives the base's ENV, which
    substitutions after FROM see (default: Debian's ``PATH``). Raises ``DockerfileError``."""
    return _Parser(text, dict(build_args or {}), base_env).run()


def _platform_args() -> dict[str, str]:
    machine = platform.machine()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    values = {"PLATFORM": f"linux/{arch}", "OS": "linux", "ARCH": arch}
    return {side + k: v for side in ("BUILD", "TARGET") for k, v in values.items()}


class _Parser:
    def __init__(self, text: str, build_args: dict[str, str],
                 base_env: Callable[[BaseRef], Mapping[str, str]] | None) -> None:
        self.lines = [ln.removesuffix("\r") for ln in text.removeprefix("\ufeff").split("\n")]
        self.i = 0
        self.build_args = build_args
        self.base_env = base_env
        self.escape = "\\"
        self.auto = _platform_args()
        self.global_args: dict[str, str | None] = {}
        self.stage_args: dict[str, str | None] = {}
        self.env: dict[str, str] = {}
        self.declared: set[str] = set()
        self.from_line: int | None = None
        self.out: list[Instruction] = []
        self.warnings: list[str] = []

    def run(self) -> Dockerfile:
        self._directives()
        while (found := self._logical_line()) is not None:
            line, text = found
            try:
                self._instruction(line, text)
            except _Problem as e:
                raise DockerfileError(line, str(e)) from None
        if not self.out:
            raise DockerfileError(None, "the Dockerfile is empty (it needs at least FROM)")
        if self.from_line is None:
            raise DockerfileError(None, "no FROM instruction: a Dockerfile starts FROM a base (e.g. FROM base)")
        for kind in (Cmd, Entrypoint):
            seen = [i.line for i in self.out if isinstance(i, kind)]
            if len(seen) > 1:
                self._warn(seen[-1], f"only the last {kind.keyword} takes effect (also on lines "
                                     f"{', '.join(map(str, seen[:-1]))})")
        unused = sorted(set(self.build_args) - self.declared - PREDEFINED_ARGS)
        self.warnings += [f"build arg {n} was given but no ARG declares it (not used)" for n in unused]
        return Dockerfile(tuple(self.out), tuple(self.warnings), self.escape)

    def _warn(self, line: int, message: str) -> None:
        self.warnings.append(f"Dockerfile:{line}: {message}")

    def _directives(self) -> None:
        seen: set[str] = set()
        for n, raw in enumerate(self.lines, 1):
            m = re.match(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$", raw)
            name = m[1].lower() if m else ""
            if name not in ("escape", "syntax", "check"):
                return
            if name in seen:
                raise DockerfileError(n, f"only one {name} parser directive can be used")
            seen.add(name)
            if name == "escape":
                assert m is not None
                if m[2] not in ("\\", "`"):
                    raise DockerfileError(n, f"invalid escape token {m[2]!r}: use \\ or `")
                self.escape = m[2]

    def _continues(self, text: str) -> tuple[str, bool]:
        m = re.search(re.escape(self.escape) + r"[ \t]*$", text)
        return (text[:m.start()], True) if m else (text, False)

    def _logical_line(self) -> tuple[int, str] | None:
        """The next instruction's start line and text, continuation lines joined."""
        while self.i < len(self.lines):
            self.i += 1
            start, first = self.i, self.lines[self.i - 1].lstrip()
            if first.startswith("#"):
                continue
            text, more = self._continues(first)
            if not more and not text.strip():
                continue
            while more and self.i < len(self.lines):
                self.i += 1
                raw = self.lines[self.i - 1]
                if raw.lstrip().startswith("#"):
                    continue
                if not raw.strip():
                    self._warn(self.i, "empty continuation line (Docker deprecates these)")
                    continue
                part, more = self._continues(raw)
                text += part
            return start, text
        return None

    # -- lookups -----------------------------------------------------------------------------------

    def _global(self, name: str) -> str | None:
        return self.global_args[name] if name in self.global_args else self.auto.get(name)

    def _stage(self, name: str) -> str | None:
        return self.env[name] if name in self.env else self.stage_args.get(name)

    def _scope(self) -> Lookup:
        return self._stage if self.from_line is not None else self._global

    def _word(self, text: str, lookup: Lookup | None = None) -> str:
        return _Lexer(text, self.escape, lookup or self._scope()).words(split=False)[0]

    # -- instructions ------------------------------------------------------------------------------

    def _instruction(self, line: int, text: str) -> None:
        m = re.match(r"(\S+)\s*(.*)$", text.strip())
        assert m is not None  # the line is not blank
        keyword, rest = m[1].upper(), m[2]
        if keyword in UNSUPPORTED:
            raise _Problem(f"{keyword} is not supported by Corral yet ({UNSUPPORTED[keyword]})")
        if keyword not in SUPPORTED:
            close = difflib.get_close_matches(keyword, [*SUPPORTED, *UNSUPPORTED], n=1)
            raise _Problem(f"unknown instruction: {m[1]}" + (f" (did you mean {close[0]}?)" if close else ""))
        if self.from_line is None and keyword not in ("FROM", "ARG"):
            raise _Problem(f"{keyword} before FROM: a Dockerfile starts with FROM (only ARG may come first)")
        flags, rest = self._flags(rest)
        allowed = {"FROM": {"platform"}, "COPY": {"chown", "chmod", "link", "from"},
                   "ADD": {"chown", "chmod", "link", "from"}}.get(keyword, set())
        for name in flags:
            if name not in allowed:
                raise _Problem(f"{keyword} --{name} is not supported by Corral yet")
        if not rest:
            raise _Problem(f"{keyword} requires at least one argument")
        getattr(self, f"_{keyword.lower()}")(line, rest, flags)

    def _flags(self, rest: str) -> tuple[dict[str, str | None], str]:
        flags: dict[str, str | None] = {}
        while rest.startswith("--"):
            token, rest = _first_word(rest, self.escape)
            rest = rest.lstrip()
            if token == "--":
                break
            name, eq, value = token[2:].partition("=")
            if name.lower() in flags:
                raise _Problem(f"--{name} given twice")
            flags[name.lower()] = value if eq else None
        return flags, rest.strip()

    def _from(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        if self.from_line is not None:
            raise _Problem(f"multi-stage builds (a second FROM; the first is on line {self.from_line}) are not "
                           "supported by Corral yet")
        words = rest.split()
        if not (len(words) == 1 or (len(words) == 3 and words[1].lower() == "as")):
            raise _Problem("FROM takes an image and optionally AS name")
        image = self._word(words[0])
        try:
            base = base_of(image)
        except DockerfileError as e:
            raise _Problem(e.message) from None
        alias = words[2].lower() if len(words) == 3 else None
        if alias is not None and not _STAGE.match(alias):
            raise _Problem(f"invalid stage name {words[2]!r}: letters, digits, '.', '_' and '-', from a letter")
        plat = flags.get("platform")
        self.from_line = line
        self.env = dict(self.base_env(base)) if self.base_env else {"PATH": DEFAULT_PATH}
        self.out.append(From(line=line, image=image, base=base, alias=alias,
                             platform=self._word(plat, self._global) if plat is not None else None))

    def _arg(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        parsed = []
        for word in _raw_words(rest, self.escape):
            name, eq, default = word.partition("=")
            name = self._word(name)
            if not name:
                raise _Problem("ARG names can not be blank")
            parsed.append((name, self._word(default) if eq else None))
        scope = self.stage_args if self.from_line is not None else self.global_args
        for name, default in parsed:
            if name in self.build_args:
                value: str | None = self.build_args[name]
            elif default is not None:
                value = default
            else:
                value = self._global(name) if self.from_line is not None else self.auto.get(name)
            scope[name] = value
            self.declared.add(name)
            self.out.append(Arg(line=line, name=name, default=default, value=value))

    def _pairs(self, keyword: str, rest: str) -> tuple[tuple[str, str], ...]:
        words = _raw_words(rest, self.escape)
        if "=" not in words[0]:  # legacy "ENV key value with spaces"
            parts = re.split(r"\s+", rest, maxsplit=1)
            if len(parts) < 2:
                raise _Problem(f"{keyword} must have two arguments (or name=value pairs)")
            raw = [(parts[0], parts[1])]
        else:
            for w in words:
                if "=" not in w:
                    raise _Problem(f"can't find = in {w!r}: {keyword} takes name=value pairs")
            raw = [(k, v) for k, _, v in (w.partition("=") for w in words)]
        pairs = tuple((self._word(k), self._word(v)) for k, v in raw)
        if any(not k for k, _ in pairs):
            raise _Problem(f"{keyword} names can not be blank")
        return pairs

    def _env(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        pairs = self._pairs("ENV", rest)
        self.env.update(pairs)
        self.out.append(Env(line=line, pairs=pairs))

    def _label(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        self.out.append(Label(line=line, pairs=self._pairs("LABEL", rest)))

    def _maintainer(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        self.out.append(Label(line=line, pairs=(("maintainer", rest),)))

    def _workdir(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        self.out.append(Workdir(line=line, path=self._nonempty("WORKDIR", self._word(rest))))

    def _user(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        self.out.append(User(line=line, user=self._nonempty("USER", self._word(rest))))

    @staticmethod
    def _nonempty(keyword: str, value: str) -> str:
        if not value.strip():
            raise _Problem(f"{keyword} is empty after substitution")
        return value

    def _expose(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        ports = []
        for word in rest.split():
            for port in _Lexer(word, self.escape, self._stage).words(split=True):
                m = _PORT.match(port)
                lo, hi = (int(m[1]), int(m[2] or m[1])) if m else (0, 0)
                if m is None or not 0 < lo <= hi <= 65535:
                    raise _Problem(f"invalid port {port!r}: use PORT, PORT/tcp, PORT/udp or LOW-HIGH")
                ports.append(f"{m[1]}{'-' + m[2] if m[2] else ''}/{(m[3] or 'tcp').lower()}")
        self.out.append(Expose(line=line, ports=tuple(ports)))

    def _exec_or_shell(self, line: int, keyword: str, rest: str) -> tuple[str | tuple[str, ...], bool]:
        if rest.startswith("["):
            try:
                value = json.loads(rest)
            except ValueError:
                if re.match(r"""^\[\s*['"].*,.*\]$""", rest):
                    self._warn(line, f"{keyword} looks like exec form but is not a JSON array (use double "
                                     "quotes); it runs as a shell command, as in Docker")
            else:
                if not all(isinstance(v, str) for v in value):
                    raise _Problem(f"{keyword} exec form must be a JSON array of strings")
                return tuple(value), False
        return rest, True

    def _run(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        command, shell = self._exec_or_shell(line, "RUN", rest)
        if not command:
            raise _Problem("RUN needs a command")
        heredocs = self._heredocs(_raw_words(rest, self.escape), expand=False) if shell else ()
        args = tuple((k, v) for k, v in self.stage_args.items() if v is not None)
        self.out.append(Run(line=line, command=command, shell_form=shell, heredocs=heredocs, build_args=args))

    def _cmd(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        command, shell = self._exec_or_shell(line, "CMD", rest)
        self.out.append(Cmd(line=line, command=command, shell_form=shell))

    def _entrypoint(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        command, shell = self._exec_or_shell(line, "ENTRYPOINT", rest)
        self.out.append(Entrypoint(line=line, command=command, shell_form=shell))

    def _add(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        self._copy(line, rest, flags, add=True)

    def _copy(self, line: int, rest: str, flags: dict[str, str | None], add: bool = False) -> None:
        keyword = "ADD" if add else "COPY"
        if "from" in flags:
            raise _Problem(f"{keyword} --from (multi-stage builds) is not supported by Corral yet")
        try:
            value = json.loads(rest) if rest.startswith("[") else None
        except ValueError:
            value = None
        if value is not None and not all(isinstance(v, str) for v in value):
            raise _Problem(f"{keyword} JSON form must be an array of strings")
        words = list(value) if value is not None else rest.split()
        inline = [] if value is not None else [w for w in words if (m := _HEREDOC.match(w)) and m[3]]
        heredocs = self._heredocs(inline, expand=True)
        if len(words) < 2:
            raise _Problem(f"{keyword} requires at least two arguments: sources and a destination")
        if words[-1] in inline:
            raise _Problem(f"{keyword} destination can't be a heredoc")
        sources = tuple(self._word(w) for w in words[:-1] if w not in inline)
        dest = self._word(words[-1])
        for s in sources:
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s) or s.startswith("git@"):
                raise _Problem(f"{keyword} from a URL ({s}) is not supported by Corral yet; download it in a RUN")
        if len(sources) + len(heredocs) > 1 and not dest.endswith("/"):
            raise _Problem(f"with more than one source, the {keyword} destination must be a directory ending in /")
        chmod = flags.get("chmod")
        mode = None
        if chmod is not None:
            chmod = self._word(chmod)
            if not re.fullmatch(r"[0-7]{3,4}", chmod):
                raise _Problem(f"invalid --chmod={chmod}: use octal permissions such as 755")
            mode = int(chmod, 8)
        chown = flags.get("chown")
        self.out.append(Copy(
            line=line, sources=sources, dest=dest, chown=self._word(chown) if chown is not None else None,
            chmod=mode, add=add, link="link" in flags and flags["link"] in (None, "true"), heredocs=heredocs,
        ))

    def _heredocs(self, words: list[str], expand: bool) -> tuple[Heredoc, ...]:
        """Read the bodies of the heredocs named in ``words`` from the lines after the instruction."""
        docs = []
        for word in words:
            m = _HEREDOC.match(word)
            if not m or not m[3]:
                continue
            raw = m[3]
            name = re.sub(f"['\"{re.escape(self.escape)}]", "", raw)
            quoted = name != raw  # any quoting of the delimiter turns expansion off, as in sh
            chomp = m[2] == "-"
            body: list[str] = []
            start = self.i
            while True:
                if self.i >= len(self.lines):
                    raise _Problem(f"unterminated heredoc: no line {name!r} after line {start}")
                self.i += 1
                text = self.lines[self.i - 1]
                if (text.lstrip("\t") if chomp else text) == name:
                    break
                body.append(text + "\n")
            content = "".join(body)
            if expand and not quoted:
                content = _Lexer(content, self.escape, self._stage, heredoc=True).words(split=False)[0]
            docs.append(Heredoc(name=name, content=content, chomp=chomp, expand=not quoted))
        return tuple(docs)


def _first_word(text: str, escape: str) -> tuple[str, str]:
    """The first whitespace-delimited word of ``text`` as written (quotes and escapes kept), and the rest."""
    text = text.lstrip()
    i, quote = 0, ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                i += 1
        elif ch.isspace():
            break
        elif ch in "'\"":
            quote = ch
        elif ch == escape:
            i += 1
        i += 1
    return text[:i], text[i:]


def _raw_words(text: str, escape: str) -> list[str]:
    words = []
    while text.strip():
        word, text = _first_word(text, escape)
        words.append(word)
    return words


class _Lexer:
    """Docker's word processing: quotes, escapes and ``$`` substitution; splitting on unquoted blanks."""

    def __init__(self, text: str, escape: str, lookup: Lookup, heredoc: bool = False) -> None:
        self.s, self.i, self.escape, self.lookup, self.heredoc = text, 0, escape, lookup, heredoc

    def words(self, split: bool) -> list[str]:
        words: list[str] = []
        self._run(words, split, stop="")
        return words if split else ["".join(words)]

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def _next(self) -> str:
        ch = self._peek()
        self.i += 1
        return ch

    def _run(self, words: list[str], split: bool, stop: str) -> None:
        """Process up to ``stop`` (or the end) into ``words``: one word unless ``split``."""
        cur: list[str] = []

        def add(text: str, expanded: bool = False) -> None:
            if split and expanded:  # an unquoted $VAR's value splits on blanks too
                for ch in text:
                    flush() if ch.isspace() else cur.append(ch)
            else:
                cur.append(text)

        def flush() -> None:
            if word := "".join(cur):  # as in BuildKit, empty words ("") are dropped
                words.append(word)
            cur.clear()

        while True:
            ch = self._peek()
            if ch == "":
                if stop:
                    raise _Problem(f"missing '{stop}' in a ${{...}} substitution")
                break
            if stop and ch == stop:
                self.i += 1
                break
            if ch == self.escape:
                self.i += 1
                nxt = self._next()
                if self.heredoc and nxt not in ("$", self.escape):
                    add(ch + nxt)
                elif nxt:
                    add(nxt)
            elif ch == "'" and not self.heredoc:
                add(self._single())
            elif ch == '"' and not self.heredoc:
                add(self._double())
            elif ch == "$":
                add(self._dollar(), expanded=True)
            else:
                self.i += 1
                if split and ch.isspace():
                    flush()
                else:
                    add(ch)
        flush() if split else words.append("".join(cur))

    def _single(self) -> str:
        end = self.s.find("'", self.i + 1)
        if end < 0:
            raise _Problem("unexpected end of statement while looking for matching single-quote")
        text, self.i = self.s[self.i + 1:end], end + 1
        return text

    def _double(self) -> str:
        self.i += 1
        out = []
        while (ch := self._peek()) != '"':
            if ch == "":
                raise _Problem("unexpected end of statement while looking for matching double-quote")
            if ch == "$":
                out.append(self._dollar())
                continue
            self.i += 1
            if ch == self.escape and self._peek() in ('"', "$", self.escape):
                ch = self._next()
            out.append(ch)
        self.i += 1
        return "".join(out)

    def _dollar(self) -> str:
        self.i += 1
        braced = self._peek() == "{"
        self.i += braced
        m = _NAME.match(self.s, self.i)
        if braced and self._peek() == "":
            raise _Problem("missing '}' in a ${...} substitution")
        if m is None:
            if braced:
                raise _Problem("bad substitution: ${ must be followed by a variable name")
            return "$"
        name, self.i = m[0], m.end()
        value = self.lookup(name)
        if not braced:
            return value or ""
        op = self._next()
        if op == "}":
            return value or ""
        colon = op == ":"
        op = self._next() if colon else op
        if not op:
            raise _Problem("missing '}' in a ${...} substitution")
        if op not in ("-", "+", "?"):
            raise _Problem(f"unsupported modifier ({':' if colon else ''}{op}) in ${{{name}...}}: Corral supports "
                           ":-, -, :+, +, :? and ?")
        sub: list[str] = []
        self._run(sub, False, stop="}")
        word = "".join(sub)
        is_set = value is not None and (value != "" or not colon)
        if op == "-":
            return value if is_set and value is not None else word
        if op == "+":
            return word if is_set else ""
        if value is None:
            raise _Problem(f"{name}: {word or 'is not allowed to be unset'}")
        if not is_set:
            raise _Problem(f"{name}: {word or 'is not allowed to be empty'}")
        return value
