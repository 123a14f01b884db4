"""The examples of aiogram-sqlalchemy-storage's documentation run unchanged with our class (import aside)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from aiogram.fsm.storage.base import KeyBuilder, StorageKey
from sqlalchemy import MetaData, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import declarative_base
from sqlalchemy.pool import StaticPool

from storage import SQLAlchemyStorage
from tests.support.backends import storage_key


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'database.db'}"


async def test_basic_example_with_custom_table_and_create_all(database: str) -> None:
    engine = create_async_engine(database)
    SessionLocal = async_sessionmaker(bind=engine, class_=AsyncSession, expire_on_commit=False)
    Base = declarative_base()
    storage = SQLAlchemyStorage(
        sessionmaker=SessionLocal,
        metadata=Base.metadata,  # Recommended: avoid passing empty metadata
        table_name="custom_fsm_table",  # Optional: custom table name
    )

    async def init_database() -> None:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

    await init_database()
    assert "custom_fsm_table" in storage.metadata.tables
    await storage.set_state(storage_key(), "Form:name")
    await storage.update_data(storage_key(), {"name": "Ann"})
    assert await storage.get_state(storage_key()) == "Form:name"
    assert await storage.get_data(storage_key()) == {"name": "Ann"}
    await engine.dispose()


async def test_orjson_bytes_dumps(database: str) -> None:
    engine = create_async_engine(database)
    SessionLocal = async_sessionmaker(bind=engine, class_=AsyncSession, expire_on_commit=False)
    Base = declarative_base()
    storage = SQLAlchemyStorage(
        sessionmaker=SessionLocal, metadata=Base.metadata, json_dumps=orjson.dumps, json_loads=orjson.loads
    )
    await storage.create_table()
    await storage.set_data(storage_key(), {"name": "Анна", "n": 1})
    assert await storage.get_data(storage_key()) == {"name": "Анна", "n": 1}
    assert await storage.update_data(storage_key(), {"n": 2}) == {"name": "Анна", "n": 2}
    await engine.dispose()


async def test_custom_key_builder_without_part_argument(database: str) -> None:
    class CustomKeyBuilder(KeyBuilder):
        def build(self, key: StorageKey) -> str:  # type: ignore[override]
            return f"custom_{key.bot_id}_{key.chat_id}_{key.user_id}"

    engine = create_async_engine(database)
    SessionLocal = async_sessionmaker(bind=engine, class_=AsyncSession, expire_on_commit=False)
    Base = declarative_base()
    storage = SQLAlchemyStorage(sessionmaker=SessionLocal, metadata=Base.metadata, key_builder=CustomKeyBuilder())
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    await storage.set_state(storage_key(5), "s")
    async with SessionLocal() as session:
        assert (await session.execute(select(storage.table.c.id))).scalars().all() == ["custom_42_5_5"]
    await engine.dispose()


async def test_static_pool_engine_from_the_document_still_clears(database: str) -> None:
    engine = create_async_engine(
        database,
        poolclass=StaticPool,
        pool_pre_ping=True,
        pool_recycle=300,
        echo=True,  # Enable SQL logging for debugging
    )
    SessionLocal = async_sessionmaker(bind=engine, class_=AsyncSession, expire_on_commit=False)
    storage = SQLAlchemyStorage(sessionmaker=SessionLocal, metadata=MetaData())
    async with engine.begin() as conn:
        await conn.run_sync(storage.metadata.create_all)
    await storage.set_state(storage_key(), "s")
    await storage.set_data(storage_key(), {"a": 1})
    await storage.set_state(storage_key(), None)
    await storage.set_data(storage_key(), {})
    assert await storage.get_state(storage_key()) is None
    assert await storage.get_data(storage_key()) == {}
    await engine.dispose()


async def test_declarative_base_as_metadata_is_accepted_with_a_warning(database: str) -> None:
    engine = create_async_engine(database)
    SessionLocal = async_sessionmaker(bind=engine, class_=AsyncSession, expire_on_commit=False)
    Base = declarative_base()
    with pytest.warns(DeprecationWarning, match=r"Base\.metadata") as warned:
        storage = SQLAlchemyStorage(sessionmaker=SessionLocal, metadata=Base)
    # Pointing at the line that passed Base: the one Python's default filters show a warning for.
    assert [warning.filename for warning in warned] == [__file__]
    assert storage.metadata is Base.metadata
    assert "aiogram_fsm_data" in Base.metadata.tables
    await engine.dispose()


def test_default_metadata_holds_the_table() -> None:
    engine = create_async_engine("sqlite+aiosqlite:///unused.db")
    storage = SQLAlchemyStorage(async_sessionmaker(engine))
    assert list(storage.metadata.tables) == ["aiogram_fsm_data"]
