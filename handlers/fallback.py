"""Catch-alls, included last: what no other handler took, in any state.

Commands and flows come before this router, so a command added in a router
listed before it works in every state, mid-questionnaire included.
"""

from __future__ import annotations

import logging

from aiogram import Router, html
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.methods import AnswerCallbackQuery, SendMessage
from aiogram.types import CallbackQuery, Message, ReplyKeyboardRemove

from handlers.errors import START_OVER
from handlers.forms import ask
from states import is_defined, question_at

logger = logging.getLogger(__name__)
router = Router(name=__name__)

CANNOT_USE = "I can't use that here. Send /cancel to stop, or /help to learn more."
# How much of an unknown command the reply repeats: a command can be a whole message long (4096 characters),
# and the reply, with the question after it, has to fit in one message too.
COMMAND_SHOWN = 50


@router.callback_query()
async def stale_button(callback: CallbackQuery) -> AnswerCallbackQuery:
    """A press no handler took (a button of a question already answered, or of an older version): the
    spinner stops, with the reason."""
    return callback.answer("This button no longer works. Send /start to begin again, or /help.")


@router.message(StateFilter(None))
async def outside_the_flow(message: Message) -> SendMessage:
    return message.answer("Send /start to fill in the questionnaire, or /help to learn more.")


@router.message()
async def in_a_state(message: Message, state: FSMContext, raw_state: str | None) -> SendMessage:
    """A message no handler took: the question again, with the reason; or a reset for a state no form defines."""
    question = question_at(raw_state)
    if question is not None:  # a photo, a sticker, an unknown command: the same question again
        return ask(message, question, why_not(message))
    if raw_state is not None and is_defined(raw_state):
        return message.answer(CANNOT_USE)
    # A state from an older version of the bot, or written by hand.
    logger.warning("Resetting chat %s from unknown state %r", message.chat.id, raw_state)
    await state.clear()
    return message.answer(START_OVER, reply_markup=ReplyKeyboardRemove())


def why_not(message: Message) -> str:
    if not message.text:
        return "I can only read text here."
    if message.text.startswith("/"):
        return f"I don't know the command {shown_command(message.text.split()[0])}. Send /cancel to stop."
    return "I can't use that here."


def shown_command(command: str) -> str:
    """`command` as the reply repeats it: its first COMMAND_SHOWN characters, cut with an ellipsis, HTML-quoted."""
    if len(command) <= COMMAND_SHOWN:
        return html.quote(command)
    return html.quote(command[:COMMAND_SHOWN]) + "…"
