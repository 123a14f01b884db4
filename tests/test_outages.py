"""Outages on the real path: a `python main.py` process whose database or Telegram fails mid-flow.

No acknowledged answer may be lost; an answer that could not be saved is
met with a request to send it again, and the flow goes on once the database
is back.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bot.emulator import BotAPIEmulator, Fault, running_emulator
from handlers.errors import SEND_AGAIN
from tests.support.bot_process import BotProcess
from tests.support.mongo_server import WireProtocolServer
from tests.support.questionnaire import asked, exchanges, replies, typed
from tests.support.tcp_proxy import TcpProxy, proxied

pytestmark = pytest.mark.asyncio(loop_scope="module")
FAILURE_LOG_LINE = "not saved, the user is asked to resend"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def postgres_bot(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[BotProcess, TcpProxy]]:
    """A bot whose PostgreSQL connection runs through a proxy the tests can cut."""
    url = os.environ.get("POSTGRES_TEST_URL")
    if not url:
        pytest.skip("POSTGRES_TEST_URL is not set")
    folder = tmp_path_factory.mktemp("outage-postgres")
    async with (
        proxied(url, 5432) as (proxy, through_proxy),
        running_emulator(BotAPIEmulator()) as (emulator, api_url),
        BotProcess(emulator, api_url, folder / "bot.log", {"DATABASE_URL": through_proxy}) as bot,
    ):
        await bot.start()
        yield bot, proxy
        await bot.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mongo_bot(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[BotProcess, WireProtocolServer]]:
    """A bot on a wire-protocol server of its own, which the test stops and starts."""
    folder = tmp_path_factory.mktemp("outage-mongo")
    with WireProtocolServer(folder) as server:
        env = {"STORAGE": "mongo", "MONGO_URL": server.url, "MONGO_DB": "outage"}
        async with (
            running_emulator(BotAPIEmulator()) as (emulator, api_url),
            BotProcess(emulator, api_url, folder / "bot.log", env) as bot,
        ):
            await bot.start()
            yield bot, server
            await bot.stop()


async def test_postgresql_goes_away_mid_questionnaire(postgres_bot: tuple[BotProcess, TcpProxy]) -> None:
    bot, proxy = postgres_bot
    *before, (last, summary) = exchanges()
    for text, reply in before:
        assert await bot.say(1, text) == [reply]

    proxy.down()
    assert await bot.say(1, last) == [SEND_AGAIN]
    assert bot.output().count(FAILURE_LOG_LINE) == 1

    proxy.up()
    assert await bot.say(1, last) == [summary]


async def test_a_hanging_database_is_given_up_on(postgres_bot: tuple[BotProcess, TcpProxy]) -> None:
    bot, proxy = postgres_bot
    await bot.say(2, "/start")
    proxy.hang()
    try:
        assert await bot.say(2, typed()[0]) == [SEND_AGAIN]
    finally:
        proxy.up()
    assert await bot.say(2, typed()[0]) == [replies()[1]]


async def test_polling_backs_off_on_502_and_recovers(postgres_bot: tuple[BotProcess, TcpProxy]) -> None:
    bot, _ = postgres_bot
    fault = Fault(method="getUpdates", status=502, count=3)
    bot.emulator.faults.append(fault)
    await bot.say(3, "/help")  # answered by the poll already waiting; the next three fail
    while fault.count:  # noqa: ASYNC110 - the bot process is what changes it
        await asyncio.sleep(0.1)
    assert asked()[0].prompt in (await bot.say(3, "/start"))[0]
    assert "getUpdates failed (Telegram server says - Bad Gateway); trying again in" in bot.output()


async def test_sending_waits_out_429_and_retries(postgres_bot: tuple[BotProcess, TcpProxy]) -> None:
    bot, _ = postgres_bot
    bot.emulator.faults.append(Fault(method="sendMessage", status=429, count=1, retry_after=1))
    assert asked()[0].prompt in (await bot.say(4, "/start"))[0]
    assert "Telegram asks to wait 1 s before sending into this chat again" in bot.output()


async def test_mongo_server_stops_and_restarts_mid_questionnaire(
    mongo_bot: tuple[BotProcess, WireProtocolServer],
) -> None:
    bot, server = mongo_bot
    *before, (last, summary) = exchanges()
    for text, reply in before:
        assert await bot.say(1, text) == [reply]

    server.stop()
    assert await bot.say(1, last) == [SEND_AGAIN]
    assert bot.output().count(FAILURE_LOG_LINE) == 1

    server.start()
    assert await bot.say(1, last) == [summary]
