"""Apply each update once, and send its reply only after its effects are saved.

Handlers return their reply (`return message.answer(...)`) instead of
sending it. For an update with an FSM key, `ApplyOnce`, inside the user's
lock (it runs after aiogram's FSM middleware):

1. reads the key's data: an update listed there as applied was handled
   before a crash and is delivered again; the handler does not run again,
   and the reply it gave is sent again if it was the key's latest;
2. runs the handler on `PendingChanges`: its FSM reads and writes stay in
   memory, so a failure half-way writes nothing;
3. writes the new state, data and the applied-update record in one atomic
   write (`FsmStorage.set_state_and_data`);
4. sends the reply, still inside the user's lock, so replies keep the order
   of the messages.

A crash before step 3 leaves no trace: Telegram delivers the update again and
it is handled as new. A crash after it is met by step 1. The reply may then
arrive twice; the Bot API has no way to send a message exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import aiogram.methods
from aiogram import BaseMiddleware, Bot
from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, StateType, StorageKey
from aiogram.methods import TelegramMethod
from aiogram.types import TelegramObject, Update

from storage import CorruptDataError, FsmStorage

logger = logging.getLogger(__name__)

# Kept in the key's FSM data; handlers never see it.
APPLIED = "__applied_updates__"
# Telegram hands out at most 100 updates per getUpdates, and the bot confirms
# none past one still running, so no more than 100 can be awaiting redelivery.
REMEMBERED_UPDATES = 100

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class PendingChanges(BaseStorage):
    """One update's view of its FSM key: read once, kept in memory, written back by `ApplyOnce`."""

    def __init__(self, key: StorageKey, state: str | None, data: dict[str, Any] | CorruptDataError) -> None:
        self.key = key
        self.state = state
        # Unreadable data fails the handler that reads it, as the storage would; writing replaces it.
        self.data = data
        self.changed = False

    def _own(self, key: StorageKey) -> None:
        if key != self.key:
            msg = "a handler's FSMContext reaches only the key of its own update"
            raise ValueError(msg)

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        self._own(key)
        self.state = state.state if isinstance(state, State) else state
        self.changed = True

    async def get_state(self, key: StorageKey) -> str | None:
        self._own(key)
        return self.state

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        self._own(key)
        if not isinstance(data, dict):
            msg = f"Data must be a dict or dict-like object, got {type(data).__name__}"
            raise DataNotDictLikeError(msg)
        self.data = dict(data)
        self.changed = True

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        self._own(key)
        if isinstance(self.data, CorruptDataError):
            raise self.data
        return dict(self.data)

    async def close(self) -> None:
        pass


class ApplyOnce(BaseMiddleware):
    """An outer update middleware, registered after the Dispatcher's own (see the module's docstring)."""

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        context: FSMContext | None = data.get("state")
        bot = cast(Bot, data["bot"])
        if context is None:  # an update without a user and chat: nothing to keep
            return await send_reply(bot, await handler(event, data))
        update = cast(Update, event)
        stored: dict[str, Any] | CorruptDataError
        try:
            stored = await context.get_data()
        except CorruptDataError as error:
            stored = error
        record = {} if isinstance(stored, CorruptDataError) else stored.pop(APPLIED, None) or {}
        applied: list[int] = record.get("updates", [])
        if update.update_id in applied:
            return await self.answer_redelivered(bot, update, applied, record.get("reply"))

        changes = PendingChanges(context.key, data.get("raw_state"), stored)
        data["state"] = FSMContext(storage=changes, key=context.key)
        reply = await handler(event, data)
        if changes.changed:
            record = {"updates": [*applied, update.update_id][-REMEMBERED_UPDATES:], "reply": dump_reply(bot, reply)}
            assert isinstance(changes.data, dict)  # unreadable data that was not replaced failed the handler
            await save(context, changes.state, changes.data | {APPLIED: record})
        return await send_reply(bot, reply)

    async def answer_redelivered(
        self, bot: Bot, update: Update, applied: list[int], reply: dict[str, Any] | None
    ) -> Any:
        if update.update_id != applied[-1] or reply is None:
            # A later message of this user was handled after it: that one's reply is the one that counts.
            logger.info("Update %s was applied already (delivered again); not applied again", update.update_id)
            return None
        logger.info("Update %s was applied already (delivered again); sending its reply again", update.update_id)
        return await send_reply(bot, load_reply(reply))


async def save(context: FSMContext, state: str | None, data: dict[str, Any]) -> None:
    storage = context.storage
    if isinstance(storage, FsmStorage):
        await storage.set_state_and_data(context.key, state, data)
        return
    # aiogram's own storages (MemoryStorage, RedisStorage) have no atomic write of both:
    # a crash between these two can leave the data saved and the state not.
    await storage.set_data(context.key, data)
    await storage.set_state(context.key, state)


async def send_reply(bot: Bot, reply: Any) -> Any:
    """Send a handler's returned Bot API call; what it returns is the handler's result then."""
    if isinstance(reply, TelegramMethod):
        return await bot(reply)
    return reply


def dump_reply(bot: Bot, reply: Any) -> dict[str, Any] | None:
    """The reply as JSON, to send again after a crash: the parameters the session would send now."""
    if not isinstance(reply, TelegramMethod):
        return None
    # prepare_value fills in the bot's defaults (parse_mode) and keeps values, not JSON text.
    prepared = (
        (name, bot.session.prepare_value(value, bot=bot, files={}, _dumps_json=False))
        for name, value in reply.model_dump(warnings=False).items()
    )
    return {"method": type(reply).__name__, "params": {name: value for name, value in prepared if value is not None}}


def load_reply(stored: Mapping[str, Any]) -> TelegramMethod[Any]:
    method = getattr(aiogram.methods, str(stored["method"]), None)
    if not (isinstance(method, type) and issubclass(method, TelegramMethod)):
        msg = f"not a Bot API method: {stored['method']!r}"
        raise ValueError(msg)
    return method.model_validate(stored["params"])
