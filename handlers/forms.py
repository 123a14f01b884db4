"""What every form's handlers share: asking a question, taking answers typed or pressed, stepping aside
into another form, saving a completed one.

A form is a `StatesGroup` of `Question`s (states/form.py). `follow(router,
Form, summary)` takes its answers question by question; its completed
answers are saved as one response of its kind (`form_kind(Form)`) through
the `responses` store, whatever the form: a second form needs no storage code.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiogram import F, Router, html
from aiogram.filters import StateFilter
from aiogram.filters.callback_data import CallbackData
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import StatesGroup
from aiogram.methods import SendMessage, TelegramMethod
from aiogram.types import (
    CallbackQuery,
    InaccessibleMessage,
    InlineKeyboardMarkup,
    Message,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
    User,
)
from aiogram.utils.keyboard import InlineKeyboardBuilder, ReplyKeyboardBuilder

from states import Answer, FormError, InvalidAnswer, Question, form_kind, next_question, question_at, questions
from storage import CompletedResponse, ResponseStore

# Kept in the FSM data beside the answers; never saved as answers.
RESPONSE_ID = "response_id"  # the id the completed response is saved under
RETURN_TO = "return_to"  # where the user was before stepping aside into another form
BUTTONS_PER_ROW = 3


class Choice(CallbackData, prefix="choice"):
    """A press on one of a question's inline buttons: which form (its kind), which question (its key),
    which choice. Telegram keeps at most 64 bytes of it (`follow` refuses a form whose buttons pass that)."""

    form: str
    question: str
    index: int

    @classmethod
    def of(cls, question: Question, index: int) -> Choice:
        return cls(form=form_kind(question.group), question=question.key, index=index)

    def is_for(self, question: Question) -> bool:
        """A press on one of `question`'s own buttons (not a same-named question's of another form)."""
        return self == Choice.of(question, self.index) and 0 <= self.index < len(question.choices)


Summary = Callable[[Mapping[str, Answer]], str]  # a completed form's answers, as the user is shown them


def follow(router: Router, form: type[StatesGroup], summary: Summary) -> None:
    """Take `form`'s answers on `router`, typed or pressed (a question with `inline=True`), in order.

    A typed answer is read by its question (refused with the reason, and asked
    again); a press stops the button's spinner and sends the next step, from one
    update. After the last answer the response is saved (kind `form_kind(form)`)
    and `summary(answers)` is sent: back where the user was if the form was a
    step aside (`step_aside`), else with the conversation cleared.

    FormError if a question's buttons cannot be sent (their callback data over Telegram's 64 bytes).
    """
    for question in questions(form):
        if question.inline and question.choices:
            try:
                Choice.of(question, len(question.choices) - 1).pack()  # the longest of its buttons' data
            except ValueError:
                msg = (
                    f"{form.__name__}.{question.key}: its buttons' callback data is over Telegram's 64 bytes: "
                    "shorten the form's class name or the question's name"
                )
                raise FormError(msg) from None

    @router.message(StateFilter(form), F.text, ~F.text.startswith("/"))
    async def take_answer(
        message: Message, state: FSMContext, raw_state: str | None, event_from_user: User, responses: ResponseStore
    ) -> SendMessage:
        question = question_at(raw_state)
        assert question is not None  # the filter let in the form's states only
        try:
            answer = question.read((message.text or "").strip())
        except InvalidAnswer as problem:
            return ask(message, question, str(problem))
        return await take(question, answer, message, state, event_from_user, responses)

    @router.callback_query(StateFilter(form), Choice.filter())
    async def take_press(
        callback: CallbackQuery,
        callback_data: Choice,
        state: FSMContext,
        raw_state: str | None,
        event_from_user: User,
        responses: ResponseStore,
    ) -> list[TelegramMethod[Any]]:
        """A press on the current question's button: the spinner stopped and the next step, from one update."""
        question = question_at(raw_state)
        assert question is not None
        if callback.message is None:  # a button of a message sent in inline mode: not this bot's flow
            return [callback.answer()]
        if not callback_data.is_for(question):
            return [callback.answer("That button belongs to an earlier question."), ask_in(callback.message, question)]
        try:
            answer = question.read(question.choices[callback_data.index])
        except InvalidAnswer as problem:  # a choice its own reader refuses: the question's definition is at fault
            return [callback.answer(str(problem), show_alert=True), ask_in(callback.message, question)]
        step = await take(question, answer, callback.message, state, event_from_user, responses)
        return [callback.answer(), step]

    async def take(
        question: Question,
        answer: Answer,
        message: Message | InaccessibleMessage,
        state: FSMContext,
        user: User,
        responses: ResponseStore,
    ) -> SendMessage:
        """Keep `answer` to `question` (given in, or under, `message`); the next question, or the summary."""
        await state.update_data({question.key: answer})
        following = next_question(question)
        if following is not None:
            await state.set_state(following)
            return ask_in(message, following, thanks_for(question, answer))
        # The last answer. Only the questions' own answers are saved, never other keys of the data.
        data = await state.get_data()
        answers = {asked.key: data[asked.key] for asked in questions(form) if asked.key in data}
        # Saved with the state that follows, in one commit (bot/outbox.py), before the summary goes out.
        await save_response(state, responses, message, user, form_kind(form), answers)
        if data.get(RETURN_TO):
            return await come_back(message, state, summary(answers))
        await state.clear()
        return say_in(message, summary(answers))


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
            buttons.button(text=choice, callback_data=Choice.of(question, index))
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


async def come_back(message: Message | InaccessibleMessage, state: FSMContext, preface: str) -> SendMessage:
    """Put the user back where they were before `step_aside`, and say so: `preface`, then their question, if any."""
    was = (await state.get_data()).get(RETURN_TO) or {}
    await state.set_state(was.get("state"))
    await state.set_data(was.get("data") or {})
    question = question_at(was.get("state"))
    if question is not None:
        return ask_in(message, question, preface)
    return say_in(message, preface)


def say_in(where: Message | InaccessibleMessage, text: str) -> SendMessage:
    """`text` into the chat (and forum topic) of `where`, any keyboard taken away."""
    thread = where.message_thread_id if isinstance(where, Message) and where.is_topic_message else None
    return SendMessage(chat_id=where.chat.id, text=text, reply_markup=ReplyKeyboardRemove(), message_thread_id=thread)


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
