"""API keys and the store (SQLite), without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.service.auth import KEY_PATTERN, Auth, hash_key, new_key
from corral.service.errors import InvalidRequest, NotFound, Unauthorized
from corral.store.repo import Store


@pytest.fixture
def auth(tmp_path: Path) -> Auth:
    return Auth(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"))


def test_keys_have_the_e2b_format_and_are_stored_hashed(auth: Auth) -> None:
    key = new_key()
    assert KEY_PATTERN.match(key)
    row = auth.add(key, "ci")
    assert row.key_hash == hash_key(key) and key not in (row.key_hash, row.prefix)
    assert auth.check(key).key_id == row.id and not auth.check(key).admin


def test_unknown_missing_and_revoked_keys_are_rejected(auth: Auth) -> None:
    key = new_key()
    row = auth.add(key, "x")
    with pytest.raises(Unauthorized):
        auth.check(None)
    with pytest.raises(Unauthorized):
        auth.check(new_key())
    auth.revoke(row.id)
    with pytest.raises(Unauthorized):
        auth.check(key)
    with pytest.raises(NotFound):
        auth.revoke("nope")
    with pytest.raises(InvalidRequest):
        auth.add("not-a-key", "bad")


def test_admin_key_generated_once_with_private_mode(auth: Auth, tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    key, created = auth.ensure_admin_key(None, path)
    assert created and path.stat().st_mode & 0o777 == 0o600 and KEY_PATTERN.match(key)
    again, created_again = auth.ensure_admin_key(None, path)
    assert again == key and not created_again and auth.check(key).admin


def test_configured_admin_key_wins(auth: Auth, tmp_path: Path) -> None:
    key = new_key()
    got, created = auth.ensure_admin_key(key, tmp_path / "api-key")
    assert got == key and not created and not (tmp_path / "api-key").exists()
    assert auth.check(key).admin
