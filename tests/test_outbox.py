"""The outbox end to end: the real `python main.py` polling against the emulator.

One chat whose replies Telegram refuses holds up no other chat and not the
fetching of updates (issue 25, Why 4): while Telegram answers 502 to every
call into it, 150 other users fill in the whole questionnaire; once Telegram
takes that chat's calls again, its replies arrive, in order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.emulator import BotAPIEmulator, Fault, running_emulator
from tests.support.backends import make_backend
from tests.support.bot_process import BotProcess, bot_environment
from tests.support.questionnaire import bot_replies, conversation, saved, told_apart

OTHERS = 150
STUCK = 999_001
REPLY_SECONDS = 120


async def fill_in(emulator: BotAPIEmulator, user_id: int) -> list[str]:
    """The questionnaire, each message after the answer to the one before, as people do."""
    answers = told_apart(f"User {user_id}")
    messages = conversation(**answers)
    expected = bot_replies(messages, saved(**answers))
    for count, message in enumerate(messages, start=1):
        await emulator.user_sends(user_id, {"text": message})
        got = await emulator.bot_messages(user_id, count, wait=REPLY_SECONDS)
        assert len(got) >= count, f"user {user_id} got no answer to {message!r} in {REPLY_SECONDS} s"
    return expected


@pytest.mark.timeout(600)
async def test_a_chat_telegram_refuses_holds_up_no_other_chat(tmp_path: Path) -> None:
    backend = make_backend("sqlite", tmp_path, None)
    (tmp_path / "data").mkdir()
    async with running_emulator(BotAPIEmulator()) as (emulator, api_url):
        refused = Fault(method="*", status=502, count=10**9, chat=STUCK)
        emulator.faults.append(refused)
        async with BotProcess(emulator, api_url, tmp_path / "bot.log", bot_environment(backend, tmp_path)) as bot:
            await bot.start()
            stuck = conversation()[:2]
            for text in stuck:  # the greeting, then the first answer: both wait on Telegram
                await emulator.user_sends(STUCK, {"text": text})
            await asyncio.sleep(1)

            users = range(1, OTHERS + 1)
            expected = await asyncio.gather(*(fill_in(emulator, user) for user in users))

            for user, wanted in zip(users, expected, strict=True):
                got = [str(message["text"]) for message in await emulator.bot_messages(user)]
                assert got == wanted, f"user {user}"
            assert await emulator.bot_messages(STUCK) == []
            assert refused.count < 10**9, "the stuck chat was not even tried"

            refused.count = 0  # Telegram takes that chat's calls again
            texts = [
                str(message["text"]) for message in await emulator.bot_messages(STUCK, len(stuck), wait=REPLY_SECONDS)
            ]
            assert texts == bot_replies(conversation(), saved())[: len(stuck)]
            await bot.stop()
