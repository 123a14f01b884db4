"""What the user hears when handling their message failed: nothing is dropped silently."""

from __future__ import annotations

import logging

from aiogram import Bot, Dispatcher, F, Router
from aiogram.dispatcher.middlewares.user_context import EventContext
from aiogram.exceptions import TelegramNetworkError, TelegramServerError
from aiogram.filters import ExceptionTypeFilter
from aiogram.fsm.context import FSMContext
from aiogram.types import ErrorEvent, Message, ReplyKeyboardRemove

from storage import CorruptDataError, StorageUnavailableError

logger = logging.getLogger(__name__)
router = Router(name=__name__)

SEND_AGAIN = "I couldn't save that just now. Please send it again in a moment."
START_OVER = "Sorry, I lost track of our conversation. Send /start to begin again."
SOMETHING_WENT_WRONG = "Sorry, something went wrong on my side. Please try again."


@router.error(ExceptionTypeFilter(StorageUnavailableError), F.update.message.as_("message"))
async def database_unavailable(event: ErrorEvent, message: Message) -> None:
    # The answer was not saved, so the user must know to send it again.
    logger.warning("Update %s not saved, the user is asked to resend: %s", event.update.update_id, event.exception)
    await message.answer(SEND_AGAIN)


@router.error(ExceptionTypeFilter(CorruptDataError), F.update.message.as_("message"))
async def corrupt_session(
    event: ErrorEvent, message: Message, bot: Bot, dispatcher: Dispatcher, event_context: EventContext
) -> None:
    """Stored data this bot did not write: reset this user's session only."""
    logger.warning("Resetting the session of chat %s: %s", event_context.chat_id, event.exception)
    # The same key the FSM middleware used (its strategy decides, e.g. one key per user in a forum).
    context = dispatcher.fsm.resolve_context(
        bot,
        chat_id=event_context.chat_id,
        user_id=event_context.user_id,
        thread_id=event_context.thread_id,
        business_connection_id=event_context.business_connection_id,
    )
    if context is not None:
        # Error handlers run after the user's turn has ended: take it again, and
        # reset only if no later message (a /start) has already replaced the data.
        async with dispatcher.fsm.events_isolation.lock(context.key):
            if await is_corrupt(context):
                await context.clear()
    await message.answer(START_OVER, reply_markup=ReplyKeyboardRemove())


async def is_corrupt(context: FSMContext) -> bool:
    try:
        await context.get_state()
        await context.get_data()
    except CorruptDataError:
        return True
    return False


# Telegram unreachable: an answer would fail as well. The update stays unconfirmed
# and Telegram delivers it again (bot/polling.py), so nothing is said now.
@router.error(~ExceptionTypeFilter(TelegramNetworkError, TelegramServerError), F.update.message.as_("message"))
async def unexpected_error(event: ErrorEvent, message: Message) -> None:
    logger.error("Update %s failed", event.update.update_id, exc_info=event.exception)
    await message.answer(SOMETHING_WENT_WRONG)
