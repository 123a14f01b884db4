"""The whole bot: updates through the real Dispatcher and handlers, and `python main.py` as a process.

In process: the project's dispatcher with a mocked Bot API session (no
network), on its SQLite storage and on aiogram's MemoryStorage: updates/s and
peak traced memory. As a process, beside a bare aiogram echo bot measured the
same way: seconds from start to the first reply (the median of three starts),
resident memory when idle and after 200 users have finished the questionnaire.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiogram.fsm.storage.base import BaseStorage
from aiogram.fsm.storage.memory import MemoryStorage
from aiogram.types import Chat, Message, Update, User

from bot.emulator import BotAPIEmulator, running_emulator
from bot.setup import create_bot, create_dispatcher
from config import Settings
from storage import SQLAlchemyStorage, SQLResponseStore
from tests.support.mocked_session import MockedSession

ROOT = Path(__file__).resolve().parent.parent
ANSWERS = ("/start", "Ann", "30", "Blue")


def message_update(update_id: int, user_id: int, text: str) -> Update:
    user = User(id=user_id, is_bot=False, first_name="Bench")
    message = Message(
        message_id=update_id, date=datetime.now(UTC), chat=Chat(id=user_id, type="private"), from_user=user, text=text
    )
    return Update(update_id=update_id, message=message)


async def dispatcher_throughput(storage: BaseStorage, responses: Any, users: int, concurrency: int) -> dict[str, float]:
    bot = create_bot(Settings(bot_token=BotAPIEmulator().token, _env_file=None), session=MockedSession())
    dispatcher = create_dispatcher(storage, responses)
    ids = itertools.count(1)

    async def run_users(first: int) -> float:
        pending = iter(range(first, first + users))

        async def worker() -> None:
            for user_id in pending:
                for text in ANSWERS:
                    await dispatcher.feed_update(bot, message_update(next(ids), user_id, text))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started

    seconds = await run_users(1)
    # A second round for memory: tracing slows everything, so it is not timed.
    tracemalloc.start()
    await run_users(1 + users)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    for router in dispatcher.sub_routers:  # let the next dispatcher take the module-level routers
        router._parent_router = None
    return {"updates_per_second": users * len(ANSWERS) / seconds, "peak_traced_mb": peak / 2**20}


class NullResponses:
    async def save(self, response: Any) -> bool:
        return True


async def in_process(users: int, concurrency: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as folder:
        storage = await SQLAlchemyStorage.from_url(f"sqlite+aiosqlite:///{folder}/bot.db")
        responses = SQLResponseStore(storage)
        await responses.create_table()
        sqlite = await dispatcher_throughput(storage, responses, users, concurrency)
        await storage.close()
    memory = await dispatcher_throughput(MemoryStorage(), NullResponses(), users, concurrency)
    return {"SQLite (ours)": sqlite, "MemoryStorage": memory}


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@asynccontextmanager
async def started_bot(command: list[str]) -> AsyncIterator[tuple[BotAPIEmulator, int, float]]:
    """Start the bot against a fresh emulator; yield it once it has answered /start, with that time."""
    async with running_emulator(BotAPIEmulator()) as (emulator, api_url):
        with tempfile.TemporaryDirectory() as folder:
            env = {**os.environ, "BOT_TOKEN": emulator.token, "TELEGRAM_API_URL": api_url, "LOG_LEVEL": "WARNING"}
            env["DATABASE_URL"] = f"sqlite+aiosqlite:///{folder}/bot.db"
            started = time.perf_counter()
            process = await asyncio.create_subprocess_exec(
                *command, cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            try:
                await emulator.user_sends(1, {"text": "/start"})
                await emulator.bot_messages(1, 1, wait=60)
                yield emulator, process.pid, time.perf_counter() - started
            finally:
                process.terminate()
                await process.wait()


async def as_a_process(command: list[str], users: int, questionnaire: bool) -> dict[str, Any]:
    """Start the bot, time its first reply, then let `users` users finish; report memory."""
    async with started_bot(command) as (emulator, pid, first_reply):
        await asyncio.sleep(1)
        idle = resident_mb(pid)

        async def one_user(user_id: int) -> None:
            texts = ANSWERS if questionnaire else ANSWERS[:1]
            for count, text in enumerate(texts, start=1):
                await emulator.user_sends(user_id, {"text": text})
                await emulator.bot_messages(user_id, count, wait=60)

        await asyncio.gather(*(one_user(user_id) for user_id in range(100, 100 + users)))
        busy = resident_mb(pid)
    return {"first_reply_samples": [first_reply], "idle_rss_mb": idle, "rss_after_users_mb": busy}


async def whole_bot(quick: bool) -> dict[str, Any]:
    users = 10 if quick else 200
    report: dict[str, Any] = {"dispatcher": await in_process(users, 5 if quick else 50)}
    bots = {
        "this bot": ([sys.executable, "main.py"], True),
        "bare aiogram echo bot": ([sys.executable, "-m", "benchmarks.echo_bot"], False),
    }
    process = {
        name: await as_a_process(command, users, questionnaire) for name, (command, questionnaire) in bots.items()
    }
    # One start is at the mercy of the machine's other work: the median of three, in alternating order.
    for round_number in range(0 if quick else 2):
        for name in list(bots)[:: -1 if round_number % 2 == 0 else 1]:
            async with started_bot(bots[name][0]) as (_, _, first_reply):
                process[name]["first_reply_samples"].append(first_reply)
    for numbers in process.values():
        numbers["first_reply_seconds"] = statistics.median(numbers["first_reply_samples"])
    report["process"] = process
    return report


def run_whole_bot_benchmark(quick: bool = False) -> dict[str, Any]:
    report = asyncio.run(whole_bot(quick))
    print("\nThe whole bot, in process (real Dispatcher and handlers, mocked Bot API session)")
    for name, numbers in report["dispatcher"].items():
        print(f"  {name:16} {numbers['updates_per_second']:8.0f} updates/s  peak {numbers['peak_traced_mb']:.1f} MB")
    print("\nThe whole bot as a process, against the emulator")
    for name, numbers in report["process"].items():
        print(
            f"  {name:22} first reply after {numbers['first_reply_seconds']:.2f} s, "
            f"RSS idle {numbers['idle_rss_mb']:.0f} MB, after the users {numbers['rss_after_users_mb']:.0f} MB"
        )
    ours, bare = report["process"]["this bot"], report["process"]["bare aiogram echo bot"]
    print(
        f"  difference: {ours['first_reply_seconds'] - bare['first_reply_seconds']:+.2f} s to the first reply "
        f"(target <= 1), {ours['idle_rss_mb'] - bare['idle_rss_mb']:+.0f} MB idle (target <= 30)"
    )
    return report
