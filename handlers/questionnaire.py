"""The questionnaire: name, age, favourite colour.

Handlers return their reply instead of sending it: bot/apply_once.py saves
the state change first, then sends the reply, so a user is told an answer
was taken only once it is saved.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from aiogram import F, Router, html
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State
from aiogram.methods import SendMessage
from aiogram.types import KeyboardButton, Message, ReplyKeyboardMarkup, ReplyKeyboardRemove, User

from states import Questionnaire
from storage import CompletedResponse, ResponseStore

router = Router(name=__name__)

RESPONSE_ID = "response_id"
MAX_TEXT_LENGTH = 64
MIN_AGE, MAX_AGE = 1, 120
COLOURS = ("Red", "Orange", "Yellow", "Green", "Blue", "Purple")

QUESTIONS: dict[State, str] = {
    Questionnaire.name: "What is your name?",
    Questionnaire.age: "How old are you?",
    Questionnaire.colour: "What is your favourite colour? Pick one below or type your own.",
}


def colour_keyboard() -> ReplyKeyboardMarkup:
    rows = [COLOURS[i : i + 3] for i in range(0, len(COLOURS), 3)]
    return ReplyKeyboardMarkup(
        keyboard=[[KeyboardButton(text=colour) for colour in row] for row in rows],
        resize_keyboard=True,
        one_time_keyboard=True,
        input_field_placeholder="Your favourite colour",
    )


def ask(message: Message, question: State, preface: str = "") -> SendMessage:
    """The question for `question`, after an optional reason or greeting."""
    keyboard = colour_keyboard() if question == Questionnaire.colour else ReplyKeyboardRemove()
    text = f"{preface}\n\n{QUESTIONS[question]}" if preface else QUESTIONS[question]
    return message.answer(text, reply_markup=keyboard)


async def start_questionnaire(message: Message, state: FSMContext) -> SendMessage:
    await state.set_state(Questionnaire.name)
    # The id the completed response will be saved under: a resend after a failure cannot save it twice.
    await state.set_data({RESPONSE_ID: uuid.uuid4().hex})
    return ask(message, Questionnaire.name, "Hi! Three quick questions. Send /cancel at any time to stop.")


def short_text_problem(text: str, what: str) -> str | None:
    """Why `text` is not an acceptable short answer, or None when it is."""
    if not text:
        return f"The {what} can't be empty."
    if len(text) > MAX_TEXT_LENGTH:
        return f"That's {len(text)} characters; please keep the {what} to {MAX_TEXT_LENGTH}."
    return None


@router.message(Questionnaire.name, F.text, ~F.text.startswith("/"))
async def take_name(message: Message, state: FSMContext) -> SendMessage:
    name = (message.text or "").strip()
    if problem := short_text_problem(name, "name"):
        return ask(message, Questionnaire.name, problem)
    await state.update_data(name=name)
    await state.set_state(Questionnaire.age)
    return ask(message, Questionnaire.age, f"Nice to meet you, {html.quote(name)}!")


@router.message(Questionnaire.age, F.text, ~F.text.startswith("/"))
async def take_age(message: Message, state: FSMContext) -> SendMessage:
    text = (message.text or "").strip()
    if not re.fullmatch(r"\d{1,3}", text, flags=re.ASCII):
        return ask(message, Questionnaire.age, "Please send your age as a whole number, like 30.")
    age = int(text)
    if not MIN_AGE <= age <= MAX_AGE:
        return ask(message, Questionnaire.age, f"The age must be between {MIN_AGE} and {MAX_AGE}.")
    await state.update_data(age=age)
    await state.set_state(Questionnaire.colour)
    return ask(message, Questionnaire.colour)


@router.message(Questionnaire.colour, F.text, ~F.text.startswith("/"))
async def take_colour(
    message: Message, state: FSMContext, event_from_user: User, responses: ResponseStore
) -> SendMessage:
    colour = (message.text or "").strip()
    if problem := short_text_problem(colour, "colour"):
        return ask(message, Questionnaire.colour, problem)
    data = await state.get_data()
    answers = {name: value for name, value in data.items() if name != RESPONSE_ID} | {"colour": colour}
    # Saved before the cleared state is written (after this returns): a failure in between
    # leaves the user at the last question, and the colour again saves under the same id, once.
    await responses.save(
        CompletedResponse(
            # Sessions started before response ids existed get one now.
            response_id=data.get(RESPONSE_ID) or uuid.uuid4().hex,
            user_id=event_from_user.id,
            chat_id=message.chat.id,
            answers=answers,
            completed_at=datetime.now(UTC),
        )
    )
    await state.clear()
    return message.answer(summary(answers), reply_markup=ReplyKeyboardRemove())


def summary(answers: dict[str, object]) -> str:
    name, age, colour = (html.quote(str(answers.get(key, "?"))) for key in ("name", "age", "colour"))
    return (
        f"Thank you, {name}! Here is what I saved:\n"
        f"• Name: <b>{name}</b>\n"
        f"• Age: <b>{age}</b>\n"
        f"• Favourite colour: <b>{colour}</b>\n\n"
        "Send /start to fill it in again."
    )


@router.message(StateFilter(Questionnaire))
async def reprompt(message: Message, raw_state: str | None) -> SendMessage:
    """Anything the current question can't use: a photo, a sticker, an unknown command."""
    question = next(state for state in QUESTIONS if state.state == raw_state)
    if message.text:
        reason = f"I don't know the command {html.quote(message.text.split()[0])}. Send /cancel to stop."
    else:
        reason = "I can only read text here."
    return ask(message, question, reason)
