"""SQLAlchemyStorage: aiogram FSM state and data in one SQL table.

One row per storage key, present only while the key has a state or data.
Writes are single upserts (by dialect). `update_data` is a compare-and-swap
on a `version` column, so concurrent updates never lose a key, in one process
or across several; the version read by the FSM middleware's `get_state` just
before usually lets it be one statement.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder, KeyBuilder, StateType, StorageKey
from sqlalchemy import Connection, Engine, MetaData
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from storage.errors import DEFAULT_TIMEOUT_SECONDS, CorruptDataError, database_call
from storage.sql.engine import SQL_OUTAGES, create_engine_for_url, create_table_if_missing
from storage.sql.sqlite_thread import SQLiteWorker
from storage.sql.statements import Field, FsmStatements, fsm_table

JsonDumps = Callable[[Any], str | bytes]
JsonLoads = Callable[[str | bytes], Any]
T = TypeVar("T")

# A compare-and-swap only fails when another process wrote the same key in
# between; in-process writers queue on a lock first, so this is generous.
_MAX_CAS_ATTEMPTS = 50
_MAX_HINTS = 10_000


@dataclass(frozen=True)
class _Row:
    """A row as this process last read or wrote it: a hint, checked by the compare-and-swap."""

    state: str | None
    data: str | None
    version: int | None  # None: there was no row


class SQLAlchemyStorage(BaseStorage):
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
        self._json_dumps = json_dumps
        self._json_loads = json_loads
        self._owned_engine: AsyncEngine | None = None
        self._sqlite: SQLiteWorker | None = None
        self._statements: dict[str, FsmStatements] = {}
        self._seen: OrderedDict[str, _Row] = OrderedDict()
        self._key_locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

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

        On a SQLite file the FSM calls run on one connection in one thread of
        their own (see storage/sqlite_worker.py); `sessionmaker` stays async.
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
            storage._sqlite = SQLiteWorker(url)
        try:
            await storage.create_table()
        except BaseException:
            await storage.close()
            raise
        return storage

    @database_call(SQL_OUTAGES)
    async def create_table(self) -> None:
        """Create the FSM table if it does not exist yet."""
        await create_table_if_missing(self.sessionmaker, self.table)

    @property
    def engines(self) -> list[Engine]:
        """The engines this storage sends statements through, for SQLAlchemy event listeners."""
        bound = self.sessionmaker.kw.get("bind")
        engines = [bound.sync_engine] if isinstance(bound, AsyncEngine) else []
        return engines + ([self._sqlite.engine] if self._sqlite is not None else [])

    async def close(self) -> None:
        if self._sqlite is not None:
            await self._sqlite.close()
            self._sqlite = None
        if self._owned_engine is not None:
            await self._owned_engine.dispose()

    # --- BaseStorage -------------------------------------------------------

    @database_call(SQL_OUTAGES)
    async def get_state(self, key: StorageKey) -> str | None:
        return (await self._read(self._id(key))).state

    @database_call(SQL_OUTAGES)
    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        value = state.state if isinstance(state, State) else state
        key_id = self._id(key)
        if value is None:
            await self._clear(key_id, "state")
        else:
            await self._run(lambda st, connection: st.set_state(connection, key_id, value))
            seen = self._seen.get(key_id)
            if seen is not None and seen.version is not None:  # the upsert left data and version alone
                self._remember(key_id, _Row(value, seen.data, seen.version))

    @database_call(SQL_OUTAGES)
    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        return self._loads((await self._read(self._id(key))).data)

    @database_call(SQL_OUTAGES)
    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        if not isinstance(data, dict):
            msg = f"Data must be a dict or dict-like object, got {type(data).__name__}"
            raise DataNotDictLikeError(msg)
        key_id = self._id(key)
        if data:
            self._seen.pop(key_id, None)
            text = self._dumps(data)
            await self._run(lambda st, connection: st.set_data(connection, key_id, text))
        else:
            await self._clear(key_id, "data")

    @database_call(SQL_OUTAGES)
    async def update_data(self, key: StorageKey, data: Mapping[str, Any]) -> dict[str, Any]:
        patch = dict(data)
        key_id = self._id(key)
        async with self._key_lock(key_id):
            seen = self._seen.pop(key_id, None)
            for _ in range(_MAX_CAS_ATTEMPTS):
                if seen is None:
                    seen = await self._read(key_id)
                current = self._loads(seen.data)
                merged = current | patch
                if merged == current:
                    return merged
                text = self._dumps(merged)
                version = await self._write_if_unchanged(key_id, seen, text)
                if version is not None:
                    self._remember(key_id, _Row(seen.state, text, version))
                    return merged
                seen = None  # someone else wrote in between: read again
        msg = f"update_data gave up after {_MAX_CAS_ATTEMPTS} concurrent writes to one key"
        raise RuntimeError(msg)

    # --- running statements ----------------------------------------------------

    def _id(self, key: StorageKey) -> str:
        # Custom builders written for aiogram-sqlalchemy-storage take no `part`.
        return self.key_builder.build(key)

    async def _read(self, key_id: str) -> _Row:
        found = await self._run(lambda st, connection: st.fetch(connection, key_id))
        row = _Row(None, None, None) if found is None else _Row(found.state, found.data, found.version)
        self._remember(key_id, row)
        return row

    async def _clear(self, key_id: str, field: Field) -> None:
        seen = self._seen.pop(key_id, None)
        other_empty = seen is not None and (seen.data if field == "state" else seen.state) is None
        kept = await self._run(lambda st, connection: st.clear_field(connection, key_id, field, other_empty))
        if not kept:
            self._remember(key_id, _Row(None, None, None))
        elif field == "state" and seen is not None:
            # Clearing the state leaves data and version as they were: still a good hint for update_data.
            self._remember(key_id, _Row(None, seen.data, seen.version))

    async def _write_if_unchanged(self, key_id: str, seen: _Row, text: str) -> int | None:
        """Write `text` if the row is still as `seen`; the new version, or None if it changed."""
        if seen.version is not None:
            expected = seen.version
            return await self._run(lambda st, connection: st.swap_data(connection, key_id, expected, text))
        try:
            return await self._run(lambda st, connection: st.insert_data(connection, key_id, text))
        except IntegrityError:
            return None

    async def _run(self, operation: Callable[[FsmStatements, Connection], T]) -> T:
        """Run one operation in one transaction: on the SQLite thread, or in an async session."""
        if self._sqlite is not None:
            return await self._sqlite.run(lambda connection: operation(self._statements_for(connection), connection))
        async with self.sessionmaker.begin() as session:
            return await session.run_sync(
                lambda sync_session: operation(
                    self._statements_for(sync_session.connection()), sync_session.connection()
                )
            )

    def _statements_for(self, connection: Connection) -> FsmStatements:
        dialect = connection.dialect.name
        if dialect not in self._statements:
            self._statements[dialect] = FsmStatements(self.table, dialect, connection.dialect.update_returning)
        return self._statements[dialect]

    def _remember(self, key_id: str, row: _Row) -> None:
        self._seen[key_id] = row
        self._seen.move_to_end(key_id)
        if len(self._seen) > _MAX_HINTS:
            self._seen.popitem(last=False)

    @asynccontextmanager
    async def _key_lock(self, key_id: str) -> AsyncIterator[None]:
        """Serialise this process's read-modify-writes of one key; the CAS covers other processes."""
        lock, users = self._key_locks.setdefault(key_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._key_locks[key_id]

    def _dumps(self, data: Mapping[str, Any]) -> str:
        dumped = self._json_dumps(data)
        return dumped.decode() if isinstance(dumped, bytes) else dumped

    def _loads(self, text: str | None) -> dict[str, Any]:
        if text is None:
            return {}
        try:
            loaded = self._json_loads(text)
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
