"""The whole bot: updates through the real Dispatcher and handlers, and `python main.py` as a process.

In process: the project's dispatcher and handlers with a mocked Bot API
session (no network), on each candidate storage (benchmarks/candidates.py):
updates/s and the latency of each update, with users answering one at a time
or many at once. As a process, beside a bare aiogram echo bot measured the
same way: seconds from start to the first reply (the median of three starts),
resident memory when idle and after 200 users have finished the questionnaire.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiogram.types import Chat, Message, Update, User

from benchmarks.candidates import Candidate, Opened
from bot.emulator import BotAPIEmulator, running_emulator
from bot.outbox import handle_update
from bot.setup import create_bot, create_dispatcher
from config import Settings
from tests.support.mocked_session import MockedSession
from tests.support.questionnaire import asked, conversation, shows_summary

ROOT = Path(__file__).resolve().parent.parent
WARM_UP_USERS = 20


def answers(user_id: int) -> list[str]:
    """The whole questionnaire from its definition, the first answer naming the user."""
    return conversation(**own_name(user_id))


def own_name(user_id: int) -> dict[str, str]:
    return {asked()[0].key: f"Ann{user_id}"}


def message_update(update_id: int, user_id: int, text: str) -> Update:
    user = User(id=user_id, is_bot=False, first_name="Bench")
    message = Message(
        message_id=update_id, date=datetime.now(UTC), chat=Chat(id=user_id, type="private"), from_user=user, text=text
    )
    return Update(update_id=update_id, message=message)


@dataclass
class Throughput:
    """One candidate at one level: the median of its rounds."""

    name: str
    users: int
    concurrency: int
    updates_per_second: float
    p50_ms: float
    p99_ms: float
    failed_users: int  # users whose last reply is not their own summary, in any round
    rounds: list[float] = field(default_factory=list)


async def run_users(opened: Opened, first_user: int, users: int, concurrency: int) -> tuple[float, list[float], int]:
    """`users` users through the questionnaire, `concurrency` at a time: seconds, latencies, failed users."""
    session = MockedSession()
    bot = create_bot(Settings(bot_token=BotAPIEmulator().token, _env_file=None), session=session)
    dispatcher = create_dispatcher(*opened)
    ids = itertools.count(random.randrange(1, 2**30))  # as Telegram's: never the ids of an earlier run
    pending = iter(range(first_user, first_user + users))
    latencies: list[float] = []

    async def one_at_a_time() -> None:
        for user_id in pending:
            for text in answers(user_id):
                started = time.perf_counter()
                await handle_update(dispatcher, bot, message_update(next(ids), user_id, text))
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one_at_a_time() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    for router in dispatcher.sub_routers:  # let the next dispatcher take the module-level routers
        router._parent_router = None
    last_reply = {int(sent.chat_id): sent.text for sent in session.sent_messages()}
    failed = sum(
        1
        for user_id in range(first_user, first_user + users)
        if not shows_summary(last_reply.get(user_id, ""), **own_name(user_id))
    )
    return seconds, latencies, failed


async def measure(candidate: Candidate, users: int, concurrency: int) -> tuple[float, list[float], int]:
    async with candidate.open() as opened:
        _, _, failed = await run_users(opened, 1, WARM_UP_USERS, min(concurrency, WARM_UP_USERS))
        seconds, latencies, failed_timed = await run_users(opened, 1_000, users, concurrency)
    return users * 4 / seconds, latencies, failed + failed_timed


async def throughput(
    candidates: list[Candidate], levels: list[tuple[int, int]], rounds: int, progress: Callable[[Throughput], None]
) -> list[Throughput]:
    """Every candidate at every level, `rounds` times in alternating order so that none always goes first."""
    results = []
    for users, concurrency in levels:
        here = [c for c in candidates if concurrency == 1 or not c.one_user_at_a_time_only]
        measured: dict[str, list[tuple[float, list[float], int]]] = {c.name: [] for c in here}
        for round_number in range(rounds):
            for candidate in here if round_number % 2 == 0 else here[::-1]:
                measured[candidate.name].append(await measure(candidate, users, concurrency))
        for candidate in here:
            samples = sorted(measured[candidate.name], key=lambda sample: sample[0])
            speed, latencies, _ = samples[len(samples) // 2]
            latencies.sort()
            result = Throughput(
                candidate.name,
                users,
                concurrency,
                speed,
                1000 * latencies[len(latencies) // 2],
                1000 * latencies[int(len(latencies) * 0.99)],
                sum(sample[2] for sample in samples),
                [sample[0] for sample in measured[candidate.name]],
            )
            results.append(result)
            progress(result)
    return results


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
            texts = answers(user_id) if questionnaire else ["/start"]
            for count, text in enumerate(texts, start=1):
                await emulator.user_sends(user_id, {"text": text})
                await emulator.bot_messages(user_id, count, wait=60)

        await asyncio.gather(*(one_user(user_id) for user_id in range(100, 100 + users)))
        busy = resident_mb(pid)
    return {"first_reply_samples": [first_reply], "idle_rss_mb": idle, "rss_after_users_mb": busy}


async def processes(quick: bool) -> dict[str, Any]:
    users = 10 if quick else 200
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
    return process
