"""The FSM table and the statements SQLAlchemyStorage runs on it, built once per dialect.

Each operation is a plain function of a synchronous `Connection`, so the
storage can run it in an async session (`run_sync`) or on its SQLite thread
alike. Statements take bound parameters and are built once: SQLAlchemy then
reuses their compiled form instead of rebuilding it on every call.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    CursorResult,
    DateTime,
    Executable,
    Index,
    MetaData,
    Row,
    String,
    Table,
    Text,
    Update,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import BindParameter

from storage.records import new_version

KEY_LENGTH = 255
STATE_LENGTH = 255
Field = Literal["state", "data"]
FSM_COLUMNS = ("id", "state", "data", "version", "updated_at", "user_id", "outbox_queued", "outbox_sent", "outbox_due")
# What migrate writes: the whole record, its time included.
RECORD = ("state", "data", "version", "updated_at")


def fsm_table(metadata: MetaData, table_name: str) -> Table:
    """The FSM table; `data` NULL means {} and `state` NULL means no state."""
    return Table(
        table_name,
        metadata,
        Column("id", String(KEY_LENGTH), primary_key=True),
        Column("state", String(STATE_LENGTH), nullable=True),
        # TEXT is 64 KiB on MySQL; FSM data may be larger.
        Column("data", Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=True),
        # A fresh random number on every change: update_data and ApplyOnce's commit
        # compare and swap on it, and a random one cannot come back after a delete.
        Column("version", BigInteger, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        # The StorageKey's user, written with every change: /forget finds a user's keys by it.
        # NULL in rows an older version wrote, until the bot's start-up fills it in.
        Column("user_id", BigInteger, nullable=True),
        # The outbox (bot/outbox.py): the calls an update committed are kept in `data`, numbered;
        # `outbox_queued` is the last one's number, `outbox_sent` the last one done (marked without
        # changing `version`), and `outbox_due` is set while any waits, so start-up finds them.
        Column("outbox_queued", BigInteger, nullable=False, server_default="0"),
        Column("outbox_sent", BigInteger, nullable=False, server_default="0"),
        Column("outbox_due", DateTime(timezone=True), nullable=True),
        # Expiry (FSM_TTL) finds the oldest keys by it.
        Index(f"ix_{table_name}_updated_at", "updated_at"),
        Index(f"ix_{table_name}_user_id", "user_id"),
        Index(f"ix_{table_name}_outbox_due", "outbox_due"),
        extend_existing=True,
        # MySQL's older default character sets cannot hold every character a user types.
        mysql_charset="utf8mb4",
    )


class FsmStatements:
    """The storage's statements for one table on one dialect."""

    def __init__(self, table: Table, dialect: str) -> None:
        c = table.c
        key = c.id == bindparam("key")
        self.table = table
        self.dialect = dialect
        self.read_sql = select(c.state, c.data, c.version, c.outbox_sent, c.outbox_queued).where(key)
        self.write_state_sql = _upsert(table, dialect, ("state", "version"))
        self.write_data_sql = _upsert(table, dialect, ("data", "version"))
        self.write_both_sql = _upsert(table, dialect, ("state", "data", "version"))
        self.write_record_sql = _upsert(table, dialect, RECORD)
        user: BindParameter[Any] = bindparam("user_id")
        self.insert_data_sql = insert(table).values(
            id=bindparam("key"), data=bindparam("new_data"), version=bindparam("new_version"), user_id=user
        )
        self.insert_both_sql = insert(table).values(
            id=bindparam("key"),
            user_id=user,
            state=bindparam("new_state"),
            data=bindparam("new_data"),
            version=bindparam("new_version"),
        )
        self.swap_both_sql = (
            update(table)
            .where(key, c.version == bindparam("expected"))
            .values(
                state=bindparam("new_state"),
                data=bindparam("new_data"),
                version=bindparam("new_version"),
                updated_at=func.now(),
                user_id=user,
            )
        )
        # ApplyOnce's commit: the same, with the outbox's last number; due while any call waits.
        queued: BindParameter[Any] = bindparam("queued")
        self.insert_outbox_sql = insert(table).values(
            id=bindparam("key"),
            user_id=user,
            state=bindparam("new_state"),
            data=bindparam("new_data"),
            version=bindparam("new_version"),
            outbox_queued=queued,
            outbox_sent=0,
            outbox_due=case((queued > 0, func.now()), else_=None),
        )
        self.swap_outbox_sql = (
            update(table)
            .where(key, c.version == bindparam("expected"))
            .values(
                state=bindparam("new_state"),
                data=bindparam("new_data"),
                version=bindparam("new_version"),
                updated_at=func.now(),
                user_id=user,
                outbox_queued=queued,
                outbox_due=case((queued > c.outbox_sent, func.coalesce(c.outbox_due, func.now())), else_=None),
            )
        )
        # Marking calls done changes no version: a handler's commit in between is not refused for it.
        done: BindParameter[Any] = bindparam("done")
        self.mark_sent_sql = (
            update(table)
            .where(key, c.outbox_sent < done)
            # Entries still wait: their due time is renewed (the process carrying them out is alive).
            .values(outbox_sent=done, outbox_due=case((c.outbox_queued <= done, None), else_=func.now()))
        )
        self.postpone_sql = update(table).where(key, c.outbox_due.is_not(None)).values(outbox_due=bindparam("until"))
        self.due_sql = (
            select(c.data, c.outbox_sent)
            .where(c.outbox_due <= bindparam("before"))
            .order_by(c.outbox_due)
            .limit(bindparam("limit"))
        )
        self.delete_version_sql = delete(table).where(key, c.version == bindparam("expected"))
        self.swap_data_sql = (
            update(table)
            .where(key, c.version == bindparam("expected"))
            .values(data=bindparam("new_data"), version=bindparam("new_version"), updated_at=func.now(), user_id=user)
        )
        self.clear_sql: dict[Field, Update] = {
            "state": update(table)
            .where(key)
            .values(state=None, version=bindparam("new_version"), updated_at=func.now(), user_id=user),
            "data": update(table)
            .where(key)
            .values(data=None, version=bindparam("new_version"), updated_at=func.now(), user_id=user),
        }
        self.delete_if_empty_sql = delete(table).where(key, c.state.is_(None), c.data.is_(None))
        self.delete_sql = delete(table).where(key)
        self.delete_user_sql = delete(table).where(c.user_id == user, c.id != bindparam("keep"))
        # Rows an older version wrote without a user (a replica not yet upgraded): found
        # among the few NULLs by the same index, then by their key.
        self.delete_unfilled_sql = delete(table).where(c.user_id.is_(None), c.id.like(bindparam("pattern"), escape="/"))
        record = select(c.id, c.state, c.data, c.updated_at, c.user_id)
        self.read_page_sql = record.where(c.id > bindparam("after")).order_by(c.id).limit(bindparam("limit"))
        self.read_all_sql = record.order_by(c.id)
        self.read_keys_sql = record.where(c.id.in_(bindparam("keys", expanding=True)))
        self.unfilled_sql = (
            select(c.id).where(c.user_id.is_(None), c.id > bindparam("after")).order_by(c.id).limit(bindparam("limit"))
        )
        self.fill_sql = update(table).where(key, c.user_id.is_(None)).values(user_id=user)
        since: BindParameter[Any] = bindparam("since")
        self.count_states_sql = select(func.count(), func.count(case((c.updated_at >= since, 1)))).where(
            c.state.in_(bindparam("states", expanding=True))
        )
        self.now_sql = select(func.now())
        self.oldest_sql = (
            select(c.id).where(c.updated_at < bindparam("cutoff")).order_by(c.updated_at).limit(bindparam("limit"))
        )
        self.delete_old_sql = delete(table).where(
            c.id.in_(bindparam("keys", expanding=True)), c.updated_at < bindparam("cutoff")
        )
        # Here and in _upsert, `updated_at` comes first: a record's own time (migrate) overrides now().
        self._plain_update: dict[tuple[str, ...], Executable] = {
            names: update(table)
            .where(key)
            .values({"updated_at": func.now(), "user_id": user, **{name: bindparam(f"new_{name}") for name in names}})
            for names in (("state", "version"), ("data", "version"), ("state", "data", "version"), RECORD)
        }

    # --- operations: each is one call's work, correct statement by statement ---

    def fetch(self, connection: Connection, key: str) -> Row[Any, Any, Any, Any, Any] | None:
        return connection.execute(self.read_sql, {"key": key}).one_or_none()

    def set_state(self, connection: Connection, key: str, user: int | None, state: str) -> None:
        self._upsert(connection, self.write_state_sql, ("state", "version"), key, user, new_state=state)

    def set_data(self, connection: Connection, key: str, user: int | None, data: str) -> None:
        self._upsert(connection, self.write_data_sql, ("data", "version"), key, user, new_data=data)

    def set_both(
        self,
        connection: Connection,
        key: str,
        user: int | None,
        state: str | None,
        data: str | None,
        stamp: datetime | None = None,
    ) -> None:
        """Replace state and data in one statement; the row goes when both are empty.

        The row's time is the database's now(), or `stamp` (migrate keeps each record's).
        """
        if state is None and data is None:
            connection.execute(self.delete_sql, {"key": key})
            return
        if stamp is None:
            names = ("state", "data", "version")
            self._upsert(connection, self.write_both_sql, names, key, user, new_state=state, new_data=data)
            return
        self._upsert(
            connection,
            self.write_record_sql,
            RECORD,
            key,
            user,
            new_state=state,
            new_data=data,
            new_updated_at=self._stored_time(stamp),
        )

    def put_records(
        self, connection: Connection, records: Sequence[tuple[str, int | None, str | None, str | None, datetime]]
    ) -> None:
        """Write whole records (key, user, state, data, time) in one batch; none may be empty."""
        rows = [
            {
                "key": key,
                "user_id": user,
                "new_version": new_version(),
                "new_state": state,
                "new_data": data,
                "new_updated_at": self._stored_time(stamp),
            }
            for key, user, state, data, stamp in records
        ]
        if not rows:
            return
        if self.write_record_sql is not None:
            connection.execute(self.write_record_sql, rows)  # the driver's executemany: one batch
            return
        for key, user, state, data, stamp in records:
            stored = self._stored_time(stamp)
            self._upsert(connection, None, RECORD, key, user, new_state=state, new_data=data, new_updated_at=stored)

    def _stored_time(self, stamp: datetime) -> datetime:
        # PostgreSQL keeps the zone; SQLite's and MySQL's columns hold UTC without one.
        stamp = stamp.astimezone(UTC)
        return stamp if self.dialect == "postgresql" else stamp.replace(tzinfo=None)

    def clear_field(self, connection: Connection, key: str, user: int | None, field: Field) -> None:
        """Empty `state` or `data`; the row goes when both are empty.

        The DELETE checks both fields itself, so a write landing between the
        two statements keeps the row, and whichever of two concurrent clears
        deletes last sees both fields empty.
        """
        connection.execute(self.clear_sql[field], {"key": key, "user_id": user, "new_version": new_version()})
        connection.execute(self.delete_if_empty_sql, {"key": key})

    def swap_data(self, connection: Connection, key: str, user: int | None, expected: int, data: str) -> bool:
        """Write `data` if the row is still at version `expected`; False if it changed."""
        parameters = {"key": key, "user_id": user, "expected": expected, "new_data": data, "new_version": new_version()}
        return _changed(connection.execute(self.swap_data_sql, parameters))

    def swap_both(
        self,
        connection: Connection,
        key: str,
        user: int | None,
        expected: int | None,
        state: str | None,
        data: str | None,
    ) -> bool:
        """Replace state and data if the row is still at version `expected` (None: still absent).

        False if another writer changed it; the row goes when both are empty.
        An INSERT that meets a row another writer made raises IntegrityError.
        """
        parameters = {"key": key, "user_id": user, "expected": expected, "new_state": state, "new_data": data}
        if state is None and data is None:
            if expected is None:
                return self.fetch(connection, key) is None
            return _changed(connection.execute(self.delete_version_sql, parameters))
        parameters["new_version"] = new_version()
        if expected is None:
            connection.execute(self.insert_both_sql, parameters)
            return True
        return _changed(connection.execute(self.swap_both_sql, parameters))

    def swap_with_outbox(
        self,
        connection: Connection,
        key: str,
        user: int | None,
        expected: int | None,
        state: str | None,
        data: str,
        queued: int,
    ) -> bool:
        """`swap_both` for ApplyOnce: the row always stays (it holds the applied-update record and
        the outbox); `queued` is the outbox's last number, and the row is due while it passes the sent one."""
        parameters = {
            "key": key,
            "user_id": user,
            "expected": expected,
            "new_state": state,
            "new_data": data,
            "new_version": new_version(),
            "queued": queued,
        }
        if expected is None:
            connection.execute(self.insert_outbox_sql, parameters)
            return True
        return _changed(connection.execute(self.swap_outbox_sql, parameters))

    def mark_sent(self, connection: Connection, marks: Sequence[tuple[str, int]]) -> None:
        """Record each key's outbox as done up to its number, in one batch."""
        if marks:
            connection.execute(self.mark_sent_sql, [{"key": key, "done": done} for key, done in marks])

    def postpone(self, connection: Connection, key: str, until: datetime) -> None:
        connection.execute(self.postpone_sql, {"key": key, "until": self._stored_time(until)})

    def due(self, connection: Connection, before: datetime, limit: int) -> list[Row[Any, Any]]:
        """(data, outbox_sent) of rows whose outbox has waited since before `before`, longest first."""
        parameters = {"before": self._stored_time(before), "limit": limit}
        return list(connection.execute(self.due_sql, parameters).all())

    def insert_data(self, connection: Connection, key: str, user: int | None, data: str) -> None:
        """Insert a new row holding `data`; IntegrityError if the key exists."""
        parameters = {"key": key, "user_id": user, "new_data": data, "new_version": new_version()}
        connection.execute(self.insert_data_sql, parameters)

    def delete_user(
        self, connection: Connection, user: int, key_pattern: tuple[str, str] | None, keep: str | None = None
    ) -> int:
        """Delete the user's rows but `keep`'s, found by the index on `user_id`; how many.

        With `key_pattern` (start, end of the user's keys), also rows written without a
        user id whose key starts with `start` and ends with `end`.
        """
        deleted = _rowcount(connection.execute(self.delete_user_sql, {"user_id": user, "keep": keep or ""}))
        if key_pattern is not None:
            pattern = f"{_escape_like(key_pattern[0])}%{_escape_like(key_pattern[1])}"
            deleted += _rowcount(connection.execute(self.delete_unfilled_sql, {"pattern": pattern}))
        return deleted

    def read(self, connection: Connection, after: str | None, limit: int | None) -> list[Row[Any, Any, Any, Any, Any]]:
        """Rows sorted by key, from the first after `after`, at most `limit` (None: all)."""
        if after is None and limit is None:
            return list(connection.execute(self.read_all_sql).all())
        parameters = {"after": "" if after is None else after, "limit": 2**62 if limit is None else limit}
        return list(connection.execute(self.read_page_sql, parameters).all())

    def read_keys(self, connection: Connection, keys: Sequence[str]) -> list[Row[Any, Any, Any, Any, Any]]:
        return list(connection.execute(self.read_keys_sql, {"keys": list(keys)}).all()) if keys else []

    def unfilled(self, connection: Connection, after: str | None, limit: int) -> list[str]:
        """Keys of rows without a user id, sorted, from the first after `after`."""
        parameters = {"after": "" if after is None else after, "limit": limit}
        return list(connection.execute(self.unfilled_sql, parameters).scalars().all())

    def fill(self, connection: Connection, users: Sequence[tuple[str, int]]) -> None:
        """Set each (key, user)'s user id where it is still missing, in one batch."""
        if users:
            connection.execute(self.fill_sql, [{"key": key, "user_id": user} for key, user in users])

    def count_states(self, connection: Connection, states: Collection[str], since: datetime) -> tuple[int, int]:
        """(rows in `states`, those of them touched since `since`)."""
        parameters = {"states": list(states), "since": self._stored_time(since)}
        total, active = connection.execute(self.count_states_sql, parameters).one()
        return int(total), int(active)

    def expire(self, connection: Connection, ttl: timedelta, limit: int) -> int:
        """Delete at most `limit` of the keys untouched for `ttl`, by the database's clock."""
        cutoff = connection.execute(self.now_sql).scalar_one() - ttl
        keys = connection.execute(self.oldest_sql, {"cutoff": cutoff, "limit": limit}).scalars().all()
        if not keys:
            return 0
        return _rowcount(connection.execute(self.delete_old_sql, {"keys": list(keys), "cutoff": cutoff}))

    def _upsert(
        self,
        connection: Connection,
        statement: Executable | None,
        names: tuple[str, ...],
        key: str,
        user: int | None,
        **values: Any,
    ) -> None:
        parameters = {"key": key, "user_id": user, "new_version": new_version(), **values}
        if statement is not None:
            connection.execute(statement, parameters)
            return
        # A dialect without an upsert: UPDATE, else INSERT, else UPDATE again.
        plain = self._plain_update[names]
        if _changed(connection.execute(plain, parameters)):
            return
        try:
            with connection.begin_nested():
                connection.execute(
                    insert(self.table).values(
                        id=bindparam("key"),
                        user_id=bindparam("user_id"),
                        version=bindparam("new_version"),
                        **{name: bindparam(f"new_{name}") for name in names if name != "version"},
                    ),
                    parameters,
                )
        except IntegrityError:
            connection.execute(plain, parameters)


def _changed(result: Any) -> bool:
    return bool(_rowcount(result))


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount


def _escape_like(text: str) -> str:
    return text.replace("/", "//").replace("%", "/%").replace("_", "/_")


def _upsert(table: Table, dialect: str, names: tuple[str, ...]) -> Executable | None:
    """INSERT the key with `names`, or on conflict overwrite just those columns: one statement."""
    inserted: dict[str, Any] = {
        "id": bindparam("key"),
        "user_id": bindparam("user_id"),
        "version": bindparam("new_version"),
        **{name: bindparam(f"new_{name}") for name in names if name != "version"},
    }
    if dialect in ("sqlite", "postgresql"):
        dialect_insert = sqlite.insert(table) if dialect == "sqlite" else postgresql.insert(table)
        statement = dialect_insert.values(inserted)
        changes = {name: statement.excluded[name] for name in (*names, "user_id")}
        return statement.on_conflict_do_update(index_elements=[table.c.id], set_={"updated_at": func.now(), **changes})
    if dialect in ("mysql", "mariadb"):
        mysql_statement = mysql.insert(table).values(inserted)
        mysql_changes = {name: mysql_statement.inserted[name] for name in (*names, "user_id")}
        return mysql_statement.on_duplicate_key_update({"updated_at": func.now(), **mysql_changes})
    return None
