"""Inline buttons: a question whose choices are buttons under it, answered by a press.

The press is one update: its spinner is stopped (answerCallbackQuery) and the
next step sent, both committed with the answer (the outbox) and made in that
order. The question is one the test adds to whatever questions there are.
"""

from __future__ import annotations

import pytest
from aiogram.methods import AnswerCallbackQuery, SendMessage
from aiogram.types import InlineKeyboardMarkup

from states import Question, Tally
from states.form import short_text
from tests.support.chat import ChatHarness
from tests.support.questionnaire import add_question, asked, typed

BUTTONS = "probe_buttons"  # a key no copier's questionnaire has
SIZES = ("Small", "Medium", "Large")


@pytest.fixture
def by_buttons(monkeypatch: pytest.MonkeyPatch) -> Question:
    """An inline-button question after the first one."""
    question = Question(
        "Which size?",
        read=short_text("size"),
        label="Probe size",
        sample="Medium",
        choices=SIZES,
        inline=True,
        tally=Tally.COUNTS,
    )
    add_question(monkeypatch, BUTTONS, question, after=asked()[0])
    return question


async def reach(chat: ChatHarness, question: Question) -> None:
    await chat.send("/start")
    for text, asked_question in zip(typed(), asked(), strict=True):
        if asked_question is question:
            return
        await chat.send(text)


async def test_a_press_stops_the_spinner_and_sends_the_next_step_from_one_update(
    chat: ChatHarness, by_buttons: Question
) -> None:
    await reach(chat, by_buttons)
    shown = chat.last_reply()
    assert shown.text.endswith(by_buttons.prompt)
    assert isinstance(shown.reply_markup, InlineKeyboardMarkup)
    assert [b.text for row in shown.reply_markup.inline_keyboard for b in row] == list(SIZES)

    calls = await chat.press("Large")

    answer, step = calls
    assert isinstance(answer, AnswerCallbackQuery)
    assert isinstance(step, SendMessage)
    following = asked()[asked().index(by_buttons) + 1]
    assert step.text.endswith(following.prompt)
    assert (await chat.answers())[BUTTONS] == "Large"
    assert await chat.state() == following.state


async def test_typing_the_answer_to_a_button_question_works_too(chat: ChatHarness, by_buttons: Question) -> None:
    await reach(chat, by_buttons)
    await chat.send("Medium")
    assert (await chat.answers())[BUTTONS] == "Medium"


async def test_a_stale_button_is_answered_and_changes_nothing(chat: ChatHarness, by_buttons: Question) -> None:
    await reach(chat, by_buttons)
    shown = chat.last_reply()
    await chat.press("Small")
    state, data = await chat.state(), await chat.data()
    chat.session.requests.append(shown)  # the old question's message, its buttons still on screen

    [answer, *_] = await chat.press("Large")

    assert isinstance(answer, AnswerCallbackQuery)
    assert answer.text  # why nothing happened
    assert await chat.state() == state
    assert await chat.data() == data


async def test_a_button_pressed_outside_any_form_gets_an_answer(chat: ChatHarness, by_buttons: Question) -> None:
    await reach(chat, by_buttons)
    shown = chat.last_reply()
    await chat.send("/cancel")
    chat.session.requests.append(shown)

    [answer] = await chat.press("Large")

    assert isinstance(answer, AnswerCallbackQuery)
    assert answer.text
    assert await chat.state() is None
