"""Deliver an update's reply after its effects are committed, however long Telegram makes us wait.

Handlers return their reply; `ApplyOnce` commits the update's effects (the
reply among them) and hands the reply back, out of the Dispatcher. No lock
and no database connection is held from here on: `handle_update` only sends.

- A 429 closes `FloodGate` for the whole bot for its `retry_after`: no request
  (getUpdates aside) goes out before then; each fails at once, without
  reaching Telegram, and `deliver` waits it out.
- A 5xx, a network error or a stall is tried again with a growing delay. A
  stalled request may have reached Telegram, so the user can see a reply
  twice; never none.
- `deliver` gives up only after `patience` seconds (webhook mode: Telegram
  posts the update again later, and the redelivered update sends the saved
  reply); polling waits for as long as it takes, keeping the chat's later
  updates behind this one (bot/polling.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramEntityTooLarge, TelegramNetworkError, TelegramRetryAfter, TelegramServerError
from aiogram.methods import GetUpdates, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.utils.backoff import Backoff, BackoffConfig

from bot.metrics import measure_update, waiting_reply

if TYPE_CHECKING:
    from aiogram import Bot, Dispatcher
    from aiogram.methods import Response
    from aiogram.types import Update

logger = logging.getLogger(__name__)

# What Telegram may answer for now and accept later: the update is kept, never confirmed as done.
TELEGRAM_FAULTS = (TelegramRetryAfter, TelegramServerError, TelegramNetworkError)
RESEND_BACKOFF = BackoffConfig(min_delay=0.5, max_delay=30.0, factor=2.0, jitter=0.1)


def refused_for_now(error: BaseException) -> bool:
    """Telegram refused or did not answer, and may take the same request later.

    A request too large (413; aiogram makes it a network error) never goes through.
    """
    return isinstance(error, TELEGRAM_FAULTS) and not isinstance(error, TelegramEntityTooLarge)


class FloodGate(BaseRequestMiddleware):
    """Telegram's 429 honoured for the whole bot: nothing is sent until its `retry_after` has passed."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self.closed_until = 0.0

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        if method.__api_method__ == GetUpdates.__api_method__:  # fetching is not flood-limited
            return await make_request(bot, method)
        wait = self.closed_until - self.clock()
        if wait > 0:
            raise TelegramRetryAfter(
                method=method, message="Flood control (the bot waits)", retry_after=math.ceil(wait)
            )
        try:
            return await make_request(bot, method)
        except TelegramRetryAfter as error:
            self.closed_until = max(self.closed_until, self.clock() + error.retry_after)
            logger.warning("Telegram asks the bot to wait %s s before sending again", error.retry_after)
            raise


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


@measure_update  # metrics: the update's outcome and handling time
async def handle_update(
    dispatcher: Dispatcher, bot: Bot, update: Update, patience: float | None = None, **kwargs: Any
) -> None:
    """Handle `update` (its effects committed by ApplyOnce), then deliver what the handler returned."""
    reply = await dispatcher.feed_update(bot, update, **kwargs)
    if isinstance(reply, TelegramMethod):
        await deliver(bot, reply, patience)
