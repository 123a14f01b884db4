"""bot/delivery.py: a reply Telegram refuses for now is sent later, and a 429 holds the whole bot back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramEntityTooLarge, TelegramNetworkError, TelegramRetryAfter, TelegramServerError
from aiogram.methods import GetUpdates, SendMessage, TelegramMethod
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.delivery import FloodGate, deliver
from tests.support.backends import TOKEN


class Failing:
    """A request chain that raises `errors` in turn, then answers True; it counts the calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self, bot: Bot, method: TelegramMethod[Any]) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return True


SEND = SendMessage(chat_id=1, text="hello")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_429_holds_back_every_request_until_its_retry_after_has_passed() -> None:
    clock = Clock()
    gate = FloodGate(clock)
    chain = Failing(TelegramRetryAfter(method=SEND, message="Too Many Requests", retry_after=45))
    with pytest.raises(TelegramRetryAfter):
        await gate(chain, Bot(TOKEN), SEND)
    clock.now += 44
    other = SendMessage(chat_id=2, text="another chat")
    with pytest.raises(TelegramRetryAfter) as held:
        await gate(chain, Bot(TOKEN), other)
    assert held.value.retry_after == 1
    assert chain.calls == 1, "a request sent during the flood wait reached Telegram"
    # Fetching updates is not flood-limited.
    answered: Any = await gate(chain, Bot(TOKEN), GetUpdates())
    assert answered is True
    clock.now += 1
    answered = await gate(chain, Bot(TOKEN), other)
    assert answered is True


@pytest.mark.parametrize(
    "error",
    [
        TelegramServerError(method=SEND, message="Bad Gateway"),
        TelegramRetryAfter(method=SEND, message="Too Many Requests", retry_after=0),
        TelegramNetworkError(method=SEND, message="Request timeout error"),
    ],
    ids=["5xx", "429", "stall"],
)
async def test_a_reply_telegram_refused_for_now_is_sent_later(
    error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = Failing(error, error)
    bot = Bot(TOKEN)
    monkeypatch.setattr(bot.session, "make_request", lambda *_, **__: None)
    bot.session.middleware(lambda make_request, bot, method: chain(bot, method))
    await deliver(bot, SEND)
    assert chain.calls == 3


async def test_delivery_gives_up_after_its_patience_so_the_update_is_posted_again() -> None:
    bot = Bot(TOKEN)
    chain = Failing(TelegramRetryAfter(method=SEND, message="Too Many Requests", retry_after=60))
    bot.session.middleware(lambda make_request, bot, method: chain(bot, method))
    with pytest.raises(TelegramRetryAfter):
        await deliver(bot, SEND, patience=10)
    assert chain.calls == 1


async def test_a_request_too_large_is_not_sent_again() -> None:
    """aiogram makes a 413 a network error; it never goes through, so it is not retried (its chat would wait)."""
    bot = Bot(TOKEN)
    chain = Failing(TelegramEntityTooLarge(method=SEND, message="Request Entity Too Large"))
    bot.session.middleware(lambda make_request, bot, method: chain(bot, method))
    with pytest.raises(TelegramEntityTooLarge):
        await deliver(bot, SEND)
    assert chain.calls == 1


async def test_patience_bounds_a_request_that_stalls() -> None:
    """A webhook's delivery gives up within its patience even when Telegram never answers the request."""
    stalled = asyncio.Event()

    async def never_answers(request: web.Request) -> web.Response:
        stalled.set()
        await asyncio.sleep(60)
        return web.json_response({"ok": True, "result": True})

    app = web.Application()
    app.router.add_route("*", "/bot{token}/{method}", never_answers)
    async with TestServer(app) as server:
        session = AiohttpSession(api=TelegramAPIServer.from_base(str(server.make_url(""))))
        bot = Bot(TOKEN, session=session)
        try:
            started = time.monotonic()
            with pytest.raises(TelegramNetworkError):
                await deliver(bot, SEND, patience=2)
            assert stalled.is_set()
            assert time.monotonic() - started < 10, "the stalled request held the delivery past its patience"
        finally:
            await session.close()
