"""The whole bot: updates through the real Dispatcher and handlers, and `python main.py` as a process.

In process: the project's dispatcher and handlers with a mocked Bot API
session (no network), on each candidate storage (benchmarks/candidates.py),
run as the bot runs for real (bot/running.py): the courier is started, so
replies go out per chat after each commit and what is done is recorded in a
batch every 50 ms. Users take turns, each answering once the bot's reply to
them has gone out, one user at a time or many at once: updates/s, the time
from an update to its reply, and the storage's calls to its database per
update (SQL statements, Mongo commands, Redis commands). Beside them, the
plain aiogram bot a copier would otherwise write (benchmarks/plain_bot.py),
fed the same updates. As a process, beside a bare aiogram echo bot measured
the same way: seconds from start to the first reply (the median of three
starts), resident memory when idle and after 200 users have finished the
questionnaire.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.enums import ParseMode
from aiogram.fsm.storage.base import BaseStorage
from aiogram.methods import SendMessage, TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import Chat, Message, Update, User
from pymongo import monitoring
from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks.candidates import Candidate, Opened
from benchmarks.plain_bot import create_plain_dispatcher
from bot.emulator import BotAPIEmulator, running_emulator
from bot.outbox import Courier, FloodControl, handle_update
from bot.setup import create_bot, create_dispatcher
from config import Settings
from tests.support.mocked_session import MockedSession
from tests.support.questionnaire import asked, conversation, shows_summary

ROOT = Path(__file__).resolve().parent.parent
WARM_UP_USERS = 20
REPLY_SECONDS = 30  # a user waits this long for the bot's reply, then counts as failed


def unlimited() -> FloodControl:
    """The courier's pacing with no limit to meet: the Bot API answered in memory has none. (Telegram's
    would hold any bot to about 30 messages a second, and a chat to about one: no storage would show.)"""
    return FloodControl(chat_burst=10**6, group_per_minute=10**6, bot_per_second=10**6)


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
    # Calls to the database (SQL statements, Mongo commands, Redis commands) per update, in that round.
    statements_per_update: float = 0.0


@dataclass
class Sample:
    """One round of one candidate at one level."""

    updates_per_second: float
    latencies: list[float]
    failed_users: int
    statements_per_update: float


class MongoCommands(monitoring.CommandListener):
    """Every command any Mongo client of this process sends (PyMongo's monitoring; motor runs on PyMongo)."""

    count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


MONGO_COMMANDS = MongoCommands()
monitoring.register(MONGO_COMMANDS)  # for the clients made after this: every candidate's


def sql_engines(storage: BaseStorage) -> list[Engine]:
    """The engines a SQL storage sends its statements through (ours says; aiogram-sqlalchemy-storage's sessionmaker)."""
    engines = getattr(storage, "engines", None)
    if isinstance(engines, list):
        return engines
    sessionmaker = getattr(storage, "_async_session_maker", None)
    bound = sessionmaker.kw.get("bind") if sessionmaker is not None else None
    return [bound.sync_engine] if isinstance(bound, AsyncEngine) else []


@contextmanager
def round_trips(storage: BaseStorage) -> Iterator[Callable[[], int]]:
    """Count the storage's calls to its database while in the block: SQL statements (one per cursor
    execute, an executemany included; on PostgreSQL and MariaDB in AUTOCOMMIT each is a round trip),
    Mongo commands, Redis commands. Yields a function that tells the count so far."""
    counted = [0]

    def statement(*_: Any) -> None:
        counted[0] += 1

    engines = sql_engines(storage)
    for engine in engines:
        event.listen(engine, "before_cursor_execute", statement)
    redis = getattr(storage, "redis", None)
    execute = getattr(redis, "execute_command", None)
    if redis is not None and execute is not None:

        async def counted_command(*args: Any, **options: Any) -> Any:
            counted[0] += 1
            return await execute(*args, **options)

        redis.execute_command = counted_command
    mongo_before = MONGO_COMMANDS.count
    try:
        yield lambda: counted[0] + MONGO_COMMANDS.count - mongo_before
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", statement)
        if redis is not None and execute is not None:
            del redis.execute_command  # the class's own again


class RepliesSession(MockedSession):
    """The in-memory Bot API, which also wakes a user waiting for the bot's next message in their chat."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: dict[int, asyncio.Future[None]] = {}

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[TelegramType],
        timeout: int | None = None,  # noqa: ASYNC109 - aiogram's signature
    ) -> TelegramType:
        answer = await super().make_request(bot, method, timeout)
        if isinstance(method, SendMessage):
            waiter = self.waiting.pop(int(method.chat_id), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        return answer


async def run_users(
    opened: Opened, first_user: int, users: int, concurrency: int, *, plain: bool = False
) -> tuple[float, list[float], int, int]:
    """`users` users through the questionnaire, `concurrency` at a time, each waiting for the bot's reply
    before answering: seconds, latencies (an update in to its reply out), failed users, database calls.
    `plain`: the plain aiogram bot (benchmarks/plain_bot.py) instead of this project's."""
    session = RepliesSession()
    if plain:
        bot = Bot(BotAPIEmulator().token, session=session, default=DefaultBotProperties(parse_mode=ParseMode.HTML))
        dispatcher = create_plain_dispatcher(opened[0], opened[1])

        async def handle(update: Update) -> None:
            await dispatcher.feed_update(bot, update)

    else:
        bot = create_bot(Settings(bot_token=BotAPIEmulator().token, _env_file=None), session=session)
        dispatcher = create_dispatcher(*opened, flood=unlimited())

        async def handle(update: Update) -> None:
            await handle_update(dispatcher, bot, update)

    # As the bot runs for real (bot/running.py): the courier carries the replies out per chat,
    # and records what is done in a batch every 50 ms.
    courier: Courier | None = dispatcher.workflow_data.get("courier")
    if courier is not None:
        await courier.start(bot)
    ids = itertools.count(random.randrange(1, 2**30))  # as Telegram's: never the ids of an earlier run
    latencies: list[float] = []
    loop = asyncio.get_running_loop()

    async def one_at_a_time(own_users: list[int]) -> None:
        """Its users take turns, an update at a time: each answers once the bot has replied, as a person
        does, seconds later (after everyone else's turn), never within the courier's 50 ms marks."""
        texts = {user_id: answers(user_id) for user_id in own_users}
        for step in range(len(answers(0))):
            for user_id in own_users:
                update = message_update(next(ids), user_id, texts[user_id][step])
                started = time.perf_counter()
                replied = session.waiting[user_id] = loop.create_future()
                await handle(update)
                with contextlib.suppress(TimeoutError):  # no reply: the user counts as failed
                    await asyncio.wait_for(replied, REPLY_SECONDS)
                latencies.append(time.perf_counter() - started)

    everyone = list(range(first_user, first_user + users))
    with round_trips(opened[0]) as calls:
        started = time.perf_counter()
        await asyncio.gather(*(one_at_a_time(everyone[i::concurrency]) for i in range(concurrency)))
        if courier is not None:
            await courier.idle()  # every entry carried out (responses saved, replies sent)
        seconds = time.perf_counter() - started
        if courier is not None:
            await courier.stop(5)  # the last batch of marks: counted, not timed
        statements = calls()
    for router in dispatcher.sub_routers:  # let the next dispatcher take the module-level routers
        router._parent_router = None
    last_reply = {int(sent.chat_id): sent.text for sent in session.sent_messages()}
    failed = sum(
        1
        for user_id in range(first_user, first_user + users)
        if not shows_summary(last_reply.get(user_id, ""), **own_name(user_id))
    )
    return seconds, latencies, failed, statements


async def measure(candidate: Candidate, users: int, concurrency: int) -> Sample:
    async with candidate.open() as opened:
        warm_up = min(concurrency, WARM_UP_USERS)
        _, _, failed, _ = await run_users(opened, 1, WARM_UP_USERS, warm_up, plain=candidate.plain)
        seconds, latencies, failed_timed, statements = await run_users(
            opened, 1_000, users, concurrency, plain=candidate.plain
        )
    return Sample(users * 4 / seconds, latencies, failed + failed_timed, statements / (users * 4))


async def throughput(
    candidates: list[Candidate], levels: list[tuple[int, int]], rounds: int, progress: Callable[[Throughput], None]
) -> list[Throughput]:
    """Every candidate at every level, `rounds` times in alternating order so that none always goes first."""
    results = []
    for users, concurrency in levels:
        here = [c for c in candidates if concurrency == 1 or not c.one_user_at_a_time_only]
        measured: dict[str, list[Sample]] = {c.name: [] for c in here}
        for round_number in range(rounds):
            for candidate in here if round_number % 2 == 0 else here[::-1]:
                measured[candidate.name].append(await measure(candidate, users, concurrency))
        for candidate in here:
            samples = sorted(measured[candidate.name], key=lambda sample: sample.updates_per_second)
            median = samples[len(samples) // 2]
            latencies = sorted(median.latencies)
            result = Throughput(
                candidate.name,
                users,
                concurrency,
                median.updates_per_second,
                1000 * latencies[len(latencies) // 2],
                1000 * latencies[int(len(latencies) * 0.99)],
                sum(sample.failed_users for sample in samples),
                [sample.updates_per_second for sample in measured[candidate.name]],
                median.statements_per_update,
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
