"""Run the bot by long polling until SIGINT or SIGTERM."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiogram import Bot, Dispatcher
from aiogram.exceptions import TelegramNetworkError, TelegramServerError, TelegramUnauthorizedError

from bot.setup import create_bot, create_dispatcher
from config import Settings
from handlers.common import COMMANDS
from storage import SchemaError, StorageUnavailableError, create_storages

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """The bot cannot start; the message says why and what to change."""


async def run_polling(settings: Settings) -> None:
    async with running_bot(settings) as (bot, dispatcher):
        await start_polling(bot, dispatcher)


async def start_polling(bot: Bot, dispatcher: Dispatcher) -> None:
    """Poll until SIGINT, SIGTERM or `dispatcher.stop_polling()`."""
    await dispatcher.start_polling(bot, allowed_updates=dispatcher.resolve_used_update_types())


@asynccontextmanager
async def running_bot(settings: Settings) -> AsyncIterator[tuple[Bot, Dispatcher]]:
    """Storages connected, token checked, commands published; everything closed on exit."""
    try:
        storages = await create_storages(settings)
    except (StorageUnavailableError, SchemaError) as error:
        raise StartupError(str(error)) from None
    bot = create_bot(settings)
    try:
        await introduce(bot)
        yield bot, create_dispatcher(storages.fsm, storages.responses)
    finally:
        await bot.session.close()
        await storages.close()


async def introduce(bot: Bot) -> None:
    """Check the token, switch to polling and publish the command menu."""
    try:
        me = await bot.get_me()
    except TelegramUnauthorizedError:
        msg = "Telegram rejected BOT_TOKEN (401 Unauthorized): copy the token from @BotFather again"
        raise StartupError(msg) from None
    except (TelegramNetworkError, TelegramServerError) as error:
        server = bot.session.api.base.split("/bot")[0]
        reason = type(error).__name__
        msg = f"cannot reach the Bot API at {server} ({reason}): check the network or TELEGRAM_API_URL"
        raise StartupError(msg) from None
    # Updates sent while the bot was down are answered, not dropped.
    await bot.delete_webhook(drop_pending_updates=False)
    await bot.set_my_commands(COMMANDS)
    logger.info("Bot @%s (id %s) is starting", me.username, me.id)
