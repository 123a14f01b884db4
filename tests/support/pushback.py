"""Users who fill in the questionnaire while Telegram pushes back (bot/emulator's `Chaos`), and what they must see."""

from __future__ import annotations

import asyncio
import random

from bot.emulator import BotAPIEmulator, Chaos, FloodControl, FloodLimits
from tests.test_storm import Person

USERS = 16
ROUNDS = 2
# A reply may wait out a flood wait of a minute, plus the ones after it.
REPLY_SECONDS = 180


def chaos(long_retry_after: int, seed: int | None = None) -> Chaos:
    """Telegram as it is: its flood limits enforced (per chat, per group, per bot), and at random a share of
    sendMessage answered 429 for that chat (one of them `long_retry_after` s), 502 or a stall; of getUpdates, 5xx."""
    return Chaos(
        shares={"sendMessage": 0.12, "getUpdates": 0.1},
        max_retry_after=4,
        long_retry_after=long_retry_after,
        seed=seed,
        flood=FloodControl(limits=FloodLimits()),
    )


async def fill_in(emulator: BotAPIEmulator, user_id: int, seed: int) -> list[str]:
    """The questionnaire, `ROUNDS` times; every other user sends name and age in one go. The replies expected."""
    person = Person(user_id, random.Random(seed))
    batch = user_id % 2 == 0
    expected: list[str] = []
    for round_number in range(ROUNDS):
        steps = person.script(round_number)
        while steps:
            group, steps = (steps[:2], steps[2:]) if batch and len(steps) == 3 else (steps[:1], steps[1:])
            wanted = len(await emulator.bot_messages(user_id)) + len(group)
            await emulator.user_sends(user_id, *({"text": text} for text, _ in group))
            expected += [answer for _, answer in group]
            got = await emulator.bot_messages(user_id, wanted, wait=REPLY_SECONDS)
            assert len(got) >= wanted, f"user {user_id} waited {REPLY_SECONDS} s for {group[-1][1]!r}"
    return expected


async def everyone_fills_in(
    emulator: BotAPIEmulator, seed: int, first_user: int = 1
) -> dict[int, tuple[list[str], list[str]]]:
    """Each user's expected replies and the ones they got, in order."""
    users = range(first_user, first_user + USERS)
    expected = await asyncio.gather(*(fill_in(emulator, user_id, seed + user_id) for user_id in users))
    got = [[str(message["text"]) for message in await emulator.bot_messages(user_id)] for user_id in users]
    return dict(zip(users, zip(expected, got, strict=True), strict=True))
