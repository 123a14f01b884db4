"""The questionnaire as a user meets it: the real Dispatcher and handlers over a SQLite file."""

from __future__ import annotations

import asyncio

import pytest
from aiogram.types import ReplyKeyboardMarkup, ReplyKeyboardRemove

from bot.delivery import handle_update
from bot.key_locks import KeyLocks
from states import Questionnaire
from tests.support.chat import ChatHarness


async def answer_all(chat: ChatHarness, user_id: int = 1, name: str = "Ann") -> list[str]:
    await chat.send("/start", user_id)
    await chat.send(name, user_id)
    await chat.send("30", user_id)
    return await chat.send("Blue", user_id)


async def test_full_flow_asks_three_questions_and_sums_up(chat: ChatHarness) -> None:
    assert "What is your name?" in (await chat.send("/start"))[0]
    assert await chat.state() == Questionnaire.name.state

    reply = (await chat.send("  Ann  "))[0]
    assert "Nice to meet you, Ann!" in reply
    assert "How old are you?" in reply
    assert await chat.answers() == {"name": "Ann"}

    assert "favourite colour" in (await chat.send("30"))[0]
    keyboard = chat.last_reply().reply_markup
    assert isinstance(keyboard, ReplyKeyboardMarkup)
    assert "Blue" in [button.text for row in keyboard.keyboard for button in row]
    assert await chat.answers() == {"name": "Ann", "age": 30}

    summary = (await chat.send("Blue"))[0]
    assert "Ann" in summary
    assert "30" in summary
    assert "Blue" in summary
    assert isinstance(chat.last_reply().reply_markup, ReplyKeyboardRemove)
    assert await chat.state() is None
    assert await chat.answers() == {}

    [response] = await chat.storages.responses.for_user(1)
    assert response.answers == {"name": "Ann", "age": 30, "colour": "Blue"}
    assert response.chat_id == 1


async def test_free_text_colour_is_accepted(chat: ChatHarness) -> None:
    await chat.send("/start")
    await chat.send("Ann")
    await chat.send("30")
    assert "Teal" in (await chat.send("Teal"))[0]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("   ", "can't be empty"),
        ("x" * 65, "keep the name to 64"),
        ("/foo", "I don't know the command /foo"),
    ],
)
async def test_bad_name_is_refused_and_asked_again(chat: ChatHarness, answer: str, reason: str) -> None:
    await chat.send("/start")
    [reply] = await chat.send(answer)
    assert reason in reply
    assert reply.endswith("What is your name?")
    assert await chat.state() == Questionnaire.name.state
    assert await chat.answers() == {}


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("thirty", "whole number"),
        ("30.5", "whole number"),
        ("²", "whole number"),
        ("-5", "whole number"),
        ("0", "between 1 and 120"),
        ("121", "between 1 and 120"),
        ("1000", "whole number"),
    ],
)
async def test_bad_age_is_refused_and_asked_again(chat: ChatHarness, answer: str, reason: str) -> None:
    await chat.send("/start")
    await chat.send("Ann")
    [reply] = await chat.send(answer)
    assert reason in reply
    assert reply.endswith("How old are you?")
    assert await chat.state() == Questionnaire.age.state
    assert await chat.answers() == {"name": "Ann"}


@pytest.mark.parametrize("content", ["photo", "sticker", "voice"])
@pytest.mark.parametrize("question", [Questionnaire.name, Questionnaire.age, Questionnaire.colour])
async def test_non_text_gets_the_same_question_and_changes_nothing(
    chat: ChatHarness, content: str, question: object
) -> None:
    await chat.send("/start")
    if question != Questionnaire.name:
        await chat.send("Ann")
    if question == Questionnaire.colour:
        await chat.send("30")
    state_before, data_before = await chat.state(), await chat.data()

    [reply] = await chat.send(content=content)

    assert "I can only read text here." in reply
    assert await chat.state() == state_before
    assert await chat.data() == data_before


async def test_too_long_colour_is_refused(chat: ChatHarness) -> None:
    await chat.send("/start")
    await chat.send("Ann")
    await chat.send("30")
    [reply] = await chat.send("c" * 100)
    assert "keep the colour to 64" in reply
    assert isinstance(chat.last_reply().reply_markup, ReplyKeyboardMarkup)
    assert await chat.state() == Questionnaire.colour.state


async def test_user_text_is_html_escaped(chat: ChatHarness) -> None:
    name = "<b>Ann</b> & <i>co"
    await chat.send("/start")
    assert "Nice to meet you, &lt;b&gt;Ann&lt;/b&gt; &amp; &lt;i&gt;co!" in (await chat.send(name))[0]
    await chat.send("30")
    summary = (await chat.send("<script>"))[0]
    assert "&lt;b&gt;Ann&lt;/b&gt;" in summary
    assert "&lt;script&gt;" in summary
    assert "<script>" not in summary
    assert (await chat.answers()) == {}
    [response] = await chat.storages.responses.for_user(1)
    assert response.answers["name"] == name


async def test_cancel_in_the_middle_forgets_the_answers(chat: ChatHarness) -> None:
    await chat.send("/start")
    await chat.send("Ann")
    [reply] = await chat.send("/cancel")
    assert "Cancelled" in reply
    assert isinstance(chat.last_reply().reply_markup, ReplyKeyboardRemove)
    assert await chat.state() is None
    assert await chat.answers() == {}


async def test_cancel_with_nothing_to_cancel_says_so(chat: ChatHarness) -> None:
    [reply] = await chat.send("/cancel")
    assert "Nothing to cancel" in reply


async def test_start_in_the_middle_starts_over(chat: ChatHarness) -> None:
    await chat.send("/start")
    await chat.send("Ann")
    [reply] = await chat.send("/start")
    assert "What is your name?" in reply
    assert await chat.state() == Questionnaire.name.state
    assert await chat.answers() == {}


async def test_help_works_inside_the_flow_and_changes_nothing(chat: ChatHarness) -> None:
    await chat.send("/start")
    await chat.send("Ann")
    [reply] = await chat.send("/help")
    assert "/cancel" in reply
    assert await chat.state() == Questionnaire.age.state
    assert await chat.answers() == {"name": "Ann"}


@pytest.mark.parametrize("content", ["text", "photo"])
async def test_messages_outside_the_flow_get_a_hint(chat: ChatHarness, content: str) -> None:
    [reply] = await chat.send("hello", content=content)
    assert "Send /start" in reply
    assert await chat.state() is None


async def test_restart_half_way_continues_at_the_right_question(chat: ChatHarness) -> None:
    await chat.send("/start")
    await chat.send("Ann")

    await chat.restart()

    assert await chat.state() == Questionnaire.age.state
    assert "favourite colour" in (await chat.send("30"))[0]
    await chat.restart()
    summary = (await chat.send("Green"))[0]
    assert "Ann" in summary
    assert "30" in summary
    assert "Green" in summary


async def test_burst_of_three_answers_is_applied_in_order(chat: ChatHarness) -> None:
    """Handled at once in one process, a user's answers are applied in the order they came.

    (The order of the replies is the runners' to keep: tests/test_polling.py, tests/test_telegram_faults.py.)
    """
    await chat.send("/start")
    updates = [chat.update(1, text) for text in ("Ann", "30", "Blue")]
    await asyncio.gather(*(handle_update(chat.dispatcher, chat.bot, update) for update in updates))
    assert any("Blue" in reply for reply in chat.replies(1)[-3:])
    [response] = await chat.storages.responses.for_user(1)
    assert response.answers == {"name": "Ann", "age": 30, "colour": "Blue"}


async def test_many_users_at_once_each_get_their_own_summary(chat: ChatHarness) -> None:
    users = range(100, 130)
    summaries = await asyncio.gather(*(answer_all(chat, user, name=f"Name{user}") for user in users))
    for user, replies in zip(users, summaries, strict=True):
        assert f"Name{user}" in replies[0]
        [response] = await chat.storages.responses.for_user(user)
        assert response.answers["name"] == f"Name{user}"
    locks = chat.dispatcher.fsm.events_isolation
    assert isinstance(locks, KeyLocks)
    assert locks.held == 0, "a user's lock outlived their updates: memory would grow with every user"
