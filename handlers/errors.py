"""What the user hears when handling their update failed: nothing is dropped silently.

Error handlers return their reply, as the other handlers do: it goes out the
same way, after the update, in the chat's order (bot/delivery.py). A failed
message or edited message gets a message; a failed button press gets an
answer to its callback query (the button's spinner stops, with the text).

Telegram refusing or not answering (429, 5xx, a network error) is no error
of the update: it is left to the runner, which delivers it again later.
"""

from __future__ import annotations

import logging
from typing import Any

from aiogram import Bot, Dispatcher, F, Router
from aiogram.dispatcher.middlewares.user_context import EventContext
from aiogram.filters import ExceptionTypeFilter
from aiogram.fsm.context import FSMContext
from aiogram.methods import TelegramMethod
from aiogram.types import ErrorEvent, ReplyKeyboardRemove

from bot.delivery import refused_for_now
from storage import CorruptDataError, StorageUnavailableError

logger = logging.getLogger(__name__)
router = Router(name=__name__)

SEND_AGAIN = "I couldn't save that just now. Please send it again in a moment."
START_OVER = "Sorry, I lost track of our conversation. Send /start to begin again."
SOMETHING_WENT_WRONG = "Sorry, something went wrong on my side. Please try again."


def apology(event: ErrorEvent, text: str, **message_options: Any) -> TelegramMethod[Any] | None:
    """`text` to whoever sent the failed update: a message, or an alert on the button they pressed."""
    update = event.update
    if update.callback_query is not None:
        return update.callback_query.answer(text, show_alert=True)
    message = update.message or update.edited_message
    if message is not None:
        return message.answer(text, **message_options)
    return None


@router.error(ExceptionTypeFilter(StorageUnavailableError))
async def database_unavailable(event: ErrorEvent) -> TelegramMethod[Any] | None:
    # The answer was not saved, so the user must know to send it again.
    logger.warning("Update %s not saved, the user is asked to resend: %s", event.update.update_id, event.exception)
    return apology(event, SEND_AGAIN)


@router.error(ExceptionTypeFilter(CorruptDataError))
async def corrupt_session(
    event: ErrorEvent, bot: Bot, dispatcher: Dispatcher, event_context: EventContext
) -> TelegramMethod[Any] | None:
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
    return apology(event, START_OVER, reply_markup=ReplyKeyboardRemove())


async def is_corrupt(context: FSMContext) -> bool:
    try:
        await context.get_state()
        await context.get_data()
    except CorruptDataError:
        return True
    return False


# Telegram refusing for now: an answer would fail as well. The update stays
# unconfirmed and is delivered again (bot/polling.py, bot/webhook.py), so nothing is said now.
@router.error(~F.exception.func(refused_for_now))
async def unexpected_error(event: ErrorEvent) -> TelegramMethod[Any] | None:
    logger.error("Update %s failed", event.update.update_id, exc_info=event.exception)
    return apology(event, SOMETHING_WENT_WRONG)
