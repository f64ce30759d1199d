"""Templates: names → read-only rootfs layers. Today the built-in ``base``; Dockerfile builds later."""

from __future__ import annotations

import re
from pathlib import Path

from corral.runtime.rootfs import is_built
from corral.service.errors import InvalidRequest, NotFound

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
BASE = "base"


class Templates:
    def __init__(self, templates_dir: Path) -> None:
        self.dir = templates_dir

    def rootfs(self, name: str) -> Path:
        return self.dir / name / "rootfs"

    def layers(self, name: str) -> tuple[Path, ...]:
        """The layers of a template, topmost first; raises NotFound naming the template."""
        if not NAME.match(name):
            raise InvalidRequest(f"template: {name!r} is not a valid template name")
        path = self.rootfs(name)
        if not is_built(path):
            raise NotFound(f"template {name!r} does not exist (built-in: {BASE!r})")
        return (path,)

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir() if is_built(p / "rootfs"))
