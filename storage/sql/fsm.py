"""SQLAlchemyStorage: aiogram FSM state and data in one SQL table.

The aiogram side of the table: `SQLRecords` (storage/sql/records.py: the
connection, whole records for the owner's commands) with aiogram's storage
API on top, by `StorageKey`. Writes are single upserts (by dialect).
`update_data` reads the row and writes it back only if its `version` is
still the one it read (compare-and-swap), so concurrent updates never lose a
key, in one process or across several.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Self, cast

from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import DefaultKeyBuilder, KeyBuilder, StateType, StorageKey
from sqlalchemy import Connection, MetaData
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.errors import DEFAULT_TIMEOUT_SECONDS, CorruptDataError, database_call
from storage.interface import DueOutbox, FsmStorage, Versioned, user_key_pattern, user_reader
from storage.records import ALL_DONE
from storage.sql.engine import SQL_OUTAGES
from storage.sql.records import JsonDumps, JsonLoads, SQLRecords, as_metadata
from storage.sql.statements import Field, FsmStatements

# A compare-and-swap only fails when another writer changed the key between
# its read and its write; fifty in a row means something is badly wrong.
_MAX_CAS_ATTEMPTS = 50


class SQLAlchemyStorage(SQLRecords, FsmStorage):
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
        # Read here, so a deprecation warning points at the caller's line, not at SQLRecords'.
        metadata = as_metadata(metadata)
        super().__init__(
            sessionmaker, metadata, table_name, json_dumps=json_dumps, json_loads=json_loads, timeout=timeout
        )
        self.key_builder = key_builder or DefaultKeyBuilder()
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
    ) -> Self:
        """Connect with sound defaults for the database, create the table, own the engine.

        On a SQLite file every call runs on one connection in one thread of
        its own (see storage/sql/sqlite_thread.py); `sessionmaker` stays async.
        """
        options = {
            "table_name": table_name,
            "key_builder": key_builder,
            "json_dumps": json_dumps,
            "json_loads": json_loads,
            "timeout": timeout,
        }
        return await cls._connect(url, engine_kwargs, options)

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

    # --- keys ------------------------------------------------------------------

    def _id(self, key: StorageKey) -> str:
        # Custom builders written for aiogram-sqlalchemy-storage take no `part`.
        return self.key_builder.build(key)

    async def _clear(self, key_id: str, user: int | None, field: Field) -> None:
        await self._run(lambda st, connection: st.clear_field(connection, key_id, user, field))
