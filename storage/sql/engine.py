"""Async SQLAlchemy engines with defaults that suit a bot's short, frequent writes."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateColumn

from storage.errors import SchemaError

T = TypeVar("T")

# What a database that is down, restarting or unreachable raises through SQLAlchemy.
SQL_OUTAGES: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeoutError,
    OSError,
)
SQLITE_BUSY_TIMEOUT_MS = 5_000
# A server database's connections for the storage's calls (see create_engine_for_url).
POOL_SIZE = 15
CONNECT_TIMEOUT_SECONDS = 5
# Drivers wait up to a minute for an unreachable host by default.
_CONNECT_TIMEOUT_ARGUMENT = {
    "asyncpg": "timeout",
    "asyncmy": "connect_timeout",
    "aiomysql": "connect_timeout",
}


def create_engine_for_url(url: str, **engine_kwargs: Any) -> AsyncEngine:
    """An engine for `url`: SQLite in WAL mode with a busy timeout, server databases in AUTOCOMMIT.

    Each of the storages' operations is one statement, or statements that stay
    correct one by one (storage/sql/statements.py): on a server a transaction
    around them would only add BEGIN and COMMIT round trips.
    """
    parsed = make_url(url)
    # Error messages would otherwise quote the statement's values: users' answers, in the logs.
    engine_kwargs.setdefault("hide_parameters", True)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database, **engine_kwargs)
    timeout_argument = _CONNECT_TIMEOUT_ARGUMENT.get(parsed.get_driver_name())
    if timeout_argument:
        engine_kwargs.setdefault("connect_args", {}).setdefault(timeout_argument, CONNECT_TIMEOUT_SECONDS)
    engine_kwargs.setdefault("isolation_level", "AUTOCOMMIT")
    # No ping on every checkout (a round trip per call): see retried_on_a_closed_connection.
    engine_kwargs.setdefault("pool_pre_ping", False)
    # MySQL closes idle connections after wait_timeout (8 h by default).
    engine_kwargs.setdefault("pool_recycle", 3600)
    if "poolclass" not in engine_kwargs and "pool" not in engine_kwargs:  # yours (NullPool behind PgBouncer) stays
        # Every connection the pool may open, it keeps: a connection given back beyond
        # `pool_size` would be closed and, under load, opened again a moment later (a
        # handshake for the bot, a new server process for PostgreSQL). More calls at
        # once than this wait their turn, briefly.
        engine_kwargs.setdefault("pool_size", POOL_SIZE)
        engine_kwargs.setdefault("max_overflow", 0)
    engine = create_async_engine(url, **engine_kwargs)
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        event.listen(engine.sync_engine, "connect", _in_utc)
    return engine


def _in_utc(dbapi_connection: Any, _record: Any) -> None:
    """MySQL's NOW() is in the session's time zone: make it UTC, as every other time the bot keeps."""
    cursor = dbapi_connection.cursor()
    cursor.execute("SET time_zone = '+00:00'")
    cursor.close()


async def retried_on_a_closed_connection(attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt()`, and once more if the server had closed its pooled connection (a restart).

    SQLAlchemy then drops the pool's older connections, so the second attempt
    gets a new one. Only for operations that may run twice: no ping per
    checkout is needed then (a round trip on every call).
    """
    try:
        return await attempt()
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
        return await attempt()


def ensure_table(connection: Connection, table: Table, added_later: tuple[str, ...] = ()) -> None:
    """Create `table` if it is missing, else check that it has every column the bot writes.

    Columns named in `added_later` came with a newer version of the bot: an
    older table gets them (nullable, or NOT NULL with their default) instead of an error.
    Not safe for processes doing it at once: run it under storage/sql/schema.py's lock.
    """
    table.create(connection, checkfirst=True)
    present = {column["name"] for column in inspect(connection).get_columns(table.name)}
    missing = [column.name for column in table.columns if column.name not in present | set(added_later)]
    if missing:
        msg = (
            f"the table {table.name} has no column {', '.join(missing)}: it was made by another program "
            "(aiogram-sqlalchemy-storage?); rename or drop it, or give the bot another database"
        )
        raise SchemaError(msg)
    for name in added_later:
        if name not in present:
            # As CREATE TABLE would write it (type, default, NOT NULL): a NOT NULL column with
            # a default (the outbox's counters) gets it in every existing row.
            column = CreateColumn(table.c[name]).compile(dialect=connection.dialect)
            table_name = connection.dialect.identifier_preparer.format_table(table)
            connection.exec_driver_sql(f"ALTER TABLE {table_name} ADD COLUMN {column}")
    # Indexes a newer version added (the FSM table's on updated_at) come to an older table too.
    for index in table.indexes:
        index.create(connection, checkfirst=True)


def ensure_private_folder(path: Path) -> None:
    """Create the folder for a database file, readable by its owner only."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _sqlite_engine(url: str, database: str | None, **engine_kwargs: Any) -> AsyncEngine:
    if database in (None, "", ":memory:") or "mode=memory" in url:
        # Each pooled connection would see its own empty database.
        msg = "an in-memory SQLite database does not persist: give a file path"
        raise ValueError(msg)
    ensure_private_folder(Path(database).parent)
    engine = create_async_engine(url, **engine_kwargs)
    configure_sqlite(engine.sync_engine)
    _restrict_file(database)
    return engine


def configure_sqlite(engine: Engine) -> None:
    """Set every new connection of `engine` to WAL, synchronous=NORMAL and a busy timeout."""

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the writer; NORMAL still survives a killed process.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()


def _restrict_file(database: str) -> None:
    """Answers are personal data: create the file owner-only before SQLite does."""
    path = Path(database)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
