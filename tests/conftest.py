"""Fixtures: real databases, and the real Dispatcher driven with a mocked Bot API session."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiogram import Bot, Dispatcher
from aiogram.fsm.storage.base import StorageKey
from aiogram.methods import SendMessage
from aiogram.types import Chat, Message, PhotoSize, Sticker, Update, User, Voice
from sqlalchemy import text

from bot.setup import create_bot, create_dispatcher
from config import Settings
from handlers import get_routers
from storage import SQLAlchemyStorage, Storages
from storage.factory import create_sql_storages
from tests.mocked_session import BOT_USER, MockedSession

TOKEN = "42:TESTTOKEN0123456789abcdefghijklmnopq"
SQL_URL_VARIABLES = {"postgresql": "POSTGRES_TEST_URL", "mysql": "MYSQL_TEST_URL"}


def sql_backends() -> list[object]:
    """SQLite always; PostgreSQL and MySQL when their URL is configured (the Makefile sets both)."""
    backends: list[object] = [pytest.param("sqlite", id="sqlite")]
    for name, variable in SQL_URL_VARIABLES.items():
        marks = [] if os.environ.get(variable) else [pytest.mark.skip(reason=f"{variable} is not set")]
        backends.append(pytest.param(name, id=name, marks=marks))
    return backends


@pytest.fixture(params=sql_backends())
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    return os.environ[SQL_URL_VARIABLES[request.param]]


@pytest.fixture
def table_name() -> str:
    """A table of the test's own, so runs never see each other's rows."""
    return f"fsm_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def sql_storage(sql_url: str, table_name: str) -> AsyncIterator[SQLAlchemyStorage]:
    storage = await SQLAlchemyStorage.from_url(sql_url, table_name=table_name)
    yield storage
    async with storage.sessionmaker.begin() as session:
        await session.execute(text(f"DROP TABLE IF EXISTS {table_name}"))
    await storage.close()


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

    def __init__(self, storages: Storages, database_url: str) -> None:
        self.storages = storages
        self.database_url = database_url
        self.session = MockedSession()
        self.bot: Bot = create_bot(settings_for(database_url), session=self.session)
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
        self.storages = await create_sql_storages(self.database_url)
        self.dispatcher = create_dispatcher(self.storages.fsm, self.storages.responses)

    async def close(self) -> None:
        await self.storages.close()


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[ChatHarness]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    harness = ChatHarness(await create_sql_storages(url), url)
    yield harness
    await harness.close()
