"""The layer store: immutable, content-addressed filesystem layers of built templates.

``<data>/layers/<hex>/`` holds ``fs/`` (an overlay upper captured from a build step: files, whiteout
devices, opaque dirs) and ``layer.json``. ``<hex>`` is the step's cache key (``templates.context.cache_key``).
A layer appears atomically: it is made in ``.tmp-*`` and renamed into place, so a crash mid-step leaves
only a temp dir, which ``clean()`` removes at start. Layers are never changed after that; sandboxes
mount them read-only as overlay lower dirs, shared by every sandbox of every template that uses them.
A step rebuilt on purpose (``--no-cache``, E2B's ``skip_cache``) becomes a new layer under a key of its
own, which ``<hex>.latest`` names for later builds of the same step (``current``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from corral.store.repo import now

TMP_PREFIX = ".tmp-"
LATEST = ".latest"  # <hex>.latest: the key of the newest forced rebuild of that step


def key_hex(key: str) -> str:
    algo, _, hexdigest = key.partition(":")
    if algo != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
        raise ValueError(f"not a layer key: {key!r}")
    return hexdigest


class LayerStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def dir(self, key: str) -> Path:
        return self.root / key_hex(key)

    def fs(self, key: str) -> Path:
        return self.dir(key) / "fs"

    def has(self, key: str) -> bool:
        return (self.dir(key) / "layer.json").is_file()

    async def make(self, key: str, produce: Callable[[Path], Awaitable[None]], about: dict[str, object]) -> Path:
        """Run ``produce(fs_dir)`` (which must create ``fs_dir``) and publish the result as layer ``key``.
        If the layer appeared meanwhile (a parallel build of the same step), the existing one wins."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        tmp.mkdir(mode=0o755)
        try:
            await produce(tmp / "fs")
            size = _size(tmp / "fs")
            (tmp / "layer.json").write_text(json.dumps({"key": key, "created_at": now().isoformat(),
                                                        "bytes": size, **about}))
            try:
                os.rename(tmp, self.dir(key))
            except OSError:
                if not self.has(key):
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return self.fs(key)

    def current(self, key: str) -> str:
        """The layer that stands for cache key ``key``: the newest forced rebuild of it (``point``) if
        there is one, else ``key`` itself."""
        with contextlib.suppress(OSError, ValueError):
            newer = (self.root / f"{key_hex(key)}{LATEST}").read_text().strip()
            key_hex(newer)
            if self.has(newer):
                return newer
        return key

    def point(self, key: str, newer: str) -> None:
        """Let ``newer`` (a forced rebuild of ``key``'s step) stand for ``key`` from now on."""
        key_hex(newer)
        tmp = self.root / f"{TMP_PREFIX}{secrets.token_hex(8)}{LATEST}"
        tmp.write_text(newer + "\n")
        os.replace(tmp, self.root / f"{key_hex(key)}{LATEST}")

    def size(self, key: str) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int(json.loads((self.dir(key) / "layer.json").read_text())["bytes"])
        return 0

    def clean(self) -> int:
        """Remove what interrupted steps left (temp dirs). Returns how many."""
        if not self.root.is_dir():
            return 0
        stale = [p for p in self.root.iterdir() if p.name.startswith(TMP_PREFIX)]
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return len(stale)


def _size(root: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total
