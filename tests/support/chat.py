"""The real Dispatcher and handlers, driven with a mocked Bot API session."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.methods import SendMessage, TelegramMethod
from aiogram.types import (
    CallbackQuery,
    Chat,
    InlineKeyboardMarkup,
    Message,
    PhotoSize,
    Sticker,
    Update,
    User,
    Voice,
)

from bot.outbox import APPLIED, handle_update
from bot.setup import create_bot, create_dispatcher
from handlers.forms import RESPONSE_ID, RETURN_TO
from states import described_forms
from storage import Storages
from tests.support.backends import Backend, release_routers, settings_for, storage_key
from tests.support.mocked_session import MockedSession


class ChatHarness:
    """The real Dispatcher and handlers; users send updates, the bot's replies are recorded."""

    def __init__(self, backend: Backend, storages: Storages) -> None:
        self.backend = backend
        self.storages = storages
        self.session = MockedSession()
        self.bot: Bot = create_bot(settings_for("sqlite:///unused.db"), session=self.session)
        self.dispatcher: Dispatcher = create_dispatcher(storages.fsm, storages.responses)
        # Telegram numbers a bot's updates from a random start, so two harnesses never share ids.
        self._ids = itertools.count(random.randrange(1, 2**30))
        self._presses = 0

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
        await handle_update(self.dispatcher, self.bot, self.update(user_id, text, content))
        return [m.text for m in self.session.sent_messages()[before:] if m.chat_id == user_id]

    async def press(self, button: str, user_id: int = 1, under: SendMessage | None = None) -> list[TelegramMethod[Any]]:
        """Press the inline button labelled `button` under the bot's last message to the user (or under
        an earlier one, `under`); the calls the bot made for that one update, in order."""
        shown = under or self.last_reply(user_id)
        assert isinstance(shown.reply_markup, InlineKeyboardMarkup), "the last message has no inline buttons"
        [data] = [b.callback_data for row in shown.reply_markup.inline_keyboard for b in row if b.text == button]
        user = User(id=user_id, is_bot=False, first_name="Ann")
        message = Message(message_id=1, date=datetime.now(UTC), chat=Chat(id=user_id, type="private"), text=shown.text)
        self._presses += 1
        update = Update(
            update_id=next(self._ids),
            callback_query=CallbackQuery(
                id=str(self._presses), from_user=user, chat_instance="1", data=data, message=message
            ),
        )
        before = len(self.session.requests)
        await handle_update(self.dispatcher, self.bot, update)
        return self.session.requests[before:]

    def last_reply(self, user_id: int = 1) -> SendMessage:
        return [m for m in self.session.sent_messages() if m.chat_id == user_id][-1]

    def replies(self, user_id: int) -> list[str]:
        return [m.text for m in self.session.sent_messages() if m.chat_id == user_id]

    async def state(self, user_id: int = 1) -> str | None:
        return await self.storages.fsm.get_state(storage_key(user_id))

    async def data(self, user_id: int = 1) -> dict[str, object]:
        """The FSM data as handlers see it (without the applied-updates record and outbox kept beside it)."""
        data = await self.storages.fsm.get_data(storage_key(user_id))
        data.pop(APPLIED, None)
        return data

    async def answers(self, user_id: int = 1) -> dict[str, object]:
        """The answers kept so far: the FSM data without the keys the forms keep beside them."""
        kept = await self.data(user_id)
        return {name: value for name, value in kept.items() if name not in (RESPONSE_ID, RETURN_TO, APPLIED)}

    async def restart(self) -> None:
        """Stop as the process would (storage closed), then build everything anew on the same database."""
        await self.dispatcher.fsm.close()
        await self.storages.close()
        release_routers()
        self.storages = await self.backend.open_storages()
        self.dispatcher = create_dispatcher(self.storages.fsm, self.storages.responses)
        await self.describe_forms()

    async def describe_forms(self) -> None:
        """Describe every form defined so far in the database, as the bot does at its start (bot/running.py)."""
        await self.storages.responses.describe_forms(described_forms())

    async def close(self) -> None:
        await self.storages.close()
