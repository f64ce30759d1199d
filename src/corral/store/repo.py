"""The store: typed reads and writes of the records. Synchronous; the service calls it off the event
loop (``asyncio.to_thread``), except the cached reads of live sandboxes, which never wait.
Thread-safe: each call uses its own session.

The server is the only writer of its database (one server per data dir or database URL), so the
store keeps every live sandbox's row in memory, filled at start and kept by its own writes: the
lookup every sandbox call makes (owner, state) costs a dict read instead of an ORM query (~0.6 ms of
CPU). Ended rows are read from the database; the cache never holds more than the live sandboxes."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Update, bindparam, create_engine, event, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from corral.store.models import ApiKeyRow, Base, BuildRow, SandboxRow, TemplateRow

LIVE_STATES = ("starting", "running", "paused")


def now() -> datetime:
    return datetime.now(UTC)


def utc(dt: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every time we keep is UTC."""
    if dt is None or dt.tzinfo is not None:
        return dt
    return dt.replace(tzinfo=UTC)


def iso(dt: datetime | None) -> str | None:
    """A stored time as the API writes it: ISO 8601 in UTC with a ``Z``."""
    dt = utc(dt)
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def _columns(row: SandboxRow) -> dict[str, Any]:
    """A new row's values by column name, for a Core INSERT. Attributes left unset (None) are left
    out, so the column's default applies as in an ORM flush; the row object itself is what the
    store keeps in memory, so the defaults are set on it too."""
    values: dict[str, Any] = {}
    for attr in SandboxRow.__mapper__.column_attrs:
        column = attr.columns[0]
        value = getattr(row, attr.key)
        if value is None and column.default is not None:
            value = column.default.arg(None) if column.default.is_callable else column.default.arg
            setattr(row, attr.key, value)
        if value is not None or column.nullable:
            values[column.name] = value
    return values


def _copy(row: SandboxRow) -> SandboxRow:
    """A detached copy of a cached row (the cache's own object is never changed in place)."""
    return SandboxRow(**{attr.key: getattr(row, attr.key) for attr in SandboxRow.__mapper__.column_attrs})


class _SqliteInsert:
    """A sandbox row's INSERT run straight on one DBAPI connection of a local SQLite file: SQLAlchemy's
    own statement and its columns' own bind processors (the stored values are the same as through
    Core), without Core's execution and transaction machinery around them: ~35 µs of CPU for a row
    against ~110, on the way of every create's answer (docs/performance.md, "Pooled bursts"). The
    caller serialises calls (``Store._sandbox_writes``)."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        compiled = SandboxRow.__table__.insert().compile(dialect=dialect)
        columns = SandboxRow.__table__.c
        self._sql = compiled.string
        self._binds = [(name, columns[name].type.dialect_impl(dialect).bind_processor(dialect))
                       for name in compiled.positiontup or ()]
        self._engine = engine
        self._conn: Any = engine.raw_connection()  # None after a disconnect: the next call takes a new one
        self._errors = dialect.loaded_dbapi.Error

    def __call__(self, values: dict[str, Any]) -> None:
        try:
            params = [values.get(name) if bind is None else bind(values.get(name)) for name, bind in self._binds]
        except Exception as exc:  # a value its column's type refuses: as Core raises it (a StatementError)
            raise DBAPIError.instance(self._sql, values, exc, self._errors) from exc
        if self._conn is None:
            self._conn = self._engine.raw_connection()
        conn = self._conn
        cursor = None
        try:
            cursor = conn.cursor()
            cursor.execute(self._sql, params)
            conn.commit()
        except BaseException as exc:
            with contextlib.suppress(Exception):  # a rollback that fails too must not hide why
                conn.rollback()
            if isinstance(exc, self._errors):  # as Core raises it: sqlalchemy.exc.IntegrityError, ...
                gone = self._engine.dialect.is_disconnect(exc, conn.dbapi_connection, cursor)
                if gone:  # as Core does: this connection is dropped, the next write opens another
                    self._conn = None
                    with contextlib.suppress(Exception):
                        conn.invalidate(exc)
                raise DBAPIError.instance(self._sql, params, exc, self._errors, connection_invalidated=gone) from exc
            raise
        finally:
            if cursor is not None:
                with contextlib.suppress(Exception):  # a closed connection's cursor refuses even its close
                    cursor.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


class Store:
    def __init__(self, url: str) -> None:
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False}
            # store calls run in the server's worker threads (64): keep their connections open rather
            # than reopening (and re-running the pragmas) whenever more than 5 are busy
            if url.startswith("sqlite:///") and ":memory:" not in url:
                kwargs["pool_size"], kwargs["max_overflow"] = 32, 64
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        _drop_outdated_templates_table(self.engine)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._sandbox_writes = threading.Lock()  # a write and its cache update are one step
        # A commit to a local SQLite file (WAL, no fsync but at checkpoints) is a short file write:
        # the server makes a create's write on the event loop instead of a thread (`inline_writes`)
        self.inline_writes = url.startswith("sqlite")
        local_file = url.startswith("sqlite:///") and ":memory:" not in url
        self._sqlite_insert = _SqliteInsert(self.engine) if local_file else None
        self._updates: dict[tuple[str, ...], Update] = {}  # see `_update_statement`
        self._held: dict[str, SandboxRow] = {}  # see `hold_sandbox`
        live = select(SandboxRow).where(SandboxRow.state.in_(LIVE_STATES))
        with self.session() as s:
            self._live: dict[str, SandboxRow] = {row.id: row for row in s.scalars(live)}

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    def close(self) -> None:
        if self._sqlite_insert is not None:
            self._sqlite_insert.close()
        self.engine.dispose()

    # API keys
    def add_key(self, row: ApiKeyRow) -> None:
        with self.session() as s:
            s.add(row)

    def key_by_hash(self, key_hash: str) -> ApiKeyRow | None:
        with self.session() as s:
            return s.scalars(select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash)).first()

    def keys(self) -> list[ApiKeyRow]:
        with self.session() as s:
            return list(s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)))

    def revoke_key(self, key_id: str) -> bool:
        with self.session() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                return False
            if row.revoked_at is None:
                row.revoked_at = now()
            return True

    # sandboxes
    def _keep(self, row: SandboxRow | None) -> SandboxRow | None:
        if row is not None:
            if row.state in LIVE_STATES:
                self._live[row.id] = row
            else:
                self._live.pop(row.id, None)
        return row

    def _insert(self, row: SandboxRow) -> None:
        """One INSERT, not an ORM flush (~0.3 ms of CPU for a row against ~0.7 through Core, ~0.1 on
        SQLite's own connection). A row that could not be written is not live."""
        try:
            if self._sqlite_insert is not None:
                self._sqlite_insert(_columns(row))
            else:
                with self.engine.begin() as conn:
                    conn.execute(SandboxRow.__table__.insert(), [_columns(row)])
        except Exception:
            self._live.pop(row.id, None)
            raise
        self._keep(row)

    def hold_sandbox(self, row: SandboxRow) -> None:
        """A new sandbox's record, kept in memory only (looked up and listed like any live one) until
        ``write_held``, its first update or its end writes it whole: a cold create writes once, not
        an insert and then its ``running``. A record held when the server stops was never answered
        to anyone (the sandbox is a leftover the next start's reconcile removes). Never blocks."""
        _columns(row)  # its defaults set, as an insert sets them
        self._held[row.id] = row
        self._live[row.id] = row

    def write_held(self, sandbox_id: str) -> SandboxRow | None:
        """Write a held record as it is; None if it is not held (an update or its end wrote it)."""
        with self._sandbox_writes:
            held = self._held.pop(sandbox_id, None)
            if held is not None:
                self._insert(held)
            return held

    def live_sandbox(self, sandbox_id: str) -> SandboxRow | None:
        """The row of a live sandbox from memory (None: not live, or unknown); never blocks."""
        return self._live.get(sandbox_id)

    def sandbox(self, sandbox_id: str) -> SandboxRow | None:
        row = self._live.get(sandbox_id)
        if row is not None:
            return row
        with self.session() as s:
            return s.get(SandboxRow, sandbox_id)

    def sandboxes(self, live_only: bool, owner_key_id: str | None = None) -> list[SandboxRow]:
        if live_only:
            rows = [r for r in list(self._live.values()) if owner_key_id is None or r.owner_key_id == owner_key_id]
            return sorted(rows, key=lambda r: utc(r.created_at) or r.created_at)
        with self.session() as s:
            q = select(SandboxRow).order_by(SandboxRow.created_at)
            if owner_key_id is not None:
                q = q.where(SandboxRow.owner_key_id == owner_key_id)
            rows = list(s.scalars(q))
        held = [r for r in list(self._held.values()) if owner_key_id is None or r.owner_key_id == owner_key_id]
        return sorted([*rows, *held], key=lambda r: utc(r.created_at) or r.created_at) if held else rows

    def update_sandbox(self, sandbox_id: str, **fields: Any) -> SandboxRow | None:
        """Change a live record; None if there is none (unknown, or it ended: a late update, e.g. a
        pause racing a kill, must not bring an ended sandbox back)."""
        return self._update_live(sandbox_id, fields)

    def end_sandbox(self, sandbox_id: str, state: str, reason: str) -> SandboxRow | None:
        """Close a live record; an already closed one is left as it was."""
        fields = {"state": state, "end_reason": reason, "ended_at": now()}
        return self._update_live(sandbox_id, fields) or self.sandbox(sandbox_id)

    def _update_statement(self, names: tuple[str, ...]) -> Update:
        """The UPDATE of a live record's `names` (attributes), built once per set of names: a statement
        built per call cost about a third of the call (construction and its cache key)."""
        query = self._updates.get(names)
        if query is None:
            table = SandboxRow.__table__
            columns = {SandboxRow.__mapper__.column_attrs[name].columns[0].name: bindparam(name) for name in names}
            query = table.update().where(table.c.id == bindparam("_id"), table.c.state.in_(LIVE_STATES)).values(columns)
            self._updates[names] = query
        return query

    def _update_live(self, sandbox_id: str, fields: dict[str, Any]) -> SandboxRow | None:
        """One UPDATE statement on a live record (a third of an ORM load-and-flush); the row answered
        is built from the cached one. None: no live record with that id."""
        query = self._update_statement(tuple(fields))
        with self._sandbox_writes:
            held = self._held.pop(sandbox_id, None)
            if held is not None:  # its first write: the whole row
                row = _copy(held)
                for name, value in fields.items():
                    setattr(row, name, value)
                self._insert(row)
                return row
            with self.engine.begin() as conn:
                if conn.execute(query, {"_id": sandbox_id, **fields}).rowcount == 0:
                    return None
            cached = self._live.get(sandbox_id)
            if cached is None:  # live in the database but not cached: cannot happen (a single writer)
                with self.session() as s:
                    return self._keep(s.get(SandboxRow, sandbox_id))
            row = _copy(cached)
            for name, value in fields.items():
                setattr(row, name, value)
            return self._keep(row)

    # templates and builds
    def templates(self) -> list[TemplateRow]:
        with self.session() as s:
            return list(s.scalars(select(TemplateRow).order_by(TemplateRow.name)))

    def delete_template(self, name: str) -> bool:
        with self.session() as s:
            row = s.get(TemplateRow, name)
            if row is None:
                return False
            s.delete(row)
            return True

    def live_sandboxes_of(self, template: str) -> list[str]:
        return [row.id for row in list(self._live.values()) if row.template == template]

    def add_build(self, row: BuildRow) -> None:
        with self.session() as s:
            s.add(row)

    def build(self, build_id: str) -> BuildRow | None:
        with self.session() as s:
            return s.get(BuildRow, build_id)

    def builds(self, template: str | None = None, limit: int = 50) -> list[BuildRow]:
        with self.session() as s:
            query = select(BuildRow).order_by(BuildRow.created_at.desc()).limit(limit)
            if template is not None:
                query = query.where(BuildRow.template == template)
            return list(s.scalars(query))

    def update_build(self, build_id: str, **changes: Any) -> BuildRow | None:
        with self.session() as s:
            row = s.get(BuildRow, build_id)
            if row is not None:
                for name, value in changes.items():
                    setattr(row, name, value)
            return row

    def finish_build(self, build_id: str, template: TemplateRow, **changes: Any) -> None:
        """Publish a build's template and close its record in one transaction: after a crash the
        template is visible only with its build ``ready``."""
        with self.session() as s:
            s.merge(template)
            row = s.get(BuildRow, build_id)
            if row is not None:
                for name, value in changes.items():
                    setattr(row, name, value)

    def fail_unfinished_builds(self, reason: str) -> list[str]:
        """Builds a previous run left in progress: mark them failed (their layers were never published)."""
        with self.session() as s:
            rows = list(s.scalars(select(BuildRow).where(BuildRow.state == "building")))
            for row in rows:
                row.state, row.error, row.finished_at = "failed", reason, now()
            return [r.id for r in rows]


def _drop_outdated_templates_table(engine: Engine) -> None:
    """Releases before template builds had a ``templates`` table that nothing wrote: replace it."""
    found = inspect(engine)
    if "templates" in found.get_table_names():
        columns = {c["name"] for c in found.get_columns("templates")}
        if "refs" not in columns:
            with engine.begin() as conn:
                conn.execute(text("DROP TABLE templates"))
        elif "public" not in columns:  # added after the first template builds
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE templates ADD COLUMN public BOOLEAN NOT NULL DEFAULT FALSE"))
