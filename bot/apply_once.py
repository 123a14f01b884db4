"""Apply each update once, with a fenced commit; the reply is handed back to be sent after it.

Handlers return their reply (`return message.answer(...)`) instead of
sending it. `ApplyOnce` takes the place of aiogram's FSM middleware (the
Dispatcher is built with `disable_fsm=True`; its `fsm` still resolves keys
and holds the storage and the in-process key locks). For an update with an
FSM key:

1. it reads the key's state, data and version in one call: an update listed
   in the data as applied was handled before (a crash, a reply Telegram
   refused, a redelivered webhook); the handler does not run again, and the
   reply it gave is handed back again if it was the key's latest;
2. it runs the handler on `PendingChanges`: its FSM reads and writes stay in
   memory, so a failure half-way writes nothing;
3. it writes the new state, data, the applied-update record and the reply in
   one write that succeeds only if the key is still at the version read
   (`FsmStorage.swap_state_and_data`). If another process wrote the key
   meanwhile (two replicas, a deploy's old and new process), nothing is
   written and it starts again at 1: the update is found applied, or runs
   again on the new state. No lock is needed for this to hold;
4. it returns the reply, which bot/delivery.py sends once no lock is held.

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

from bot.metrics import count_commit_conflict, note_already_applied, timed_lock
from storage import CorruptDataError, FsmStorage, StorageUnavailableError, Versioned

logger = logging.getLogger(__name__)

# Another writer changing the key between our read and our write, this many times in a row,
# means something is badly wrong; the user is asked to send the message again.
MAX_COMMIT_ATTEMPTS = 10
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
            return await handler(event, data)
        # Saves work only (bot/key_locks.py): the fenced commit keeps the data right without it.
        async with timed_lock(self.fsm.events_isolation.lock(context.key)):
            return await self.apply(handler, cast(Update, event), data, context)

    async def apply(self, handler: Handler, update: Update, data: dict[str, Any], context: FSMContext) -> Any:
        for _ in range(MAX_COMMIT_ATTEMPTS):
            state, stored, version = await read(context)
            record = {} if isinstance(stored, CorruptDataError) else stored.pop(APPLIED, None) or {}
            applied: list[int] = record.get("updates", [])
            if update.update_id in applied:
                return redelivered(update, applied, record.get("reply"))

            changes = PendingChanges(context.key, state, stored)
            data.update(state=FSMContext(storage=changes, key=context.key), raw_state=state)
            reply = await handler(update, data)
            if not changes.changed:
                return reply
            bot = cast(Bot, data["bot"])
            record = {"updates": [*applied, update.update_id][-REMEMBERED_UPDATES:], "reply": dump_reply(bot, reply)}
            assert isinstance(changes.data, dict)  # unreadable data that was not replaced failed the handler
            try:
                committed = await commit(context, version, changes.state, changes.data | {APPLIED: record})
            except StorageUnavailableError:
                # The write may have reached the database before its time ran out; then "please
                # send it again" would be untrue, and the resend filed under the next question.
                if await was_applied(context, update):
                    return reply
                raise
            if committed:
                return reply
            logger.info(
                "Update %s: its chat was changed by another writer meanwhile; handling it again", update.update_id
            )
            count_commit_conflict()  # metrics
        msg = f"update {update.update_id}: its key kept changing under {MAX_COMMIT_ATTEMPTS} commits"
        raise StorageUnavailableError(msg)


async def was_applied(context: FSMContext, update: Update) -> bool:
    """Whether the key's record lists `update` as applied (False if that cannot be read either)."""
    try:
        _, stored, _ = await read(context)
    except StorageUnavailableError:
        return False
    record = {} if isinstance(stored, CorruptDataError) else stored.get(APPLIED) or {}
    return update.update_id in record.get("updates", [])


def redelivered(update: Update, applied: list[int], reply: dict[str, Any] | None) -> TelegramMethod[Any] | None:
    note_already_applied()  # metrics: counted as already_applied, not applied
    if update.update_id != applied[-1] or reply is None:
        # A later message of this user was handled after it: that one's reply is the one that counts.
        logger.info("Update %s was applied already (delivered again); not applied again", update.update_id)
        return None
    logger.info("Update %s was applied already (delivered again); its reply goes out again", update.update_id)
    return load_reply(reply)


async def read(context: FSMContext) -> Versioned:
    """The key's state, data and version; unreadable data is handed on, to fail only a handler that reads it."""
    storage = context.storage
    if isinstance(storage, FsmStorage):
        return await storage.get_versioned(context.key)
    # aiogram's own storages (MemoryStorage, RedisStorage) have no versions: their writes are not fenced.
    try:
        return Versioned(await storage.get_state(context.key), await storage.get_data(context.key), None)
    except CorruptDataError as error:
        return Versioned(await storage.get_state(context.key), error, None)


async def commit(context: FSMContext, version: int | None, state: str | None, data: dict[str, Any]) -> bool:
    """Write state and data if the key is still at `version`; False if another writer came first."""
    storage = context.storage
    if isinstance(storage, FsmStorage):
        return await storage.swap_state_and_data(context.key, version, state, data)
    # aiogram's own storages have no atomic write of both: a crash between these
    # two can leave the data saved and the state not.
    await storage.set_data(context.key, data)
    await storage.set_state(context.key, state)
    return True


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
