"""Fixtures: real databases, and the real Dispatcher driven with a mocked Bot API session.

Every storage backend is a `Backend`: SQLite in a temp file, PostgreSQL and
MySQL when their URL is set (the Makefile sets both), and MongoDB through
PyMongo's async client and through motor, on MONGO_TEST_URL or an nx-27017
server the session starts. A configured server that does not answer fails
the tests; nothing is skipped for being down.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiogram import Bot, Dispatcher
from aiogram.fsm.storage.base import BaseStorage, StorageKey
from aiogram.methods import SendMessage
from aiogram.types import Chat, Message, PhotoSize, Sticker, Update, User, Voice
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bot.setup import create_bot, create_dispatcher
from config import MongoDriver, Settings
from handlers import get_routers
from storage import MongoStorage, SQLAlchemyStorage, Storages
from storage.factory import create_mongo_storages, create_sql_storages
from storage.fsm_mongo import close_client, create_client
from tests.mocked_session import BOT_USER, MockedSession
from tests.mongo_server import WireProtocolServer, configured_url, wait_until_answering

TOKEN = "42:TESTTOKEN0123456789abcdefghijklmnopq"
SQL_URL_VARIABLES = {"postgresql": "POSTGRES_TEST_URL", "mysql": "MYSQL_TEST_URL"}
MONGO_BACKENDS = ("mongo-pymongo", "mongo-motor")


def backend_params(*names: str) -> list[Any]:
    """pytest params for the named backends; PostgreSQL and MySQL only when their URL is set."""
    params = []
    for name in names:
        variable = SQL_URL_VARIABLES.get(name)
        marks = []
        if variable and not os.environ.get(variable):
            marks.append(pytest.mark.skip(reason=f"{variable} is not set"))
        params.append(pytest.param(name, id=name, marks=marks))
    return params


SQL_BACKENDS = backend_params("sqlite", "postgresql", "mysql")
ALL_BACKENDS = backend_params("sqlite", "postgresql", "mysql", *MONGO_BACKENDS)
# The bot-flow tests: the default storage and both Mongo drivers.
FLOW_BACKENDS = backend_params("sqlite", *MONGO_BACKENDS)


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = configured_url()
    if url is not None:
        wait_until_answering(url, 10)  # configured but down: every Mongo test errors
        yield url
        return
    server = WireProtocolServer(tmp_path_factory.mktemp("mongo"))
    server.start()
    yield server.url
    server.stop()


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

    async def open_storages(self) -> Storages:
        if self.is_mongo:
            return await create_mongo_storages(self.url, self.place, self.driver)
        return await create_sql_storages(self.url)

    async def record_ids(self, storage: BaseStorage) -> list[str]:
        """The ids of the records the storage keeps, sorted."""
        if isinstance(storage, MongoStorage):
            return sorted([document["_id"] async for document in storage.collection.find({}, {"_id": 1})])
        assert isinstance(storage, SQLAlchemyStorage)
        async with storage.sessionmaker() as session:
            return sorted((await session.execute(storage.table.select())).scalars().all())

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


@pytest.fixture
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Parametrize it indirectly with ALL_BACKENDS, SQL_BACKENDS or FLOW_BACKENDS."""
    name = request.param
    url = request.getfixturevalue("mongo_url") if name in MONGO_BACKENDS else None
    chosen = make_backend(name, tmp_path, url)
    yield chosen
    await chosen.drop()


@pytest.fixture
async def storage(backend: Backend) -> AsyncIterator[BaseStorage]:
    opened = await backend.open()
    yield opened
    await opened.close()


def storage_key(user_id: int = 1, chat_id: int | None = None) -> StorageKey:
    return StorageKey(bot_id=BOT_USER.id, chat_id=user_id if chat_id is None else chat_id, user_id=user_id)


def settings_for(database_url: str) -> Settings:
    return Settings(bot_token=TOKEN, database_url=database_url, _env_file=None)


def release_routers() -> None:
    """Let the module-level routers join a new Dispatcher, as they would in a new process."""
    for router in get_routers():
        router._parent_router = None


@pytest.fixture(autouse=True)
def _fresh_routers() -> Iterator[None]:
    yield
    release_routers()


class ChatHarness:
    """The real Dispatcher and handlers; users send updates, the bot's replies are recorded."""

    def __init__(self, backend: Backend, storages: Storages) -> None:
        self.backend = backend
        self.storages = storages
        self.session = MockedSession()
        self.bot: Bot = create_bot(settings_for("sqlite:///unused.db"), session=self.session)
        self.dispatcher: Dispatcher = create_dispatcher(storages.fsm, storages.responses)
        self._ids = itertools.count(1)

    def update(self, user_id: int, text: str | None = None, content: str = "text") -> Update:
        message_id = next(self._ids)
        photo = sticker = voice = None
        if content == "photo":
            photo = [PhotoSize(file_id="photo", file_unique_id="photo", width=90, height=90)]
        elif content == "sticker":
            sticker = Sticker(
                file_id="sticker",
                file_unique_id="sticker",
                type="regular",
                width=512,
                height=512,
                is_animated=False,
                is_video=False,
            )
        elif content == "voice":
            voice = Voice(file_id="voice", file_unique_id="voice", duration=2)
        message = Message(
            message_id=message_id,
            date=datetime.now(UTC),
            chat=Chat(id=user_id, type="private"),
            from_user=User(id=user_id, is_bot=False, first_name=f"User {user_id}"),
            text=text,
            photo=photo,
            sticker=sticker,
            voice=voice,
        )
        return Update(update_id=message_id, message=message)

    async def send(self, text: str | None = None, user_id: int = 1, content: str = "text") -> list[str]:
        """Deliver one message and return the texts the bot answered with."""
        before = len(self.session.sent_messages())
        await self.dispatcher.feed_update(self.bot, self.update(user_id, text, content))
        return [m.text for m in self.session.sent_messages()[before:] if m.chat_id == user_id]

    def last_reply(self, user_id: int = 1) -> SendMessage:
        return [m for m in self.session.sent_messages() if m.chat_id == user_id][-1]

    def replies(self, user_id: int) -> list[str]:
        return [m.text for m in self.session.sent_messages() if m.chat_id == user_id]

    async def state(self, user_id: int = 1) -> str | None:
        return await self.storages.fsm.get_state(storage_key(user_id))

    async def data(self, user_id: int = 1) -> dict[str, object]:
        return await self.storages.fsm.get_data(storage_key(user_id))

    async def restart(self) -> None:
        """Stop as the process would (storage closed), then build everything anew on the same database."""
        await self.dispatcher.fsm.close()
        await self.storages.close()
        release_routers()
        self.storages = await self.backend.open_storages()
        self.dispatcher = create_dispatcher(self.storages.fsm, self.storages.responses)

    async def close(self) -> None:
        await self.storages.close()


@pytest.fixture(params=FLOW_BACKENDS)
async def chat(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChatHarness]:
    name = request.param
    url = request.getfixturevalue("mongo_url") if name in MONGO_BACKENDS else None
    backend = make_backend(name, tmp_path, url)
    harness = ChatHarness(backend, await backend.open_storages())
    yield harness
    await harness.close()
    await backend.drop()
