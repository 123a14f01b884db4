"""SQLAlchemyStorage: aiogram FSM state and data in one SQL table.

One row per storage key, present only while the key has a state or data.
Writes are single upserts (by dialect); `update_data` is a compare-and-swap
on a `version` column, so concurrent updates never lose a key, in one process
or across several.
"""

from __future__ import annotations

import asyncio
import json
import logging
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast

from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder, KeyBuilder, StateType, StorageKey
from sqlalchemy import (
    Column,
    ColumnElement,
    CursorResult,
    DateTime,
    Executable,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from storage.errors import DEFAULT_TIMEOUT_SECONDS, CorruptDataError, database_call
from storage.sql_engine import SQL_OUTAGES, create_engine_for_url

logger = logging.getLogger(__name__)

JsonDumps = Callable[[Any], str | bytes]
JsonLoads = Callable[[str | bytes], Any]

KEY_LENGTH = 255
STATE_LENGTH = 255
# A compare-and-swap only fails when another process wrote the same key in
# between; in-process writers queue on a lock first, so this is generous.
_MAX_CAS_ATTEMPTS = 50


def fsm_table(metadata: MetaData, table_name: str) -> Table:
    """The FSM table; `data` NULL means {} and `state` NULL means no state."""
    return Table(
        table_name,
        metadata,
        Column("id", String(KEY_LENGTH), primary_key=True),
        Column("state", String(STATE_LENGTH), nullable=True),
        # TEXT is 64 KiB on MySQL; FSM data may be larger.
        Column("data", Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=True),
        Column("version", Integer, nullable=False, default=1),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        extend_existing=True,
    )


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
        # Each call gives up after this many seconds, so a stuck database never freezes a user.
        self.timeout = timeout
        self.metadata = _as_metadata(metadata)
        self.table = fsm_table(self.metadata, table_name or "aiogram_fsm_data")
        self.key_builder = key_builder or DefaultKeyBuilder()
        self._json_dumps = json_dumps
        self._json_loads = json_loads
        self._owned_engine: AsyncEngine | None = None
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
        """Connect with sound defaults for the database, create the table, own the engine."""
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
        try:
            await storage.create_table()
        except BaseException:
            await engine.dispose()
            raise
        return storage

    @database_call(SQL_OUTAGES)
    async def create_table(self) -> None:
        """Create the FSM table if it does not exist yet."""
        async with self.sessionmaker.begin() as session:
            await session.run_sync(
                lambda sync_session: self.table.create(sync_session.connection(), checkfirst=True)
            )

    async def close(self) -> None:
        if self._owned_engine is not None:
            await self._owned_engine.dispose()

    # --- BaseStorage -------------------------------------------------------

    @database_call(SQL_OUTAGES)
    async def get_state(self, key: StorageKey) -> str | None:
        row = await self._fetch_one(select(self.table.c.state).where(self._is(key)))
        return None if row is None else cast(str | None, row.state)

    @database_call(SQL_OUTAGES)
    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        value = state.state if isinstance(state, State) else state
        if value is None:
            await self._clear_column(key, "state")
        else:
            await self._upsert(key, state=value)

    @database_call(SQL_OUTAGES)
    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        row = await self._fetch_one(select(self.table.c.data).where(self._is(key)))
        return {} if row is None else self._loads(row.data)

    @database_call(SQL_OUTAGES)
    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        if not isinstance(data, dict):
            msg = f"Data must be a dict or dict-like object, got {type(data).__name__}"
            raise DataNotDictLikeError(msg)
        if data:
            await self._upsert(key, data=self._dumps(data))
        else:
            await self._clear_column(key, "data")

    @database_call(SQL_OUTAGES)
    async def update_data(self, key: StorageKey, data: Mapping[str, Any]) -> dict[str, Any]:
        patch = dict(data)
        async with self._key_lock(self._id(key)):
            for _ in range(_MAX_CAS_ATTEMPTS):
                row = await self._fetch_one(
                    select(self.table.c.data, self.table.c.version).where(self._is(key))
                )
                current = {} if row is None else self._loads(row.data)
                merged = current | patch
                if merged == current:
                    return merged
                if row is None:
                    written = await self._insert_if_absent(key, data=self._dumps(merged))
                else:
                    written = await self._compare_and_swap(key, row.version, self._dumps(merged))
                if written:
                    return merged
        msg = f"update_data gave up after {_MAX_CAS_ATTEMPTS} concurrent writes to one key"
        raise RuntimeError(msg)

    # --- statements ----------------------------------------------------------

    def _id(self, key: StorageKey) -> str:
        # Custom builders written for aiogram-sqlalchemy-storage take no `part`.
        return self.key_builder.build(key)

    def _is(self, key: StorageKey) -> ColumnElement[bool]:
        return self.table.c.id == self._id(key)

    async def _upsert(self, key: StorageKey, **values: str) -> None:
        """Insert the row or overwrite the given columns, in one statement where the dialect allows."""
        table = self.table
        changes: dict[str, Any] = {**values, "version": table.c.version + 1, "updated_at": func.now()}
        async with self.sessionmaker.begin() as session:
            dialect = session.get_bind().dialect.name
            row = {"id": self._id(key), **values, "version": 1}
            if dialect in ("sqlite", "postgresql"):
                dialect_insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
                statement: Executable = (
                    dialect_insert(table)
                    .values(row)
                    .on_conflict_do_update(index_elements=[table.c.id], set_=changes)
                )
                await session.execute(statement)
            elif dialect in ("mysql", "mariadb"):
                await session.execute(mysql.insert(table).values(row).on_duplicate_key_update(changes))
            else:
                statement = update(table).where(self._is(key)).values(changes)
                await _update_or_insert(session, statement, row, table)

    async def _insert_if_absent(self, key: StorageKey, **values: str) -> bool:
        try:
            async with self.sessionmaker.begin() as session:
                await session.execute(insert(self.table).values(id=self._id(key), version=1, **values))
        except IntegrityError:
            return False
        return True

    async def _compare_and_swap(self, key: StorageKey, version: int, data: str) -> bool:
        table = self.table
        statement = (
            update(table)
            .where(self._is(key), table.c.version == version)
            .values(data=data, version=table.c.version + 1, updated_at=func.now())
        )
        async with self.sessionmaker.begin() as session:
            result = cast(CursorResult[Any], await session.execute(statement))
            return result.rowcount == 1

    async def _clear_column(self, key: StorageKey, column: str) -> None:
        """Empty `state` or `data`; the row goes when the other one is empty too."""
        table = self.table
        other = table.c.data if column == "state" else table.c.state
        async with self.sessionmaker.begin() as session:
            await session.execute(delete(table).where(self._is(key), other.is_(None)))
            await session.execute(
                update(table)
                .where(self._is(key))
                .values({column: None, "version": table.c.version + 1, "updated_at": func.now()})
            )

    async def _fetch_one(self, statement: Executable) -> Any:
        async with self.sessionmaker() as session:
            return (await session.execute(statement)).one_or_none()

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
        return loaded


async def _update_or_insert(
    session: AsyncSession, statement: Executable, row: dict[str, Any], table: Table
) -> None:
    """Upsert for dialects without one: UPDATE, else INSERT, else UPDATE again."""
    result = cast(CursorResult[Any], await session.execute(statement))
    if result.rowcount:
        return
    try:
        async with session.begin_nested():
            await session.execute(insert(table).values(row))
    except IntegrityError:
        await session.execute(statement)


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
