"""The bot's tables, created and upgraded once, under the database's lock, each with a version.

Every process runs `set_up_table` at start-up. A table whose version is
recorded in `aiogram_schema_version` and equal to this bot's costs reads
only. Otherwise the process takes the database's lock (PostgreSQL: an
advisory lock, MySQL and MariaDB: GET_LOCK, SQLite: the write lock), looks
again (another process may have done it meanwhile), creates the table or
brings an older one up to date in place (`ensure_table`: columns added with
their defaults, indexes), records the version and commits before letting the
lock go. A version newer than this bot's stops it: the bot runs an older
release than the one that last upgraded the database.

Only start-up takes the lock; the bot's handling never does. To change a
table, see docs/storages.md ("The schema's version").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, delete, insert, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.errors import SchemaError
from storage.sql.engine import ensure_table, retried_on_a_closed_connection

if TYPE_CHECKING:
    from storage.sql.records import SQLRecords


@dataclass(frozen=True)
class TableSchema:
    """A table's version, and the columns a table made by an older version may lack."""

    version: int
    added_later: tuple[str, ...] = ()


# Raise a table's version with every change to its definition. Tables from before
# versions have no row: they are brought up to date as an older version would be.
FSM_SCHEMA = TableSchema(1, added_later=("user_id", "outbox_queued", "outbox_sent", "outbox_due"))
RESPONSES_SCHEMA = TableSchema(1, added_later=("response_id", "kind"))
FORMS_SCHEMA = TableSchema(1)

VERSIONS = Table(
    "aiogram_schema_version",
    MetaData(),
    Column("table_name", String(255), primary_key=True),
    Column("version", Integer, nullable=False),
)
# Any fixed number or name, the same in every process. PostgreSQL's advisory locks are
# per database; MySQL's named locks are per server (bots on other databases of the
# server wait for each other's start-up too: milliseconds).
POSTGRES_LOCK_KEY = 0x6169_6F67_7261_6D  # "aiogram"
MYSQL_LOCK_NAME = "aiogram_schema"
MYSQL_LOCK_WAIT_SECONDS = 60


async def set_up(storage: SQLRecords, table: Table, schema: TableSchema) -> None:
    """Run `set_up_table` where `storage` writes: its SQLite thread, or a connection of its engine of its own."""

    def operation(connection: Connection) -> None:
        set_up_table(connection, table, schema)

    bound = storage.sessionmaker.kw.get("bind")
    if storage._sqlite is not None:  # one writer on the file: the storage's thread
        await storage.run_on_connection(operation)
        return
    if not isinstance(bound, AsyncEngine):
        msg = "create_table needs a sessionmaker bound to an engine: async_sessionmaker(engine)"
        raise TypeError(msg)

    async def attempt() -> None:
        # Not in a transaction of the storage's: set_up_table commits before letting the lock go.
        async with bound.connect() as connection:
            await connection.run_sync(operation)

    await retried_on_a_closed_connection(attempt)


async def is_current(storage: SQLRecords, table: Table, schema: TableSchema) -> bool:
    """Whether `table` exists at `schema.version`, by reads only (SchemaError if at a newer one): what an
    owner's command that only reads checks instead of setting the table up."""
    return await storage.run_on_connection(lambda connection: _is_current(connection, table, schema.version))


def set_up_table(connection: Connection, table: Table, schema: TableSchema) -> None:
    """Create `table` or upgrade it to `schema.version`, once, whatever the processes doing the same meanwhile."""
    if _is_current(connection, table, schema.version):
        return
    connection.commit()  # what follows reads what the lock's previous holder committed
    with schema_lock(connection):
        if not _is_current(connection, table, schema.version):
            ensure_table(connection, VERSIONS)
            ensure_table(connection, table, schema.added_later)
            name = VERSIONS.c.table_name == table.name
            connection.execute(delete(VERSIONS).where(name))
            connection.execute(insert(VERSIONS).values(table_name=table.name, version=schema.version))
        connection.commit()


def _is_current(connection: Connection, table: Table, version: int) -> bool:
    """Whether `table` exists at `version`, by reads only; SchemaError if it is at a newer one."""
    inspector = inspect(connection)
    if not inspector.has_table(VERSIONS.name):
        return False
    found = connection.execute(select(VERSIONS.c.version).where(VERSIONS.c.table_name == table.name)).scalar()
    if found is not None and found > version:
        msg = (
            f"the table {table.name} is at schema version {found}, this bot knows up to {version}: "
            "a newer release of the bot upgraded the database; run that release (or newer)"
        )
        raise SchemaError(msg)
    # A row without its table: someone dropped the table since, and it is made again.
    return found == version and inspector.has_table(table.name)


@contextmanager
def schema_lock(connection: Connection) -> Iterator[None]:
    """Hold the database's own lock for setting up tables, across processes; let go however the block ends.

    The engines of PostgreSQL and MySQL run in AUTOCOMMIT: these locks are the
    session's (the connection's), not a transaction's, so they last until
    released whatever commits meanwhile. On SQLite the write transaction is the
    lock: the caller's commit or rollback ends it.
    """
    dialect = connection.dialect.name
    if dialect == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        yield
        return
    if dialect == "postgresql":
        take = text("SELECT pg_advisory_lock(:key)").bindparams(key=POSTGRES_LOCK_KEY)
        release = text("SELECT pg_advisory_unlock(:key)").bindparams(key=POSTGRES_LOCK_KEY)
    elif dialect in ("mysql", "mariadb"):
        take = text("SELECT GET_LOCK(:name, :wait)").bindparams(name=MYSQL_LOCK_NAME, wait=MYSQL_LOCK_WAIT_SECONDS)
        release = text("SELECT RELEASE_LOCK(:name)").bindparams(name=MYSQL_LOCK_NAME)
    else:  # another database: no lock known here
        yield
        return
    taken = connection.execute(take).scalar()
    if dialect != "postgresql" and taken != 1:
        msg = f"another process held the schema lock for {MYSQL_LOCK_WAIT_SECONDS} s"
        raise TimeoutError(msg)
    try:
        yield
    finally:
        try:
            connection.rollback()  # nothing if the block committed; else a failed transaction would refuse the release
            connection.execute(release)
            connection.commit()
        except Exception:
            # Never back to the pool holding the lock: closed, the connection lets it go.
            connection.invalidate()
