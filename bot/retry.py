"""Retry the bot's own requests when Telegram says "later" (429) or stumbles (5xx, network)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramNetworkError, TelegramRetryAfter, TelegramServerError
from aiogram.methods import GetUpdates, TelegramMethod
from aiogram.methods.base import TelegramType

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import Response

logger = logging.getLogger(__name__)


# Requests that change nothing a user sees: sending one twice is harmless.
SAFE_TO_REPEAT = frozenset({"getMe", "setMyCommands", "deleteWebhook", "setWebhook", "getWebhookInfo"})


class RetryRequests(BaseRequestMiddleware):
    """Up to `attempts` tries: wait `retry_after` on 429 (if at most `max_wait` s), back off on 5xx.

    Only what Telegram refused is sent again. A network error (a timeout) may
    come after Telegram delivered the message, so a message is not resent
    then: the user would see it twice. getUpdates is left alone: aiogram's
    polling loop has its own backoff.
    """

    def __init__(self, attempts: int = 3, max_wait: float = 30.0, backoff: float = 0.5) -> None:
        self.attempts, self.max_wait, self.backoff = attempts, max_wait, backoff

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        if method.__api_method__ == GetUpdates.__api_method__:
            return await make_request(bot, method)
        for attempt in range(1, self.attempts + 1):
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as error:
                if attempt == self.attempts or error.retry_after > self.max_wait:
                    raise
                delay: float = error.retry_after
            except (TelegramServerError, TelegramNetworkError) as error:
                refused = isinstance(error, TelegramServerError)
                if attempt == self.attempts or not (refused or method.__api_method__ in SAFE_TO_REPEAT):
                    raise
                delay = self.backoff * 2 ** (attempt - 1)
            logger.warning(
                "%s failed (try %d of %d); retrying in %.1f s",
                method.__api_method__,
                attempt,
                self.attempts,
                delay,
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
