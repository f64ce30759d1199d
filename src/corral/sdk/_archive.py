"""What ``Template.build`` uploads: the Dockerfile's text, and the build context packed for the server.

``dockerfile_text`` decides whether an argument is a path or the Dockerfile itself. ``pack`` writes the
whole ``multipart/form-data`` body (the build options, then the context as a gzip tar) into an
anonymous temp file, so a large context never sits in memory and the upload has a Content-Length.
The context honours ``.dockerignore`` with the server's own matcher (the server checks again), keeps
symlinks as symlinks, and skips sockets, pipes and devices. Blocking: the async face runs it in a thread.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import re
import secrets
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ._errors import InvalidArgumentException, NotEnoughSpaceException

__all__ = ["Upload", "context_dir", "dockerfile_text", "is_dockerfile_text", "pack"]

PathLike = str | os.PathLike[str]


def is_dockerfile_text(value: str) -> bool:
    """A string is the Dockerfile itself if it has a newline or starts with ``FROM`` or a comment."""
    head = value.lstrip()
    return "\n" in value or head.startswith("#") or re.match(r"(?i)from\s", head) is not None


def dockerfile_text(dockerfile: PathLike) -> str:
    """The Dockerfile's text: ``dockerfile`` itself, or the file it names (``Path`` is always a path)."""
    if isinstance(dockerfile, str) and is_dockerfile_text(dockerfile):
        return dockerfile
    path = Path(dockerfile)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problem = "not found (pass a path to a Dockerfile, or the Dockerfile's text)"
    except IsADirectoryError:
        problem = "is a directory, not a Dockerfile"
    except UnicodeDecodeError:
        problem = "is not UTF-8 text"
    except OSError as exc:
        problem = f"can't be read ({exc.strerror or exc})"
    raise InvalidArgumentException(f"Dockerfile {str(path)!r} {problem}")


def context_dir(context: PathLike) -> Path:
    root = Path(context)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise InvalidArgumentException(f"build context {str(root)!r} {what}")
    return root


@dataclass
class Upload:
    """A request body in a temp file, read from its start; ``close()`` deletes it."""

    file: IO[bytes]
    size: int
    content_type: str
    entries: int
    """How many context entries it holds."""

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _rules(root: Path) -> Any:
    """The server's ``.dockerignore`` matcher for ``root`` (imported here: the SDK rarely needs it)."""
    from corral.templates.context import BuildContext, ContextError, parse_dockerignore

    ignore = root / ".dockerignore"
    try:
        patterns = parse_dockerignore(ignore.read_text(encoding="utf-8")) if ignore.is_file() else []
        return BuildContext(root, patterns), any(p.startswith("!") for p in patterns)
    except (ContextError, OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentException(f"build context {str(root)!r}: .dockerignore: {exc}") from None


def walk(root: Path) -> Iterator[tuple[str, Path]]:
    """``(relative path, path)`` of what the context sends, parents before children, sorted by name.

    Excluded entries are skipped (an excluded directory is still searched when a ``!`` pattern may
    re-include something below it); ``.dockerignore`` itself is always sent, as Docker does. A symlink
    whose target leaves the context (absolute, or ``..`` past the root) is refused: the server's
    unpacker would refuse the whole archive, and a COPY could not use it anyway.
    """
    rules, reinclusions = _rules(root)

    def visit(top: Path, prefix: str) -> Iterator[tuple[str, Path]]:
        for item in sorted(os.scandir(top), key=lambda e: e.name):
            rel = prefix + item.name
            skipped = rules.ignored(rel) and rel != ".dockerignore"
            mode = item.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                if not skipped:
                    _check_link(root, rel, os.readlink(item.path))
                    yield rel, Path(item.path)
            elif stat.S_ISDIR(mode):
                if not skipped:
                    yield rel, Path(item.path)
                if not skipped or reinclusions:
                    yield from visit(Path(item.path), rel + "/")
            elif stat.S_ISREG(mode) and not skipped:
                yield rel, Path(item.path)
            # sockets, pipes and devices can't be copied into a template: not sent

    return visit(root, "")


def _check_link(root: Path, rel: str, target: str) -> None:
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise InvalidArgumentException(
            f"build context {str(root)!r}: symlink {rel!r} points outside the context ({target!r}); "
            "list it in .dockerignore or make it relative and inside the context"
        )


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # the server makes everything owned by the sandbox's root anyway; don't leak local user names
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = int(info.mtime)  # a float mtime costs an extra PAX header per entry
    return info


def pack(root: Path | None, build: dict[str, Any]) -> Upload:
    """The multipart body: a ``build`` field (the JSON options) and, with ``root``, a ``context`` tar.gz.

    Raises ``InvalidArgumentException`` naming the file when part of the context can't be read.
    """
    boundary = "corral-" + secrets.token_hex(16)
    out = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the caller in the Upload
    entries = 0
    try:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="build"\r\n\r\n'.encode())
        out.write(json.dumps(build).encode() + b"\r\n")
        if root is not None:
            out.write(
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"context\"; filename=\"context.tar.gz\""
                "\r\nContent-Type: application/gzip\r\n\r\n".encode()
            )
            # level 1: most of gzip's gain on source trees at a fraction of the CPU (the server is near)
            with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1, format=tarfile.PAX_FORMAT) as tar:
                for rel, path in walk(root):
                    tar.add(path, arcname=rel, recursive=False, filter=_normalised)
                    entries += 1
            out.write(b"\r\n")
        out.write(f"--{boundary}--\r\n".encode())
        size = out.tell()
        out.seek(0)
    except OSError as exc:
        out.close()
        if exc.errno == errno.ENOSPC:
            raise NotEnoughSpaceException(f"no space left for the packed build context: {exc}") from None
        where = f"{exc.filename}: " if exc.filename else ""
        raise InvalidArgumentException(
            f"build context {str(root)!r}: {where}{exc.strerror or exc}"
        ) from None
    except BaseException:
        out.close()
        raise
    return Upload(out, size, f"multipart/form-data; boundary={boundary}", entries)
