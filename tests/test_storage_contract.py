"""The FSM storage contract, the same for every backend: SQLite, PostgreSQL, MySQL, MongoDB (both drivers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import BaseStorage, KeyBuilder, StorageKey
from aiogram.fsm.storage.memory import MemoryStorage

from storage import FsmStorage
from tests.support.backends import ALL_BACKENDS, Backend, storage_key
from tests.support.mocked_session import BOT_USER

pytestmark = pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)


class Form(StatesGroup):
    first = State()


async def test_missing_key_has_no_state_and_empty_data(storage: BaseStorage) -> None:
    assert await storage.get_state(storage_key()) is None
    assert await storage.get_data(storage_key()) == {}
    assert await storage.get_value(storage_key(), "name", "default") == "default"


async def test_state_round_trip_from_str_and_state(storage: BaseStorage) -> None:
    await storage.set_state(storage_key(), Form.first)
    assert await storage.get_state(storage_key()) == "Form:first"
    await storage.set_state(storage_key(), "custom")
    assert await storage.get_state(storage_key()) == "custom"
    assert await storage.get_state(storage_key(2)) is None


async def test_data_round_trip_returns_copies(storage: BaseStorage) -> None:
    data: dict[str, Any] = {"name": "Ann", "nested": {"list": [1, 2, "три"]}, "none": None}
    await storage.set_data(storage_key(), data)
    loaded = await storage.get_data(storage_key())
    assert loaded == data
    loaded["name"] = "changed"
    assert (await storage.get_data(storage_key()))["name"] == "Ann"
    assert await storage.get_value(storage_key(), "name") == "Ann"


async def test_awkward_keys_are_kept_as_memory_storage_keeps_them(storage: BaseStorage) -> None:
    awkward = {"a.b": 1, "$set": 2, "": 3, "%2E": 4, "ключ": {"$in": [{"x.y": 1}]}, "a": {"b": 5}}
    memory = MemoryStorage()
    for each in (storage, memory):
        await each.set_data(storage_key(), awkward)
        assert await each.update_data(storage_key(), {"x.y": 4, "$unset": 5, "a": {"c.d": 6}}) == {
            **awkward,
            "x.y": 4,
            "$unset": 5,
            "a": {"c.d": 6},
        }
    assert await storage.get_data(storage_key()) == await memory.get_data(storage_key())


async def test_set_data_refuses_a_non_dict_and_changes_nothing(storage: BaseStorage) -> None:
    await storage.set_data(storage_key(), {"kept": True})
    with pytest.raises(DataNotDictLikeError):
        await storage.set_data(storage_key(), [("a", 1)])  # type: ignore[arg-type]
    assert await storage.get_data(storage_key()) == {"kept": True}


async def test_update_data_merges_like_dict_update(storage: BaseStorage) -> None:
    first = await storage.update_data(storage_key(), {"a": 1, "nested": {"x": 1}})
    assert first == {"a": 1, "nested": {"x": 1}}
    result = await storage.update_data(storage_key(), {"b": 2, "nested": {"y": 2}, "a": None})
    assert result == {"a": None, "b": 2, "nested": {"y": 2}}
    assert await storage.get_data(storage_key()) == result
    assert await storage.update_data(storage_key(), {}) == result


async def test_empty_state_and_data_leave_no_record(storage: BaseStorage, backend: Backend) -> None:
    key = storage_key()
    await storage.set_state(key, "s")
    await storage.set_data(key, {"a": 1})
    assert len(await backend.record_ids(storage)) == 1

    await storage.set_state(key, None)
    assert await storage.get_data(key) == {"a": 1}
    assert len(await backend.record_ids(storage)) == 1

    await storage.set_data(key, {})
    assert await backend.record_ids(storage) == []

    await storage.set_data(key, {"a": 1})
    await storage.set_state(key, "s")
    await storage.set_data(key, {})
    assert await storage.get_state(key) == "s"
    await storage.set_state(key, None)
    assert await backend.record_ids(storage) == []

    await storage.update_data(key, {})
    await storage.set_state(key, None)
    await storage.set_data(key, {})
    assert await backend.record_ids(storage) == []


async def test_clear_really_clears(storage: BaseStorage, backend: Backend) -> None:
    """aiogram's FSMContext.clear(): set_state(None) then set_data({})."""
    key = storage_key()
    await storage.set_state(key, "s")
    await storage.update_data(key, {"a": 1})
    await storage.set_state(key, None)
    await storage.set_data(key, {})
    assert await storage.get_state(key) is None
    assert await storage.get_data(key) == {}
    assert await backend.record_ids(storage) == []


async def test_concurrent_update_data_keeps_every_key(storage: BaseStorage) -> None:
    key = storage_key()
    await asyncio.gather(*(storage.update_data(key, {f"k{i}": i}) for i in range(20)))
    assert await storage.get_data(key) == {f"k{i}": i for i in range(20)}


async def test_many_users_at_once_each_keep_their_own_answers(storage: BaseStorage) -> None:
    """Sixty users through the questionnaire's calls at once: nobody's state or answers mix with another's."""

    async def one_user(user_id: int) -> tuple[str | None, dict[str, Any]]:
        key = storage_key(user_id)
        await storage.get_state(key)
        await storage.set_state(key, "Form:name")
        for step, answer in enumerate(("Ann", user_id, "Blue")):
            await storage.get_state(key)
            await storage.update_data(key, {f"answer{step}": answer})
            await storage.set_state(key, f"Form:step{step}")
        return await storage.get_state(key), await storage.get_data(key)

    results = await asyncio.gather(*(one_user(user_id) for user_id in range(100, 160)))
    for user_id, (state, data) in zip(range(100, 160), results, strict=True):
        assert state == "Form:step2"
        assert data == {"answer0": "Ann", "answer1": user_id, "answer2": "Blue"}


@pytest.fixture
async def other_process(backend: Backend) -> AsyncIterator[BaseStorage]:
    """A second storage with its own connections: another bot process on the same database."""
    other = await backend.open()
    yield other
    await other.close()


async def test_concurrent_update_data_from_two_processes_keeps_every_key(
    storage: BaseStorage, other_process: BaseStorage
) -> None:
    key = storage_key()
    writes = [(storage if i % 2 else other_process).update_data(key, {f"k{i}": i}) for i in range(20)]
    await asyncio.gather(*writes)
    assert await storage.get_data(key) == {f"k{i}": i for i in range(20)}


async def test_emptying_a_key_keeps_what_another_process_wrote_meanwhile(
    storage: BaseStorage, other_process: BaseStorage
) -> None:
    """This process last saw the state empty; another one has set it since: emptying data keeps the record."""
    key = storage_key()
    await storage.set_data(key, {"a": 1})
    await storage.set_state(key, "Form:name")
    await storage.set_state(key, None)
    await other_process.set_state(key, "Form:age")
    await storage.set_data(key, {})
    assert await other_process.get_state(key) == "Form:age"
    assert await other_process.get_data(key) == {}


async def test_concurrent_first_writes_to_one_key_do_not_collide(storage: BaseStorage, backend: Backend) -> None:
    key = storage_key()
    await asyncio.gather(
        storage.set_state(key, "s"),
        storage.set_data(key, {"a": 1}),
        *(storage.set_state(storage_key(1000 + i), "t") for i in range(20)),
    )
    assert await storage.get_state(key) == "s"
    assert await storage.get_data(key) == {"a": 1}
    assert len(await backend.record_ids(storage)) == 21


async def test_emptying_a_key_does_not_race_a_write_to_it(storage: BaseStorage) -> None:
    """Clearing the state while another task writes data must never delete that data."""
    for round_number in range(10):
        key = storage_key(500 + round_number)
        await storage.set_state(key, "s")
        await asyncio.gather(storage.set_state(key, None), storage.update_data(key, {"kept": round_number}))
        assert await storage.get_data(key) == {"kept": round_number}
        assert await storage.get_state(key) is None


async def test_custom_key_builder_names_the_records(backend: Backend) -> None:
    class CustomKeyBuilder(KeyBuilder):
        def build(self, key: StorageKey) -> str:  # type: ignore[override]
            return f"custom_{key.bot_id}_{key.chat_id}_{key.user_id}"

    storage = await backend.open(key_builder=CustomKeyBuilder())
    try:
        await storage.set_state(storage_key(7), "s")
        assert await backend.record_ids(storage) == ["custom_42_7_7"]
    finally:
        await storage.close()


async def test_update_data_keeps_what_another_process_wrote_after_this_one_read(
    storage: BaseStorage, other_process: BaseStorage
) -> None:
    """The FSM middleware reads first; another process writes; this one's update must merge into that write."""
    key = storage_key()
    await storage.set_data(key, {"x": 1})
    await storage.get_state(key)
    await storage.get_data(key)
    await other_process.set_data(key, {"y": 2})

    assert await storage.update_data(key, {"x": 1}) == {"y": 2, "x": 1}
    assert await other_process.get_data(key) == {"y": 2, "x": 1}


async def test_emptying_state_then_data_leaves_no_record_on_a_fresh_storage(
    backend: Backend, other_process: BaseStorage
) -> None:
    """The sequence of issue 10, case 2, on a storage that has seen nothing of the key before each call."""
    key = storage_key()
    await other_process.set_state(key, "A:b")
    await other_process.set_data(key, {"x": 1})
    await other_process.set_state(key, None)
    fresh = await backend.open()
    try:
        await fresh.set_data(key, {})
        assert await backend.record_ids(fresh) == []
    finally:
        await fresh.close()


async def test_delete_user_deletes_that_users_keys_in_every_chat_and_no_one_elses(
    storage: BaseStorage, backend: Backend
) -> None:
    assert isinstance(storage, FsmStorage)
    theirs = [StorageKey(bot_id=42, chat_id=chat, user_id=7) for chat in (7, -100, -1007)]
    others = [StorageKey(bot_id=42, chat_id=7, user_id=user) for user in (17, 77, 71)]
    topic = StorageKey(bot_id=42, chat_id=-100, user_id=7, thread_id=5)
    for key in [*theirs, *others, topic]:
        await storage.set_state(key, "Questionnaire:age")

    assert await storage.delete_user(7) == 4

    assert [await storage.get_state(key) for key in [*theirs, topic]] == [None] * 4
    assert [await storage.get_state(key) for key in others] == ["Questionnaire:age"] * 3
    assert len(await backend.record_ids(storage)) == 3


async def test_delete_user_finds_the_user_by_their_id_whatever_the_key_builder(backend: Backend) -> None:
    """Keys ending with the chat cannot be told apart by user from the key: the user id kept beside it can."""

    class ChatLast(KeyBuilder):
        def build(self, key: StorageKey, part: str | None = None) -> str:
            return f"k:{key.bot_id}:{key.user_id}:{key.chat_id}"

    storage = await backend.open(key_builder=ChatLast())
    try:
        assert isinstance(storage, FsmStorage)
        await storage.set_state(storage_key(8), "kept")
        await storage.set_state(storage_key(7, chat_id=8), "gone")
        await storage.update_data(storage_key(7, chat_id=-5), {"a": 1})
        assert await storage.delete_user(7) == 2
        assert await backend.record_ids(storage) == [f"k:{BOT_USER.id}:8:8"]
    finally:
        await storage.close()


async def test_records_written_without_a_user_id_are_filled_in_and_forgotten(
    storage: BaseStorage, backend: Backend
) -> None:
    """Rows an older version wrote (no user id): /forget finds them by key; start-up's fill gives them their user."""
    assert isinstance(storage, FsmStorage)
    for key_id in ("fsm:1:7", "fsm:-100:7", "fsm:7:17", "fsm:1:77", "fsm:2:8", "odd key"):
        await backend.write_raw(storage, key_id, "Questionnaire:age", None)
    await storage.set_state(storage_key(8, chat_id=3), "Questionnaire:age")
    await storage.set_state(storage_key(7, chat_id=4), "Questionnaire:age")

    assert await storage.delete_user(7) == 3  # fsm:1:7, fsm:-100:7 and the new one; not 17 nor 77
    assert await backend.record_ids(storage) == ["fsm:1:77", "fsm:2:8", "fsm:3:8", "fsm:7:17", "odd key"]

    after = await storage.fill_user_ids(None, 2)  # a batch at a time
    assert after is not None
    while after is not None:
        after = await storage.fill_user_ids(after, 2)
    filled = {"fsm:1:77": 77, "fsm:2:8": 8, "fsm:3:8": 8, "fsm:7:17": 17, "odd key": None}
    assert await backend.user_ids(storage) == filled
    assert await storage.delete_user(8) == 2
    assert await backend.record_ids(storage) == ["fsm:1:77", "fsm:7:17", "odd key"]


async def test_update_data_with_nothing_leaves_no_record(storage: BaseStorage, backend: Backend) -> None:
    assert await storage.update_data(storage_key(), {}) == {}
    assert await backend.record_ids(storage) == []


async def test_outbox_marks_only_raise_and_a_key_is_due_while_anything_waits(storage: BaseStorage) -> None:
    """The courier's bookkeeping: due while calls wait (renewed by a mark, put off by a postponement),
    not due once all are done; a late, lower mark changes nothing."""
    assert isinstance(storage, FsmStorage)
    now = datetime.now(UTC)
    waiting, done = storage_key(1), storage_key(2)
    for key in (waiting, done):
        assert await storage.swap_with_outbox(key, None, Form.first, {"k": key.user_id}, queued=5)

    async def due(before: datetime) -> dict[int, int]:
        return {found.data["k"]: found.sent for found in await storage.due_outboxes(before, 10)}

    assert await due(now + timedelta(seconds=5)) == {1: 0, 2: 0}
    version = (await storage.get_versioned(waiting)).version
    await storage.mark_sent([(waiting, 3), (done, 5)])
    await storage.mark_sent([(waiting, 2)])  # late and lower: kept at 3
    assert await due(now + timedelta(seconds=5)) == {1: 3}
    assert (await storage.get_versioned(waiting)).sent == 3
    assert (await storage.get_versioned(waiting)).version == version  # a handler's commit is not refused for it

    await storage.postpone_outbox(waiting, now + timedelta(minutes=10))
    await storage.postpone_outbox(done, now + timedelta(minutes=10))  # nothing waits: stays not due
    assert await due(now + timedelta(minutes=1)) == {}
    assert await due(now + timedelta(minutes=11)) == {1: 3}
