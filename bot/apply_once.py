"""Apply each update once: one fenced commit of all it changes, saves and sends (the outbox).

Handlers return their Bot API calls (`return message.answer(...)`, or several
in order) instead of making them. `ApplyOnce` takes the place of aiogram's FSM
middleware (the Dispatcher is built with `disable_fsm=True`; its `fsm` still
resolves keys and holds the storage and the in-process key locks). For an
update with an FSM key:

1. it reads the key's state, data, version and outbox in one call: an update
   listed as applied was handled before (a crash, a redelivered webhook); the
   handler does not run again, and what its key still has waiting goes out;
2. it runs the handler on `PendingChanges`: its FSM reads and writes stay in
   memory, and what it saves or deletes through `responses` or `fsm_storage`
   is queued (bot/outbox.py), so a failure half-way writes nothing;
3. it writes the new state and data, the update's id (always, also when
   nothing else changed) and the outbox's new entries (effects, then calls)
   in one write that succeeds only if the key is still at the version read
   (`FsmStorage.swap_with_outbox`). If another process wrote the key
   meanwhile, nothing is written and it starts again at 1: the update is
   found applied, or runs again on the new state. No lock is needed;
4. it returns the key's waiting entries as a `Delivery`, which the courier
   (bot/outbox.py) carries out per chat, once no lock is held.

A crash before step 3 leaves no trace: Telegram delivers the update again and
it is handled as new. A crash after it is met by step 1 and by the courier's
start-up pick-up; an entry carried out but not yet marked done goes out again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from aiogram import BaseMiddleware, Bot
from aiogram.dispatcher.middlewares.user_context import UserContextMiddleware
from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.context import FSMContext
from aiogram.fsm.middleware import FSMContextMiddleware
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, StateType, StorageKey
from aiogram.types import TelegramObject, Update

from bot.metrics import count_commit_conflict, note_already_applied, timed_lock
from bot.outbox import (
    APPLIED,
    REMEMBERED_UPDATES,
    AppliedRecord,
    Delivery,
    Entry,
    PendingResponses,
    UpdateStorage,
    call_entry,
    calls_in,
)
from storage import CorruptDataError, FsmStorage, StorageUnavailableError, Versioned
from storage.records import ALL_DONE

logger = logging.getLogger(__name__)

# Another writer changing the key between our read and our write, this many times in a row,
# means something is badly wrong; the user is asked to send the message again.
MAX_COMMIT_ATTEMPTS = 10

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class PendingChanges(BaseStorage):
    """One update's view of its FSM key: read once, kept in memory, written back by `ApplyOnce`."""

    def __init__(self, key: StorageKey, state: str | None, data: dict[str, Any] | CorruptDataError) -> None:
        self.key = key
        self.state = state
        # Unreadable data fails the handler that reads it, as the storage would; writing replaces it.
        self.data = data
        self.changed = False
        self.closed = False  # set once the handler returned: its changes are being committed

    def _own(self, key: StorageKey) -> None:
        if self.closed:
            msg = (
                "a write to FSMContext after its handler returned (a task left running?) would be lost: "
                "make every change before the handler returns"
            )
            raise RuntimeError(msg)
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
        update = cast(Update, event)
        if context is None:  # an update without a user and chat: nothing to keep
            effects: list[Entry] = []
            if "responses" in data:
                data["responses"] = PendingResponses(data["responses"], effects)
            result = await handler(event, data)
            return Delivery([*effects, *(call_entry(bot, call) for call in calls_in(result))], lane=lane_of(update))
        # Saves work only (bot/key_locks.py): the fenced commit keeps the data right without it.
        async with timed_lock(self.fsm.events_isolation.lock(context.key)):
            return await self.apply(handler, update, data, context)

    async def apply(self, handler: Handler, update: Update, data: dict[str, Any], context: FSMContext) -> Delivery:
        bot = cast(Bot, data["bot"])
        store = data.get("responses")
        for _ in range(MAX_COMMIT_ATTEMPTS):
            state, stored, version, sent = await read(context)
            record = (
                AppliedRecord()
                if isinstance(stored, CorruptDataError)
                else AppliedRecord.read(stored.pop(APPLIED, None))
            )
            waiting = [entry for entry in record.outbox if entry["seq"] > sent]
            if update.update_id in record.updates:
                return redelivered(update, context.key, waiting, record.queued + 1)

            changes = PendingChanges(context.key, state, stored)
            effects: list[Entry] = []
            data.update(
                state=FSMContext(storage=changes, key=context.key),
                raw_state=state,
                fsm_storage=UpdateStorage(self.fsm.storage, context.key, effects),
            )
            if store is not None:
                data["responses"] = PendingResponses(store, effects)
            try:
                result = await handler(update, data)
            finally:
                changes.closed = True  # a write after the handler returned would be lost: it raises
            entries = [*effects, *(call_entry(bot, call) for call in calls_in(result))]
            if not isinstance(context.storage, FsmStorage):
                return await self.write_unfenced(context, changes, entries, update)
            if isinstance(changes.data, CorruptDataError):  # unreadable, and the handler did not replace it
                return Delivery(entries, lane=context.key.chat_id)
            # Numbered on from the record's last entry, or from now (in microseconds) when higher: a record
            # deleted and made again (/forget, expiry) never reuses a number a mark or a courier still holds.
            fresh_from = max(record.queued + 1, time.time_ns() // 1000)
            for number, entry in enumerate(entries, start=fresh_from):
                entry["seq"] = number
            record = AppliedRecord(
                updates=[*record.updates, update.update_id][-REMEMBERED_UPDATES:],
                queued=fresh_from + len(entries) - 1 if entries else record.queued,
                outbox=waiting + entries,
                key=context.key,
            )
            try:
                done = 0 if sent == ALL_DONE else sent  # a record no outbox commit wrote: nothing marked yet
                committed = await context.storage.swap_with_outbox(
                    context.key, version, changes.state, changes.data | {APPLIED: record.dump()}, record.queued, done
                )
            except StorageUnavailableError:
                # The write may have reached the database before its time ran out; then "please
                # send it again" would be untrue, and the resend filed under the next question.
                if await was_applied(context, update):
                    return Delivery(record.outbox, context.key, context.key.chat_id, fresh_from)
                raise
            if committed:
                return Delivery(record.outbox, context.key, context.key.chat_id, fresh_from)
            logger.info(
                "Update %s: its chat was changed by another writer meanwhile; handling it again", update.update_id
            )
            count_commit_conflict()  # metrics
        msg = f"update {update.update_id}: its key kept changing under {MAX_COMMIT_ATTEMPTS} commits"
        raise StorageUnavailableError(msg)

    @staticmethod
    async def write_unfenced(
        context: FSMContext, changes: PendingChanges, entries: list[Entry], update: Update
    ) -> Delivery:
        """aiogram's own storages (MemoryStorage, RedisStorage): no versions, no record, no outbox kept."""
        if changes.changed:
            assert isinstance(changes.data, dict)
            # No atomic write of both: a crash between these two can leave the data saved and the state not.
            await context.storage.set_data(context.key, changes.data)
            await context.storage.set_state(context.key, changes.state)
        return Delivery(entries, lane=context.key.chat_id)


async def was_applied(context: FSMContext, update: Update) -> bool:
    """Whether the key's record lists `update` as applied (False if that cannot be read either)."""
    try:
        _, stored, _, _ = await read(context)
    except StorageUnavailableError:
        return False
    record = AppliedRecord() if isinstance(stored, CorruptDataError) else AppliedRecord.read(stored.get(APPLIED))
    return update.update_id in record.updates


def redelivered(update: Update, key: StorageKey, waiting: list[Entry], fresh_from: int) -> Delivery:
    """An update applied before: nothing is applied again; what it (or a later one) left waiting goes out."""
    note_already_applied()  # metrics: counted as already_applied, not applied
    logger.info("Update %s was applied already (delivered again); not applied again", update.update_id)
    return Delivery(waiting, key, key.chat_id, fresh_from)


def lane_of(update: Update) -> int | str:
    """The lane of an update without an FSM key: its chat's, else its own."""
    context = UserContextMiddleware.resolve_event_context(update)
    return context.chat_id if context.chat_id is not None else f"update {update.update_id}"


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
