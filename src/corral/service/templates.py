"""Templates: names → read-only layer stacks and the defaults their sandboxes get.

Built-in templates (``base``, ``code-interpreter``, and any rootfs an operator puts in the templates
dir) are directories; the built-in ones are built by mmdebstrap. Templates
built from Dockerfiles are store records naming layers in the layer store. The records are held in
memory (loaded at start, changed only by builds and deletes), so creating a sandbox reads no database.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from corral.runtime.rootfs import MARKER, is_built
from corral.service.auth import Principal
from corral.service.errors import InvalidRequest, NotFound
from corral.store.models import TemplateRow
from corral.templates.layers import LayerStore
from corral.templates.model import BUILTIN_CONFIG, TemplateConfig

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
BASE = "base"
BUILTIN = ("base", "code-interpreter")


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    builtin: bool
    base: str
    refs: tuple[str, ...]
    key: str
    config: TemplateConfig
    build_id: str | None = None
    owner_key_id: str | None = None
    public: bool = False  # visible to every key (built-in ones always are)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_row(cls, row: TemplateRow) -> TemplateInfo:
        return cls(
            name=row.name, builtin=False, base=row.base, refs=tuple(row.refs), key=row.key,
            config=TemplateConfig.from_json(row.config), build_id=row.build_id, owner_key_id=row.owner_key_id,
            public=bool(row.public), created_at=row.created_at, updated_at=row.updated_at,
        )


class Templates:
    def __init__(self, templates_dir: Path, layers: LayerStore | None = None, images_dir: Path | None = None) -> None:
        self.dir = templates_dir
        self.layer_store = layers
        self.images_dir = images_dir
        self._built: dict[str, TemplateInfo] = {}
        self._dirs: dict[str, TemplateInfo] = {}  # directory templates seen so far (fixed while serving)

    def rootfs(self, name: str) -> Path:
        return self.dir / name / "rootfs"

    def load(self, rows: list[TemplateRow]) -> None:
        self._built = {row.name: TemplateInfo.from_row(row) for row in rows}

    def put(self, info: TemplateInfo) -> None:
        self._built[info.name] = info

    def forget(self, name: str) -> None:
        self._built.pop(name, None)

    def get(self, name: str) -> TemplateInfo:
        """The template named ``name``; raises NotFound (or InvalidRequest for a malformed name)."""
        if not NAME.match(name):
            raise InvalidRequest(f"template: {name!r} is not a valid template name")
        if name in self._built:
            return self._built[name]
        if name in self._dirs:
            return self._dirs[name]
        if is_built(self.rootfs(name)):  # built-in, or a rootfs an operator placed in the templates dir
            self._dirs[name] = self.builtin(name)  # found once: no stat per sandbox create
            return self._dirs[name]
        known = ", ".join(repr(n) for n in self.names()) or "none"
        raise NotFound(f"template {name!r} does not exist (templates: {known})")

    def for_caller(self, name: str, principal: Principal) -> TemplateInfo:
        """``get``, for a caller: a built template is visible to its owner's key, the admin key, and (if
        built public) every key; to anyone else it does not exist."""
        info = self.get(name)
        if not self.visible(info, principal):
            raise NotFound(f"template {name!r} does not exist")
        return info

    @staticmethod
    def visible(info: TemplateInfo, principal: Principal) -> bool:
        return info.builtin or info.public or principal.admin or info.owner_key_id == principal.key_id

    def builtin(self, name: str) -> TemplateInfo:
        marker = self.rootfs(name) / MARKER
        stamp = marker.stat().st_mtime_ns if marker.exists() else 0
        return TemplateInfo(name=name, builtin=True, base=name, refs=(f"builtin:{name}",),
                            key=f"builtin:{name}:{stamp}", config=BUILTIN_CONFIG)

    def layers(self, name: str) -> tuple[Path, ...]:
        """The layers of a template, topmost first; raises NotFound naming the template."""
        return tuple(self.path(ref) for ref in self.get(name).refs)

    def config(self, name: str) -> TemplateConfig:
        return self.get(name).config

    def path(self, ref: str) -> Path:
        kind, _, value = ref.partition(":")
        if kind == "builtin":
            return self.rootfs(value)
        if kind == "layer" and self.layer_store is not None:
            return self.layer_store.root / value / "fs"
        if kind == "oci" and self.images_dir is not None:
            return self.images_dir / value / "fs"
        raise NotFound(f"unknown layer reference {ref!r}")

    def directories(self) -> list[str]:
        """Templates that are plain rootfs dirs in the templates dir (the built-in ones among them)."""
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir() if NAME.match(p.name) and is_built(p / "rootfs"))

    def names(self) -> list[str]:
        return sorted({*self.directories(), *self._built})

    def all(self) -> list[TemplateInfo]:
        return [self.get(n) for n in self.names()]
