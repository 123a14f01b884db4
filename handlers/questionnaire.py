"""The questionnaire's flow: /start asks the first question, each answer is read and checked, the last one sums up.

The questions themselves are in states/questionnaire.py; this module asks
them in that order. Handlers return their reply instead of sending it:
bot/apply_once.py commits the state change with the reply, and
bot/delivery.py sends it after, so a user is told an answer was taken only
once it is saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiogram import F, Router, html
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.methods import SendMessage, TelegramMethod
from aiogram.types import CallbackQuery, InaccessibleMessage, Message, ReplyKeyboardRemove, User

from handlers.forms import Choice, ask, ask_in, begin, save_response, thanks_for
from states import Answer, InvalidAnswer, Question, Questionnaire, next_question, question_at, questions
from storage import ResponseStore
from storage.interface import QUESTIONNAIRE_KIND

router = Router(name=__name__)

KIND = QUESTIONNAIRE_KIND  # what its completed responses are saved as ("questionnaire")
NUMBERS = ("no", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten")


def how_many() -> str:
    """ "Three quick questions", for as many questions as there are."""
    count = len(questions(Questionnaire))
    number = NUMBERS[count] if count < len(NUMBERS) else str(count)
    return f"{number} quick question{'s' if count != 1 else ''}"


async def start_questionnaire(message: Message, state: FSMContext) -> SendMessage:
    first = questions(Questionnaire)[0]
    await begin(state, first)
    return ask(message, first, f"Hi! {how_many()}. Send /cancel at any time to stop.")


@router.message(StateFilter(Questionnaire), F.text, ~F.text.startswith("/"))
async def take_answer(
    message: Message, state: FSMContext, raw_state: str | None, event_from_user: User, responses: ResponseStore
) -> SendMessage:
    question = question_at(raw_state)
    assert question is not None  # the filter let in the questionnaire's states only
    try:
        answer = question.read((message.text or "").strip())
    except InvalidAnswer as problem:
        return ask(message, question, str(problem))
    return await take(question, answer, message, state, event_from_user, responses)


@router.callback_query(StateFilter(Questionnaire), Choice.filter())
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
    if callback_data.question != question.key or not 0 <= callback_data.index < len(question.choices):
        return [callback.answer("That button belongs to an earlier question."), ask_in(callback.message, question)]
    answer = question.read(question.choices[callback_data.index])
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
    answers = {asked.key: data[asked.key] for asked in questions(Questionnaire) if asked.key in data}
    # Saved with the cleared state, in one commit (bot/outbox.py), before the summary goes out.
    await save_response(state, responses, message, user, KIND, answers)
    await state.clear()
    return SendMessage(chat_id=message.chat.id, text=summary(answers), reply_markup=ReplyKeyboardRemove())


def summary(answers: Mapping[str, object]) -> str:
    lines = [
        f"• {asked.label}: <b>{html.quote(str(answers.get(asked.key, '?')))}</b>" for asked in questions(Questionnaire)
    ]
    return "Thank you! Here is what I saved:\n" + "\n".join(lines) + "\n\nSend /start to fill it in again."
