"""E2B template builds (the SDK's ``Template.build()``) on Corral's own builder.

The SDK's flow: ``POST /v3/templates`` names the template and gets a build id; for each ``COPY`` it
asks whether the files (by the hash the SDK computed) are already here and, if not, uploads a tar of
them to the URL we answer; ``POST /v2/templates/{id}/builds/{buildID}`` sends the steps; then it polls
the build's status with its log entries. Here a template's E2B ``templateID`` is its Corral name, the
steps become builder instructions (``translate``), the uploaded tars become the build context, and
the build is an ordinary Corral build (same cache, records, logs and sandboxes).

Uploads are kept per API key (a caller could send any tar under any hash: one key's files never
serve another's build); an upload link is signed (HMAC with the server's secret, an hour), since the
SDK sends no API key with the upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from corral.service.auth import Principal
from corral.service.builds import MAX_CONTEXT_BYTES, BuildRequest, BuildService, Plan, read_from
from corral.service.e2b_models import ENVD_VERSION, TEMPLATE_ALIASES, template_alias
from corral.service.errors import Forbidden, InvalidRequest, NotFound, TooLarge, TooMany
from corral.service.templates import NAME, TemplateInfo, Templates
from corral.store.models import BuildRow
from corral.store.repo import iso
from corral.templates.bases import BaseRef, base_of
from corral.templates.instructions import (
    Copy,
    Dockerfile,
    DockerfileError,
    Env,
    From,
    Instruction,
    Run,
    User,
    Workdir,
)

FILES_HASH = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
UPLOAD_SECONDS = 3600  # an upload link's life (the SDK's own upload timeout is one hour)
REQUEST_SECONDS = 3600  # a requested build that was never started is forgotten after this
E2B_USER, E2B_HOME = "user", "/home/user"  # where an E2B build's steps start (its base step's defaults)
E2B_IMAGES = {"e2bdev/base": "base", "e2bdev/code-interpreter": "code-interpreter"}
ADD_USER = f"""
set -e
id -u {E2B_USER} >/dev/null 2>&1 && exit 0
shell=/bin/sh; [ -x /bin/bash ] && shell=/bin/bash
if command -v useradd >/dev/null 2>&1; then exec useradd --create-home --shell "$shell" {E2B_USER}; fi
if command -v adduser >/dev/null 2>&1; then exec adduser -D -s "$shell" {E2B_USER}; fi
# neither (a bare busybox): the entries by hand, with the shell's builtins
has() {{  # whether field $2 (1 or 3) of a line of file $1 is $3
  [ -f "$1" ] || return 1
  while IFS=: read -r f1 f2 f3 rest || [ -n "$f1" ]; do
    if [ "$2" = 1 ]; then v=$f1; else v=$f3; fi
    [ "$v" = "$3" ] && return 0
  done < "$1"
  return 1
}}
ends_line() {{  # a last line without its newline gets one
  [ -s "$1" ] || return 0
  partial=
  while IFS= read -r line || {{ [ -n "$line" ] && partial=1; }}; do :; done < "$1"
  if [ -n "$partial" ]; then echo >> "$1"; fi
}}
has /etc/passwd 1 {E2B_USER} && exit 0
uid=1000
while has /etc/passwd 3 $uid || has /etc/group 3 $uid; do uid=$((uid + 1)); done
ends_line /etc/passwd
echo "{E2B_USER}:x:$uid:$uid::{E2B_HOME}:$shell" >> /etc/passwd
if ! has /etc/group 1 {E2B_USER}; then ends_line /etc/group; echo "{E2B_USER}:x:$uid:" >> /etc/group; fi
tool() {{ if command -v "$1" >/dev/null 2>&1; then "$@"; else busybox "$@"; fi; }}
tool mkdir -p {E2B_HOME}
tool chown "$uid:$uid" {E2B_HOME}
"""
MAX_LOG_ENTRIES = 100  # per status answer, as E2B's API
MAX_PENDING = 100  # announced builds per key
MAX_STEPS = 1000
KEY_UPLOAD_BYTES = 4 * MAX_CONTEXT_BYTES  # the files one key keeps uploaded (in flight ones counted)
PRUNE_SECONDS = 3600  # how often uploads are pruned while serving
MAX_MESSAGE = 2048  # characters of one log entry
MAX_KEPT_BYTES = 4 << 20  # of log entries a status keeps per build; past them only errors
MAX_LOGS = 16  # builds whose converted log is kept (the most recently polled)
MAX_FILES = 10_000  # uploads a key keeps
BLOCK = 4096  # a stored upload counts whole blocks
KEEP_UPLOADS_DAYS = 7  # an upload no build used for this long is removed (at start; then by uploads)


@dataclass
class Requested:
    """A build announced by ``POST /v3/templates`` and not started yet."""

    template: str
    key_id: str
    cpu: float | None
    memory_mb: int | None
    at: float


@dataclass(frozen=True)
class Translated:
    """The E2B steps as a Corral build: the instructions, their display (one line each), the
    archives the COPY steps need, and the E2B step each build step came from (``"base"``, ``"1"``…)."""

    dockerfile: Dockerfile
    text: str
    hashes: tuple[str, ...]
    origin: tuple[str, ...]
    no_cache: bool  # the whole template is forced
    force_from: int | None  # else the first build step a forced E2B step made (it and the later ones run)


def translate(body: dict[str, Any]) -> Translated:
    """``TemplateBuildStartV2`` → builder instructions; raises InvalidRequest naming the bad step.

    As E2B builds do, the steps start as ``user`` in ``/home/user`` (made first in an image that has no
    such user); a RUN's own user holds for that step only; RUN is ``bash -c`` (E2B runs steps through
    bash; ``sh -c`` in an image without bash); ENV values are literal."""
    if body.get("fromImageRegistry"):
        raise InvalidRequest("fromImageRegistry: registry credentials are not supported by Corral; "
                             "use a public image or a template")
    image, template = body.get("fromImage"), body.get("fromTemplate")
    if bool(image) == bool(template):
        raise InvalidRequest("give one of fromImage and fromTemplate")
    lines: list[str] = []
    steps: list[Instruction] = []
    origin: list[str] = []
    hashes: list[str] = []

    def add(kind: type[Instruction], text: str, step: str, **fields: Any) -> None:
        lines.append(text.replace("\r", "\\r").replace("\n", "\\n"))
        steps.append(kind(line=len(lines), **fields))
        origin.append(step)

    source = _text(template, "fromTemplate") if template else _text(image, "fromImage")
    if template:
        bare = source.removesuffix(":default").removesuffix(":latest")
        name = TEMPLATE_ALIASES.get(bare, bare)
    else:
        name = E2B_IMAGES.get(source.removesuffix(":latest"), source)
    try:
        base = base_of(name) if template else _image(name)
    except DockerfileError as exc:
        raise InvalidRequest(f"{'fromTemplate' if template else 'fromImage'}: {exc.message}") from None
    if template and base.kind == "oci":
        raise InvalidRequest(f"fromTemplate: {source!r} is not a template name")
    add(From, f"FROM {name}", "base", image=name, base=base)
    if base.kind == "oci":  # as E2B's base step: an image of its own gets the user the steps run as
        add(User, "USER root", "base", user="root")
        add(Run, f"RUN (make the user {E2B_USER!r} unless the image has one)", "base",
            command=("/bin/sh", "-c", ADD_USER), shell_form=False)
    add(User, f"USER {E2B_USER}", "base", user=E2B_USER)
    add(Workdir, f"WORKDIR {E2B_HOME}", "base", path=E2B_HOME)
    user = E2B_USER
    raw_steps = body.get("steps") or []
    if not isinstance(raw_steps, list):
        raise InvalidRequest("steps: must be a list")
    if len(raw_steps) > MAX_STEPS:
        raise InvalidRequest(f"steps: at most {MAX_STEPS} steps")
    no_cache = body.get("force") is True
    force_from: int | None = None
    for number, raw in enumerate(raw_steps, 1):
        where = f"steps[{number - 1}]"
        if not isinstance(raw, dict):
            raise InvalidRequest(f"{where}: must be an object")
        kind = str(raw.get("type", "")).upper()
        args = raw.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise InvalidRequest(f"{where}: args must be a list of strings")
        if raw.get("force") is True and force_from is None:
            force_from = len(steps) - 1  # the next build step's index (steps[0] is FROM)
        step = str(number)
        if kind == "RUN":
            if not args or not args[0].strip():
                raise InvalidRequest(f"{where}: RUN needs a command")
            as_user = args[1] if len(args) > 1 and args[1] else user
            if as_user != user:
                add(User, f"USER {as_user}", step, user=as_user)
            add(Run, f"RUN {args[0]}", step, command=("/bin/bash", "-c", args[0]), shell_form=False,
                sh_without_bash=True)
            if as_user != user:
                add(User, f"USER {user}", step, user=user)
        elif kind == "COPY":
            if len(args) < 2 or not args[0] or not args[1]:
                raise InvalidRequest(f"{where}: COPY needs a source and a destination")
            files_hash = raw.get("filesHash")
            if not isinstance(files_hash, str) or not FILES_HASH.match(files_hash):
                raise InvalidRequest(f"{where}: COPY needs the filesHash of its uploaded files")
            owner = args[2] if len(args) > 2 and args[2] else None
            mode = _mode(args[3], where) if len(args) > 3 and args[3] else None
            add(Copy, f"COPY {args[0]} {args[1]}", step, sources=(args[0],), dest=args[1], chown=owner, chmod=mode)
            hashes.append(files_hash)
        elif kind == "ENV":
            if not args or len(args) % 2:
                raise InvalidRequest(f"{where}: ENV needs name and value pairs")
            pairs = tuple(zip(args[::2], args[1::2], strict=True))
            for key, _ in pairs:
                if not key or "=" in key or "\0" in key:
                    raise InvalidRequest(f"{where}: {key!r} is not a valid variable name")
            add(Env, "ENV " + " ".join(f"{k}={v}" for k, v in pairs), step, pairs=pairs)
        elif kind == "WORKDIR":
            if len(args) != 1 or not args[0]:
                raise InvalidRequest(f"{where}: WORKDIR needs one path")
            add(Workdir, f"WORKDIR {args[0]}", step, path=args[0])
        elif kind == "USER":
            if len(args) != 1 or not args[0]:
                raise InvalidRequest(f"{where}: USER needs one user")
            user = args[0]
            add(User, f"USER {user}", step, user=user)
        else:
            raise InvalidRequest(f"{where}: the step type {kind or '(none)'!r} is not supported "
                                 "(RUN, COPY, ENV, WORKDIR, USER)")
    return Translated(Dockerfile(tuple(steps)), "\n".join(lines) + "\n", tuple(dict.fromkeys(hashes)),
                      tuple(origin[1:]), no_cache, force_from)


def _image(name: str) -> BaseRef:
    """E2B's ``fromImage``, a Docker image: one of Corral's bases where the Dockerfile FROM maps it
    there (``python:3.11``, ``debian:bookworm``), else pulled, a bare name from Docker Hub as Docker
    reads it (``node:20``, ``alpine``: the SDK's ``from_node_image()`` and the like)."""
    try:
        base = base_of(name)
    except DockerfileError:
        base = None
    if base is not None and base.kind != "template":
        return base
    return base_of(name if "/" in name else f"docker.io/library/{name}")


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{field}: must be a non-empty string")
    return value.strip()


def _mode(text: str, where: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise InvalidRequest(f"{where}: COPY mode {text!r} is not an octal number") from None
    if not 0 <= mode <= 0o7777:
        raise InvalidRequest(f"{where}: COPY mode {text!r} is out of range")
    return mode


def _ts(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _level(event: dict[str, Any], text: str) -> str:
    if event.get("stream") == "system" and text.startswith("error:"):
        return "error"
    if event.get("stream") == "system" and text.startswith("warning:"):
        return "warn"
    return "info"


def entries_of(event: dict[str, Any], origin: list[str]) -> list[dict[str, Any]]:
    """One build log event as E2B ``BuildLogEntry`` objects: a line of output each, a line for a step
    that starts, is taken from the cache or fails (``step``: the SDK's step number)."""
    ts = _ts(float(event.get("ts") or time.time()))
    index = event.get("index") if event.get("type") == "step" else event.get("step")
    step = origin[index] if isinstance(index, int) and 0 <= index < len(origin) else None
    out: list[dict[str, Any]] = []

    def add(level: str, message: str) -> None:
        out.append({"timestamp": ts, "level": level, "message": message, **({"step": step} if step else {})})

    if event.get("type") == "log":
        text = str(event.get("text", ""))
        level = _level(event, text)
        for line in text.splitlines():
            add(level, e2b_words(line, origin) if level != "info" else line)
    elif event.get("type") == "step" and event.get("state") in ("running", "cached", "failed"):
        mark = {"running": "", "cached": "CACHED ", "failed": "FAILED "}[event["state"]]
        add("error" if mark == "FAILED " else "info",
            f"{mark}[{int(event.get('index') or 0) + 1}/{len(origin)}] {event.get('instruction', '')}")
    return out


def log_entries(events: list[dict[str, Any]], origin: list[str]) -> list[dict[str, Any]]:
    return [entry for event in events for entry in entries_of(event, origin)]


def e2b_words(text: str, origin: list[str]) -> str:
    """The builder's "line N" (of the steps' display text, whose line 1 is FROM) as the E2B step."""
    def step(match: re.Match[str]) -> str:
        index = int(match.group(1)) - 2
        where = origin[index] if 0 <= index < len(origin) else None
        return f"step {where}" if where and where != "base" else match.group(0)

    return re.sub(r"\bline (\d+)\b", step, text)


def _template(info: TemplateInfo, cpu: float, memory_mb: int, disk_mb: int) -> dict[str, Any]:
    name = template_alias(info.name) or info.name
    created = iso(info.created_at) or _ts(0)
    return {
        "templateID": name, "buildID": info.build_id or "", "cpuCount": max(1, round(info.config.cpu or cpu)),
        "memoryMB": info.config.memory_mb or memory_mb, "diskSizeMB": disk_mb, "public": info.builtin or info.public,
        "aliases": [name], "names": [name], "createdAt": created,
        "updatedAt": iso(info.updated_at) or created, "createdBy": None,
        "lastSpawnedAt": None, "spawnCount": 0, "buildCount": 1 if info.build_id else 0, "envdVersion": ENVD_VERSION,
        "buildStatus": "ready", "isDefault": info.builtin,
    }


@dataclass
class _Log:
    """A build's log as E2B entries, converted once as the log grows (polls read from ``entries``).
    Bounded: messages are cut at ``MAX_MESSAGE`` bytes, and past ``MAX_KEPT_BYTES`` of them only
    errors are kept (``corral template logs`` has everything)."""

    origin: list[str]
    read: int = 0  # bytes of log.ndjson converted
    pending: bytes = b""
    entries: list[dict[str, Any]] = field(default_factory=list)
    kept: int = 0  # bytes of the messages in ``entries``
    dropped: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one reader at a time: ``read`` moves on

    def feed(self, chunk: bytes) -> None:
        self.read += len(chunk)
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            for entry in entries_of(event, self.origin):
                message = entry["message"]
                if len(message) > MAX_MESSAGE:
                    entry["message"] = message = message[:MAX_MESSAGE] + " …"
                if self.kept + len(message) <= MAX_KEPT_BYTES or entry["level"] == "error":
                    self.entries.append(entry)
                    self.kept += len(message)
                else:
                    self.dropped += 1

    def catch_up(self, path: Path) -> None:
        """Convert what the log gained since the last call (in a worker thread, under ``lock``)."""
        while chunk := read_from(path, self.read):
            self.feed(chunk)


@dataclass
class _KeyUploads:
    """One key's uploads: the bytes its stored files take (scanned once, then kept up to date) and
    those being received."""

    stored: int
    files: int
    receiving: int = 0  # uploads open
    in_flight: int = 0  # their bytes so far


class E2BTemplates:
    def __init__(self, data_dir: Path, builds: BuildService, templates: Templates) -> None:
        self.dir = data_dir / "e2b-files"
        self.builds = builds
        self.templates = templates
        self._requested: dict[str, Requested] = {}  # build id → the announced build
        self._secret = secrets.token_bytes(32)  # signs upload links (they die with the server)
        self._uploads: dict[str, _KeyUploads] = {}  # key id → its uploads (while any is being received)
        self._logs: dict[str, _Log] = {}  # build id → its converted log (the most recently polled)
        self._pruned = time.monotonic()

    def prune(self) -> int:
        """Remove uploads no build used for ``KEEP_UPLOADS_DAYS`` and any partial one not being written."""
        removed = 0
        horizon = time.time() - KEEP_UPLOADS_DAYS * 86400
        for path in self.dir.glob("*/*") if self.dir.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                partial = path.name.startswith(".")
                if (partial and path.parent.name not in self._uploads) or path.stat().st_mtime < horizon:
                    path.unlink()
                    removed += 1
        return removed

    # templates
    def listed(self, principal: Principal, cpu: float, memory_mb: int, disk_mb: int) -> list[dict[str, Any]]:
        """``GET /templates``: the templates this key sees, as E2B's ``Template`` objects."""
        return [_template(info, cpu, memory_mb, disk_mb) for info in self.templates.all()
                if self.templates.visible(info, principal)]

    async def delete(self, principal: Principal, template_id: str) -> None:
        """``DELETE /templates/{id}`` (also the SDKs' ``delete_snapshot``): as ``corral template delete``."""
        bare = template_id.removesuffix(":default").removesuffix(":latest")
        await self.builds.delete_template(principal, TEMPLATE_ALIASES.get(bare, bare))

    # names
    def alias(self, principal: Principal, alias: str) -> dict[str, Any]:
        """``GET /templates/aliases/{alias}``: 200 if the caller sees it, 403 if another key owns it."""
        name = TEMPLATE_ALIASES.get(alias, alias)
        if not NAME.match(name) or name not in self.templates.names():
            raise NotFound(f"template {alias!r} does not exist")
        info = self.templates.get(name)
        if not self.templates.visible(info, principal):
            raise Forbidden(f"template {alias!r} belongs to another API key")
        return {"templateID": alias, "public": info.builtin or info.public}

    def request(self, principal: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /v3/templates``: announce a build of ``name`` (or the older ``alias``)."""
        self._expire()
        raw = body.get("name") or body.get("alias")
        name = _text(raw, "name")
        tags = body.get("tags") or []
        if not isinstance(tags, list):
            raise InvalidRequest("tags: must be a list of strings")
        if ":" in name:
            name, _, tag = name.partition(":")
            tags = [*tags, tag]
        if any(t not in ("default", "latest") for t in tags):
            raise InvalidRequest("tags: template tags are not supported by Corral (a template has one build)")
        if "/" in name or not NAME.match(name):
            raise InvalidRequest(f"name: {name!r} is not a valid template name (lowercase letters, digits, "
                                 "'.', '_', '-'; at most 63; no namespace)")
        if name in TEMPLATE_ALIASES or name in self.templates.directories():
            raise InvalidRequest(f"name: {name!r} is a built-in template and can't be rebuilt")
        if name in self.templates.names():
            info = self.templates.get(name)
            if not principal.admin and info.owner_key_id != principal.key_id:
                raise Forbidden(f"the template name {name!r} is taken by another API key")
        cpu, memory = body.get("cpuCount"), body.get("memoryMB")
        for value, field_name in ((cpu, "cpuCount"), (memory, "memoryMB")):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InvalidRequest(f"{field_name}: must be a positive integer")
        if sum(r.key_id == principal.key_id for r in self._requested.values()) >= MAX_PENDING:
            raise TooMany(f"this key has {MAX_PENDING} template builds requested and not started; start or "
                          "let them expire (an hour)")
        cores = os.cpu_count() or 1
        build_id = secrets.token_hex(10)
        self._requested[build_id] = Requested(
            template=name, key_id=principal.key_id,
            cpu=float(min(cpu, cores)) if cpu is not None else None, memory_mb=memory, at=time.monotonic(),
        )
        return {"templateID": name, "buildID": build_id, "names": [name], "aliases": [name],
                "tags": ["default"], "public": False}

    # files
    def _folder(self, key_id: str) -> Path:
        return self.dir / re.sub(r"[^A-Za-z0-9_-]", "_", key_id)

    def _signature(self, key_id: str, files_hash: str, expires: int) -> str:
        message = f"{key_id}\0{files_hash}\0{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def file_link(self, principal: Principal, template_id: str, files_hash: str, base_url: str) -> dict[str, Any]:
        """``GET /templates/{id}/files/{hash}``: whether this key's files of that hash are here, and a
        link to upload them (always given: the SDK's ``force_upload`` sends them again)."""
        self._expire()
        if not FILES_HASH.match(files_hash):
            raise InvalidRequest(f"hash: {files_hash!r} is not a files hash")
        self._own_request(principal, template_id)
        expires = int(time.time()) + UPLOAD_SECONDS
        key = principal.key_id
        url = (f"{base_url.rstrip('/')}/e2b-uploads/{quote(key, safe='')}/{files_hash}/{expires}/"
               f"{self._signature(key, files_hash, expires)}")
        stored = self._folder(key) / files_hash
        present = stored.is_file()
        if present:
            with contextlib.suppress(FileNotFoundError):
                os.utime(stored)  # about to be used: not pruned before the build starts
        return {"present": present, "url": url}

    async def receive(self, key_id: str, files_hash: str, expires: int, signature: str, length: int | None,
                      body: AsyncIterator[bytes]) -> None:
        """The upload behind a link: written aside, then renamed into place (a cut upload leaves nothing).
        A key's stored and incoming files together stay within ``KEY_UPLOAD_BYTES`` and ``MAX_FILES``."""
        if not FILES_HASH.match(files_hash) or not SIGNATURE.match(signature) or not hmac.compare_digest(
                signature, self._signature(key_id, files_hash, expires)):
            raise NotFound("this upload link is not one this server gave")
        if expires < time.time():
            raise NotFound("this upload link has expired: ask for the files' link again")
        if length is not None and length > MAX_CONTEXT_BYTES:
            raise TooLarge(f"the upload is larger than {MAX_CONTEXT_BYTES >> 20} MiB")
        if time.monotonic() - self._pruned > PRUNE_SECONDS and not self._uploads:
            self._pruned = time.monotonic()
            await asyncio.to_thread(self.prune)
        folder = self._folder(key_id)
        uploads = self._uploads.get(key_id)
        if uploads is None:
            await asyncio.to_thread(folder.mkdir, 0o700, True, True)
            stored, files = await asyncio.to_thread(_usage, folder)
            uploads = self._uploads.setdefault(key_id, _KeyUploads(stored, files))
        if uploads.files >= MAX_FILES:
            raise TooMany(f"this key keeps {MAX_FILES} uploads; they are removed {KEEP_UPLOADS_DAYS} days after "
                          "their last build")
        partial = folder / f".{files_hash}.{secrets.token_hex(4)}"
        final = folder / files_hash
        size = 0
        uploads.receiving += 1
        try:
            with await asyncio.to_thread(open, partial, "wb") as out:
                async for chunk in body:
                    size += len(chunk)
                    uploads.in_flight += len(chunk)
                    if size > MAX_CONTEXT_BYTES:
                        raise TooLarge(f"the upload is larger than {MAX_CONTEXT_BYTES >> 20} MiB")
                    if uploads.stored + uploads.in_flight > KEY_UPLOAD_BYTES:
                        raise TooLarge(f"this key's uploaded files would pass {KEY_UPLOAD_BYTES >> 30} GiB; "
                                       f"they are removed {KEEP_UPLOADS_DAYS} days after their last build")
                    await asyncio.to_thread(out.write, chunk)
            replaced = await asyncio.to_thread(_blocks_of, final)
            await asyncio.to_thread(os.replace, partial, final)
            uploads.stored += _blocks(size) - replaced
            uploads.files += replaced == 0
        finally:
            uploads.in_flight -= size
            uploads.receiving -= 1
            if uploads.receiving == 0:  # rescanned by the next upload: prune may have removed files
                self._uploads.pop(key_id, None)
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, partial)

    # builds
    def _own_request(self, principal: Principal, template_id: str) -> None:
        """NotFound unless the caller announced a build of ``template_id`` or can see that template."""
        if any(r.template == template_id and r.key_id == principal.key_id for r in self._requested.values()):
            return
        self.templates.for_caller(template_id, principal)

    async def start(self, principal: Principal, template_id: str, build_id: str, body: dict[str, Any]) -> None:
        """``POST /v2/templates/{id}/builds/{buildID}``: translate the steps and start the build."""
        req = self._requested.get(build_id)
        if req is None or req.template != template_id or req.key_id != principal.key_id:
            raise NotFound(f"build {build_id} of template {template_id!r} was not requested (POST /v3/templates)")
        plan = translate(body)
        folder = self._folder(principal.key_id)
        archives = []
        for files_hash in plan.hashes:
            path = folder / files_hash
            if not path.is_file():
                raise InvalidRequest(f"the files of hash {files_hash} were not uploaded "
                                     f"(GET /templates/{template_id}/files/{files_hash} first)")
            os.utime(path)  # in use: kept another KEEP_UPLOADS_DAYS
            archives.append(path)
        start_cmd, ready_cmd = body.get("startCmd"), body.get("readyCmd")
        for value, field_name in ((start_cmd, "startCmd"), (ready_cmd, "readyCmd")):
            if value is not None and not isinstance(value, str):
                raise InvalidRequest(f"{field_name}: must be a string")
        request = BuildRequest(
            name=req.template, dockerfile=plan.text, cpu=req.cpu, memory_mb=req.memory_mb,
            no_cache=plan.no_cache, force_from=plan.force_from, start_cmd=start_cmd or None,
            ready_cmd=ready_cmd or None,
        )
        await self.builds.submit(principal, request, None, Plan(
            plan.dockerfile, tuple(archives), build_id, {"e2b_steps": list(plan.origin)}))
        self._requested.pop(build_id, None)

    async def status(self, principal: Principal, template_id: str, build_id: str,
                     offset: int, limit: int) -> dict[str, Any]:
        """``GET /templates/{id}/builds/{buildID}/status``: its state and log entries from ``offset``."""
        out: dict[str, Any] = {"templateID": template_id, "buildID": build_id, "logs": [], "logEntries": []}
        req = self._requested.get(build_id)
        if req is not None and req.template == template_id and req.key_id == principal.key_id:
            return {**out, "status": "waiting"}
        try:
            row = await self.builds.get(principal, build_id)
        except NotFound:
            raise NotFound(f"build {build_id} of template {template_id!r} not found") from None
        if row.template != template_id:
            raise NotFound(f"build {build_id} of template {template_id!r} not found")
        live = self.builds.running(build_id)  # until its log is closed: the last lines may still come
        log = await self._read(row)
        status = "building" if live else {"building": "building", "ready": "ready"}.get(row.state, "error")
        start = max(offset, 0)
        out.update(status=status, logEntries=log.entries[start:start + max(1, min(limit, MAX_LOG_ENTRIES))])
        if status == "error":
            out["reason"] = _reason(row, log.origin, log.entries)
        return out

    async def _read(self, row: BuildRow) -> _Log:
        log = self._logs.pop(row.id, None) or _Log(list((row.options or {}).get("e2b_steps") or []))
        self._logs[row.id] = log  # most recently polled last
        while len(self._logs) > MAX_LOGS:
            self._logs.pop(next(iter(self._logs)))
        async with log.lock:
            await asyncio.to_thread(log.catch_up, self.builds.log_path(row.id))
        return log

    def _expire(self) -> None:
        now = time.monotonic()
        for build_id, req in list(self._requested.items()):
            if req.at + REQUEST_SECONDS < now:
                self._requested.pop(build_id, None)


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _blocks_of(path: Path) -> int:
    try:
        return _blocks(path.stat().st_size)
    except FileNotFoundError:
        return 0


def _usage(folder: Path) -> tuple[int, int]:
    """The bytes (whole blocks) and count of a key's stored uploads (partial ones are counted in flight)."""
    total = count = 0
    for entry in os.scandir(folder):
        if entry.name.startswith("."):
            continue
        with contextlib.suppress(FileNotFoundError):
            total += _blocks(entry.stat(follow_symlinks=False).st_size)
            count += 1
    return total, count


def _reason(row: BuildRow, origin: list[str], entries: list[dict[str, Any]]) -> dict[str, Any]:
    reason: dict[str, Any] = {"message": e2b_words(row.error or "the build failed", origin),
                              "logEntries": entries[-20:]}
    detail = row.error_detail or {}
    index = detail.get("step") if isinstance(detail, dict) else None
    if isinstance(index, int) and 0 <= index < len(origin):
        reason["step"] = origin[index]
    elif index is None:
        reason["step"] = "base" if not any(s.get("state") not in (None, "pending") for s in row.steps or []) \
            else "finalize"
    tail = detail.get("output_tail") if isinstance(detail, dict) else None
    if tail:
        reason["message"] = f"{reason['message']}\n{tail}"
    return reason
