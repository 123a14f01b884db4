"""What every form's handlers share: asking a question, stepping aside into another form, saving a completed one.

A form is a `StatesGroup` of `Question`s (states/form.py). Its completed
answers are saved as one response of its `kind` through the `responses`
store, whatever the form: a second form needs no storage code.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from aiogram import html
from aiogram.filters.callback_data import CallbackData
from aiogram.fsm.context import FSMContext
from aiogram.methods import SendMessage
from aiogram.types import (
    InaccessibleMessage,
    InlineKeyboardMarkup,
    Message,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
    User,
)
from aiogram.utils.keyboard import InlineKeyboardBuilder, ReplyKeyboardBuilder

from states import Answer, Question, question_at
from storage import CompletedResponse, ResponseStore

# Kept in the FSM data beside the answers; never saved as answers.
RESPONSE_ID = "response_id"  # the id the completed response is saved under
RETURN_TO = "return_to"  # where the user was before stepping aside into another form
BUTTONS_PER_ROW = 3


class Choice(CallbackData, prefix="choice"):
    """A press on one of a question's inline buttons: which question (its key) and which choice."""

    question: str
    index: int


def ask(message: Message, question: Question, preface: str = "") -> SendMessage:
    """The question, after an optional reason or greeting, with its choices as buttons."""
    return ask_in(message, question, preface)


def ask_in(where: Message | InaccessibleMessage, question: Question, preface: str = "") -> SendMessage:
    """`ask`, into the chat (and forum topic) of `where`: a message too old to answer (under a pressed button) too."""
    text = f"{preface}\n\n{question.prompt}" if preface else question.prompt
    thread = where.message_thread_id if isinstance(where, Message) and where.is_topic_message else None
    return SendMessage(chat_id=where.chat.id, text=text, reply_markup=keyboard_for(question), message_thread_id=thread)


def keyboard_for(question: Question) -> ReplyKeyboardMarkup | ReplyKeyboardRemove | InlineKeyboardMarkup:
    if not question.choices:
        return ReplyKeyboardRemove()
    if question.inline:
        buttons = InlineKeyboardBuilder()
        for index, choice in enumerate(question.choices):
            buttons.button(text=choice, callback_data=Choice(question=question.key, index=index))
        buttons.adjust(BUTTONS_PER_ROW)
        return buttons.as_markup()
    builder = ReplyKeyboardBuilder()
    for choice in question.choices:
        builder.button(text=choice)
    builder.adjust(BUTTONS_PER_ROW)
    return builder.as_markup(resize_keyboard=True, one_time_keyboard=True, input_field_placeholder=question.label)


def thanks_for(question: Question, answer: Answer) -> str:
    return question.thanks.format(html.quote(str(answer)))


async def begin(state: FSMContext, first: Question) -> None:
    """Start a form at `first`, with an empty slate and the id its response will be saved under."""
    await state.set_state(first)
    # A resend after a failure saves under the same id: the response cannot be saved twice.
    await state.set_data({RESPONSE_ID: uuid.uuid4().hex})


async def step_aside(state: FSMContext, first: Question) -> None:
    """Start a form at `first`, keeping where the user was (their state and answers) for `come_back`."""
    data = await state.get_data()
    # Already aside (the same command twice, or another form's): the first place to come back to stays.
    was = data.get(RETURN_TO) or {"state": await state.get_state(), "data": data}
    await begin(state, first)
    await state.update_data({RETURN_TO: was})


async def come_back(message: Message, state: FSMContext, preface: str) -> SendMessage:
    """Put the user back where they were before `step_aside`, and say so: `preface`, then their question, if any."""
    was = (await state.get_data()).get(RETURN_TO) or {}
    await state.set_state(was.get("state"))
    await state.set_data(was.get("data") or {})
    question = question_at(was.get("state"))
    if question is not None:
        return ask(message, question, preface)
    return message.answer(preface, reply_markup=ReplyKeyboardRemove())


async def save_response(
    state: FSMContext,
    responses: ResponseStore,
    message: Message | InaccessibleMessage,
    user: User,
    kind: str,
    answers: dict[str, Any],
) -> None:
    """Save a completed form's `answers` as one response of `kind`; saving it again keeps one.

    `message` is the one that completed the form (the user's answer, or the question whose button was pressed).
    """
    data = await state.get_data()
    await responses.save(
        CompletedResponse(
            # Sessions started before response ids existed get one made from that message:
            # the same on every attempt, so a resend after a failure cannot save it twice.
            response_id=data.get(RESPONSE_ID) or answered_id(message),
            user_id=user.id,
            chat_id=message.chat.id,
            answers=answers,
            completed_at=datetime.now(UTC),
            kind=kind,
        )
    )


def answered_id(message: Message | InaccessibleMessage) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"telegram:{message.chat.id}/{message.message_id}").hex
