"""What only the SQL storage has: its table, its engine defaults, its use of the pool."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
import sqlalchemy.exc
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool, QueuePool, StaticPool

from storage import CompletedResponse, SchemaError, SQLAlchemyStorage, SQLResponseStore, StorageUnavailableError
from storage.factory import create_sql_storages
from storage.sql.engine import POOL_SIZE
from storage.sql.sqlite_thread import ClosedError
from storage.sql.statements import FsmStatements
from tests.support.backends import SQL_BACKENDS, SQL_URL_VARIABLES, Backend, backend_params, storage_key
from tests.support.tcp_proxy import proxied


@pytest.fixture
async def sql_storage(backend: Backend) -> AsyncIterator[SQLAlchemyStorage]:
    opened = await backend.open()
    assert isinstance(opened, SQLAlchemyStorage)
    yield opened
    await opened.close()


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_many_users_on_a_small_pool_do_not_exhaust_it(backend: Backend) -> None:
    storage = await backend.open(pool_size=2, max_overflow=0, pool_timeout=10)
    try:

        async def one_user(user_id: int) -> None:
            key = storage_key(user_id)
            await storage.set_state(key, "asking")
            await storage.update_data(key, {"answer": user_id})
            assert await storage.get_state(key) == "asking"
            assert await storage.get_data(key) == {"answer": user_id}

        await asyncio.gather(*(one_user(user_id) for user_id in range(1, 51)))
        assert len(await backend.record_ids(storage)) == 50
    finally:
        await storage.close()


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_table_has_bounded_strings_and_updated_at(sql_storage: SQLAlchemyStorage) -> None:
    async with sql_storage.sessionmaker() as session:
        columns = await session.run_sync(
            lambda s: {c["name"]: c for c in inspect(s.connection()).get_columns(sql_storage.table.name)}
        )
    assert set(columns) >= {"id", "state", "data", "updated_at"}
    for name in ("id", "state"):
        column_type = columns[name]["type"]
        assert isinstance(column_type, String)
        assert column_type.length == 255


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_writes_move_updated_at(sql_storage: SQLAlchemyStorage) -> None:
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)
    table = sql_storage.table

    async def stamp_after(write: Awaitable[object]) -> datetime:
        async with sql_storage.sessionmaker.begin() as session:
            await session.execute(table.update().values(updated_at=long_ago))
        await write
        async with sql_storage.sessionmaker() as session:
            stamp: datetime = (await session.execute(select(table.c.updated_at))).scalar_one()
        return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp

    await sql_storage.set_state(storage_key(), "s")
    assert await stamp_after(sql_storage.set_state(storage_key(), "t")) > long_ago
    assert await stamp_after(sql_storage.update_data(storage_key(), {"a": 1})) > long_ago
    assert await stamp_after(sql_storage.set_data(storage_key(), {"b": 2})) > long_ago


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_the_questionnaire_costs_four_statements_per_update(sql_storage: SQLAlchemyStorage) -> None:
    statements: list[str] = []
    for engine in sql_storage.engines:
        event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    key = storage_key()
    await sql_storage.get_state(key)  # /start
    await sql_storage.set_state(key, "Form:name")
    for name, answer, next_state in (("name", "Ann", "Form:age"), ("age", 30, "Form:colour"), ("colour", "Blue", None)):
        await sql_storage.get_state(key)
        await sql_storage.update_data(key, {name: answer})
        await sql_storage.set_state(key, next_state)
    # /start: a read and a write; each answer: the middleware's read, update_data's read and write, set_state
    # (the last one's set_state(None) an UPDATE and a conditional DELETE).
    assert len(statements) == 2 + 3 * 4 + 1, statements
    statements.clear()
    await sql_storage.set_state(key, None)  # FSMContext.clear(): each an UPDATE and a conditional DELETE
    await sql_storage.set_data(key, {})
    assert len(statements) == 4, statements
    assert await sql_storage.get_data(key) == {}
    assert await sql_storage.get_state(key) is None


async def test_dialects_without_upsert_get_the_same_results(tmp_path: Path) -> None:
    """The UPDATE-else-INSERT path for dialects with no upsert, run here on SQLite."""
    storage = await SQLAlchemyStorage.from_url(f"sqlite+aiosqlite:///{tmp_path}/generic.db")
    storage._statements["sqlite"] = FsmStatements(storage.table, "a dialect without upsert")
    try:
        key = storage_key()
        await asyncio.gather(storage.set_state(key, "a"), storage.set_data(key, {"x": 1}))
        await storage.set_state(key, "b")
        assert await storage.update_data(key, {"y": 2}) == {"x": 1, "y": 2}
        assert await storage.get_state(key) == "b"
        await storage.set_state(key, None)
        await storage.set_data(key, {})
        async with storage.sessionmaker() as session:
            assert (await session.execute(select(storage.table.c.id))).all() == []
    finally:
        await storage.close()


@pytest.mark.parametrize("backend", backend_params("postgresql", "mysql"), indirect=True)
async def test_close_disposes_only_an_engine_it_created(sql_storage: SQLAlchemyStorage) -> None:
    await sql_storage.set_state(storage_key(), "s")
    engine = sql_storage._owned_engine
    assert engine is not None
    assert cast(QueuePool, engine.pool).checkedin() >= 1
    await sql_storage.close()
    assert cast(QueuePool, engine.pool).checkedin() == 0

    borrowed = SQLAlchemyStorage(sql_storage.sessionmaker, table_name=sql_storage.table.name)
    await borrowed.close()
    assert await borrowed.get_state(storage_key()) == "s"
    assert cast(QueuePool, engine.pool).checkedin() >= 1


async def test_sqlite_defaults_wal_busy_timeout_and_a_real_pool(tmp_path: Path) -> None:
    storage = await SQLAlchemyStorage.from_url(f"sqlite+aiosqlite:///{tmp_path}/nested/fsm.db")
    try:
        async with storage.sessionmaker() as session:
            journal = (await session.execute(text("PRAGMA journal_mode"))).scalar_one()
            busy = (await session.execute(text("PRAGMA busy_timeout"))).scalar_one()
            synchronous = (await session.execute(text("PRAGMA synchronous"))).scalar_one()
        assert journal == "wal"
        assert busy == 5000
        assert synchronous == 1  # NORMAL
        assert storage._owned_engine is not None
        assert not isinstance(storage._owned_engine.pool, StaticPool)
    finally:
        await storage.close()


async def test_sqlite_file_and_folder_are_private(tmp_path: Path) -> None:
    storage = await SQLAlchemyStorage.from_url(f"sqlite+aiosqlite:///{tmp_path}/private/fsm.db")
    await storage.set_state(storage_key(), "s")
    await storage.close()
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "private" / "fsm.db").stat().st_mode & 0o777 == 0o600


async def test_in_memory_sqlite_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="does not persist"):
        await SQLAlchemyStorage.from_url("sqlite+aiosqlite:///:memory:")


@pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True)
async def test_emptied_key_leaves_no_row_on_a_storage_built_from_a_sessionmaker(backend: Backend) -> None:
    engine = create_async_engine(backend.url)
    storage = SQLAlchemyStorage(async_sessionmaker(engine), table_name=backend.place)
    try:
        await storage.create_table()
        key = storage_key()
        await storage.set_state(key, "A:b")
        await storage.set_data(key, {"x": 1})
        await storage.set_state(key, None)
        await storage.set_data(key, {})
        assert await backend.record_ids(storage) == []
    finally:
        await engine.dispose()


@contextmanager
def sqlite_write_locked(url: str) -> Iterator[None]:
    """Another process holding SQLite's write lock: every write of the storage waits (reads still run)."""
    path = make_url(url).database
    assert path is not None
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


@pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True)
async def test_a_call_whose_caller_gave_up_is_never_run_later(backend: Backend) -> None:
    """The user was told "send it again": a write whose time bound ran out must not land once the database frees up.

    The first call is already running, waiting for the lock; the second one waits behind it.
    """
    storage = await backend.open(timeout=0.3)
    try:
        with sqlite_write_locked(backend.url):
            results = await asyncio.gather(
                storage.set_state(storage_key(1), "in flight"),
                storage.set_state(storage_key(2), "queued behind it"),
                return_exceptions=True,
            )
            assert all(isinstance(result, StorageUnavailableError) for result in results)
        await storage.set_state(storage_key(3), "after")  # runs after anything left on the storage's thread
        assert await storage.get_state(storage_key(1)) is None
        assert await storage.get_state(storage_key(2)) is None
        assert await storage.get_state(storage_key(3)) == "after"
    finally:
        await storage.close()


@pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True)
async def test_completed_responses_store_has_a_time_bound_and_speaks_storage_errors(backend: Backend) -> None:
    storages = await backend.open_storages(timeout=0.3)
    try:
        response = CompletedResponse("r1", 1, 1, {"name": "Ann"}, datetime.now(UTC))
        with sqlite_write_locked(backend.url), pytest.raises(StorageUnavailableError):
            await storages.responses.save(response)
        assert await storages.responses.for_user(1) == []
    finally:
        await storages.close()


async def test_a_table_made_by_another_fsm_storage_is_a_start_up_error(tmp_path: Path) -> None:
    """aiogram-sqlalchemy-storage's table has no `version`: refuse it at start-up, saying what to do."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        await connection.execute(
            text("CREATE TABLE aiogram_fsm_data (id VARCHAR(255) PRIMARY KEY, state VARCHAR(255), data TEXT)")
        )
    await engine.dispose()
    with pytest.raises(SchemaError, match=r"aiogram_fsm_data has no column version, updated_at"):
        await create_sql_storages(url)


class Escapes(BaseException):
    """Not an Exception: what `except Exception` lets through."""


def escape(connection: Connection) -> None:
    raise Escapes


def break_the_connection(connection: Connection) -> None:
    connection.execute(text("SELECT 1"))
    connection.connection.dbapi_connection.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True)
async def test_the_sqlite_thread_outlives_anything_a_call_raises(backend: Backend) -> None:
    """Whatever one call raises, and even a connection that breaks under it, the next calls are served."""
    storage = await backend.open(timeout=2)
    assert isinstance(storage, SQLAlchemyStorage)
    try:
        with pytest.raises(Escapes):
            await storage.run_on_connection(escape)
        with pytest.raises(sqlalchemy.exc.ProgrammingError):
            await storage.run_on_connection(break_the_connection)
        await storage.set_state(storage_key(), "still served")
        assert await storage.get_state(storage_key()) == "still served"
    finally:
        await storage.close()


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_a_responses_table_from_before_response_ids_gets_the_column(sql_storage: SQLAlchemyStorage) -> None:
    name = f"{sql_storage.table.name}_responses"
    old_table = Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("user_id", BigInteger, nullable=False),
        Column("chat_id", BigInteger, nullable=False),
        Column("answers", Text, nullable=False),
        Column("completed_at", DateTime, nullable=False),
    )
    saved_before = {"user_id": 1, "chat_id": 1, "answers": '{"name": "Old"}', "completed_at": datetime(2026, 1, 1)}

    def create_old(connection: Connection) -> None:
        old_table.create(connection)
        connection.execute(old_table.insert().values(saved_before))

    await sql_storage.run_on_connection(create_old)
    try:
        responses = SQLResponseStore(sql_storage, table_name=name)
        await responses.create_table()
        assert await responses.save(CompletedResponse("new", 1, 1, {"name": "New"}, datetime.now(UTC)))
        assert not await responses.save(CompletedResponse("new", 1, 1, {"name": "New"}, datetime.now(UTC)))
        assert [response.answers["name"] for response in await responses.for_user(1)] == ["Old", "New"]
    finally:
        await sql_storage.run_on_connection(lambda connection: old_table.drop(connection))


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_update_data_keeps_the_type_of_what_it_is_given(sql_storage: SQLAlchemyStorage) -> None:
    """True equals 1 and 1.0 in Python, but a stored True must not stay 1. (nx-27017 cannot show this for Mongo.)"""
    key = storage_key()
    await sql_storage.set_data(key, {"flag": 1, "number": 1, "nested": {"x": 1}})
    await sql_storage.update_data(key, {"flag": True, "number": 1.0, "nested": {"x": True}})
    data = await sql_storage.get_data(key)
    assert (type(data["flag"]), type(data["number"]), type(data["nested"]["x"])) == (bool, float, bool)


@pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True)
async def test_a_closed_storage_refuses_calls_instead_of_writing_another_way(backend: Backend) -> None:
    storage = await backend.open()
    await storage.close()
    with pytest.raises(ClosedError):
        await storage.set_state(storage_key(), "s")


@pytest.mark.parametrize("name", ["postgresql", "mysql"])
async def test_a_server_restart_between_calls_is_not_felt(name: str) -> None:
    """Pooled connections the server closed (a restart) cost no call: no user is asked to resend."""
    url = os.environ.get(SQL_URL_VARIABLES[name], "")
    if not url:
        pytest.skip(f"{SQL_URL_VARIABLES[name]} is not set")
    async with proxied(url, 5432 if name == "postgresql" else 3306) as (proxy, through_proxy):
        storages = await create_sql_storages(through_proxy)
        key = storage_key()
        try:
            await storages.fsm.set_state(key, "before")
            proxy.restart()
            assert await storages.fsm.get_state(key) == "before"
            await storages.fsm.set_state(key, None)
        finally:
            await storages.close()


@pytest.mark.parametrize("backend", backend_params("postgresql", "mysql"), indirect=True)
async def test_a_busy_bot_keeps_its_connections_instead_of_reopening_them(backend: Backend) -> None:
    """A new connection costs the bot a handshake and PostgreSQL a process: under load the pools keep theirs.

    With pools smaller than the handlers that may run at once, every connection
    given back beyond the pool's size was closed and opened again a moment later.
    """
    storages = await backend.open_storages()
    assert isinstance(storages.fsm, SQLAlchemyStorage)
    fsm = storages.fsm
    opened = 0

    def count(*_: object) -> None:
        nonlocal opened
        opened += 1

    for engine in fsm.engines:
        event.listen(engine, "connect", count)

    async def one_user(user_id: int) -> None:
        key = storage_key(user_id)
        for answer in range(4):
            version = (await fsm.get_versioned(key)).version
            assert await fsm.swap_state_and_data(key, version, "asking", {"answer": answer})
        await fsm.set_state_and_data(key, None, {})

    try:
        for wave in range(3):
            await asyncio.gather(*(one_user(9_000 + 50 * wave + user) for user in range(50)))
        # The pool opened at most its size, once.
        assert opened <= POOL_SIZE
    finally:
        await storages.close()


@pytest.mark.parametrize("backend", backend_params("postgresql", "mysql"), indirect=True)
async def test_a_pool_of_your_own_is_used_as_given(backend: Backend) -> None:
    """Behind PgBouncer one passes NullPool: the storage's pool sizes must not be forced on it."""
    storage = await backend.open(poolclass=NullPool)
    try:
        await storage.set_state(storage_key(), "asking")
        assert await storage.get_state(storage_key()) == "asking"
        assert isinstance(storage, SQLAlchemyStorage)
        assert isinstance(storage.engines[0].pool, NullPool)
    finally:
        await storage.close()


@pytest.mark.parametrize("backend", SQL_BACKENDS, indirect=True)
async def test_a_failed_statement_never_quotes_the_values_it_wrote(backend: Backend) -> None:
    """Error messages reach the logs; the values in them are users' answers."""
    storage = await backend.open()
    assert isinstance(storage, SQLAlchemyStorage)
    row = storage.table.insert().values(id="fsm:1:1", data='{"name": "Private Person"}', version=1)
    try:
        await storage.run_on_connection(lambda connection: connection.execute(row))
        with pytest.raises(IntegrityError) as failed:
            await storage.run_on_connection(lambda connection: connection.execute(row))
        assert "Private Person" not in str(failed.value)
    finally:
        await storage.close()
