"""Telegram's faults, told apart, and `deliver`: one call made for as long as Telegram refuses it for now.

Start-up's calls (getMe, setWebhook, setMyCommands) go through `deliver`; what
updates send goes through the outbox's courier (bot/outbox.py), which uses the
same distinction: a 429, a 5xx, a network error or a stall may be taken later;
anything else Telegram refuses (a blocked bot, a bad request, 413) never will.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

from aiogram.exceptions import TelegramEntityTooLarge, TelegramNetworkError, TelegramRetryAfter, TelegramServerError
from aiogram.methods import TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.utils.backoff import Backoff, BackoffConfig

from bot.metrics import waiting_reply

if TYPE_CHECKING:
    from aiogram import Bot

logger = logging.getLogger(__name__)

# What Telegram may answer for now and accept later: the update is kept, never confirmed as done.
TELEGRAM_FAULTS = (TelegramRetryAfter, TelegramServerError, TelegramNetworkError)
RESEND_BACKOFF = BackoffConfig(min_delay=0.5, max_delay=30.0, factor=2.0, jitter=0.1)


def refused_for_now(error: BaseException) -> bool:
    """Telegram refused or did not answer, and may take the same request later.

    A request too large (413; aiogram makes it a network error) never goes through.
    """
    return isinstance(error, TELEGRAM_FAULTS) and not isinstance(error, TelegramEntityTooLarge)


@waiting_reply  # metrics: a reply waiting on Telegram
async def deliver(bot: Bot, reply: TelegramMethod[TelegramType], patience: float | None = None) -> TelegramType:
    """Send `reply`, trying again while Telegram refuses it for now; raise once `patience` s have passed.

    Within `patience`, a request that stalls is given up when its time is out too.
    """
    backoff = Backoff(RESEND_BACKOFF)
    deadline = None if patience is None else time.monotonic() + patience
    while True:
        try:
            if deadline is None:
                return await bot(reply)
            return await bot(reply, request_timeout=max(1, math.ceil(deadline - time.monotonic())))
        except TELEGRAM_FAULTS as error:
            if not refused_for_now(error):
                raise
            refused = error
        delay = max(refused.retry_after, 0.1) if isinstance(refused, TelegramRetryAfter) else next(backoff)
        if deadline is not None and time.monotonic() + delay > deadline:
            raise refused
        logger.info("%s not delivered yet; trying again in %.1f s", reply.__api_method__, delay)
        await asyncio.sleep(delay)
