"""Data the bot did not write, and /forget: on SQLite and on Mongo with each driver."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import StorageKey
from aiogram.methods import AnswerCallbackQuery, SendMessage
from aiogram.types import CallbackQuery, Chat, Message, Update, User

from bot.outbox import handle_update
from handlers.errors import SEND_AGAIN, START_OVER
from storage import StorageUnavailableError
from tests.support.backends import MONGO_BACKENDS
from tests.support.chat import ChatHarness
from tests.support.questionnaire import (
    asked,
    conversation,
    fill_in,
    saved,
    saved_first,
    shows_summary,
    typed,
    what_follows,
)

FORUM_ID = -1001234


async def finish_questionnaire(chat: ChatHarness, user_id: int) -> None:
    await fill_in(lambda text: chat.send(text, user_id))


@pytest.mark.parametrize(
    ("sql_data", "mongo_data"),
    [("not json {", "not a document"), ("[1, 2]", ["a", "list"]), ('"text"', 42)],
)
async def test_corrupt_data_resets_only_that_user(chat: ChatHarness, sql_data: str, mongo_data: object) -> None:
    *first, last = conversation()
    for user_id in (2, 1):  # both at the last question
        for text in first:
            await chat.send(text, user_id)
    data = mongo_data if chat.backend.is_mongo else sql_data
    await chat.backend.write_raw(chat.storages.fsm, "fsm:1:1", asked()[-1].state, data)

    assert await chat.send(last) == [START_OVER]
    assert await chat.state() is None
    assert await chat.answers() == {}
    assert asked()[0].prompt in (await chat.send("/start"))[0]

    assert shows_summary((await chat.send(last, user_id=2))[0])
    [response] = await chat.storages.responses.for_user(2)
    assert response.answers == saved()


async def test_state_not_in_the_states_group_resets_the_session(chat: ChatHarness) -> None:
    await chat.backend.write_raw(chat.storages.fsm, "fsm:1:1", "Questionnaire:removed_question", None)
    assert await chat.send("hello") == [START_OVER]
    assert await chat.state() is None
    assert "Send /start" in (await chat.send("hello"))[0]


@pytest.mark.parametrize("chat", MONGO_BACKENDS, indirect=True)  # a SQL column holds strings only
async def test_state_of_the_wrong_type_resets_the_session(chat: ChatHarness) -> None:
    await chat.backend.write_raw(chat.storages.fsm, "fsm:1:1", 12345, saved_first(1))
    assert await chat.send(typed()[0]) == [START_OVER]
    assert await chat.state() is None


async def test_forget_deletes_state_data_and_finished_questionnaires(chat: ChatHarness) -> None:
    await finish_questionnaire(chat, 1)
    await finish_questionnaire(chat, 2)
    await chat.send("/start")
    await chat.send(typed()[0])

    [reply] = await chat.send("/forget")

    assert "1 finished form" in reply
    assert await chat.state() is None
    assert await chat.answers() == {}
    assert await chat.storages.responses.for_user(1) == []
    assert len(await chat.storages.responses.for_user(2)) == 1


def topic_message(chat: ChatHarness, text: str) -> Update:
    """A message from user 1 in topic 5 of a forum supergroup."""
    message = Message(
        message_id=next(chat._ids),
        date=datetime.now(UTC),
        chat=Chat(id=FORUM_ID, type="supergroup", is_forum=True),
        from_user=User(id=1, is_bot=False, first_name="User 1"),
        message_thread_id=5,
        is_topic_message=True,
        text=text,
    )
    return Update(update_id=message.message_id, message=message)


async def test_corrupt_session_in_a_forum_topic_is_reset_under_the_key_it_lives_at(chat: ChatHarness) -> None:
    """The FSM strategy (one key per user in the chat) decides the key, not the topic."""
    corrupt = ["not", "a", "dict"] if chat.backend.is_mongo else "[1, 2]"
    await chat.backend.write_raw(chat.storages.fsm, f"fsm:{FORUM_ID}:1", asked()[-1].state, corrupt)

    await handle_update(chat.dispatcher, chat.bot, topic_message(chat, typed()[-1]))
    assert chat.last_reply(FORUM_ID).text == START_OVER
    assert await chat.storages.fsm.get_state(StorageKey(bot_id=42, chat_id=FORUM_ID, user_id=1)) is None

    await handle_update(chat.dispatcher, chat.bot, topic_message(chat, typed()[-1]))
    assert chat.last_reply(FORUM_ID).text != START_OVER


async def test_resetting_a_corrupt_session_never_wipes_the_users_next_message(chat: ChatHarness) -> None:
    """The reset happens inside the user's turn: a /start right behind the broken answer survives it."""
    for round_number in range(5):
        user_id = 10 + round_number
        await chat.backend.write_raw(chat.storages.fsm, f"fsm:{user_id}:{user_id}", asked()[-1].state, "[1]")
        await asyncio.gather(
            handle_update(chat.dispatcher, chat.bot, chat.update(user_id, typed()[-1])),
            handle_update(chat.dispatcher, chat.bot, chat.update(user_id, "/start")),
        )
        assert await chat.state(user_id) == asked()[0].state
        [reply] = await chat.send(typed()[0], user_id)
        assert reply.endswith(what_follows(asked()[0]))
        assert reply != START_OVER


class OtherFlow(StatesGroup):
    waiting_for_photo = State()


async def test_a_state_the_bot_defines_is_not_wiped_by_a_message_no_handler_takes(chat: ChatHarness) -> None:
    key = StorageKey(bot_id=42, chat_id=1, user_id=1)
    await chat.storages.fsm.set_state(key, OtherFlow.waiting_for_photo)
    await chat.storages.fsm.set_data(key, {"kept": True})

    [reply] = await chat.send("some text")

    assert reply != START_OVER
    assert await chat.state() == OtherFlow.waiting_for_photo.state
    assert await chat.data() == {"kept": True}


async def test_forget_deletes_the_users_sessions_in_every_chat(chat: ChatHarness) -> None:
    in_group = StorageKey(bot_id=42, chat_id=-100, user_id=1)
    someone_else = StorageKey(bot_id=42, chat_id=-100, user_id=2)
    await chat.storages.fsm.set_state(in_group, asked()[-1])
    await chat.storages.fsm.set_data(in_group, saved_first(len(asked()) - 1))
    await chat.storages.fsm.set_state(someone_else, asked()[-1])
    await chat.send("/start")

    await chat.send("/forget")

    assert await chat.storages.fsm.get_state(in_group) is None
    assert await chat.storages.fsm.get_data(in_group) == {}
    assert await chat.state() is None
    assert await chat.storages.fsm.get_state(someone_else) == asked()[-1].state


async def test_finishing_twice_after_a_failure_keeps_one_response(
    chat: ChatHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The response was saved but clearing the state failed: the resent answer must not save a second one."""
    *first, last = conversation()
    for text in first:
        await chat.send(text)
    fsm = chat.storages.fsm
    real_write = fsm.swap_with_outbox

    async def fails_once(*args: Any, **kwargs: Any) -> bool:
        monkeypatch.setattr(fsm, "swap_with_outbox", real_write)
        raise StorageUnavailableError("the database went away")

    monkeypatch.setattr(fsm, "swap_with_outbox", fails_once)
    assert await chat.send(last) == [SEND_AGAIN]

    [summary] = await chat.send(last)
    assert shows_summary(summary)
    [response] = await chat.storages.responses.for_user(1)
    assert response.answers == saved()


async def test_a_save_that_timed_out_after_the_database_took_it_is_not_called_a_failure(
    chat: ChatHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write reached the database, then its time ran out: the user gets the next question, not
    "please send it again" (their resend would be filed under the next question)."""
    *first, last = conversation()
    for text in first:
        await chat.send(text)
    fsm = chat.storages.fsm
    real_write = fsm.swap_with_outbox

    async def writes_then_times_out(*args: Any, **kwargs: Any) -> bool:
        monkeypatch.setattr(fsm, "swap_with_outbox", real_write)
        assert await real_write(*args, **kwargs)
        raise StorageUnavailableError("SQLAlchemyStorage.swap_with_outbox did not finish within 10 s")

    monkeypatch.setattr(fsm, "swap_with_outbox", writes_then_times_out)
    [summary] = await chat.send(last)
    assert shows_summary(summary)
    [response] = await chat.storages.responses.for_user(1)
    assert response.answers == saved()


@pytest.mark.parametrize("update_type", ["callback_query", "edited_message"])
async def test_a_failed_button_press_or_edit_is_answered_not_dropped(
    chat: ChatHarness, monkeypatch: pytest.MonkeyPatch, update_type: str
) -> None:
    """The database is down: a button press gets an alert, an edited message a message; both say send again."""
    await chat.send("/start")

    async def down(*_: Any, **__: Any) -> None:
        raise StorageUnavailableError("the database went away")

    monkeypatch.setattr(chat.storages.fsm, "get_versioned", down)
    user = User(id=1, is_bot=False, first_name="Ann")
    message = Message(message_id=1, date=datetime.now(UTC), chat=Chat(id=1, type="private"), from_user=user, text="Ann")
    if update_type == "callback_query":
        update = Update(
            update_id=900, callback_query=CallbackQuery(id="cb1", from_user=user, chat_instance="1", data="x")
        )
    else:
        update = Update(update_id=900, edited_message=message)
    before = len(chat.session.requests)
    await handle_update(chat.dispatcher, chat.bot, update)
    [answer] = chat.session.requests[before:]
    if update_type == "callback_query":
        assert isinstance(answer, AnswerCallbackQuery)
        assert (answer.callback_query_id, answer.text, answer.show_alert) == ("cb1", SEND_AGAIN, True)
    else:
        assert isinstance(answer, SendMessage)
        assert answer.text == SEND_AGAIN
