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
from handlers import get_commands
from tests.support.backends import ALL_BACKENDS, MONGO_BACKENDS, SQL_URL_VARIABLES, make_backend
from tests.support.bot_process import BotProcess, bot_environment, drop_bot_tables
from tests.support.questionnaire import (
    SUMMARY_END,
    asked,
    conversation,
    exchanges,
    fill_in,
    keeps_as_typed,
    shows_summary,
    told_apart,
    typed,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=ALL_BACKENDS)
async def bot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BotProcess]:
    folder = tmp_path_factory.mktemp(f"e2e-{request.param}")
    mongo = request.getfixturevalue("mongo_url") if request.param in MONGO_BACKENDS else None
    backend = make_backend(request.param, folder, mongo)
    if backend.name in SQL_URL_VARIABLES:
        await drop_bot_tables(backend.url)
    async with (
        running_emulator(BotAPIEmulator()) as (emulator, api_url),
        BotProcess(emulator, api_url, folder / "bot.log", bot_environment(backend, folder)) as process,
    ):
        await process.start()
        yield process
        await process.stop()
        assert emulator.token not in process.output()
        assert emulator.token.split(":")[1] not in process.output()
    if backend.is_mongo:
        await backend.drop()


async def test_full_flow_ends_with_a_summary_of_every_answer(bot: BotProcess) -> None:
    [greeting] = await bot.say(1, "/start")
    assert greeting.endswith(asked()[0].prompt)
    for question, text in zip(asked(), typed(), strict=True):
        keyboard = [choice for row in bot.emulator.keyboard(1) or [] for choice in row]
        under = [button["text"] for row in bot.emulator.inline_buttons(1) or [] for button in row]
        assert (under, keyboard) == ((list(question.choices), []) if question.inline else ([], list(question.choices)))
        [reply] = await bot.say(1, text)
    assert shows_summary(reply)
    assert bot.emulator.chats[1].keyboard is None
    assert [c["command"] for c in bot.emulator.commands] == [command.command for command in get_commands()]


async def test_answers_in_one_batch_are_kept_in_order(bot: BotProcess) -> None:
    await bot.say(2, "/start")
    replies = await bot.say(2, *typed())
    assert shows_summary(replies[-1])


async def test_fifty_users_at_once_each_get_their_own_summary(bot: BotProcess) -> None:
    async def one_user(user_id: int) -> str:
        [*_, [summary]] = await fill_in(lambda text: bot.say(user_id, text), **told_apart(f"User{user_id}"))
        return summary

    users = range(1000, 1050)
    summaries = await asyncio.gather(*(one_user(user_id) for user_id in users))
    for user_id, summary in zip(users, summaries, strict=True):
        assert shows_summary(summary, **told_apart(f"User{user_id}"))


async def test_bad_input_is_answered_and_changes_nothing(bot: BotProcess) -> None:
    tricky = "<b>Ann</b> & co"
    own = {question.key: tricky for question in asked() if keeps_as_typed(question, tricky)}
    await bot.say(3, "/start")
    for question, text in zip(asked(), typed(**own), strict=True):
        [reply] = await bot.send(3, {"kind": "photo"})
        assert reply.endswith(question.prompt)
        [reply] = await bot.say(3, "x" * 4000)
        assert reply.endswith(question.prompt)
        [reply] = await bot.send(3, {"kind": "sticker"})
        assert reply.endswith(question.prompt)
        [reply] = await bot.say(3, text)
    assert shows_summary(reply, **own)
    assert tricky in reply  # shown literally, not as bold


async def test_cancel_forgets_and_says_so(bot: BotProcess) -> None:
    [reply] = await bot.say(4, "/cancel")
    assert "Nothing to cancel" in reply
    await bot.say(4, *conversation()[:-1])  # at the last question
    [reply] = await bot.say(4, "/cancel")
    assert "Cancelled" in reply
    [reply] = await bot.say(4, typed()[-1])
    assert "Send /start" in reply


async def test_forget_deletes_what_the_bot_keeps(bot: BotProcess) -> None:
    for answer in (*conversation(), *conversation()[:-1]):
        await bot.say(8, answer)
    [reply] = await bot.say(8, "/forget")
    assert "1 finished form" in reply
    [reply] = await bot.say(8, typed()[-1])
    assert "Send /start" in reply
    [reply] = await bot.say(8, "/forget")
    assert "0 finished form" in reply


async def test_kill_9_between_answers_loses_nothing(bot: BotProcess) -> None:
    *before, (penultimate, acknowledgement), (last, _) = exchanges()
    for text, reply in before:
        assert await bot.say(5, text) == [reply]
    [acknowledged] = await bot.say(5, penultimate)
    assert acknowledged == acknowledgement  # acknowledged: the answer is saved

    assert await bot.stop(signal.SIGKILL) == -signal.SIGKILL
    await bot.emulator.user_sends(5, {"text": last})  # sent while the bot is down
    await bot.start()

    # A reply carried out in the moment before the kill (not yet recorded as done) may come again.
    texts = await bot.wait_for(5, SUMMARY_END)
    settled = len(before) + 1
    assert texts[settled - 1] == acknowledged
    assert set(texts[settled:-1]) <= set(texts[:settled])
    assert shows_summary(texts[-1])


async def test_graceful_stop_and_start_continue_the_flow(bot: BotProcess) -> None:
    *before, (last, summary) = exchanges()
    await bot.say(6, *(text for text, _ in before))
    assert await bot.stop(signal.SIGTERM) == 0
    await bot.start()
    assert await bot.say(6, last) == [summary]
