"""The storages the whole-bot benchmark runs the bot on: this project's, and aiogram's own as references.

Each candidate opens a fresh place (a new SQLite file, new tables, a new
Mongo database or Redis prefix) and removes it afterwards. This project's
storages run as the bot runs them, FSM and completed responses together
(storage/factory.py); the references keep completed responses in memory.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aiogram.fsm.storage.base import BaseEventIsolation, BaseStorage, DefaultKeyBuilder
from aiogram.fsm.storage.memory import MemoryStorage
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from storage import CompletedResponse, ResponseStore
from storage.factory import create_mongo_storages, create_sql_storages

# The names the benchmark reports, and checks its targets by (benchmarks/__main__.py).
LIMIT = "MemoryStorage (aiogram), the limit"
PLAIN = "plain aiogram bot, MemoryStorage (no ApplyOnce, outbox)"
REDIS = "RedisStorage (aiogram), local Redis"
SQLITE = "SQLite file (ours), FSM and responses"
PYMONGO = "PyMongoStorage (aiogram), same server"


def sql_server_name(server: str) -> str:
    return f"{server} (ours), FSM and responses"


def mongo_name(driver: str) -> str:
    return f"MongoDB (ours, {'PyMongo async' if driver == 'pymongo' else 'motor'}), FSM and responses"


# The FSM storage, the responses store and the event isolation (None: the bot's own, bot/key_locks.py).
Opened = tuple[BaseStorage, ResponseStore, BaseEventIsolation | None]


@dataclass
class Candidate:
    name: str
    open: Callable[[], AbstractAsyncContextManager[Opened]]
    # aiogram-sqlalchemy-storage loses most users to "database is locked" with many at once, slowly.
    one_user_at_a_time_only: bool = False
    # Not this project's bot: the plain aiogram bot a copier would write (benchmarks/plain_bot.py).
    plain: bool = False


class ResponsesInMemory:
    """The references' completed responses: the cheapest store there is."""

    def __init__(self) -> None:
        self.saved: dict[str, CompletedResponse] = {}

    async def save(self, response: CompletedResponse) -> bool:
        return self.saved.setdefault(response.response_id, response) is response

    async def for_user(self, user_id: int) -> list[CompletedResponse]:
        return [response for response in self.saved.values() if response.user_id == user_id]

    async def delete_for_user(self, user_id: int, only: Collection[str] | None = None) -> int:
        return 0

    async def replace(self, response: CompletedResponse) -> None:
        self.saved[response.response_id] = response

    async def completed(self, since: datetime | None = None) -> list[CompletedResponse]:
        return [response for response in self.saved.values() if since is None or response.completed_at >= since]


def memory() -> Candidate:
    @asynccontextmanager
    async def opened() -> AsyncIterator[Opened]:
        yield MemoryStorage(), ResponsesInMemory(), None

    return Candidate(LIMIT, opened)


def plain_aiogram() -> Candidate:
    """The same questionnaire written the plain way, on MemoryStorage: what the project's machinery costs."""

    @asynccontextmanager
    async def opened() -> AsyncIterator[Opened]:
        yield MemoryStorage(), ResponsesInMemory(), None

    return Candidate(PLAIN, opened, plain=True)


def redis(url: str, across_processes: bool = False) -> Candidate:
    """aiogram's RedisStorage; `across_processes` adds RedisEventIsolation, what replicas need."""

    @asynccontextmanager
    async def opened() -> AsyncIterator[Opened]:
        from aiogram.fsm.storage.redis import RedisStorage

        prefix = f"bench{uuid.uuid4().hex[:8]}"
        storage = RedisStorage.from_url(url, key_builder=DefaultKeyBuilder(prefix=prefix))
        try:
            yield storage, ResponsesInMemory(), storage.create_isolation() if across_processes else None
        finally:
            keys = [key async for key in storage.redis.scan_iter(f"{prefix}:*")]
            if keys:
                await storage.redis.delete(*keys)
            await storage.close()

    if across_processes:
        return Candidate("RedisStorage + RedisEventIsolation (aiogram)", opened)
    return Candidate(REDIS, opened)


def ours_sqlite(folder: Path) -> Candidate:
    @asynccontextmanager
    async def opened() -> AsyncIterator[Opened]:
        storages = await create_sql_storages(f"sqlite+aiosqlite:///{folder / uuid.uuid4().hex}.db")
        try:
            yield storages.fsm, storages.responses, None
        finally:
            await storages.close()

    return Candidate(SQLITE, opened)


def ours_sql_server(name: str, url: str) -> Candidate:
    @asynccontextmanager
    async def opened() -> AsyncIterator[Opened]:
        storages = await create_sql_storages(url)
        try:
            yield storages.fsm, storages.responses, None
        finally:
            await storages.close()
            engine = create_async_engine(url)
            async with engine.begin() as connection:
                for table in ("aiogram_fsm_data", "questionnaire_responses", "bot_forms"):
                    await connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
            await engine.dispose()

    return Candidate(sql_server_name(name), opened)


def ours_mongo(url: str, driver: Any) -> Candidate:
    @asynccontextmanager
    async def opened() -> AsyncIterator[Opened]:
        db_name = f"bench_{uuid.uuid4().hex[:10]}"
        storages = await create_mongo_storages(url, db_name, driver)
        try:
            yield storages.fsm, storages.responses, None
        finally:
            await storages.fsm.client.drop_database(db_name)  # type: ignore[attr-defined]
            await storages.close()

    return Candidate(mongo_name(driver), opened)


def aiogram_pymongo(url: str) -> Candidate:
    @asynccontextmanager
    async def opened() -> AsyncIterator[Opened]:
        from aiogram.fsm.storage.pymongo import PyMongoStorage
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[Any] = AsyncMongoClient(url)
        db_name = f"bench_{uuid.uuid4().hex[:10]}"
        try:
            yield PyMongoStorage(client, db_name=db_name), ResponsesInMemory(), None
        finally:
            await client.drop_database(db_name)
            await client.close()

    return Candidate(PYMONGO, opened)


def package_sqlite(folder: Path) -> Candidate:
    """aiogram-sqlalchemy-storage 0.2.0, set up as its documentation shows, on a SQLite file."""

    @asynccontextmanager
    async def opened() -> AsyncIterator[Opened]:
        from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
        from sqlalchemy.orm import declarative_base
        from sqlalchemy_storage import SQLAlchemyStorage as PackageStorage

        engine = create_async_engine(f"sqlite+aiosqlite:///{folder / uuid.uuid4().hex}.db")
        base = declarative_base()
        storage = PackageStorage(
            sessionmaker=async_sessionmaker(bind=engine, class_=AsyncSession, expire_on_commit=False),
            metadata=base.metadata,
        )
        async with engine.begin() as connection:
            await connection.run_sync(base.metadata.create_all)
        try:
            yield storage, ResponsesInMemory(), None
        finally:
            await engine.dispose()

    return Candidate("aiogram-sqlalchemy-storage, SQLite file", opened, one_user_at_a_time_only=True)


def all_candidates(
    folder: Path, redis_url: str | None, mongo_url: str | None, sql_urls: dict[str, str]
) -> list[Candidate]:
    return [
        plain_aiogram(),
        memory(),
        *([redis(redis_url), redis(redis_url, across_processes=True)] if redis_url else []),
        ours_sqlite(folder),
        *(ours_sql_server(name, url) for name, url in sql_urls.items()),
        *(
            [ours_mongo(mongo_url, "pymongo"), ours_mongo(mongo_url, "motor"), aiogram_pymongo(mongo_url)]
            if mongo_url
            else []
        ),
        package_sqlite(folder),
    ]
