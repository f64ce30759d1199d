"""API keys and the store (SQLite), without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

from corral.service.auth import KEY_PATTERN, Auth, hash_key, new_key
from corral.service.errors import InvalidRequest, NotFound, Unauthorized
from corral.store.models import SandboxRow
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


def _add(store: Store, row: SandboxRow) -> None:
    """Insert ``row`` as a pooled create does: held, then written."""
    store.hold_sandbox(row)
    assert store.write_held(row.id) is row


def _sandbox_row(sandbox_id: str, owner: str, created: datetime) -> SandboxRow:
    return SandboxRow(id=sandbox_id, template="base", state="starting", owner_key_id=owner, node="local",
                      created_at=created, expires_at=created + timedelta(seconds=60), meta={"k": "v"},
                      cpu=1.0, memory_mb=512, disk_mb=1024)


def test_live_sandbox_rows_are_served_from_memory_and_match_the_database(tmp_path: Path) -> None:
    """The store keeps live rows in memory: every write keeps that view equal to the database, an
    ended row leaves it (and is still read from the database), and a store opened later on the same
    database starts with the live rows (a crashed server's, which its start-up then ends)."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = Store(url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i, owner in enumerate(("a", "b", "a")):
        _add(store, _sandbox_row(f"s{i}", owner, t0 + timedelta(seconds=10 - i)))
    assert [r.id for r in store.sandboxes(True)] == ["s2", "s1", "s0"]  # by creation time
    assert [r.id for r in store.sandboxes(True, "a")] == ["s2", "s0"]
    store.update_sandbox("s0", state="running", expires_at=t0 + timedelta(hours=1))
    store.end_sandbox("s1", "ended", "killed by request")
    assert store.live_sandbox("s1") is None and store.live_sandboxes_of("base") == ["s0", "s2"]
    ended = store.sandbox("s1")
    assert ended is not None and ended.state == "ended" and ended.end_reason == "killed by request"
    assert [r.id for r in store.sandboxes(False)] == ["s2", "s1", "s0"]
    reopened = Store(url)  # what the database holds, read back by a new store
    for sandbox_id in ("s0", "s2"):
        cached, stored = store.live_sandbox(sandbox_id), reopened.live_sandbox(sandbox_id)
        assert cached is not None and stored is not None
        assert (cached.state, cached.owner_key_id, cached.meta) == (stored.state, stored.owner_key_id, stored.meta)
        assert cached.expires_at.replace(tzinfo=UTC) == stored.expires_at.replace(tzinfo=UTC)
    assert [r.id for r in reopened.sandboxes(True)] == ["s2", "s0"]
    columns = [attr.key for attr in SandboxRow.__mapper__.column_attrs]
    bare = SandboxRow(id="s3", template="base", state="running", owner_key_id="a", created_at=t0,
                      expires_at=t0, cpu=1.0, memory_mb=512, disk_mb=1024)  # node and metadata: the defaults
    _add(store, bare)
    cached, stored = store.live_sandbox("s3"), Store(url).live_sandbox("s3")
    assert cached is not None and stored is not None and (cached.node, cached.meta) == ("local", {})
    assert {c: getattr(cached, c) for c in columns if not c.endswith("_at")} == {
        c: getattr(stored, c) for c in columns if not c.endswith("_at")}
    assert store.update_sandbox("nope", state="running") is None and store.sandbox("nope") is None
    # a late update (a pause or resume racing a kill) leaves an ended record ended
    assert store.update_sandbox("s1", state="paused") is None
    assert store.live_sandbox("s1") is None and reopened.sandbox("s1").state == "ended"  # type: ignore[union-attr]
    again = store.end_sandbox("s1", "failed", "again")
    assert again is not None and (again.state, again.end_reason) == ("ended", "killed by request")


def test_a_held_record_is_written_once_and_a_row_that_cannot_be_is_not_live(tmp_path: Path) -> None:
    """A pooled create's record is held, then written as it is; one its end wrote meanwhile is not
    written again; a row the database refuses raises and is no longer live (nor stored)."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = Store(url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for name in ("p0", "p1"):
        store.hold_sandbox(_sandbox_row(name, "a", t0))
    assert store.end_sandbox("p1", "ended", "killed by request") is not None
    assert store.write_held("p0") is not None and store.write_held("p1") is None and store.write_held("p0") is None
    bad = _sandbox_row("bad", "b", t0)
    bad.template = None  # type: ignore[assignment]  # NOT NULL in the database
    store.hold_sandbox(bad)
    with pytest.raises(IntegrityError):
        store.write_held("bad")
    assert store.live_sandbox("bad") is None and store.sandbox("bad") is None
    _add(Store(url), _sandbox_row("p2", "a", t0))  # another connection writes: the refused row's transaction is over
    assert {r.id: r.state for r in Store(url).sandboxes(False)} == {"p0": "starting", "p1": "ended", "p2": "starting"}


def test_a_written_record_is_stored_as_sqlalchemy_core_stores_it(tmp_path: Path) -> None:
    """On SQLite the store writes a new record on a DBAPI connection of its own; the stored values
    (times, JSON, defaults) are byte for byte what a Core INSERT of the same row stores."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = Store(url)
    t0 = datetime(2026, 1, 1, 12, 30, 5, 123456, tzinfo=UTC)
    ours, core = _sandbox_row("ours", "a", t0), _sandbox_row("core", "a", t0)
    for row in (ours, core):
        row.meta, row.node = {"k": "v", "ü": [1, None]}, None  # type: ignore[assignment]  # node: its default
    _add(store, ours)
    values = {attr.columns[0].name: getattr(core, attr.key) for attr in SandboxRow.__mapper__.column_attrs}
    with store.engine.begin() as conn:
        conn.execute(SandboxRow.__table__.insert(), [{**values, "node": "local"}])
    with store.engine.connect() as conn:
        stored = {r[0]: r[1:] for r in conn.exec_driver_sql("SELECT * FROM sandboxes ORDER BY id")}
    assert stored["ours"] == stored["core"] and "2026-01-01 12:30:05.123456" in stored["ours"]


def test_the_stores_own_insert_fails_as_core_does_and_recovers_from_a_lost_connection(tmp_path: Path) -> None:
    """The SQLite INSERT on the store's own connection raises Core's exceptions (a value its column
    refuses: StatementError), and after its connection is lost the next write takes a new one."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = Store(url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    bad = _sandbox_row("bad", "a", t0)
    bad.created_at = "yesterday"  # type: ignore[assignment]  # not a datetime
    with pytest.raises(StatementError, match="SQLite DateTime type only accepts"):
        _add(store, bad)
    own = store._sqlite_insert
    assert own is not None
    own._conn.driver_connection.close()  # the connection is gone under the store
    with pytest.raises(DBAPIError) as lost:
        _add(store, _sandbox_row("first", "a", t0))
    assert lost.value.connection_invalidated
    _add(store, _sandbox_row("second", "a", t0))
    assert [r.id for r in Store(url).sandboxes(False)] == ["second"]


def test_a_held_starting_record_is_live_in_memory_and_written_once_by_its_first_update_or_end(tmp_path: Path) -> None:
    """A cold create holds its record in memory while the sandbox starts (looked up and listed like
    any live one, not in the database) and writes it whole once: at ``running``, or at its end (a
    create that failed, a kill during the start), after which a late ``running`` finds it ended."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = Store(url)
    writes: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip().startswith(("INSERT", "UPDATE")):
            writes.append(statement.split()[0])

    event.listen(store.engine, "before_cursor_execute", note)  # Core's statements
    own = store._sqlite_insert
    assert own is not None  # and the INSERTs on the store's own SQLite connection
    own._conn.driver_connection.set_trace_callback(lambda sql: note(None, None, sql))
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i, owner in enumerate(("a", "b", "a")):
        store.hold_sandbox(_sandbox_row(f"h{i}", owner, t0 + timedelta(seconds=i)))
    _add(store, _sandbox_row("stored", "a", t0 + timedelta(seconds=5)))
    writes.clear()
    held = store.live_sandbox("h0")
    assert held is not None and held.state == "starting" and held.node == "local"  # defaults, as a stored row
    assert store.sandbox("h1") is not None and [r.id for r in store.sandboxes(True, "a")] == ["h0", "h2", "stored"]
    assert [r.id for r in store.sandboxes(False, "a")] == ["h0", "h2", "stored"]  # all records, held ones too
    assert Store(url).sandbox("h0") is None and writes == []  # nothing written yet

    running = store.update_sandbox("h0", state="running", expires_at=t0 + timedelta(hours=1))
    failed = store.end_sandbox("h1", "failed", "could not start")
    killed = store.end_sandbox("h2", "ended", "killed by request")
    assert writes == ["INSERT"] * 3  # one write each: the row whole, no UPDATE
    assert running is not None and running.state == "running" and store.live_sandbox("h0") is running
    assert failed is not None and (failed.state, failed.end_reason) == ("failed", "could not start")
    assert killed is not None and store.live_sandbox("h2") is None
    assert store.update_sandbox("h2", state="running") is None  # the create's late update: it ended
    reopened = Store(url)
    assert [(r.id, r.state) for r in reopened.sandboxes(False)] == [
        ("h0", "running"), ("h1", "failed"), ("h2", "ended"), ("stored", "starting")]
    assert reopened.sandbox("h0").owner_key_id == "a"  # type: ignore[union-attr]
