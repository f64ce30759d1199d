"""The values the SDK returns, and their parsing from the server's JSON.

All are frozen dataclasses; parsing is tolerant of extra keys (a newer server may add fields)
and strict about missing required ones (a ``ServerException`` names what is missing).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from ._errors import ServerException, prefix

__all__ = [
    "CommandResult",
    "EntryInfo",
    "FileType",
    "KeyInfo",
    "NetworkInfo",
    "ProcessInfo",
    "SandboxInfo",
    "SandboxMetrics",
    "WriteEntry",
    "parse_entry",
    "parse_key",
    "parse_metrics",
    "parse_network",
    "parse_process",
    "parse_sandbox",
]


class FileType(enum.Enum):
    """What a filesystem entry is (E2B has ``FILE`` and ``DIR``; Corral adds the rest)."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    OTHER = "other"


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox as the server describes it. ``state`` is ``"running"``, ``"ended"`` or ``"failed"``."""

    sandbox_id: str
    template: str
    state: str
    started_at: datetime
    end_at: datetime | None
    """When the sandbox will end (its deadline), if it is running."""
    metadata: dict[str, str]
    cpu: float | None
    memory_mb: int | None
    disk_mb: int | None
    ended_at: datetime | None = None
    """When the sandbox really ended, if it has."""
    end_reason: str | None = None

    @property
    def template_id(self) -> str:
        """E2B's name for ``template``."""
        return self.template


@dataclass(frozen=True)
class NetworkInfo:
    """A sandbox's network: ``mode`` is ``"none"``, ``"internet"`` or ``"allowlist"``; ``dns_queries``
    are the latest names it asked the DNS forwarder for (each with ``name``, ``type``, ``answer``)."""

    mode: str
    allow_out: list[str]
    deny_out: list[str]
    address: str | None
    dns_queries: list[dict[str, Any]]


@dataclass(frozen=True)
class SandboxMetrics:
    """Resource use of a sandbox at the time of the call."""

    cpu_seconds: float
    cpu_count: float
    memory_bytes: int
    memory_limit_bytes: int | None
    disk_bytes: int
    disk_limit_bytes: int | None
    pids: int
    oom_kills: int

    @property
    def mem_used(self) -> int:
        """E2B's name for ``memory_bytes``."""
        return self.memory_bytes

    @property
    def mem_total(self) -> int | None:
        """E2B's name for ``memory_limit_bytes``."""
        return self.memory_limit_bytes

    @property
    def disk_used(self) -> int:
        """E2B's name for ``disk_bytes``."""
        return self.disk_bytes

    @property
    def disk_total(self) -> int | None:
        """E2B's name for ``disk_limit_bytes``."""
        return self.disk_limit_bytes


@dataclass(frozen=True)
class CommandResult:
    """How a command ended: its whole output, exit code and the server's ``error`` (e.g. a timeout)."""

    stdout: str
    stderr: str
    exit_code: int
    error: str | None = None


@dataclass(frozen=True)
class ProcessInfo:
    """A command running in a sandbox."""

    pid: int
    cmd: str
    tag: str | None
    cwd: str | None
    user: str | None


@dataclass(frozen=True)
class EntryInfo:
    """A file, directory or other entry in a sandbox's filesystem (field order as in E2B)."""

    name: str
    type: FileType
    path: str
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: datetime
    symlink_target: str | None = None


@dataclass(frozen=True)
class WriteEntry:
    """One file for ``files.write_files``: where, and what (text, bytes or a readable file object)."""

    path: str
    data: str | bytes | IO[bytes] | IO[str]


@dataclass(frozen=True)
class KeyInfo:
    """An API key as listed by the server. ``key`` is set only in the answer that created it."""

    id: str
    name: str
    created_at: datetime
    prefix: str | None = None
    revoked_at: datetime | None = None
    admin: bool = False
    key: str | None = field(default=None, repr=False)


def _require(data: Any, keys: tuple[str, ...], what: str, sandbox_id: str | None) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ServerException(
            f"{prefix(sandbox_id)}expected a JSON object for {what}, got {type(data).__name__}",
            sandbox_id=sandbox_id,
        )
    missing = [k for k in keys if k not in data]
    if missing:
        raise ServerException(
            f"{prefix(sandbox_id)}the server's {what} lacks {', '.join(missing)}", sandbox_id=sandbox_id
        )
    return data


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    text = str(value)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _wrap(fn: Any, what: str, sandbox_id: str | None) -> Any:
    """Run a parse step, turning type/value errors into a ServerException naming ``what``."""
    try:
        return fn()
    except (TypeError, ValueError, KeyError) as exc:
        raise ServerException(
            f"{prefix(sandbox_id)}cannot read the server's {what}: {exc}", sandbox_id=sandbox_id
        ) from exc


def parse_sandbox(data: Any, sandbox_id: str | None = None) -> SandboxInfo:
    """``Sandbox`` JSON → ``SandboxInfo``."""
    d = _require(data, ("id", "template", "state", "created_at"), "sandbox", sandbox_id)
    sid = str(d["id"])
    return _wrap(
        lambda: SandboxInfo(
            sandbox_id=sid,
            template=str(d["template"]),
            state=str(d["state"]),
            started_at=_time(d["created_at"]),
            end_at=_time(d.get("expires_at")),
            metadata={str(k): str(v) for k, v in (d.get("metadata") or {}).items()},
            cpu=None if d.get("cpu") is None else float(d["cpu"]),
            memory_mb=None if d.get("memory_mb") is None else int(d["memory_mb"]),
            disk_mb=None if d.get("disk_mb") is None else int(d["disk_mb"]),
            ended_at=_time(d.get("ended_at")),
            end_reason=d.get("end_reason"),
        ),
        "sandbox",
        sid,
    )


def parse_metrics(data: Any, sandbox_id: str) -> SandboxMetrics:
    """Metrics JSON → ``SandboxMetrics``."""
    d = _require(data, ("cpu_seconds", "memory_bytes"), "metrics", sandbox_id)

    def opt_int(key: str) -> int | None:
        return None if d.get(key) is None else int(d[key])

    return _wrap(
        lambda: SandboxMetrics(
            cpu_seconds=float(d["cpu_seconds"]),
            cpu_count=float(d.get("cpu_count") or 0),
            memory_bytes=int(d["memory_bytes"]),
            memory_limit_bytes=opt_int("memory_limit_bytes"),
            disk_bytes=int(d.get("disk_bytes") or 0),
            disk_limit_bytes=opt_int("disk_limit_bytes"),
            pids=int(d.get("pids") or 0),
            oom_kills=int(d.get("oom_kills") or 0),
        ),
        "metrics",
        sandbox_id,
    )


def parse_process(data: Any, sandbox_id: str) -> ProcessInfo:
    """Process JSON → ``ProcessInfo``."""
    d = _require(data, ("pid", "cmd"), "process", sandbox_id)
    return _wrap(
        lambda: ProcessInfo(
            pid=int(d["pid"]), cmd=str(d["cmd"]), tag=d.get("tag"), cwd=d.get("cwd"), user=d.get("user")
        ),
        "process",
        sandbox_id,
    )


def _file_type(value: Any) -> FileType:
    try:
        return FileType(value)
    except ValueError:
        return FileType.OTHER


def parse_entry(data: Any, sandbox_id: str) -> EntryInfo:
    """``Entry`` JSON → ``EntryInfo`` (an unknown ``type`` becomes ``FileType.OTHER``)."""
    d = _require(data, ("name", "path", "type"), "file entry", sandbox_id)
    return _wrap(
        lambda: EntryInfo(
            name=str(d["name"]),
            type=_file_type(d["type"]),
            path=str(d["path"]),
            size=int(d.get("size") or 0),
            mode=int(d.get("mode") or 0),
            permissions=str(d.get("permissions") or ""),
            owner=str(d.get("owner") or ""),
            group=str(d.get("group") or ""),
            modified_time=_time(d.get("modified")) or datetime.fromtimestamp(0, UTC),
            symlink_target=d.get("symlink_target"),
        ),
        "file entry",
        sandbox_id,
    )


def parse_key(data: Any) -> KeyInfo:
    """Key JSON (a listed key or a created one) → ``KeyInfo``."""
    d = _require(data, ("id", "name", "created_at"), "API key", None)
    return _wrap(
        lambda: KeyInfo(
            id=str(d["id"]),
            name=str(d["name"]),
            created_at=_time(d["created_at"]),
            prefix=d.get("prefix"),
            revoked_at=_time(d.get("revoked_at")),
            admin=bool(d.get("admin", False)),
            key=d.get("key"),
        ),
        "API key",
        None,
    )


def parse_network(data: Any, sandbox_id: str) -> NetworkInfo:
    """Network JSON → ``NetworkInfo``."""
    d = _require(data, ("mode",), "network", sandbox_id)
    return _wrap(
        lambda: NetworkInfo(
            mode=str(d["mode"]),
            allow_out=[str(x) for x in d.get("allow_out") or []],
            deny_out=[str(x) for x in d.get("deny_out") or []],
            address=None if d.get("address") is None else str(d["address"]),
            dns_queries=[dict(q) for q in d.get("dns_queries") or []],
        ),
        "network",
        sandbox_id,
    )
