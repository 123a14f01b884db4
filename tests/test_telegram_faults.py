"""Telegram pushing back, end to end: the real `python main.py` polling while the emulator enforces
Telegram's flood limits (per chat, per group, per bot) and answers a share of sendMessage with a 429 for
that chat (one flood wait of a minute or half a minute), 502 or a stall, and a share of getUpdates with 5xx;
some users send two answers in one go.

Every message gets its reply, in the order of the messages, none misfiled, every summary delivered, and no
call is sent into a chat while its flood wait lasts. (Three webhook replicas on PostgreSQL: tests/test_replicas.py.)
One long scenario per backend; `FAULTS_SEED` replays one run.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from bot.emulator import BotAPIEmulator, running_emulator
from tests.support.backends import backend_params, make_backend
from tests.support.bot_process import BotProcess, bot_environment
from tests.support.pushback import chaos, everyone_fills_in

LONG_FLOOD_WAIT = {"sqlite": 60, "mongo-pymongo": 30}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", backend_params("sqlite", "mongo-pymongo"))
async def test_every_reply_arrives_in_order_while_telegram_pushes_back(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    seed = int(os.environ.get("FAULTS_SEED") or random.randrange(10**6))
    mongo = request.getfixturevalue("mongo_url") if name.startswith("mongo") else None
    backend = make_backend(name, tmp_path, mongo)
    (tmp_path / "data").mkdir()
    async with (
        running_emulator(BotAPIEmulator()) as (emulator, api_url),
        BotProcess(emulator, api_url, tmp_path / "bot.log", bot_environment(backend, tmp_path)) as bot,
    ):
        await bot.start()
        emulator.chaos = chaos(LONG_FLOOD_WAIT[name], seed)
        try:
            results = await everyone_fills_in(emulator, seed)
        finally:
            await bot.stop()
    for user_id, (expected, got) in results.items():
        assert got == expected, f"user {user_id} (FAULTS_SEED={seed})"
    assert emulator.chaos.refused["429"] > 0
    assert emulator.chaos.ignored_flood_waits == 0, "the bot sent into a chat while Telegram asked it to wait"
    print(f"\nover Telegram's limits: {dict(emulator.chaos.flood.over_limit)}; refused: {dict(emulator.chaos.refused)}")
    if backend.is_mongo:
        await backend.drop()
