"""What a template is once built: a stack of read-only layers plus the defaults its sandboxes start with."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class TemplateConfig:
    """Defaults a template gives its sandboxes (from the Dockerfile and the build's options).

    ``start_cmd`` runs in the background when a sandbox starts (the Dockerfile's ENTRYPOINT/CMD, or an
    option); create returns once ``ready_cmd`` exits 0 or ``ready_port`` accepts connections."""

    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    user: str | None = None
    start_cmd: tuple[str, ...] | None = None
    ready_cmd: str | None = None
    ready_port: int | None = None
    ready_timeout: float = 60.0
    cpu: float | None = None
    memory_mb: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()
    isolation: str | None = None  # bwrap or gvisor for its sandboxes; None: the server's default

    def with_env(self, pairs: tuple[tuple[str, str], ...]) -> TemplateConfig:
        merged = dict(self.env)
        merged.update(pairs)
        return replace(self, env=tuple(merged.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "env": dict(self.env), "workdir": self.workdir, "user": self.user,
            "start_cmd": list(self.start_cmd) if self.start_cmd is not None else None,
            "ready_cmd": self.ready_cmd, "ready_port": self.ready_port, "ready_timeout": self.ready_timeout,
            "cpu": self.cpu, "memory_mb": self.memory_mb, "labels": dict(self.labels),
            "exposed_ports": list(self.exposed_ports), "isolation": self.isolation,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TemplateConfig:
        start = data.get("start_cmd")
        return cls(
            env=tuple((str(k), str(v)) for k, v in (data.get("env") or {}).items()),
            workdir=data.get("workdir"), user=data.get("user"),
            start_cmd=tuple(str(a) for a in start) if start is not None else None,
            ready_cmd=data.get("ready_cmd"), ready_port=data.get("ready_port"),
            ready_timeout=float(data.get("ready_timeout") or 60.0),
            cpu=data.get("cpu"), memory_mb=data.get("memory_mb"),
            labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
            exposed_ports=tuple(str(p) for p in data.get("exposed_ports") or ()),
            isolation=data.get("isolation") or None,
        )


BUILTIN_CONFIG = TemplateConfig()
