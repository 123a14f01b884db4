"""The polling loop against the Bot API emulator: what it confirms, what it starts, how it stops."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest_asyncio
from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.types import Message

from bot.emulator import BotAPIEmulator, running_emulator
from bot.polling import Poller


class SlowBot:
    """A dispatcher whose handler for "slow" waits until released; every start is counted."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: Counter[str] = Counter()
        self.finished: list[str] = []
        router = Router(name="slow")
        router.message(F.text)(self.handle)
        self.dispatcher = Dispatcher()
        self.dispatcher.include_router(router)

    async def handle(self, message: Message) -> None:
        text = message.text or ""
        self.started[text] += 1
        if text == "slow":
            await self.release.wait()
        self.finished.append(text)


@pytest_asyncio.fixture
async def emulated() -> AsyncIterator[tuple[BotAPIEmulator, Bot]]:
    async with running_emulator() as (emulator, api_url):
        session = AiohttpSession(api=TelegramAPIServer.from_base(api_url))
        bot = Bot(emulator.token, session=session)
        yield emulator, bot
        await session.close()


def poll(bot: Bot, slow: SlowBot, shutdown_timeout: float) -> tuple[Poller, asyncio.Task[None]]:
    poller = Poller(bot, slow.dispatcher, shutdown_timeout=shutdown_timeout)
    return poller, asyncio.create_task(poller.run())


async def a_slow_update_running(emulator: BotAPIEmulator, slow: SlowBot) -> None:
    await emulator.user_sends(1, {"text": "slow"})
    await eventually(lambda: slow.started["slow"] == 1)


async def eventually(condition: Callable[[], bool], seconds: float = 10) -> None:
    """Wait until `condition()` holds; the handlers and the emulator change it as they run."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - several objects change it, no one event
            await asyncio.sleep(0.02)


async def test_a_slow_update_is_started_once_and_holds_back_only_the_confirmation(
    emulated: tuple[BotAPIEmulator, Bot],
) -> None:
    emulator, bot = emulated
    slow = SlowBot()
    poller, polling = poll(bot, slow, shutdown_timeout=5)
    await a_slow_update_running(emulator, slow)
    for n in range(3):
        await emulator.user_sends(2, {"text": f"fast {n}"})
    await eventually(lambda: len(slow.finished) == 3)

    assert len(emulator.updates) == 4  # nothing confirmed past the running one
    assert slow.started["slow"] == 1  # though getUpdates returned it again and again

    slow.release.set()
    await eventually(lambda: not emulator.updates)
    poller.stop()
    await polling


async def test_a_stop_waits_for_running_handlers_and_confirms_them(emulated: tuple[BotAPIEmulator, Bot]) -> None:
    emulator, bot = emulated
    slow = SlowBot()
    poller, polling = poll(bot, slow, shutdown_timeout=10)
    await a_slow_update_running(emulator, slow)

    poller.stop()
    await asyncio.sleep(0.2)
    assert not polling.done()  # still waiting for the handler
    slow.release.set()
    await polling

    assert slow.finished == ["slow"]
    assert emulator.updates == []


async def test_what_does_not_finish_in_time_is_left_for_the_next_start(emulated: tuple[BotAPIEmulator, Bot]) -> None:
    emulator, bot = emulated
    slow = SlowBot()
    poller, polling = poll(bot, slow, shutdown_timeout=0.2)
    await emulator.user_sends(1, {"text": "slow"})
    await emulator.user_sends(2, {"text": "after"})  # another chat: not held back by the slow one
    await eventually(lambda: slow.finished == ["after"])

    poller.stop()
    await polling

    assert [update["message"]["text"] for update in emulator.updates] == ["slow", "after"]
    slow.release.set()
    again = SlowBot()
    again.release.set()
    poller, polling = poll(bot, again, shutdown_timeout=5)
    await eventually(lambda: "slow" in again.finished)
    poller.stop()
    await polling
    assert emulator.updates == []


async def test_a_chats_later_update_waits_for_its_earlier_one(emulated: tuple[BotAPIEmulator, Bot]) -> None:
    """Per-chat order: the chat's second message starts only once its first is done; other chats go on."""
    emulator, bot = emulated
    slow = SlowBot()
    poller, polling = poll(bot, slow, shutdown_timeout=5)
    await emulator.user_sends(1, {"text": "slow"}, {"text": "then this"})
    await emulator.user_sends(2, {"text": "another chat"})
    await eventually(lambda: slow.finished == ["another chat"])
    await asyncio.sleep(0.3)
    assert slow.started["then this"] == 0
    slow.release.set()
    await eventually(lambda: slow.finished == ["another chat", "slow", "then this"])
    poller.stop()
    await polling


async def test_a_second_stop_does_not_wait(emulated: tuple[BotAPIEmulator, Bot]) -> None:
    emulator, bot = emulated
    slow = SlowBot()
    poller, polling = poll(bot, slow, shutdown_timeout=60)
    await a_slow_update_running(emulator, slow)

    poller.stop()
    await asyncio.sleep(0.1)
    poller.stop()
    async with asyncio.timeout(5):
        await polling
    assert len(emulator.updates) == 1
