"""Where tests keep their state: every storage backend as a `Backend`, and the keys and settings tests use.

SQLite in a temp file, PostgreSQL and MySQL when their URL is set (the
Makefile sets both), and MongoDB through PyMongo's async client and through
motor, on MONGO_TEST_URL or an nx-27017 server the session starts.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiogram.fsm.storage.base import BaseStorage, StorageKey
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

import handlers
from config import MongoDriver, Settings
from storage import MongoStorage, SQLAlchemyStorage, Storages
from storage.factory import create_mongo_storages, create_sql_storages
from storage.mongo.client import close_client, create_client
from tests.support.mocked_session import BOT_USER

TOKEN = "42:TESTTOKEN0123456789abcdefghijklmnopq"
SQL_URL_VARIABLES = {"postgresql": "POSTGRES_TEST_URL", "mysql": "MYSQL_TEST_URL"}
MONGO_BACKENDS = ("mongo-pymongo", "mongo-motor")


def backend_params(*names: str) -> list[Any]:
    """pytest params for the named backends; PostgreSQL and MySQL only when their URL is set.

    TEST_SQLITE_ONLY=1 leaves every backend but SQLite out (tests/test_questions_change.py runs
    the suite's question-driven files so, three times over).
    """
    params = []
    for name in names:
        variable = SQL_URL_VARIABLES.get(name)
        marks = []
        if variable and not os.environ.get(variable):
            marks.append(pytest.mark.skip(reason=f"{variable} is not set"))
        elif name != "sqlite" and os.environ.get("TEST_SQLITE_ONLY"):
            marks.append(pytest.mark.skip(reason="TEST_SQLITE_ONLY is set"))
        params.append(pytest.param(name, id=name, marks=marks))
    return params


SQL_BACKENDS = backend_params("sqlite", "postgresql", "mysql")
ALL_BACKENDS = backend_params("sqlite", "postgresql", "mysql", *MONGO_BACKENDS)
# The bot-flow tests: the default storage and both Mongo drivers.
FLOW_BACKENDS = backend_params("sqlite", *MONGO_BACKENDS)


@dataclass
class Backend:
    """Where one test keeps its state: its own SQL table or its own Mongo database."""

    name: str
    url: str
    place: str  # table name, or Mongo database name

    @property
    def is_mongo(self) -> bool:
        return self.name in MONGO_BACKENDS

    @property
    def driver(self) -> MongoDriver:
        return "motor" if self.name == "mongo-motor" else "pymongo"

    async def open(self, **options: Any) -> BaseStorage:
        """A new storage on this backend's place, as a new process would open it."""
        if self.is_mongo:
            return MongoStorage.from_url(self.url, self.driver, db_name=self.place, **options)
        return await SQLAlchemyStorage.from_url(self.url, table_name=self.place, **options)

    async def open_storages(self, timeout: float | None = 10) -> Storages:  # noqa: ASYNC109 - per database call
        if self.is_mongo:
            return await create_mongo_storages(self.url, self.place, self.driver, timeout=timeout)
        return await create_sql_storages(self.url, timeout=timeout)

    async def record_ids(self, storage: BaseStorage) -> list[str]:
        """The ids of the records the storage keeps, sorted."""
        if isinstance(storage, MongoStorage):
            return sorted([document["_id"] async for document in storage.collection.find({}, {"_id": 1})])
        assert isinstance(storage, SQLAlchemyStorage)
        async with storage.sessionmaker() as session:
            return sorted((await session.execute(storage.table.select())).scalars().all())

    async def user_ids(self, storage: BaseStorage) -> dict[str, int | None]:
        """Each record's user id as stored (None: none kept), by key."""
        if isinstance(storage, MongoStorage):
            return {d["_id"]: d.get("user_id") async for d in storage.collection.find({}, {"user_id": 1})}
        assert isinstance(storage, SQLAlchemyStorage)
        async with storage.sessionmaker() as session:
            rows = await session.execute(select(storage.table.c.id, storage.table.c.user_id))
            return {row.id: row.user_id for row in rows}

    async def write_raw(self, storage: BaseStorage, key_id: str, state: object, data: object) -> None:
        """Put a record straight into the database, bypassing the storage's checks."""
        if isinstance(storage, MongoStorage):
            # Not replace_one(upsert=True): nx-27017 then ignores the filter's _id.
            await storage.collection.delete_one({"_id": key_id})
            await storage.collection.insert_one({"_id": key_id, "state": state, "data": data})
            return
        assert isinstance(storage, SQLAlchemyStorage)
        async with storage.sessionmaker.begin() as session:
            await session.execute(storage.table.delete().where(storage.table.c.id == key_id))
            await session.execute(storage.table.insert().values(id=key_id, state=state, data=data, version=1))

    async def drop(self) -> None:
        if self.is_mongo:
            client = create_client(self.url, self.driver)
            await client.drop_database(self.place)
            await close_client(client)
            return
        if self.name == "sqlite":
            return  # the file goes with the test's tmp_path
        engine = create_async_engine(self.url)
        async with engine.begin() as connection:
            await connection.execute(text(f"DROP TABLE IF EXISTS {self.place}"))
        await engine.dispose()


def make_backend(name: str, tmp_path: Path, mongo_url: str | None) -> Backend:
    suffix = uuid.uuid4().hex[:12]
    if name in MONGO_BACKENDS:
        assert mongo_url is not None
        return Backend(name, mongo_url, f"test_{suffix}")
    if name == "sqlite":
        return Backend(name, f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", f"fsm_test_{suffix}")
    return Backend(name, os.environ[SQL_URL_VARIABLES[name]], f"fsm_test_{suffix}")


def storage_key(user_id: int = 1, chat_id: int | None = None) -> StorageKey:
    return StorageKey(bot_id=BOT_USER.id, chat_id=user_id if chat_id is None else chat_id, user_id=user_id)


def settings_for(database_url: str) -> Settings:
    return Settings(bot_token=TOKEN, database_url=database_url, _env_file=None)


def release_routers() -> None:
    """Let the module-level routers join a new Dispatcher, as they would in a new process (a test's
    own router too, listed by `tests.support.routers.add_router`)."""
    for router in handlers.get_routers():
        router._parent_router = None
