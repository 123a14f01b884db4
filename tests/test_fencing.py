"""Fenced commits: writers that hold no lock at all (two processes, a deploy's old and new one) lose nothing.

The storage-level test runs the read-modify-write that ApplyOnce does on two
storages on one database, against MemoryStorage as the oracle; the
dispatcher-level one runs ApplyOnce itself in two "processes", each update
delivered to both at once. Both fail with an unconditional write in place of
`swap_state_and_data` (updates lost, or applied twice).
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime

import pytest
from aiogram import Bot, Dispatcher, F, Router
from aiogram.fsm.context import FSMContext
from aiogram.fsm.storage.memory import MemoryStorage
from aiogram.types import Chat, Message, Update, User

from bot.apply_once import ApplyOnce
from bot.key_locks import KeyLocks
from storage import FsmStorage
from tests.support.backends import ALL_BACKENDS, TOKEN, Backend, storage_key

WRITERS = 2
APPENDS = 12


async def append_fenced(storage: FsmStorage, token: str) -> int:
    """Append `token` to the key's list as ApplyOnce commits: read, change, swap; again on a conflict."""
    key = storage_key()
    conflicts = 0
    while True:
        _, data, version, _ = await storage.get_versioned(key)
        assert isinstance(data, dict)
        await asyncio.sleep(random.random() / 200)  # the handler's work, while the other writer runs
        if await storage.swap_state_and_data(key, version, "writing", {"tokens": [*data.get("tokens", []), token]}):
            return conflicts
        conflicts += 1


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
async def test_two_writers_without_a_lock_lose_nothing(backend: Backend) -> None:
    processes = [await backend.open() for _ in range(WRITERS)]
    oracle = MemoryStorage()
    try:

        async def writer(number: int) -> int:
            storage = processes[number]
            assert isinstance(storage, FsmStorage)
            conflicts = 0
            for n in range(APPENDS):
                conflicts += await append_fenced(storage, f"{number}-{n}")
                await oracle.update_data(storage_key(), {f"{number}-{n}": True})
            return conflicts

        conflicts = await asyncio.gather(*(writer(number) for number in range(WRITERS)))
        tokens = (await processes[0].get_data(storage_key()))["tokens"]
        assert sorted(tokens) == sorted(await oracle.get_data(storage_key()))  # none lost, none twice
        for number in range(WRITERS):  # each writer's own appends in its order
            mine = [token for token in tokens if token.startswith(f"{number}-")]
            assert mine == [f"{number}-{n}" for n in range(APPENDS)]
        assert sum(conflicts) > 0, "the writers never overlapped: the test proved nothing"
    finally:
        for storage in processes:
            await storage.close()


def a_process(storage: FsmStorage) -> Dispatcher:
    """A dispatcher as the bot builds it (ApplyOnce, its own in-process locks), with a handler that appends."""
    dispatcher = Dispatcher(storage=storage, events_isolation=KeyLocks(), disable_fsm=True)
    dispatcher.update.outer_middleware(ApplyOnce(dispatcher.fsm))
    router = Router(name="appends")

    @router.message(F.text)
    async def append(message: Message, state: FSMContext) -> None:
        seen = (await state.get_data()).get("seen", [])
        await asyncio.sleep(random.random() / 100)  # long enough for the other process to commit meanwhile
        await state.update_data(seen=[*seen, message.text])
        await state.set_state("appending")

    dispatcher.include_router(router)
    return dispatcher


def message_update(update_id: int, text: str) -> Update:
    user = User(id=1, is_bot=False, first_name="Ann")
    chat = Chat(id=1, type="private")
    message = Message(message_id=update_id, date=datetime.now(UTC), chat=chat, from_user=user, text=text)
    return Update(update_id=update_id, message=message)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
async def test_two_processes_apply_each_update_once(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    """Two processes handle different updates of one user at the same moment (a deploy's old and new
    process, a webhook retried on another replica), then each update is delivered to both at once:
    every update is applied exactly once."""
    stores = [await backend.open() for _ in range(2)]
    bot = Bot(TOKEN)
    try:
        processes = []
        for store in stores:
            assert isinstance(store, FsmStorage)
            processes.append(a_process(store))
        updates = [message_update(500 + n, f"m{n}") for n in range(10)]
        with caplog.at_level(logging.INFO, logger="bot.apply_once"):
            for first, second in zip(updates[::2], updates[1::2], strict=True):
                await asyncio.gather(processes[0].feed_update(bot, first), processes[1].feed_update(bot, second))
            for update in updates[:4]:  # delivered again, to both at once
                await asyncio.gather(*(process.feed_update(bot, update) for process in processes))
        seen = (await stores[0].get_data(storage_key()))["seen"]
        assert sorted(seen) == sorted(f"m{n}" for n in range(10))
        assert "handling it again" in caplog.text, "the processes never collided: the test proved nothing"
    finally:
        await bot.session.close()
        for store in stores:
            await store.close()
