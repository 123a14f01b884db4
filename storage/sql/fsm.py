"""SQLAlchemyStorage: aiogram FSM state and data in one SQL table.

One row per storage key, present only while the key has a state or data.
Writes are single upserts (by dialect). `update_data` reads the row and
writes it back only if its `version` is still the one it read
(compare-and-swap), so concurrent updates never lose a key, in one process
or across several. Every operation is correct statement by statement, so on
PostgreSQL and MySQL each statement commits on its own (no BEGIN and COMMIT
round trips); on a SQLite file each call is one transaction.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import DefaultKeyBuilder, KeyBuilder, StateType, StorageKey
from sqlalchemy import Connection, Engine, MetaData, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from storage.errors import DEFAULT_TIMEOUT_SECONDS, CorruptDataError, database_call
from storage.interface import (
    ALL_DONE,
    DueOutbox,
    FsmRecord,
    FsmStorage,
    Versioned,
    as_utc,
    user_key_pattern,
    user_reader,
)
from storage.sql.engine import SQL_OUTAGES, create_engine_for_url, retried_on_a_closed_connection
from storage.sql.schema import FSM_SCHEMA, set_up
from storage.sql.sqlite_thread import SQLiteThread
from storage.sql.statements import Field, FsmStatements, fsm_table

JsonDumps = Callable[[Any], str | bytes]
JsonLoads = Callable[[str | bytes], Any]
T = TypeVar("T")

# A compare-and-swap only fails when another writer changed the key between
# its read and its write; fifty in a row means something is badly wrong.
_MAX_CAS_ATTEMPTS = 50


class SQLAlchemyStorage(FsmStorage):
    """aiogram FSM storage on any SQLAlchemy async database (SQLite, PostgreSQL, MySQL...).

    Build it with `await SQLAlchemyStorage.from_url(url)`, which also creates
    the table, or from your own `async_sessionmaker` as in aiogram-sqlalchemy-storage,
    then create `storage.metadata`'s tables yourself (or `await storage.create_table()`).
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        metadata: MetaData | None = None,
        table_name: str | None = "aiogram_fsm_data",
        key_builder: KeyBuilder | None = None,
        json_dumps: JsonDumps = json.dumps,
        json_loads: JsonLoads = json.loads,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.metadata = _as_metadata(metadata)
        self.table = fsm_table(self.metadata, table_name or "aiogram_fsm_data")
        self.key_builder = key_builder or DefaultKeyBuilder()
        # Each call gives up after this many seconds, so a stuck database never freezes a user.
        self.timeout = timeout
        self.json_dumps = json_dumps
        self.json_loads = json_loads
        self._owned_engine: AsyncEngine | None = None
        self._sqlite: SQLiteThread | None = None
        self._statements: dict[str, FsmStatements] = {}
        self._user_of = user_reader(self.key_builder)

    @classmethod
    async def from_url(
        cls,
        url: str,
        *,
        table_name: str = "aiogram_fsm_data",
        key_builder: KeyBuilder | None = None,
        json_dumps: JsonDumps = json.dumps,
        json_loads: JsonLoads = json.loads,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,  # noqa: ASYNC109 - per database call
        **engine_kwargs: Any,
    ) -> SQLAlchemyStorage:
        """Connect with sound defaults for the database, create the table, own the engine.

        On a SQLite file every call runs on one connection in one thread of
        its own (see storage/sql/sqlite_thread.py); `sessionmaker` stays async.
        """
        engine = create_engine_for_url(url, **engine_kwargs)
        storage = cls(
            async_sessionmaker(engine, expire_on_commit=False),
            table_name=table_name,
            key_builder=key_builder,
            json_dumps=json_dumps,
            json_loads=json_loads,
            timeout=timeout,
        )
        storage._owned_engine = engine
        if make_url(url).get_backend_name() == "sqlite":
            storage._sqlite = SQLiteThread(url)
        try:
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

    # --- BaseStorage -------------------------------------------------------

    @database_call(SQL_OUTAGES)
    async def get_state(self, key: StorageKey) -> str | None:
        key_id = self._id(key)
        row = await self._run(lambda st, connection: st.fetch(connection, key_id))
        return None if row is None else cast(str | None, row.state)

    @database_call(SQL_OUTAGES)
    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        value = state.state if isinstance(state, State) else state
        key_id = self._id(key)
        if value is None:
            await self._clear(key_id, key.user_id, "state")
        else:
            await self._run(lambda st, connection: st.set_state(connection, key_id, key.user_id, value))

    @database_call(SQL_OUTAGES)
    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        key_id = self._id(key)
        row = await self._run(lambda st, connection: st.fetch(connection, key_id))
        return self._loads(None if row is None else row.data)

    @database_call(SQL_OUTAGES)
    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        if not isinstance(data, dict):
            msg = f"Data must be a dict or dict-like object, got {type(data).__name__}"
            raise DataNotDictLikeError(msg)
        key_id = self._id(key)
        if data:
            text = self._dumps(data)
            await self._run(lambda st, connection: st.set_data(connection, key_id, key.user_id, text))
        else:
            await self._clear(key_id, key.user_id, "data")

    @database_call(SQL_OUTAGES)
    async def update_data(self, key: StorageKey, data: Mapping[str, Any]) -> dict[str, Any]:
        patch = dict(data)
        key_id = self._id(key)

        def merge(st: FsmStatements, connection: Connection) -> dict[str, Any] | None:
            """The merged data, written; None if another writer changed the row after it was read."""
            row = st.fetch(connection, key_id)
            current = self._loads(None if row is None else row.data)
            if not patch:  # nothing to write (and an empty key must stay without a row)
                return current
            merged = current | patch
            text = self._dumps(merged)
            if row is None:
                st.insert_data(connection, key_id, key.user_id, text)  # IntegrityError if another inserted first
                return merged
            return merged if st.swap_data(connection, key_id, key.user_id, row.version, text) else None

        for _ in range(_MAX_CAS_ATTEMPTS):
            try:
                merged = await self._run(merge)
            except IntegrityError:
                continue
            if merged is not None:
                return merged
        msg = f"update_data gave up after {_MAX_CAS_ATTEMPTS} concurrent writes to one key"
        raise RuntimeError(msg)

    @database_call(SQL_OUTAGES)
    async def get_state_and_data(self, key: StorageKey) -> tuple[str | None, dict[str, Any]]:
        key_id = self._id(key)
        row = await self._run(lambda st, connection: st.fetch(connection, key_id))
        return (None, {}) if row is None else (cast(str | None, row.state), self._loads(row.data))

    @database_call(SQL_OUTAGES)
    async def set_state_and_data(self, key: StorageKey, state: StateType, data: Mapping[str, Any]) -> None:
        value = state.state if isinstance(state, State) else state
        key_id = self._id(key)
        text = self._dumps(data) if data else None
        await self._run(lambda st, connection: st.set_both(connection, key_id, key.user_id, value, text))

    @database_call(SQL_OUTAGES)
    async def get_versioned(self, key: StorageKey) -> Versioned:
        key_id = self._id(key)
        row = await self._run(lambda st, connection: st.fetch(connection, key_id))
        if row is None:
            return Versioned(None, {}, None)
        state = cast(str | None, row.state)
        version = cast(int, row.version)
        sent = int(row.outbox_sent or 0) if row.outbox_queued else ALL_DONE
        try:
            return Versioned(state, self._loads(row.data), version, sent)
        except CorruptDataError as error:
            return Versioned(state, error, version, sent)

    @database_call(SQL_OUTAGES)
    async def swap_state_and_data(
        self, key: StorageKey, expected: int | None, state: StateType, data: Mapping[str, Any]
    ) -> bool:
        value = state.state if isinstance(state, State) else state
        key_id = self._id(key)
        text = self._dumps(data) if data else None
        try:
            return await self._run(
                lambda st, connection: st.swap_both(connection, key_id, key.user_id, expected, value, text)
            )
        except IntegrityError:  # another writer made the row since it was read as absent
            return False

    @database_call(SQL_OUTAGES)
    async def swap_with_outbox(
        self,
        key: StorageKey,
        expected: int | None,
        state: StateType,
        data: Mapping[str, Any],
        queued: int,
        sent: int = 0,
    ) -> bool:
        """As `FsmStorage.swap_with_outbox`; the database compares `queued` with the row's own sent number."""
        value = state.state if isinstance(state, State) else state
        key_id = self._id(key)
        text = self._dumps(data)
        try:
            return await self._run(
                lambda st, connection: st.swap_with_outbox(
                    connection, key_id, key.user_id, expected, value, text, queued
                )
            )
        except IntegrityError:  # another writer made the row since it was read as absent
            return False

    @database_call(SQL_OUTAGES)
    async def mark_sent(self, marks: Sequence[tuple[StorageKey, int]]) -> None:
        by_id = [(self._id(key), done) for key, done in marks]
        await self._run(lambda st, connection: st.mark_sent(connection, by_id))

    @database_call(SQL_OUTAGES)
    async def postpone_outbox(self, key: StorageKey, until: datetime) -> None:
        key_id = self._id(key)
        await self._run(lambda st, connection: st.postpone(connection, key_id, until))

    @database_call(SQL_OUTAGES)
    async def due_outboxes(self, before: datetime, limit: int) -> list[DueOutbox]:
        rows = await self._run(lambda st, connection: st.due(connection, before, limit))
        found = []
        for row in rows:
            try:
                found.append(DueOutbox(self._loads(row.data), int(row.outbox_sent)))
            except CorruptDataError:
                continue  # nothing can be delivered from data that cannot be read
        return found

    @database_call(SQL_OUTAGES)
    async def delete_user(self, user_id: int, keep: StorageKey | None = None) -> int:
        """Delete the user's sessions in every chat (for /forget), found by the index on the user."""
        # Rows an older version wrote without a user id, if the key builder lets them be found by key.
        pattern = user_key_pattern(self.key_builder, user_id) if self._user_of is not None else None
        kept = None if keep is None else self._id(keep)
        return await self._run(lambda st, connection: st.delete_user(connection, user_id, pattern, kept))

    # --- the owner's commands (export, stats, migrate) and expiry ------------

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
    async def fill_user_ids(self, after: str | None, limit: int) -> str | None:
        user_of = self._user_of
        if user_of is None:
            return None

        def fill(st: FsmStatements, connection: Connection) -> str | None:
            keys = st.unfilled(connection, after, limit)
            found = [(key, user) for key in keys if (user := user_of(key)) is not None]
            st.fill(connection, found)
            return keys[-1] if keys else None

        return await self._run(fill)

    @database_call(SQL_OUTAGES)
    async def expire(self, ttl: timedelta, limit: int) -> int:
        return await self._run(lambda st, connection: st.expire(connection, ttl, limit))

    # --- running statements ----------------------------------------------------

    def _id(self, key: StorageKey) -> str:
        # Custom builders written for aiogram-sqlalchemy-storage take no `part`.
        return self.key_builder.build(key)

    async def _clear(self, key_id: str, user: int | None, field: Field) -> None:
        await self._run(lambda st, connection: st.clear_field(connection, key_id, user, field))

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


def _as_metadata(metadata: Any) -> MetaData:
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
