"""bot/delivery.py and the outbox's flood control: what Telegram refuses now goes later; a 429 holds its chat."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramEntityTooLarge, TelegramNetworkError, TelegramRetryAfter, TelegramServerError
from aiogram.methods import SendMessage, TelegramMethod
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.delivery import deliver
from bot.outbox import FloodControl
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


def test_a_429_holds_back_only_the_chat_it_was_for() -> None:
    clock = Clock()
    flood = FloodControl(clock=clock)
    flood.took(1)
    flood.refused(1, 45)
    clock.now += 44
    assert flood.wait_for(1) == pytest.approx(1)
    assert flood.wait_for(2) == 0, "another chat was held back by chat 1's flood wait"
    assert flood.wait_for(None) == 0
    clock.now += 1
    assert flood.wait_for(1) == 0


def test_429s_for_several_chats_at_once_hold_back_the_bot_for_the_shortest_wait() -> None:
    clock = Clock()
    flood = FloodControl(clock=clock)
    for chat, wait in ((1, 30), (2, 5), (3, 60)):
        flood.refused(chat, wait)
    assert flood.wait_for(4) == pytest.approx(5)
    assert flood.wait_for(None) == pytest.approx(5)
    clock.now += 5
    assert flood.wait_for(4) == 0
    assert flood.wait_for(3) == pytest.approx(55)


def test_429s_for_chats_far_apart_hold_back_only_their_chats() -> None:
    clock = Clock()
    flood = FloodControl(clock=clock)
    for chat in (1, 2, 3):
        flood.refused(chat, 30)
        clock.now += 2
    assert flood.wait_for(4) == 0


@pytest.mark.parametrize(("chat", "limit", "period"), [(7, 3, 3.0), (-100, 20, 60.0)], ids=["private chat", "group"])
def test_sends_are_paced_under_the_chat_and_group_limits(chat: int, limit: int, period: float) -> None:
    clock = Clock()
    flood = FloodControl(chat_burst=3, group_per_minute=20, clock=clock)
    for _ in range(limit):
        assert flood.wait_for(chat) == 0
        flood.took(chat)
    assert flood.wait_for(chat) == pytest.approx(period, abs=0.2)
    assert flood.wait_for(chat + 1) == 0
    clock.now += period + 0.2
    assert flood.wait_for(chat) == 0


def test_sends_are_paced_under_the_bot_limit() -> None:
    clock = Clock()
    flood = FloodControl(chat_burst=3, bot_per_second=30, clock=clock)
    for chat in range(30):
        assert flood.wait_for(chat) == 0
        flood.took(chat)
    assert flood.wait_for(99) == pytest.approx(1.0, abs=0.2)
    assert flood.wait_for(None) == 0  # a call into no chat (answerCallbackQuery) is not a message


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
