"""SQLRecords: the FSM table as whole records by key, for the owner's commands and expiry. No aiogram.

`SQLAlchemyStorage` (storage/sql/fsm.py) is this class with aiogram's storage
API on top: the bot's handlers read and write through that one; `stats`,
`export` and `migrate` open this one and never import aiogram. One row per
storage key, present only while the key has a state or data. Every operation
is correct statement by statement, so on PostgreSQL and MySQL each statement
commits on its own (no BEGIN and COMMIT round trips); on a SQLite file each
call is one transaction.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Self, TypeVar, cast

from sqlalchemy import Connection, Engine, MetaData, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from storage.errors import DEFAULT_TIMEOUT_SECONDS, CorruptDataError, database_call
from storage.records import FsmRecord, FsmRecords, as_utc, default_key_user
from storage.sql.engine import SQL_OUTAGES, create_engine_for_url, retried_on_a_closed_connection
from storage.sql.schema import FSM_SCHEMA, is_current, set_up
from storage.sql.sqlite_thread import SQLiteThread
from storage.sql.statements import FsmStatements, fsm_table

JsonDumps = Callable[[Any], str | bytes]
JsonLoads = Callable[[str | bytes], Any]
T = TypeVar("T")


class SQLRecords(FsmRecords):
    """The FSM table on any SQLAlchemy async database, read and written as whole records.

    `await SQLRecords.from_url(url)` connects and creates (or upgrades) the table.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        metadata: MetaData | None = None,
        table_name: str | None = "aiogram_fsm_data",
        json_dumps: JsonDumps = json.dumps,
        json_loads: JsonLoads = json.loads,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.metadata = as_metadata(metadata)
        self.table = fsm_table(self.metadata, table_name or "aiogram_fsm_data")
        # Each call gives up after this many seconds, so a stuck database never freezes a user.
        self.timeout = timeout
        self.json_dumps = json_dumps
        self.json_loads = json_loads
        self._owned_engine: AsyncEngine | None = None
        self._sqlite: SQLiteThread | None = None
        self._statements: dict[str, FsmStatements] = {}
        # Reads the user from a key an older version wrote without one: the default layout's here,
        # the key builder's own on the aiogram side.
        self._user_of: Callable[[str], int | None] | None = default_key_user

    @classmethod
    async def from_url(
        cls,
        url: str,
        *,
        table_name: str = "aiogram_fsm_data",
        json_dumps: JsonDumps = json.dumps,
        json_loads: JsonLoads = json.loads,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,  # noqa: ASYNC109 - per database call
        set_up: bool = True,
        **engine_kwargs: Any,
    ) -> Self:
        """Connect with sound defaults for the database, create the table (`set_up`; else leave the
        database as it is), own the engine.

        On a SQLite file every call runs on one connection in one thread of
        its own (see storage/sql/sqlite_thread.py); `sessionmaker` stays async.
        """
        options = {"table_name": table_name, "json_dumps": json_dumps, "json_loads": json_loads, "timeout": timeout}
        return await cls._connect(url, engine_kwargs, options, set_up)

    @classmethod
    async def _connect(
        cls, url: str, engine_kwargs: dict[str, Any], options: dict[str, Any], set_up: bool = True
    ) -> Self:
        engine = create_engine_for_url(url, **engine_kwargs)
        storage = cls(async_sessionmaker(engine, expire_on_commit=False), **options)
        storage._owned_engine = engine
        if make_url(url).get_backend_name() == "sqlite":
            storage._sqlite = SQLiteThread(url)
        try:
            if set_up:
                await storage.create_table()
        except BaseException:
            await storage.close()
            raise
        return storage

    @database_call(SQL_OUTAGES)
    async def create_table(self) -> None:
        """Create the FSM table, or bring an older one up to date, once (storage/sql/schema.py).

        SchemaError if a table of that name was made by another program, or by a newer release.
        """
        await set_up(self, self.table, FSM_SCHEMA)

    @database_call(SQL_OUTAGES)
    async def is_set_up(self) -> bool:
        """Whether the FSM table is there, at this release's version (reads only; SchemaError if newer)."""
        return await is_current(self, self.table, FSM_SCHEMA)

    @property
    def engines(self) -> list[Engine]:
        """The engines this storage sends statements through, for SQLAlchemy event listeners."""
        bound = self.sessionmaker.kw.get("bind")
        engines = [bound.sync_engine] if isinstance(bound, AsyncEngine) else []
        return engines + ([self._sqlite.engine] if self._sqlite is not None else [])

    async def close(self) -> None:
        if self._sqlite is not None:
            await self._sqlite.close()  # later calls raise instead of reaching the file another way
        if self._owned_engine is not None:
            await self._owned_engine.dispose()

    async def run_on_connection(self, operation: Callable[[Connection], T]) -> T:
        """Run `operation(connection)` where this storage runs its own statements.

        On a SQLite file opened by `from_url` that is the storage's one
        connection, in one transaction per call, so other tables in the same
        file (the completed responses) are written by the same single writer.
        On a server database opened by `from_url` each statement commits on
        its own (AUTOCOMMIT, storage/sql/engine.py): two statements here are
        not atomic together; on an engine of your own, the call is one
        transaction. If the server had closed the pooled connection, the
        operation runs a second time: write it so that it may.
        """
        if self._sqlite is not None:
            return await self._sqlite.run(operation)
        # Every operation here may run twice (each write is an upsert, a delete or a swap).
        return await retried_on_a_closed_connection(lambda: self._run_once(operation))

    async def _run_once(self, operation: Callable[[Connection], T]) -> T:
        bound = self.sessionmaker.kw.get("bind")
        if isinstance(bound, AsyncEngine):
            # A Core connection: an ORM session per call costs more than the statement.
            async with bound.begin() as connection:
                return await connection.run_sync(operation)
        async with self.sessionmaker.begin() as session:
            return await session.run_sync(lambda sync_session: operation(sync_session.connection()))

    @database_call(SQL_OUTAGES)
    async def ping(self) -> None:
        """Raise StorageUnavailableError unless the database answers."""
        await self.run_on_connection(lambda connection: connection.execute(text("SELECT 1")))

    # --- whole records: the owner's commands (export, stats, migrate) and expiry ---

    @database_call(SQL_OUTAGES)
    async def records(self, after: str | None = None, limit: int | None = None) -> list[FsmRecord]:
        rows = await self._run(lambda st, connection: st.read(connection, after, limit))
        return [self._record(row) for row in rows]

    @database_call(SQL_OUTAGES)
    async def records_for(self, keys: Sequence[str]) -> dict[str, FsmRecord]:
        rows = await self._run(lambda st, connection: st.read_keys(connection, keys))
        return {row.id: self._record(row) for row in rows}

    def _record(self, row: Any) -> FsmRecord:
        user = row.user_id if row.user_id is not None or self._user_of is None else self._user_of(row.id)
        return FsmRecord(row.id, row.state, self._loads(row.data), as_utc(row.updated_at), user)

    @database_call(SQL_OUTAGES)
    async def put_records(self, records: Sequence[FsmRecord]) -> None:
        # A record with neither state nor data is no record: the key has none (as set_state_and_data).
        empty = [record.key for record in records if record.state is None and not record.data]
        kept = [
            (
                record.key,
                self._user_for(record),
                record.state,
                self._dumps(record.data) if record.data else None,
                record.updated_at,
            )
            for record in records
            if record.state is not None or record.data
        ]

        def put(st: FsmStatements, connection: Connection) -> None:
            st.put_records(connection, kept)
            for key in empty:
                st.set_both(connection, key, None, None, None)

        await self._run(put)

    def _user_for(self, record: FsmRecord) -> int | None:
        if record.user_id is not None or self._user_of is None:
            return record.user_id
        return self._user_of(record.key)

    @database_call(SQL_OUTAGES)
    async def count_states(self, states: Collection[str], active_since: datetime) -> tuple[int, int]:
        total, active = await self._run(lambda st, connection: st.count_states(connection, states, active_since))
        return active, total - active

    @database_call(SQL_OUTAGES)
    async def expire(self, ttl: timedelta, limit: int) -> int:
        return await self._run(lambda st, connection: st.expire(connection, ttl, limit))

    # --- running statements ----------------------------------------------------

    async def _run(self, operation: Callable[[FsmStatements, Connection], T]) -> T:
        return await self.run_on_connection(lambda connection: operation(self._statements_for(connection), connection))

    def _statements_for(self, connection: Connection) -> FsmStatements:
        dialect = connection.dialect.name
        if dialect not in self._statements:
            self._statements[dialect] = FsmStatements(self.table, dialect)
        return self._statements[dialect]

    def _dumps(self, data: Mapping[str, Any]) -> str:
        dumped = self.json_dumps(data)
        return dumped.decode() if isinstance(dumped, bytes) else dumped

    def _loads(self, text: str | None) -> dict[str, Any]:
        if text is None:
            return {}
        try:
            loaded = self.json_loads(text)
        except ValueError as error:
            msg = f"stored FSM data is not JSON: {error}"
            raise CorruptDataError(msg) from None
        if not isinstance(loaded, dict):
            msg = f"stored FSM data is a JSON {type(loaded).__name__}, not an object"
            raise CorruptDataError(msg)
        return cast(dict[str, Any], loaded)


def as_metadata(metadata: Any) -> MetaData:
    if metadata is None:
        return MetaData()
    if isinstance(metadata, MetaData):
        return metadata
    inner = getattr(metadata, "metadata", None)
    if isinstance(inner, MetaData):
        warnings.warn(
            "Passing a declarative base as `metadata` is deprecated; pass Base.metadata",
            DeprecationWarning,
            stacklevel=3,
        )
        return inner
    msg = f"metadata must be a sqlalchemy MetaData, got {type(metadata).__name__}"
    raise TypeError(msg)
