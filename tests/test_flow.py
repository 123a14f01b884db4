"""The questionnaire as a user meets it: the real Dispatcher and handlers over a SQLite file and MongoDB.

Every question comes from its definition (states/questionnaire.py), through
tests/support/questionnaire.py: a question added there is asked and answered
here too.
"""

from __future__ import annotations

import asyncio

import pytest
from aiogram import html
from aiogram.types import InlineKeyboardMarkup, ReplyKeyboardMarkup, ReplyKeyboardRemove

from bot.key_locks import KeyLocks
from bot.outbox import handle_update
from handlers.questionnaire import NUMBERS
from states import InvalidAnswer, Question
from states.form import Reader, short_text, whole_number
from tests.support.backends import storage_key
from tests.support.chat import ChatHarness
from tests.support.questionnaire import (
    asked,
    conversation,
    fill_in,
    keeps_as_typed,
    saved,
    shows_summary,
    told_apart,
    typed,
)


async def answer_up_to(chat: ChatHarness, question: Question, user_id: int = 1) -> None:
    """/start, then the sample answers until `question` is asked."""
    await chat.send("/start", user_id)
    for before, text in zip(asked(), typed(), strict=True):
        if before == question:
            return
        await chat.send(text, user_id)


async def test_each_question_is_asked_in_turn_and_the_summary_names_every_answer(chat: ChatHarness) -> None:
    questions, answers = asked(), typed()
    [greeting] = await chat.send("/start")
    assert greeting.endswith(questions[0].prompt)
    for number, (question, text) in enumerate(zip(questions, answers, strict=True)):
        assert await chat.state() == question.state
        keyboard = chat.last_reply().reply_markup
        if question.inline:  # buttons under the question
            assert isinstance(keyboard, InlineKeyboardMarkup)
            assert [button.text for row in keyboard.inline_keyboard for button in row] == list(question.choices)
        elif question.choices:  # a keyboard in place of the user's
            assert isinstance(keyboard, ReplyKeyboardMarkup)
            assert [button.text for row in keyboard.keyboard for button in row] == list(question.choices)
        else:
            assert isinstance(keyboard, ReplyKeyboardRemove)
        [reply] = await chat.send(f"  {text}  ")
        assert await chat.answers() == (
            dict(list(saved().items())[: number + 1]) if number + 1 < len(questions) else {}
        )
        if number + 1 < len(questions):
            assert reply.endswith(questions[number + 1].prompt)
    assert shows_summary(reply)
    assert isinstance(chat.last_reply().reply_markup, ReplyKeyboardRemove)
    assert await chat.state() is None

    [response] = await chat.storages.responses.for_user(1)
    assert response.answers == saved()
    assert response.kind == "questionnaire"
    assert response.chat_id == 1


async def test_the_greeting_and_help_count_and_name_the_questions(chat: ChatHarness) -> None:
    [help_text] = await chat.send("/help")
    assert all(question.label.lower() in help_text for question in asked())
    assert all(command in help_text for command in ("/start", "/cancel", "/forget", "/help"))
    [greeting] = await chat.send("/start")
    assert f"{NUMBERS[len(asked())]} quick questions" in greeting


async def test_an_answer_typed_instead_of_a_button_is_kept(chat: ChatHarness) -> None:
    own = {question.key: f"Not {question.choices[0]}" for question in asked() if question.choices}
    replies = await fill_in(chat.send, **own)
    assert shows_summary(replies[-1][0], **own)


@pytest.mark.parametrize("answer", ["   ", "x" * 4000, "/foo"])
@pytest.mark.parametrize("at", range(len(asked())))
async def test_a_bad_answer_to_any_question_is_refused_and_asked_again(chat: ChatHarness, at: int, answer: str) -> None:
    question = asked()[at]
    await answer_up_to(chat, question)
    state_before, data_before = await chat.state(), await chat.data()

    [reply] = await chat.send(answer)

    assert reply.endswith(question.prompt)
    assert reply != question.prompt  # with the reason first
    assert await chat.state() == state_before
    assert await chat.data() == data_before


# Texts some reader refuses: each question that refuses one says why, its reader's reason.
REFUSED_BY_SOME = ["   ", "x" * 65, "thirty", "30.5", "²", "-5", "0", "121", "1000"]


@pytest.mark.parametrize("at", range(len(asked())))
async def test_a_bad_answer_is_told_why_and_the_question_asked_again(chat: ChatHarness, at: int) -> None:
    question = asked()[at]
    await answer_up_to(chat, question)
    state_before, data_before = await chat.state(), await chat.data()
    refused = {"/foo": "I don't know the command /foo"}
    for text in REFUSED_BY_SOME:
        try:
            question.read(text.strip())
        except InvalidAnswer as problem:
            refused[text] = html.quote(str(problem))
    for text, why in refused.items():
        [reply] = await chat.send(text)
        assert why in reply
        assert reply.endswith(question.prompt)
    assert (await chat.state(), await chat.data()) == (state_before, data_before)


@pytest.mark.parametrize(
    ("read", "text", "reason"),
    [
        (short_text("name"), "", "The name can't be empty."),
        (short_text("name"), "x" * 65, "That's 65 characters; please keep the name to 64."),
        (whole_number("age", 1, 120), "thirty", "Please send your age as a whole number."),
        (whole_number("age", 1, 120), "30.5", "whole number"),
        (whole_number("age", 1, 120), "²", "whole number"),
        (whole_number("age", 1, 120), "-5", "whole number"),
        (whole_number("age", 1, 120), "1000", "whole number"),
        (whole_number("age", 1, 120), "0", "The age must be between 1 and 120."),
        (whole_number("age", 1, 120), "121", "between 1 and 120"),
    ],
)
def test_the_readers_refuse_with_the_reason(read: Reader, text: str, reason: str) -> None:
    """The readers questions are built from (states/form.py), on their own: what the user is told."""
    with pytest.raises(InvalidAnswer) as refused:
        read(text)
    assert reason in str(refused.value)


def test_the_readers_keep_what_they_accept() -> None:
    assert short_text("name")("x" * 64) == "x" * 64
    assert [whole_number("age", 1, 120)(text) for text in ("1", "30", "120", "007")] == [1, 30, 120, 7]


async def test_an_unknown_command_of_a_whole_message_gets_a_reply_that_fits_in_one(chat: ChatHarness) -> None:
    """Telegram refuses a message over 4096 characters: the reply names the command's start, not all of it."""
    await answer_up_to(chat, asked()[0])
    command = "/<" + "x" * 4089  # 4091 characters, HTML in it
    [reply] = await chat.send(command)
    assert len(reply) <= 4096
    assert "I don't know the command /&lt;xxx" in reply
    assert "x" * 60 not in reply
    assert reply.endswith(asked()[0].prompt)


@pytest.mark.parametrize("content", ["photo", "sticker", "voice"])
@pytest.mark.parametrize("at", range(len(asked())))
async def test_non_text_gets_the_same_question_and_changes_nothing(chat: ChatHarness, content: str, at: int) -> None:
    await answer_up_to(chat, asked()[at])
    state_before, data_before = await chat.state(), await chat.data()

    [reply] = await chat.send(content=content)

    assert "I can only read text here." in reply
    assert reply.endswith(asked()[at].prompt)
    assert await chat.state() == state_before
    assert await chat.data() == data_before


async def test_user_text_is_html_escaped(chat: ChatHarness) -> None:
    text = "<b>Ann</b> & <i>co"
    tricky = {question.key: text for question in asked() if keeps_as_typed(question, text)}
    replies = await fill_in(chat.send, **tricky)
    shown = "\n".join(reply for batch in replies for reply in batch)
    assert "&lt;b&gt;Ann&lt;/b&gt; &amp; &lt;i&gt;co" in shown
    assert "<i>" not in shown
    assert shows_summary(replies[-1][0], **tricky)
    [response] = await chat.storages.responses.for_user(1)
    assert response.answers == saved(**tricky)


async def test_only_the_questions_answers_are_saved_not_other_keys_of_the_data(chat: ChatHarness) -> None:
    """A handler may keep helper keys beside the answers; they never become answers (nor export columns)."""
    *first, last = conversation()
    for text in first:
        await chat.send(text)
    await chat.storages.fsm.update_data(storage_key(1), {"hint_shown": True})
    await chat.send(last)
    [response] = await chat.storages.responses.for_user(1)
    assert response.answers == saved()


async def test_cancel_in_the_middle_forgets_the_answers(chat: ChatHarness) -> None:
    await answer_up_to(chat, asked()[-1])  # the last question: after the others' answers
    [reply] = await chat.send("/cancel")
    assert "Cancelled" in reply
    assert isinstance(chat.last_reply().reply_markup, ReplyKeyboardRemove)
    assert await chat.state() is None
    assert await chat.answers() == {}


async def test_cancel_with_nothing_to_cancel_says_so(chat: ChatHarness) -> None:
    [reply] = await chat.send("/cancel")
    assert "Nothing to cancel" in reply


async def test_start_in_the_middle_starts_over(chat: ChatHarness) -> None:
    await answer_up_to(chat, asked()[-1])  # the last question: after the others' answers
    [reply] = await chat.send("/start")
    assert reply.endswith(asked()[0].prompt)
    assert await chat.state() == asked()[0].state
    assert await chat.answers() == {}


async def test_help_works_inside_the_flow_and_changes_nothing(chat: ChatHarness) -> None:
    await answer_up_to(chat, asked()[-1])  # the last question: after the others' answers
    state_before, answers_before = await chat.state(), await chat.answers()
    [reply] = await chat.send("/help")
    assert "/cancel" in reply
    assert await chat.state() == state_before
    assert await chat.answers() == answers_before


@pytest.mark.parametrize("content", ["text", "photo"])
async def test_messages_outside_the_flow_get_a_hint(chat: ChatHarness, content: str) -> None:
    [reply] = await chat.send("hello", content=content)
    assert "Send /start" in reply
    assert await chat.state() is None


async def test_restart_after_each_answer_continues_at_the_right_question(chat: ChatHarness) -> None:
    await chat.send("/start")
    for question, text in zip(asked(), typed(), strict=True):
        await chat.restart()
        assert await chat.state() == question.state
        [reply] = await chat.send(text)
    assert shows_summary(reply)


async def test_burst_of_all_answers_is_applied_in_order(chat: ChatHarness) -> None:
    """Handled at once in one process, a user's answers are applied in the order they came.

    (The order of the replies is the runners' to keep: tests/test_polling.py, tests/test_telegram_faults.py.)
    """
    await chat.send("/start")
    updates = [chat.update(1, text) for text in typed()]
    await asyncio.gather(*(handle_update(chat.dispatcher, chat.bot, update) for update in updates))
    assert any(shows_summary(reply) for reply in chat.replies(1)[-len(updates) :])
    [response] = await chat.storages.responses.for_user(1)
    assert response.answers == saved()


async def test_many_users_at_once_each_get_their_own_summary(chat: ChatHarness) -> None:
    users = range(100, 130)

    async def one_user(user_id: int) -> list[list[str]]:
        return await fill_in(lambda text: chat.send(text, user_id), **told_apart(f"Name{user_id}"))

    summaries = await asyncio.gather(*(one_user(user) for user in users))
    for user, replies in zip(users, summaries, strict=True):
        assert shows_summary(replies[-1][0], **told_apart(f"Name{user}"))
        [response] = await chat.storages.responses.for_user(user)
        assert response.answers == saved(**told_apart(f"Name{user}"))
    locks = chat.dispatcher.fsm.events_isolation
    assert isinstance(locks, KeyLocks)
    assert locks.held == 0, "a user's lock outlived their updates: memory would grow with every user"
