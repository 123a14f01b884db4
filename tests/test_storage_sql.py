"""SQLAlchemyStorage's contract, on SQLite, PostgreSQL and MySQL over real connections."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import KeyBuilder, StorageKey
from aiogram.fsm.storage.memory import MemoryStorage
from sqlalchemy import String, func, inspect, select, text
from sqlalchemy.pool import QueuePool, StaticPool

from storage import SQLAlchemyStorage
from tests.conftest import storage_key


class Form(StatesGroup):
    first = State()


async def row_count(storage: SQLAlchemyStorage) -> int:
    async with storage.sessionmaker() as session:
        return int((await session.execute(select(func.count()).select_from(storage.table))).scalar_one())


async def test_missing_key_has_no_state_and_empty_data(sql_storage: SQLAlchemyStorage) -> None:
    assert await sql_storage.get_state(storage_key()) is None
    assert await sql_storage.get_data(storage_key()) == {}
    assert await sql_storage.get_value(storage_key(), "name", "default") == "default"


async def test_state_round_trip_from_str_and_state(sql_storage: SQLAlchemyStorage) -> None:
    await sql_storage.set_state(storage_key(), Form.first)
    assert await sql_storage.get_state(storage_key()) == "Form:first"
    await sql_storage.set_state(storage_key(), "custom")
    assert await sql_storage.get_state(storage_key()) == "custom"
    assert await sql_storage.get_state(storage_key(2)) is None


async def test_data_round_trip_returns_copies(sql_storage: SQLAlchemyStorage) -> None:
    data: dict[str, Any] = {"name": "Ann", "nested": {"list": [1, 2, "три"]}, "none": None}
    await sql_storage.set_data(storage_key(), data)
    loaded = await sql_storage.get_data(storage_key())
    assert loaded == data
    loaded["name"] = "changed"
    assert (await sql_storage.get_data(storage_key()))["name"] == "Ann"
    assert await sql_storage.get_value(storage_key(), "name") == "Ann"


async def test_awkward_keys_are_kept_as_memory_storage_keeps_them(sql_storage: SQLAlchemyStorage) -> None:
    awkward = {"a.b": 1, "$set": 2, "": 3, "ключ": {"$in": [1]}}
    memory = MemoryStorage()
    for storage in (sql_storage, memory):
        await storage.set_data(storage_key(), awkward)
        await storage.update_data(storage_key(), {"x.y": 4})
    assert await sql_storage.get_data(storage_key()) == await memory.get_data(storage_key())


async def test_set_data_refuses_a_non_dict_and_changes_nothing(sql_storage: SQLAlchemyStorage) -> None:
    await sql_storage.set_data(storage_key(), {"kept": True})
    with pytest.raises(DataNotDictLikeError):
        await sql_storage.set_data(storage_key(), [("a", 1)])  # type: ignore[arg-type]
    assert await sql_storage.get_data(storage_key()) == {"kept": True}


async def test_update_data_merges_like_dict_update(sql_storage: SQLAlchemyStorage) -> None:
    assert await sql_storage.update_data(storage_key(), {"a": 1, "nested": {"x": 1}}) == {
        "a": 1,
        "nested": {"x": 1},
    }
    result = await sql_storage.update_data(storage_key(), {"b": 2, "nested": {"y": 2}, "a": None})
    assert result == {"a": None, "b": 2, "nested": {"y": 2}}
    assert await sql_storage.get_data(storage_key()) == result


async def test_empty_state_and_data_leave_no_row(sql_storage: SQLAlchemyStorage) -> None:
    key = storage_key()
    await sql_storage.set_state(key, "s")
    await sql_storage.set_data(key, {"a": 1})
    assert await row_count(sql_storage) == 1

    await sql_storage.set_state(key, None)
    assert await sql_storage.get_data(key) == {"a": 1}
    assert await row_count(sql_storage) == 1

    await sql_storage.set_data(key, {})
    assert await row_count(sql_storage) == 0

    await sql_storage.set_data(key, {"a": 1})
    await sql_storage.set_state(key, "s")
    await sql_storage.set_data(key, {})
    assert await sql_storage.get_state(key) == "s"
    await sql_storage.set_state(key, None)
    assert await row_count(sql_storage) == 0

    await sql_storage.update_data(key, {})
    await sql_storage.set_state(key, None)
    assert await row_count(sql_storage) == 0


async def test_concurrent_update_data_keeps_every_key(sql_storage: SQLAlchemyStorage) -> None:
    key = storage_key()
    await asyncio.gather(*(sql_storage.update_data(key, {f"k{i}": i}) for i in range(20)))
    assert await sql_storage.get_data(key) == {f"k{i}": i for i in range(20)}


async def test_concurrent_update_data_from_two_processes_keeps_every_key(
    sql_url: str, table_name: str, sql_storage: SQLAlchemyStorage
) -> None:
    """Two storages with their own engines stand for two bot processes on one database."""
    other = await SQLAlchemyStorage.from_url(sql_url, table_name=table_name)
    try:
        key = storage_key()
        writes = [(sql_storage if i % 2 else other).update_data(key, {f"k{i}": i}) for i in range(20)]
        await asyncio.gather(*writes)
        assert await sql_storage.get_data(key) == {f"k{i}": i for i in range(20)}
    finally:
        await other.close()


async def test_concurrent_first_writes_to_one_key_do_not_collide(sql_storage: SQLAlchemyStorage) -> None:
    key = storage_key()
    await asyncio.gather(
        sql_storage.set_state(key, "s"),
        sql_storage.set_data(key, {"a": 1}),
        *(sql_storage.set_state(storage_key(1000 + i), "t") for i in range(20)),
    )
    assert await sql_storage.get_state(key) == "s"
    assert await sql_storage.get_data(key) == {"a": 1}
    assert await row_count(sql_storage) == 21


async def test_many_users_on_a_small_pool_do_not_exhaust_it(sql_url: str, table_name: str) -> None:
    storage = await SQLAlchemyStorage.from_url(
        sql_url, table_name=table_name, pool_size=2, max_overflow=0, pool_timeout=10
    )
    try:

        async def one_user(user_id: int) -> None:
            key = storage_key(user_id)
            await storage.set_state(key, "asking")
            await storage.update_data(key, {"answer": user_id})
            assert await storage.get_state(key) == "asking"

        await asyncio.gather(*(one_user(user_id) for user_id in range(1, 51)))
        assert await row_count(storage) == 50
    finally:
        async with storage.sessionmaker.begin() as session:
            await session.execute(text(f"DROP TABLE IF EXISTS {table_name}"))
        await storage.close()


async def test_table_has_bounded_strings_and_updated_at(sql_storage: SQLAlchemyStorage) -> None:
    async with sql_storage.sessionmaker() as session:
        columns = await session.run_sync(
            lambda s: {c["name"]: c for c in inspect(s.connection()).get_columns(sql_storage.table.name)}
        )
    assert set(columns) >= {"id", "state", "data", "updated_at"}
    for name in ("id", "state"):
        column_type = columns[name]["type"]
        assert isinstance(column_type, String)
        assert column_type.length == 255


async def test_writes_touch_updated_at(sql_storage: SQLAlchemyStorage) -> None:
    await sql_storage.set_state(storage_key(), "s")
    async with sql_storage.sessionmaker() as session:
        stamp = (await session.execute(select(sql_storage.table.c.updated_at))).scalar_one()
    assert stamp is not None


async def test_custom_key_builder_names_the_rows(sql_storage: SQLAlchemyStorage) -> None:
    class CustomKeyBuilder(KeyBuilder):
        def build(self, key: StorageKey) -> str:  # type: ignore[override]
            return f"custom_{key.bot_id}_{key.chat_id}_{key.user_id}"

    sql_storage.key_builder = CustomKeyBuilder()
    await sql_storage.set_state(storage_key(7), "s")
    async with sql_storage.sessionmaker() as session:
        ids = (await session.execute(select(sql_storage.table.c.id))).scalars().all()
    assert ids == ["custom_42_7_7"]


async def test_close_disposes_only_an_engine_it_created(sql_url: str, table_name: str) -> None:
    storage = await SQLAlchemyStorage.from_url(sql_url, table_name=table_name)
    await storage.set_state(storage_key(), "s")
    engine = storage._owned_engine
    assert engine is not None
    assert cast(QueuePool, engine.pool).checkedin() >= 1
    await storage.close()
    assert cast(QueuePool, engine.pool).checkedin() == 0

    user_storage = SQLAlchemyStorage(storage.sessionmaker, table_name=table_name)
    await user_storage.close()
    assert await user_storage.get_state(storage_key()) == "s"
    async with storage.sessionmaker.begin() as session:
        await session.execute(text(f"DROP TABLE {table_name}"))
    await engine.dispose()


async def test_sqlite_defaults_wal_busy_timeout_and_a_real_pool(tmp_path: object) -> None:
    storage = await SQLAlchemyStorage.from_url(f"sqlite+aiosqlite:///{tmp_path}/nested/fsm.db")
    try:
        async with storage.sessionmaker() as session:
            journal = (await session.execute(text("PRAGMA journal_mode"))).scalar_one()
            busy = (await session.execute(text("PRAGMA busy_timeout"))).scalar_one()
            synchronous = (await session.execute(text("PRAGMA synchronous"))).scalar_one()
        assert journal == "wal"
        assert busy == 5000
        assert synchronous == 1  # NORMAL
        assert storage._owned_engine is not None
        assert not isinstance(storage._owned_engine.pool, StaticPool)
    finally:
        await storage.close()


async def test_in_memory_sqlite_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="does not persist"):
        await SQLAlchemyStorage.from_url("sqlite+aiosqlite:///:memory:")


async def test_clear_really_clears(sql_storage: SQLAlchemyStorage) -> None:
    """aiogram's FSMContext.clear(): set_state(None) then set_data({})."""
    key = storage_key()
    await sql_storage.set_state(key, "s")
    await sql_storage.update_data(key, {"a": 1})
    await sql_storage.set_state(key, None)
    await sql_storage.set_data(key, {})
    assert await sql_storage.get_state(key) is None
    assert await sql_storage.get_data(key) == {}
    assert await row_count(sql_storage) == 0
