"""The build context: the directory COPY and ADD read from, its ``.dockerignore``, and layer cache keys.

Sources are matched with Docker's glob rules (``*`` and ``?`` never cross ``/``, ``[...]`` classes,
``\\`` escapes) plus ``**`` for any number of directories; ``.dockerignore`` follows Docker's
patternmatcher (last match wins, ``!`` re-includes, a pattern that matches a directory excludes what is
under it). Everything the context hands out is inside its root: a source written with ``..`` that leaves
the root, an absolute source, or a symlink whose target lies outside the root is refused with
``ContextError``, never followed. (Docker instead clamps ``..`` and ``/`` to the context root; refusing
says what is wrong.) Symlinks inside a copied directory are kept as symlinks; a source that *is* a
symlink to something inside the context is followed, as in Docker.

The context must not change during a build (the builder unpacks an upload into a private directory).
A ``BuildContext`` holds no open resources and is safe to share between threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from corral.templates.instructions import Instruction

_GLOB = re.compile(r"[*?\[\\]")
_CHUNK = 1 << 20


class ContextError(ValueError):
    """A COPY/ADD source can't be used: outside the context, missing, excluded, or not a plain file."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        self.message = message
        super().__init__(f"{source}: {message}")


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a Docker path pattern (relative, ``/``-separated) into a regex over relative paths."""
    out, i, n = ["^"], 0, len(pattern)
    while i < n:
        ch = pattern[i]
        i += 1
        if ch == "*" and pattern[i:i + 1] == "*":
            i += 1 + (pattern[i + 1:i + 2] == "/")
            out.append(".*" if i >= n else "(?:.*/)?")
        elif ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            out.append(re.escape(pattern[i]) if i < n else re.escape("\\"))
            i += 1
        elif ch == "[":
            end = pattern.find("]", i + 1 if pattern[i:i + 1] in ("^", "!") else i)
            if end < 0 or end == i:
                raise ValueError(f"bad pattern {pattern!r}: unclosed [")
            body = pattern[i:end]
            body = ("^" + body[1:]) if body[:1] in ("^", "!") else body
            out.append("(?!/)[" + body.replace("\\", "\\\\").replace("[", "\\[") + "]")
            i = end + 1
        else:
            out.append(re.escape(ch))
    out.append("$")
    try:
        return re.compile("".join(out), re.S)
    except re.error as e:
        raise ValueError(f"bad pattern {pattern!r}: {e}") from None


def parse_dockerignore(text: str) -> list[str]:
    """The patterns of a ``.dockerignore``: comments and blank lines dropped, each pattern cleaned."""
    lines = text.removeprefix("\ufeff").splitlines()
    return [p for line in lines if not line.startswith("#") and (p := _clean(line))]


def _clean(pattern: str) -> str:
    pattern = pattern.strip()
    invert = pattern.startswith("!")
    pattern = pattern[1:].strip() if invert else pattern
    if not pattern:
        return ""
    pattern = posixpath.normpath(pattern)
    pattern = pattern[1:] if len(pattern) > 1 and pattern.startswith("/") else pattern
    return ("!" if invert else "") + pattern


@dataclass(frozen=True)
class Entry:
    """One thing a COPY copies: ``rel`` is its ``/``-separated path in the context."""

    rel: str
    path: Path
    kind: Literal["file", "dir", "symlink"]
    mode: int  # permission bits (stat.S_IMODE)
    target: str | None = None  # a symlink's target, as written


MAX_DOCKERIGNORE = 1 << 20  # bytes


def _read_dockerignore(path: Path) -> str | None:
    """The text of a context's ``.dockerignore`` (None: it has none). Uploaded by a caller, it is
    read as a plain file of the context only: never through a symlink (that would read a file of
    the host), a FIFO, or more than ``MAX_DOCKERIGNORE`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symlink
        raise ContextError(".dockerignore", "must be a regular file of the context, not a link") from exc
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            return None  # a directory of that name: no ignore file (as before)
        if not stat.S_ISREG(mode):
            raise ContextError(".dockerignore", "must be a regular file of the context")
        data = os.read(fd, MAX_DOCKERIGNORE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_DOCKERIGNORE:
        raise ContextError(".dockerignore", f"is larger than {MAX_DOCKERIGNORE} bytes")
    return data.decode("utf-8", "replace")


class BuildContext:
    """The directory at ``root`` with ``dockerignore`` patterns (as from ``parse_dockerignore``)."""

    def __init__(self, root: Path, dockerignore: Sequence[str] = ()) -> None:
        self.root = Path(root)
        self._real = os.path.realpath(self.root)
        rules = []
        for raw in dockerignore:
            pattern = _clean(raw)
            if pattern:
                try:
                    rules.append((pattern.startswith("!"), glob_regex(pattern.removeprefix("!"))))
                except ValueError as e:
                    raise ContextError(".dockerignore", str(e)) from None
        self._rules = rules
        self._exceptions = any(exclusion for exclusion, _ in rules)

    @classmethod
    def load(cls, root: Path) -> BuildContext:
        """The context at ``root`` with its ``.dockerignore``, if it has one."""
        text = _read_dockerignore(Path(root) / ".dockerignore")
        return cls(root, parse_dockerignore(text) if text is not None else ())

    def ignored(self, rel: str) -> bool:
        """Whether ``.dockerignore`` excludes ``rel`` (Docker's MatchesOrParentMatches)."""
        parents = rel.split("/")[:-1]
        matched = False
        for exclusion, regex in self._rules:
            if exclusion != matched:
                continue
            match = bool(regex.match(rel)) or any(
                regex.match("/".join(parents[:k])) for k in range(1, len(parents) + 1))
            if match:
                matched = not exclusion
        return matched

    def resolve_sources(self, patterns: Iterable[str]) -> list[Path]:
        """The paths the COPY sources ``patterns`` name, in order, each pattern's matches sorted.

        A literal source must exist and not be excluded; a pattern may match nothing (so
        ``COPY requirements.tx[t] ./`` is optional), but not all of them may. Raises ``ContextError``.
        """
        found: dict[str, Path] = {}
        patterns = list(patterns)
        for source in patterns:
            rel = self._relative(source)
            if not _GLOB.search(rel):
                self._check(source, rel, must_exist=True)
                matches = [rel]
            else:
                matches = sorted(self._glob(source, rel))
            found.update((m, self.root / m) for m in matches if m not in found)
        if not found:
            raise ContextError(" ".join(patterns), "no source files were specified (nothing matched)")
        return list(found.values())

    def _relative(self, source: str) -> str:
        if not source.strip() or "\0" in source:
            raise ContextError(source, "empty or malformed source path")
        if source.startswith("/"):
            raise ContextError(source, "absolute source path: COPY sources are relative to the build context")
        rel = posixpath.normpath(source)
        if rel == ".." or rel.startswith("../"):
            raise ContextError(source, "outside the build context (..)")
        return rel

    def _check(self, source: str, rel: str, must_exist: bool) -> bool:
        """Refuse ``rel`` if it is excluded or resolves outside the root; False if it doesn't exist."""
        path = self.root / rel
        if not os.path.lexists(path):
            if must_exist:
                raise ContextError(source, "not found in the build context")
            return False
        if rel != "." and self.ignored(rel):
            if must_exist:
                raise ContextError(source, "excluded by .dockerignore")
            return False
        real = os.path.realpath(path)
        if real != self._real and not real.startswith(self._real + os.sep):  # (the host path is not shown)
            raise ContextError(source, "resolves outside the build context (through a symlink)")
        return True

    def _glob(self, source: str, rel: str) -> Iterator[str]:
        parts = rel.split("/")
        fixed = next(k for k, p in enumerate(parts) if _GLOB.search(p))
        start = "/".join(parts[:fixed]) or "."
        depth = None if "**" in rel else len(parts) - fixed
        try:
            regex = glob_regex(rel)
        except ValueError as e:
            raise ContextError(source, str(e)) from None
        if start != "." and (not self._check(source, start, must_exist=False) or not (self.root / start).is_dir()):
            return
        yield from self._walk_matches(source, start, regex, depth)

    def _listing(self, top: str) -> list[os.DirEntry[str]]:
        try:
            return sorted(os.scandir(self.root / top), key=lambda e: e.name)
        except OSError as e:
            raise ContextError(top, f"can't be read ({e.strerror})") from None

    def _walk_matches(self, source: str, top: str, regex: re.Pattern[str], depth: int | None) -> Iterator[str]:
        for item in self._listing(top):
            rel = item.name if top == "." else f"{top}/{item.name}"
            skipped = self.ignored(rel)
            if regex.match(rel) and not skipped:
                self._check(source, rel, must_exist=True)
                yield rel
            if item.is_dir(follow_symlinks=False) and (depth is None or depth > 1) and (
                    not skipped or self._exceptions):
                yield from self._walk_matches(source, rel, regex, None if depth is None else depth - 1)

    def entries(self, paths: Iterable[Path]) -> list[Entry]:
        """Everything under ``paths`` (from ``resolve_sources``) a COPY copies, sorted by ``rel``, deduplicated.

        A source that is a symlink is followed; symlinks below it are entries of their own. Excluded
        files are left out; a symlink pointing outside the context or a special file raises ``ContextError``.
        """
        seen: dict[str, Entry] = {}
        for path in paths:
            rel = self._relative(os.path.relpath(Path(path), self.root) if Path(path).is_absolute() else str(path))
            self._check(rel, rel, must_exist=True)
            real = Path(os.path.realpath(self.root / rel))
            try:
                st = os.stat(real)
            except OSError as e:
                raise ContextError(rel, f"can't be read ({e.strerror})") from None
            seen.setdefault(rel, self._entry(rel, st, real))
            if stat.S_ISDIR(st.st_mode):
                for entry in self._walk(rel):
                    seen.setdefault(entry.rel, entry)
        return [seen[k] for k in sorted(seen)]

    def _walk(self, top: str) -> Iterator[Entry]:
        for item in self._listing(top):
            rel = f"{top}/{item.name}" if top != "." else item.name
            skipped = self.ignored(rel)
            if not skipped:
                yield self._entry(rel, item.stat(follow_symlinks=False), self.root / rel)
            if item.is_dir(follow_symlinks=False) and (not skipped or self._exceptions):
                yield from self._walk(rel)

    def _entry(self, rel: str, st: os.stat_result, path: Path) -> Entry:
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            self._check(rel, rel, must_exist=True)
            return Entry(rel, path, "symlink", mode, os.readlink(path))
        if stat.S_ISDIR(st.st_mode):
            return Entry(rel, path, "dir", mode)
        if not stat.S_ISREG(st.st_mode):
            raise ContextError(rel, "not a regular file, directory or symlink (sockets, pipes and devices "
                                    "can't be copied)")
        return Entry(rel, path, "file", mode)

    def content_hash(self, paths: Iterable[Path]) -> str:
        """``sha256:<hex>`` over the ``entries`` of ``paths``: for each, sorted by path, its kind, relative
        path, permission bits and content digest (a symlink: its target). Not mtimes, not owners."""
        digest = hashlib.sha256(b"corral-context-v1\0")
        for entry in self.entries(paths):
            body = _file_digest(entry) if entry.kind == "file" else (entry.target or "")
            for part in (entry.kind, entry.rel, f"{entry.mode:o}", body):
                digest.update(os.fsencode(part) + b"\0")
        return "sha256:" + digest.hexdigest()


def _file_digest(entry: Entry) -> str:
    """sha256 of a regular file, opened without following a symlink (the context must not change)."""
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ContextError(entry.rel, "changed while being read (no longer a regular file)")
            digest = hashlib.sha256()
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise ContextError(entry.rel, f"can't be read ({e.strerror})") from None
    return digest.hexdigest()


def cache_key(
    parent: str,
    instruction: Instruction,
    copied_hash: str | None,
    build_args: Mapping[str, str] | None = None,
) -> str:
    """``sha256:<hex>`` naming the layer one build step makes: the same inputs give the same layer.

    It hashes the canonical JSON (sorted keys, no spaces, UTF-8) of exactly these:
    ``{"format": "corral-layer-v1", "parent": parent, "instruction": instruction.key(),
    "copied": copied_hash, "build_args": [[name, value], ...] sorted by name}`` where ``parent`` is the
    key (or base digest) of the layer below, ``instruction.key()`` is the instruction's keyword and its
    fields after substitution (never its line number), ``copied_hash`` is ``content_hash`` of a COPY/ADD's
    sources (None for other steps) and ``build_args`` are the ARG values in scope (``Run.build_args``).
    """
    document = {
        "format": "corral-layer-v1",
        "parent": parent,
        "instruction": instruction.key(),
        "copied": copied_hash,
        "build_args": sorted([k, v] for k, v in (build_args or {}).items()),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
