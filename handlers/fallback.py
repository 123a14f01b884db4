"""Catch-alls, included last: messages outside any flow, and states no handler knows."""

from __future__ import annotations

import logging

from aiogram import Router
from aiogram.filters import StateFilter
from aiogram.fsm.context import FSMContext
from aiogram.methods import SendMessage
from aiogram.types import Message, ReplyKeyboardRemove

from handlers.errors import START_OVER
from states import is_defined

logger = logging.getLogger(__name__)
router = Router(name=__name__)

CANNOT_USE = "I can't use that here. Send /cancel to stop, or /help to learn more."


@router.message(StateFilter(None))
async def outside_the_flow(message: Message) -> SendMessage:
    return message.answer("Send /start to fill in the questionnaire, or /help to learn more.")


@router.message()
async def unknown_state(message: Message, state: FSMContext, raw_state: str | None) -> SendMessage:
    """A state of this bot that no handler took the message in; or one from an older version, or written by hand."""
    if raw_state is not None and is_defined(raw_state):
        return message.answer(CANNOT_USE)
    logger.warning("Resetting chat %s from unknown state %r", message.chat.id, raw_state)
    await state.clear()
    return message.answer(START_OVER, reply_markup=ReplyKeyboardRemove())
