"""End to end: a real `python main.py` process, long polling the Bot API emulator over loopback.

One bot process serves every case of a backend (importing aiogram takes
seconds); the restart cases stop it and leave a new one running.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bot.emulator import BotAPIEmulator, running_emulator
from tests.support.backends import ALL_BACKENDS, MONGO_BACKENDS, SQL_URL_VARIABLES, make_backend
from tests.support.bot_process import BotProcess, bot_environment, drop_bot_tables

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=ALL_BACKENDS)
async def bot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BotProcess]:
    folder = tmp_path_factory.mktemp(f"e2e-{request.param}")
    mongo = request.getfixturevalue("mongo_url") if request.param in MONGO_BACKENDS else None
    backend = make_backend(request.param, folder, mongo)
    if backend.name in SQL_URL_VARIABLES:
        await drop_bot_tables(backend.url)
    async with running_emulator(BotAPIEmulator()) as (emulator, api_url):
        process = BotProcess(emulator, api_url, folder / "bot.log", bot_environment(backend, folder))
        await process.start()
        yield process
        await process.stop()
        assert emulator.token not in process.output()
        assert emulator.token.split(":")[1] not in process.output()
    if backend.is_mongo:
        await backend.drop()


async def test_full_flow_ends_with_a_summary_of_all_three_answers(bot: BotProcess) -> None:
    [greeting] = await bot.say(1, "/start")
    assert "What is your name?" in greeting
    [reply] = await bot.say(1, "Ann")
    assert "How old are you?" in reply
    [reply] = await bot.say(1, "30")
    assert "favourite colour" in reply
    assert bot.emulator.chats[1].keyboard is not None
    assert ["Red", "Orange", "Yellow"] in bot.emulator.chats[1].keyboard
    [summary] = await bot.say(1, "Blue")
    assert "Name: Ann" in summary
    assert "Age: 30" in summary
    assert "Favourite colour: Blue" in summary
    assert bot.emulator.chats[1].keyboard is None
    assert [c["command"] for c in bot.emulator.commands] == ["start", "cancel", "help", "forget"]


async def test_answers_in_one_batch_are_kept_in_order(bot: BotProcess) -> None:
    await bot.say(2, "/start")
    replies = await bot.say(2, "Ann", "30", "Blue")
    assert "Name: Ann" in replies[-1]
    assert "Age: 30" in replies[-1]
    assert "Favourite colour: Blue" in replies[-1]


async def test_fifty_users_at_once_each_get_their_own_summary(bot: BotProcess) -> None:
    async def one_user(user_id: int) -> str:
        await bot.say(user_id, "/start")
        await bot.say(user_id, f"User{user_id}")
        await bot.say(user_id, str(20 + user_id % 50))
        [summary] = await bot.say(user_id, "Green")
        return summary

    users = range(1000, 1050)
    summaries = await asyncio.gather(*(one_user(user_id) for user_id in users))
    for user_id, summary in zip(users, summaries, strict=True):
        assert f"Name: User{user_id}" in summary
        assert f"Age: {20 + user_id % 50}" in summary


async def test_bad_input_is_answered_and_changes_nothing(bot: BotProcess) -> None:
    await bot.say(3, "/start")
    [reply] = await bot.send(3, {"kind": "photo"})
    assert reply.endswith("What is your name?")
    [reply] = await bot.say(3, "x" * 4000)
    assert "keep the name to 64" in reply
    [reply] = await bot.say(3, "<b>Ann</b> & co")
    assert "Nice to meet you, <b>Ann</b> & co!" in reply  # shown literally, not as bold
    [reply] = await bot.send(3, {"kind": "sticker"})
    assert reply.endswith("How old are you?")
    [reply] = await bot.say(3, "old")
    assert "whole number" in reply
    [reply] = await bot.say(3, "130")
    assert "between 1 and 120" in reply
    await bot.say(3, "41")
    [summary] = await bot.say(3, "Red")
    assert "Name: <b>Ann</b> & co" in summary
    assert "Age: 41" in summary


async def test_cancel_forgets_and_says_so(bot: BotProcess) -> None:
    [reply] = await bot.say(4, "/cancel")
    assert "Nothing to cancel" in reply
    await bot.say(4, "/start")
    await bot.say(4, "Ann")
    [reply] = await bot.say(4, "/cancel")
    assert "Cancelled" in reply
    [reply] = await bot.say(4, "30")
    assert "Send /start" in reply


async def test_forget_deletes_what_the_bot_keeps(bot: BotProcess) -> None:
    for answer in ("/start", "Ann", "30", "Blue", "/start", "Ann"):
        await bot.say(8, answer)
    [reply] = await bot.say(8, "/forget")
    assert "1 finished questionnaire" in reply
    [reply] = await bot.say(8, "30")
    assert "Send /start" in reply
    [reply] = await bot.say(8, "/forget")
    assert "0 finished questionnaire" in reply


async def test_kill_9_between_answers_loses_nothing(bot: BotProcess) -> None:
    await bot.say(5, "/start")
    [reply] = await bot.say(5, "Ann")
    assert "How old are you?" in reply  # acknowledged: the answer is saved

    assert await bot.stop(signal.SIGKILL) == -signal.SIGKILL
    await bot.emulator.user_sends(5, {"text": "30"})  # sent while the bot is down
    await bot.start()

    # "Ann" may come again too, if it was not confirmed yet: its reply is then sent again.
    texts = await bot.wait_for(5, "favourite colour")
    assert set(texts[1:-1]) == {"Nice to meet you, Ann!\n\nHow old are you?"}
    [summary] = await bot.say(5, "Blue")
    assert "Name: Ann" in summary
    assert "Age: 30" in summary


async def test_graceful_stop_and_start_continue_the_flow(bot: BotProcess) -> None:
    await bot.say(6, "/start")
    await bot.say(6, "Bob")
    assert await bot.stop(signal.SIGTERM) == 0
    await bot.start()
    [reply] = await bot.say(6, "52")
    assert "favourite colour" in reply
    [summary] = await bot.say(6, "Purple")
    assert "Name: Bob" in summary
    assert "Age: 52" in summary
