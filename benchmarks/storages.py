"""The FSM storage benchmark: the questionnaire's storage calls, from 1, 50 and 200 users at once.

One update is what aiogram does for one answer: `get_state` in the FSM
middleware, then `update_data` and `set_state` in the handler (/start does
`get_state` and `set_state`). One user is /start, three answers, then
`get_data` (which must hold all three answers, or the user counts as an
error) and clearing. Statements or commands per update count what the four
updates send, as SQLAlchemy's cursor events and PyMongo's command monitoring
see it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiogram.fsm.storage.base import BaseStorage, StorageKey
from aiogram.fsm.storage.memory import MemoryStorage
from pymongo import monitoring
from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from storage import MongoStorage, SQLAlchemyStorage

ANSWERS = (("name", "Ann"), ("age", 30), ("colour", "Blue"))
STATES = ("Questionnaire:name", "Questionnaire:age", "Questionnaire:colour", None)
UPDATES_PER_USER = 1 + len(ANSWERS)


class Counter:
    """Counts statements (SQL) or commands (Mongo) sent while the current user's task counts.

    A context variable, because many users run at once and each stops counting
    at its own moment; SQLAlchemy's events and PyMongo's listeners run in the
    task that sent the statement.
    """

    def __init__(self) -> None:
        self.count = 0
        self._counting: contextvars.ContextVar[bool] = contextvars.ContextVar("counting", default=False)

    @property
    def counting(self) -> bool:
        return self._counting.get()

    @counting.setter
    def counting(self, value: bool) -> None:
        self._counting.set(value)

    def hit(self) -> None:
        if self.counting:
            self.count += 1


class CommandCounter(monitoring.CommandListener):
    IGNORED = frozenset({"hello", "ismaster", "isMaster", "ping", "endSessions", "buildinfo", "buildInfo"})

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in self.IGNORED:
            self.counter.hit()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def count_statements(engine: Engine, counter: Counter) -> None:
    @event.listens_for(engine, "before_cursor_execute")
    def _count(*_: Any) -> None:
        counter.hit()


@dataclass
class Candidate:
    """A storage to measure: `open` yields a fresh storage in a fresh place."""

    name: str
    open: Callable[[Counter], Any]
    counts: str = "statements"


@dataclass
class Result:
    name: str
    users: int
    concurrency: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    operations: int = 0
    counts: str = ""
    rounds: list[float] = field(default_factory=list)  # updates/s of every round; this result is their median

    @property
    def updates(self) -> int:
        return self.users * UPDATES_PER_USER

    @property
    def updates_per_second(self) -> float:
        return self.updates / self.seconds if self.seconds else 0.0

    def latency_ms(self, quantile: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]

    @property
    def per_update(self) -> float | None:
        if self.counts == "-":
            return None
        return self.operations / self.updates if self.updates else 0.0


async def one_user(storage: BaseStorage, user_id: int, result: Result, counter: Counter) -> None:
    key = StorageKey(bot_id=1, chat_id=user_id, user_id=user_id)
    try:
        started = time.perf_counter()
        await storage.get_state(key)
        await storage.set_state(key, STATES[0])
        result.latencies.append(time.perf_counter() - started)
        for (field_name, value), next_state in zip(ANSWERS, STATES[1:], strict=True):
            started = time.perf_counter()
            await storage.get_state(key)
            await storage.update_data(key, {field_name: value})
            await storage.set_state(key, next_state)
            result.latencies.append(time.perf_counter() - started)
        counter.counting = False
        data = await storage.get_data(key)
        if data != dict(ANSWERS):
            result.errors += 1
            result.first_error = result.first_error or f"lost answers: {data}"
        await storage.set_state(key, None)
        await storage.set_data(key, {})
    except Exception as error:
        result.errors += 1
        result.first_error = result.first_error or f"{type(error).__name__}: {error}"[:200]


WARM_UP_USERS = 20


async def measure(candidate: Candidate, users: int, concurrency: int) -> Result:
    """`users` users, `concurrency` of them at a time, on a fresh storage warmed up first.

    The warm-up (connections opened, tables and collections created, caches
    filled) is neither timed nor counted, so the order of the candidates does
    not favour anyone.
    """
    counter = Counter()
    result = Result(candidate.name, users, concurrency, counts=candidate.counts)
    async with candidate.open(counter) as storage:

        async def run_users(first: int, count: int, into: Result) -> None:
            pending = iter(range(first, first + count))

            async def worker() -> None:
                for user_id in pending:
                    counter.counting = into is result
                    await one_user(storage, user_id, into, counter)

            await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))

        warm_up = Result(candidate.name, WARM_UP_USERS, concurrency)
        await run_users(1_000_000, min(WARM_UP_USERS, users), warm_up)
        started = time.perf_counter()
        await run_users(1, users, result)
        result.seconds = time.perf_counter() - started
        result.errors += warm_up.errors
        result.first_error = result.first_error or warm_up.first_error
    result.operations = counter.count
    return result


# --- the candidates -------------------------------------------------------------


def sqlite_url(folder: Path) -> str:
    return f"sqlite+aiosqlite:///{folder / f'{uuid.uuid4().hex}.db'}"


def ours_sql(name: str, url_for_run: Callable[[], str]) -> Candidate:
    @asynccontextmanager
    async def open_storage(counter: Counter) -> AsyncIterator[BaseStorage]:
        table = f"bench_{uuid.uuid4().hex[:10]}"
        storage = await SQLAlchemyStorage.from_url(url_for_run(), table_name=table)
        for engine in storage.engines:
            count_statements(engine, counter)
        try:
            yield storage
        finally:
            async with storage.sessionmaker.begin() as session:
                await session.run_sync(lambda s: storage.table.drop(s.connection()))
            await storage.close()

    return Candidate(name, open_storage)


def package_sql(folder: Path) -> Candidate:
    """aiogram-sqlalchemy-storage 0.2.0, set up as its documentation shows, on a SQLite file."""

    @asynccontextmanager
    async def open_storage(counter: Counter) -> AsyncIterator[BaseStorage]:
        from sqlalchemy.orm import declarative_base
        from sqlalchemy_storage import SQLAlchemyStorage as PackageStorage

        engine = create_async_engine(sqlite_url(folder))
        count_statements(engine.sync_engine, counter)
        base = declarative_base()
        storage = PackageStorage(
            sessionmaker=async_sessionmaker(bind=engine, class_=AsyncSession, expire_on_commit=False),
            metadata=base.metadata,
        )
        async with engine.begin() as connection:
            await connection.run_sync(base.metadata.create_all)
        try:
            yield storage
        finally:
            await engine.dispose()

    return Candidate("aiogram-sqlalchemy-storage, SQLite file", open_storage)


def memory() -> Candidate:
    @asynccontextmanager
    async def open_storage(_: Counter) -> AsyncIterator[BaseStorage]:
        yield MemoryStorage()

    return Candidate("aiogram MemoryStorage", open_storage, counts="0")


def redis(url: str) -> Candidate:
    @asynccontextmanager
    async def open_storage(_: Counter) -> AsyncIterator[BaseStorage]:
        from aiogram.fsm.storage.base import DefaultKeyBuilder
        from aiogram.fsm.storage.redis import RedisStorage

        prefix = f"bench{uuid.uuid4().hex[:8]}"
        storage = RedisStorage.from_url(url, key_builder=DefaultKeyBuilder(prefix=prefix))
        try:
            yield storage
        finally:
            keys = [key async for key in storage.redis.scan_iter(f"{prefix}:*")]
            if keys:
                await storage.redis.delete(*keys)
            await storage.close()

    return Candidate("aiogram RedisStorage, local Redis", open_storage, counts="-")


def mongo(name: str, url: str, make: Callable[[Any, str], BaseStorage], driver: str) -> Candidate:
    @asynccontextmanager
    async def open_storage(counter: Counter) -> AsyncIterator[BaseStorage]:
        from storage.mongo.client import close_client, create_client

        client = create_client(url, driver, event_listeners=[CommandCounter(counter)])  # type: ignore[arg-type]
        db_name = f"bench_{uuid.uuid4().hex[:10]}"
        try:
            yield make(client, db_name)
        finally:
            counter.counting = False
            await client.drop_database(db_name)
            await close_client(client)

    return Candidate(name, open_storage, counts="commands")


def mongo_candidates(url: str) -> list[Candidate]:
    from aiogram.fsm.storage.mongo import MongoStorage as AiogramMotorStorage
    from aiogram.fsm.storage.pymongo import PyMongoStorage

    return [
        mongo(
            "MongoStorage (ours), PyMongo async",
            url,
            lambda c, db: MongoStorage(c, db_name=db),
            "pymongo",
        ),
        mongo("MongoStorage (ours), motor", url, lambda c, db: MongoStorage(c, db_name=db), "motor"),
        mongo("aiogram PyMongoStorage", url, lambda c, db: PyMongoStorage(c, db_name=db), "pymongo"),
        mongo(
            "aiogram MongoStorage (motor)",
            url,
            lambda c, db: AiogramMotorStorage(c, db_name=db),
            "motor",
        ),
    ]


@asynccontextmanager
async def temporary_folder() -> AsyncIterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fsm-bench-") as folder:
        yield Path(folder)


def median_of(rounds: list[Result]) -> Result:
    """The round with the median updates/s stands for the storage; an error in any round counts."""
    ordered = sorted(rounds, key=lambda r: r.updates_per_second)
    chosen = ordered[len(ordered) // 2]
    chosen.rounds = [r.updates_per_second for r in rounds]
    chosen.errors = sum(r.errors for r in rounds)
    chosen.first_error = next((r.first_error for r in rounds if r.first_error), "")
    return chosen


async def run_all(
    levels: list[tuple[int, int]],
    folder: Path,
    mongo_url: str | None,
    redis_url: str | None,
    sql_urls: dict[str, str],
    rounds: int = 1,
    progress: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Every candidate at every level, `rounds` times in alternating order, so none always goes first."""
    candidates = [
        ours_sql("SQLAlchemyStorage (ours), SQLite file", lambda: sqlite_url(folder)),
        *(ours_sql(f"SQLAlchemyStorage (ours), {name}", functools.partial(str, url)) for name, url in sql_urls.items()),
        *(mongo_candidates(mongo_url) if mongo_url else []),
        memory(),
        *([redis(redis_url)] if redis_url else []),
        package_sql(folder),
    ]
    results = []
    for users, concurrency in levels:
        measured: dict[str, list[Result]] = {candidate.name: [] for candidate in candidates}
        for round_number in range(rounds):
            for candidate in candidates if round_number % 2 == 0 else candidates[::-1]:
                measured[candidate.name].append(await measure(candidate, users, concurrency))
        for candidate in candidates:
            result = median_of(measured[candidate.name])
            results.append(result)
            if progress is not None:
                progress(result)
    return results
