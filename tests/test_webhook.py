"""Webhook mode: the real `python main.py` with WEBHOOK_URL, the emulator posting updates to it as Telegram does."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from bot.emulator import BotAPIEmulator, Fault, running_emulator
from bot.setup import create_bot, create_dispatcher
from bot.webhook import webhook_app
from storage import create_storages
from tests.support.backends import settings_for
from tests.support.bot_process import BotProcess
from tests.support.questionnaire import exchanges, replies, typed
from tests.support.tcp_proxy import proxied
from tests.support.webhook import SECRET, free_port, until_healthy, webhook_environment

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def replica(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[BotProcess, str]]:
    folder = tmp_path_factory.mktemp("webhook")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with (
        running_emulator(BotAPIEmulator()) as (emulator, api_url),
        BotProcess(emulator, api_url, folder / "bot.log", webhook_environment(port, folder / "bot.db")) as process,
    ):
        await process.start(ready_on="setWebhook")
        await until_healthy(base)
        yield process, base
        assert await process.stop(signal.SIGTERM) == 0
        assert SECRET not in process.output()


async def test_the_questionnaire_runs_by_webhook(replica: tuple[BotProcess, str]) -> None:
    bot, _ = replica
    assert bot.emulator.webhook_url.endswith("/telegram/updates")
    assert bot.emulator.webhook_secret == SECRET
    assert "getUpdates" not in bot.emulator.calls
    assert "deleteWebhook" not in bot.emulator.calls
    for text, reply in exchanges():
        assert await bot.say(1, text) == [reply]


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Telegram-Bot-Api-Secret-Token": "wrong"}, {"X-Telegram-Bot-Api-Secret-Token": "sécret"}],
    ids=["missing", "wrong", "not-ascii"],
)
async def test_a_request_without_the_secret_gets_401_and_changes_nothing(
    replica: tuple[BotProcess, str], headers: dict[str, str]
) -> None:
    bot, base = replica
    await bot.say(2, "/start")
    before = await bot.emulator.bot_messages(2)
    forged = {
        "update_id": 1,
        "message": {
            "message_id": 1,
            "date": 0,
            "chat": {"id": 2, "type": "private"},
            "from": {"id": 2, "is_bot": False, "first_name": "Mallory"},
            "text": "Mallory",
        },
    }
    async with ClientSession() as session, session.post(f"{base}/telegram/updates", json=forged, headers=headers) as r:
        assert r.status == 401
    assert await bot.say(2, typed()[0]) == [acknowledged_first_answer()]  # still at the first question
    assert len(await bot.emulator.bot_messages(2)) == len(before) + 1


async def test_an_update_whose_reply_failed_is_posted_again_and_answered(replica: tuple[BotProcess, str]) -> None:
    """A few 502s: the reply is sent again within the request; the user sees it once."""
    bot, _ = replica
    await bot.say(3, "/start")
    bot.emulator.faults.append(Fault(method="sendMessage", status=502, count=3))
    [reply] = await bot.say(3, typed()[0])
    assert reply == acknowledged_first_answer()
    for text, reply in exchanges()[2:]:
        assert await bot.say(3, text) == [reply]


async def test_a_long_flood_wait_is_waited_out_from_the_outbox_not_by_telegram_posting_again(
    replica: tuple[BotProcess, str],
) -> None:
    """A 429 longer than a webhook request may last: the update is answered 200 once committed, its reply
    waits in the outbox for the flood wait and then goes out; Telegram never has to post it again.

    aiogram's own webhook answered 200 after 55 s and went on in the background, keeping nothing.
    """
    bot, _ = replica
    await bot.say(4, "/start")
    bot.emulator.faults.append(Fault(method="sendMessage", status=429, count=1, retry_after=12))
    assert await bot.say(4, typed()[0]) == [acknowledged_first_answer()]
    assert "Telegram asks to wait 12 s before sending into this chat again" in bot.output()
    assert "applied already" not in bot.output()  # not posted again
    for text, reply in exchanges()[2:]:
        assert await bot.say(4, text) == [reply]


def acknowledged_first_answer() -> str:
    """The bot's reply to the first sample answer, as the user reads it."""
    return replies()[1]


async def test_healthz_answers_503_while_the_database_does_not() -> None:
    """The webhook app on PostgreSQL through a proxy the test cuts, as a load balancer would probe it."""
    url = os.environ.get("POSTGRES_TEST_URL")
    if not url:
        pytest.skip("POSTGRES_TEST_URL is not set")
    async with proxied(url, 5432) as (proxy, through_proxy):
        settings = settings_for(through_proxy).model_copy(
            update={"webhook_url": "https://bot.example/hook", "webhook_secret": SecretStr(SECRET)}
        )
        storages = await create_storages(settings)
        storages.fsm.timeout = 2
        bot = create_bot(settings)
        app = webhook_app(bot, create_dispatcher(storages.fsm, storages.responses), settings)
        try:
            async with TestClient(TestServer(app)) as client:
                assert (await client.get("/healthz")).status == 200
                proxy.down()
                assert (await client.get("/healthz")).status == 503
                proxy.up()
                assert (await client.get("/healthz")).status == 200
        finally:
            await bot.session.close()
            await storages.close()


async def test_a_reply_refused_for_good_is_not_posted_again(replica: tuple[BotProcess, str]) -> None:
    """The user blocked the bot (403): the answer is kept, Telegram gets its 200 and stops posting the update."""
    bot, base = replica
    await bot.say(6, "/start")
    bot.emulator.faults.append(Fault(method="sendMessage", status=403, count=1))
    update = {
        "update_id": 990_001,
        "message": {
            "message_id": 990_001,
            "date": 0,
            "chat": {"id": 6, "type": "private"},
            "from": {"id": 6, "is_bot": False, "first_name": "Ann"},
            "text": typed()[0],
        },
    }
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    async with ClientSession() as session, session.post(f"{base}/telegram/updates", json=update, headers=headers) as r:
        assert r.status == 200  # once committed, before its reply is tried
    for _ in range(100):  # the courier tries the reply after the commit
        if "Telegram refused a call for good" in bot.output():
            break
        await asyncio.sleep(0.1)
    assert "Telegram refused a call for good" in bot.output()
    # The answer was kept: the next one is taken as the second question's.
    for text, reply in exchanges()[2:]:
        assert await bot.say(6, text) == [reply]
