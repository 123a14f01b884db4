"""Data the bot did not write, and /forget: on SQLite and on Mongo with each driver."""

from __future__ import annotations

import pytest

from handlers.errors import START_OVER
from states import Questionnaire
from tests.support.backends import MONGO_BACKENDS
from tests.support.chat import ChatHarness


async def finish_questionnaire(chat: ChatHarness, user_id: int) -> None:
    for text in ("/start", "Ann", "30", "Blue"):
        await chat.send(text, user_id)


@pytest.mark.parametrize(
    ("sql_data", "mongo_data"),
    [("not json {", "not a document"), ("[1, 2]", ["a", "list"]), ('"text"', 42)],
)
async def test_corrupt_data_resets_only_that_user(chat: ChatHarness, sql_data: str, mongo_data: object) -> None:
    await chat.send("/start", user_id=2)
    await chat.send("Bob", user_id=2)
    await chat.send("/start")
    await chat.send("Ann")
    data = mongo_data if chat.backend.is_mongo else sql_data
    await chat.backend.write_raw(chat.storages.fsm, "fsm:1:1", Questionnaire.age.state, data)

    assert await chat.send("30") == [START_OVER]
    assert await chat.state() is None
    assert await chat.data() == {}
    assert "What is your name?" in (await chat.send("/start"))[0]

    assert "favourite colour" in (await chat.send("41", user_id=2))[0]
    assert await chat.data(2) == {"name": "Bob", "age": 41}


async def test_state_not_in_the_states_group_resets_the_session(chat: ChatHarness) -> None:
    await chat.backend.write_raw(chat.storages.fsm, "fsm:1:1", "Questionnaire:removed_question", None)
    assert await chat.send("hello") == [START_OVER]
    assert await chat.state() is None
    assert "Send /start" in (await chat.send("hello"))[0]


@pytest.mark.parametrize("chat", MONGO_BACKENDS, indirect=True)  # a SQL column holds strings only
async def test_state_of_the_wrong_type_resets_the_session(chat: ChatHarness) -> None:
    await chat.backend.write_raw(chat.storages.fsm, "fsm:1:1", 12345, {"name": "Ann"})
    assert await chat.send("Ann") == [START_OVER]
    assert await chat.state() is None


async def test_forget_deletes_state_data_and_finished_questionnaires(chat: ChatHarness) -> None:
    await finish_questionnaire(chat, 1)
    await finish_questionnaire(chat, 2)
    await chat.send("/start")
    await chat.send("Ann")

    [reply] = await chat.send("/forget")

    assert "1 finished questionnaire" in reply
    assert await chat.state() is None
    assert await chat.data() == {}
    assert await chat.storages.responses.for_user(1) == []
    assert len(await chat.storages.responses.for_user(2)) == 1
