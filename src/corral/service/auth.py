"""API keys: ``e2b_`` + 40 lowercase hex (what the E2B SDKs accept), stored as sha256 hashes."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from corral.service.errors import InvalidRequest, NotFound, Unauthorized
from corral.store.models import ApiKeyRow
from corral.store.repo import Store, now

KEY_PATTERN = re.compile(r"^e2b_[0-9a-f]{40}$")


@dataclass(frozen=True)
class Principal:
    key_id: str
    name: str
    admin: bool


def new_key() -> str:
    return "e2b_" + secrets.token_hex(20)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


CACHE_SECONDS = 5.0  # how long a checked key is trusted without asking the store again


class Auth:
    """Checks keys against the store, remembering valid ones for a few seconds (a revoke through this
    object forgets at once; one made elsewhere, e.g. another replica, within ``CACHE_SECONDS``).
    Thread-safe (the store is; the cache is a dict of immutable entries)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._valid: dict[str, tuple[Principal, float]] = {}

    def cached(self, key: str | None) -> Principal | None:
        """The caller of a key checked in the last seconds, without the store (None: call ``check``)."""
        if not key:
            return None
        entry = self._valid.get(hash_key(key.strip()))
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def add(self, key: str, name: str, admin: bool = False) -> ApiKeyRow:
        if not KEY_PATTERN.match(key):
            raise InvalidRequest("API keys must be 'e2b_' followed by 40 lowercase hex characters")
        existing = self.store.key_by_hash(hash_key(key))
        if existing is not None:
            return existing
        row = ApiKeyRow(
            id=secrets.token_hex(6), name=name, key_hash=hash_key(key), prefix=key[:8], admin=admin,
            created_at=now(), revoked_at=None,
        )
        self.store.add_key(row)
        return row

    def check(self, key: str | None) -> Principal:
        if not key:
            raise Unauthorized("missing API key: send it in the X-API-Key header")
        digest = hash_key(key.strip())
        row = self.store.key_by_hash(digest)
        if row is None or row.revoked_at is not None:
            raise Unauthorized("invalid or revoked API key")
        principal = Principal(key_id=row.id, name=row.name, admin=row.admin)
        if len(self._valid) > 10_000:
            self._valid.clear()
        self._valid[digest] = (principal, time.monotonic() + CACHE_SECONDS)
        return principal

    def revoke(self, key_id: str) -> None:
        if not self.store.revoke_key(key_id):
            raise NotFound(f"no API key with id {key_id!r}")
        for digest, (principal, _) in list(self._valid.items()):
            if principal.key_id == key_id:
                self._valid.pop(digest, None)

    def ensure_admin_key(self, configured: str | None, key_file: Path) -> tuple[str, bool]:
        """The admin key: ``CORRAL_API_KEY`` if set, else the one in ``key_file`` (made on first start,
        mode 0600). Returns (key, created_now)."""
        created = False
        if configured:
            key = configured.strip()
        elif key_file.exists():
            key = key_file.read_text().strip()
        else:
            key = new_key()
            key_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key + "\n")
            created = True
        self.add(key, name="admin", admin=True)
        return key, created
