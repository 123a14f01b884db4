"""Apply each update once, and send its reply only after its effects are saved.

Handlers return their reply (`return message.answer(...)`) instead of
sending it. `ApplyOnce` takes the place of aiogram's FSM middleware (the
Dispatcher is built with `disable_fsm=True`; its `fsm` still resolves keys
and holds the storage and the isolation). For an update with an FSM key it
takes the user's lock, as aiogram's does, and inside it:

1. reads the key's state and data in one call: an update listed in the data
   as applied was handled before a crash and is delivered again; the handler
   does not run again, and the reply it gave is sent again if it was the
   key's latest;
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
from aiogram.fsm.middleware import FSMContextMiddleware
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
    """aiogram's FSM middleware, applying each update once (see the module's docstring)."""

    def __init__(self, fsm: FSMContextMiddleware) -> None:
        self.fsm = fsm

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        bot = cast(Bot, data["bot"])
        context = self.fsm.resolve_event_context(bot, data)
        data["fsm_storage"] = self.fsm.storage
        if context is None:  # an update without a user and chat: nothing to keep
            return await send_reply(bot, await handler(event, data))
        # As in aiogram's: nothing is read before the lock is held.
        async with self.fsm.events_isolation.lock(context.key):
            return await self.apply(handler, cast(Update, event), data, context)

    async def apply(self, handler: Handler, update: Update, data: dict[str, Any], context: FSMContext) -> Any:
        bot = cast(Bot, data["bot"])
        state, stored = await read(context)
        record = {} if isinstance(stored, CorruptDataError) else stored.pop(APPLIED, None) or {}
        applied: list[int] = record.get("updates", [])
        if update.update_id in applied:
            return await self.answer_redelivered(bot, update, applied, record.get("reply"))

        changes = PendingChanges(context.key, state, stored)
        data.update(state=FSMContext(storage=changes, key=context.key), raw_state=state)
        reply = await handler(update, data)
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


async def read(context: FSMContext) -> tuple[str | None, dict[str, Any] | CorruptDataError]:
    """The key's state and data; unreadable data is handed on, to fail only a handler that reads it."""
    storage = context.storage
    try:
        if isinstance(storage, FsmStorage):
            return await storage.get_state_and_data(context.key)
        return await storage.get_state(context.key), await storage.get_data(context.key)
    except CorruptDataError as error:
        return await storage.get_state(context.key), error  # a state that is unreadable too raises here


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
