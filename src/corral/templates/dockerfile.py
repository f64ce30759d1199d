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
silently ignored. ``MAINTAINER`` becomes ``LABEL maintainer=…``. This module is the parser; words and
substitution are in ``words``, FROM images in ``bases``, the typed results in ``instructions`` (immutable,
safe to share between threads).
"""

from __future__ import annotations

import difflib
import json
import platform
import re
from collections.abc import Callable, Mapping

from corral.templates.bases import DEFAULT_PATH, BaseRef, base_of
from corral.templates.instructions import (
    HEREDOC,
    Arg,
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
    Problem,
    Run,
    User,
    Workdir,
)
from corral.templates.words import Lexer, Lookup, first_word, raw_words

__all__ = [  # what corral.templates.dockerfile has always offered; each lives in its own module
    "DEFAULT_PATH", "Arg", "BaseRef", "Cmd", "Copy", "Dockerfile", "DockerfileError", "Entrypoint", "Env", "Expose",
    "From", "Heredoc", "Instruction", "Label", "Run", "User", "Workdir", "base_of", "parse",
]

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

_PORT = re.compile(r"^(\d+)(?:-(\d+))?(?:/(tcp|udp|sctp))?$", re.I)
_STAGE = re.compile(r"^[a-z][a-z0-9._-]*$")


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
            except Problem as e:
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
        return Lexer(text, self.escape, lookup or self._scope()).words(split=False)[0]

    # -- instructions ------------------------------------------------------------------------------

    def _instruction(self, line: int, text: str) -> None:
        m = re.match(r"(\S+)\s*(.*)$", text.strip())
        assert m is not None  # the line is not blank
        keyword, rest = m[1].upper(), m[2]
        if keyword in UNSUPPORTED:
            raise Problem(f"{keyword} is not supported by Corral yet ({UNSUPPORTED[keyword]})")
        if keyword not in SUPPORTED:
            close = difflib.get_close_matches(keyword, [*SUPPORTED, *UNSUPPORTED], n=1)
            raise Problem(f"unknown instruction: {m[1]}" + (f" (did you mean {close[0]}?)" if close else ""))
        if self.from_line is None and keyword not in ("FROM", "ARG"):
            raise Problem(f"{keyword} before FROM: a Dockerfile starts with FROM (only ARG may come first)")
        flags, rest = self._flags(rest)
        allowed = {"FROM": {"platform"}, "COPY": {"chown", "chmod", "link", "from"},
                   "ADD": {"chown", "chmod", "link", "from"}}.get(keyword, set())
        for name in flags:
            if name not in allowed:
                raise Problem(f"{keyword} --{name} is not supported by Corral yet")
        if not rest:
            raise Problem(f"{keyword} requires at least one argument")
        getattr(self, f"_{keyword.lower()}")(line, rest, flags)

    def _flags(self, rest: str) -> tuple[dict[str, str | None], str]:
        flags: dict[str, str | None] = {}
        while rest.startswith("--"):
            token, rest = first_word(rest, self.escape)
            rest = rest.lstrip()
            if token == "--":
                break
            name, eq, value = token[2:].partition("=")
            if name.lower() in flags:
                raise Problem(f"--{name} given twice")
            flags[name.lower()] = value if eq else None
        return flags, rest.strip()

    def _from(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        if self.from_line is not None:
            raise Problem(f"multi-stage builds (a second FROM; the first is on line {self.from_line}) are not "
                           "supported by Corral yet")
        words = rest.split()
        if not (len(words) == 1 or (len(words) == 3 and words[1].lower() == "as")):
            raise Problem("FROM takes an image and optionally AS name")
        image = self._word(words[0])
        try:
            base = base_of(image)
        except DockerfileError as e:
            raise Problem(e.message) from None
        alias = words[2].lower() if len(words) == 3 else None
        if alias is not None and not _STAGE.match(alias):
            raise Problem(f"invalid stage name {words[2]!r}: letters, digits, '.', '_' and '-', from a letter")
        plat = flags.get("platform")
        self.from_line = line
        self.env = dict(self.base_env(base)) if self.base_env else {"PATH": DEFAULT_PATH}
        self.out.append(From(line=line, image=image, base=base, alias=alias,
                             platform=self._word(plat, self._global) if plat is not None else None))

    def _arg(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        parsed = []
        for word in raw_words(rest, self.escape):
            name, eq, default = word.partition("=")
            name = self._word(name)
            if not name:
                raise Problem("ARG names can not be blank")
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
        words = raw_words(rest, self.escape)
        if "=" not in words[0]:  # legacy "ENV key value with spaces"
            parts = re.split(r"\s+", rest, maxsplit=1)
            if len(parts) < 2:
                raise Problem(f"{keyword} must have two arguments (or name=value pairs)")
            raw = [(parts[0], parts[1])]
        else:
            for w in words:
                if "=" not in w:
                    raise Problem(f"can't find = in {w!r}: {keyword} takes name=value pairs")
            raw = [(k, v) for k, _, v in (w.partition("=") for w in words)]
        pairs = tuple((self._word(k), self._word(v)) for k, v in raw)
        if any(not k for k, _ in pairs):
            raise Problem(f"{keyword} names can not be blank")
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
            raise Problem(f"{keyword} is empty after substitution")
        return value

    def _expose(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        ports = []
        for word in rest.split():
            for port in Lexer(word, self.escape, self._stage).words(split=True):
                m = _PORT.match(port)
                lo, hi = (int(m[1]), int(m[2] or m[1])) if m else (0, 0)
                if m is None or not 0 < lo <= hi <= 65535:
                    raise Problem(f"invalid port {port!r}: use PORT, PORT/tcp, PORT/udp or LOW-HIGH")
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
                    raise Problem(f"{keyword} exec form must be a JSON array of strings")
                return tuple(value), False
        return rest, True

    def _run(self, line: int, rest: str, flags: dict[str, str | None]) -> None:
        command, shell = self._exec_or_shell(line, "RUN", rest)
        if not command:
            raise Problem("RUN needs a command")
        heredocs = self._heredocs(raw_words(rest, self.escape), expand=False) if shell else ()
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
            raise Problem(f"{keyword} --from (multi-stage builds) is not supported by Corral yet")
        try:
            value = json.loads(rest) if rest.startswith("[") else None
        except ValueError:
            value = None
        if value is not None and not all(isinstance(v, str) for v in value):
            raise Problem(f"{keyword} JSON form must be an array of strings")
        words = list(value) if value is not None else rest.split()
        inline = [] if value is not None else [w for w in words if (m := HEREDOC.match(w)) and m[3]]
        heredocs = self._heredocs(inline, expand=True)
        if len(words) < 2:
            raise Problem(f"{keyword} requires at least two arguments: sources and a destination")
        if words[-1] in inline:
            raise Problem(f"{keyword} destination can't be a heredoc")
        sources = tuple(self._word(w) for w in words[:-1] if w not in inline)
        dest = self._word(words[-1])
        for s in sources:
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s) or s.startswith("git@"):
                raise Problem(f"{keyword} from a URL ({s}) is not supported by Corral yet; download it in a RUN")
        if len(sources) + len(heredocs) > 1 and not dest.endswith("/"):
            raise Problem(f"with more than one source, the {keyword} destination must be a directory ending in /")
        chmod = flags.get("chmod")
        mode = None
        if chmod is not None:
            chmod = self._word(chmod)
            if not re.fullmatch(r"[0-7]{3,4}", chmod):
                raise Problem(f"invalid --chmod={chmod}: use octal permissions such as 755")
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
            m = HEREDOC.match(word)
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
                    raise Problem(f"unterminated heredoc: no line {name!r} after line {start}")
                self.i += 1
                text = self.lines[self.i - 1]
                if (text.lstrip("\t") if chomp else text) == name:
                    break
                body.append(text + "\n")
            content = "".join(body)
            if expand and not quoted:
                content = Lexer(content, self.escape, self._stage, heredoc=True).words(split=False)[0]
            docs.append(Heredoc(name=name, content=content, chomp=chomp, expand=not quoted))
        return tuple(docs)
