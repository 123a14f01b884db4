"""The tables are created and upgraded once, under the database's lock, and carry a version (storage/sql/schema.py).

Each PostgreSQL and MariaDB test runs in a database of its own, created for
it and dropped afterwards: other runs share the `test` database.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    func,
    inspect,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from storage import SQLAlchemyStorage
from storage.errors import SchemaError
from storage.factory import create_sql_storages
from storage.sql.responses import SQLResponseStore
from tests.support.backends import SQL_URL_VARIABLES, backend_params, storage_key
from tests.support.bot_process import ROOT

REPLICAS = 3
ROUNDS = 5  # fresh databases per server, each raced for by every replica
BOT_TABLES = {"aiogram_fsm_data", "questionnaire_responses", "bot_forms"}
VERSIONS = "aiogram_schema_version"

# One replica: the bot's start-up (storage.factory) on each database in turn, each at an agreed moment.
REPLICA = """
import asyncio, sys, time
from storage.factory import create_sql_storages

async def start(url):
    storages = await create_sql_storages(url)
    await storages.close()

start_at, step, urls = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
failed = 0
for number, url in enumerate(urls):
    time.sleep(max(0.0, start_at + number * step - time.time()))
    try:
        asyncio.run(start(url))
    except Exception as error:
        failed += 1
        print(f"database {number}: {type(error).__name__}: {error}".splitlines()[0], flush=True)
sys.exit(1 if failed else 0)
"""


class FreshDatabases:
    """Empty databases on one server (or SQLite files), dropped at the end."""

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.folder = folder
        self.created: list[str] = []

    async def new(self) -> str:
        """The URL of a new empty database."""
        database = f"schema_{uuid.uuid4().hex[:16]}"
        if self.name == "sqlite":
            return f"sqlite+aiosqlite:///{self.folder / database}.db"
        await self._run(f"CREATE DATABASE {database}")
        self.created.append(database)
        return self._server_url().set(database=database).render_as_string(hide_password=False)

    async def drop_all(self) -> None:
        force = " WITH (FORCE)" if self.name == "postgresql" else ""
        for database in self.created:
            await self._run(f"DROP DATABASE IF EXISTS {database}{force}")

    def _server_url(self) -> URL:
        return make_url(os.environ[SQL_URL_VARIABLES[self.name]])

    async def _run(self, statement: str) -> None:
        engine = create_async_engine(self._server_url(), isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()


@pytest.fixture(params=backend_params("sqlite", "postgresql", "mysql"))
async def databases(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FreshDatabases]:
    fresh = FreshDatabases(request.param, tmp_path)
    try:
        yield fresh
    finally:
        await fresh.drop_all()


async def on(url: str, operation: Any) -> Any:
    """`operation(connection)` on the database at `url`, committed."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            return await connection.run_sync(operation)
    finally:
        await engine.dispose()


def tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def versions(connection: Connection) -> dict[str, int]:
    rows = connection.execute(text(f"SELECT table_name, version FROM {VERSIONS}"))
    return {row.table_name: row.version for row in rows}


async def test_replicas_started_at_once_on_an_empty_database_all_come_up(databases: FreshDatabases) -> None:
    """Three processes racing to create the tables: each comes up, and the tables are made once.

    With each process checking for the tables and then creating them, one of
    them regularly died (PostgreSQL: UniqueViolation on an index's name).
    """
    urls = [await databases.new() for _ in range(ROUNDS)]
    # Every replica has imported the bot by then; one database every 0.4 s.
    start_at = time.time() + 3
    replicas = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", REPLICA, str(start_at), "0.4", *urls, cwd=ROOT, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(REPLICAS)
    ]
    outputs = [(await replica.communicate())[0].decode() for replica in replicas]
    assert [replica.returncode for replica in replicas] == [0] * REPLICAS, "".join(outputs)
    for url in urls:
        assert await on(url, tables) == BOT_TABLES | {VERSIONS}
        assert set((await on(url, versions)).items()) == {
            ("aiogram_fsm_data", 1),
            ("questionnaire_responses", 1),
            ("bot_forms", 1),
        }
        storages = await create_sql_storages(url)
        try:
            await storages.fsm.set_state(storage_key(), "up")
            assert await storages.fsm.get_state(storage_key()) == "up"
        finally:
            await storages.close()


def old_tables() -> tuple[Table, Table]:
    """The FSM table from before the outbox and the responses table from before kinds, as those bots made them."""
    metadata = MetaData()
    fsm = Table(
        "aiogram_fsm_data",
        metadata,
        Column("id", String(255), primary_key=True),
        Column("state", String(255), nullable=True),
        Column("data", Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=True),
        Column("version", BigInteger, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("user_id", BigInteger, nullable=True),
        Index("ix_aiogram_fsm_data_updated_at", "updated_at"),
        Index("ix_aiogram_fsm_data_user_id", "user_id"),
        mysql_charset="utf8mb4",
    )
    responses = Table(
        "questionnaire_responses",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("response_id", String(64), nullable=True),
        Column("user_id", BigInteger, nullable=False, index=True),
        Column("chat_id", BigInteger, nullable=False),
        Column("answers", Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False),
        Column("completed_at", DateTime(), nullable=False),
        Index("uq_questionnaire_responses_response_id", "response_id", unique=True),
        mysql_charset="utf8mb4",
    )
    return fsm, responses


async def test_tables_from_before_versions_are_upgraded_in_place_with_their_rows(databases: FreshDatabases) -> None:
    url = await databases.new()
    fsm, responses = old_tables()
    key = storage_key(7)
    answers = {"name": "Анна", "age": 30}
    named = '{"name": "Анна"}'  # as the bot wrote it (orjson: not escaped)

    def create_old(connection: Connection) -> None:
        fsm.metadata.create_all(connection)
        connection.execute(
            fsm.insert(),
            [
                {"id": "fsm:7:7", "state": "Questionnaire:age", "data": named, "version": 11, "user_id": 7},
                {"id": "fsm:8:8", "state": None, "data": '{"n": 1}', "version": 12, "user_id": None},
            ],
        )
        connection.execute(
            responses.insert().values(
                response_id="r7", user_id=7, chat_id=7, answers=json.dumps(answers), completed_at=datetime(2026, 1, 2)
            )
        )

    await on(url, create_old)
    storages = await create_sql_storages(url)
    try:
        assert await storages.fsm.get_state_and_data(key) == ("Questionnaire:age", {"name": "Анна"})
        [saved] = await storages.responses.for_user(7)
        assert (saved.response_id, saved.kind, saved.answers) == ("r7", "questionnaire", answers)
    finally:
        await storages.close()

    def upgraded(connection: Connection) -> dict[str, Any]:
        inspector = inspect(connection)
        rows = connection.execute(
            text(
                "SELECT id, state, data, version, user_id, outbox_queued, outbox_sent, outbox_due"
                " FROM aiogram_fsm_data ORDER BY id"
            )
        )
        return {
            "rows": [tuple(row) for row in rows],
            "columns": {c["name"]: c["nullable"] for c in inspector.get_columns("aiogram_fsm_data")},
            "fsm indexes": {index["name"] for index in inspector.get_indexes("aiogram_fsm_data")},
            "response columns": {c["name"] for c in inspector.get_columns("questionnaire_responses")},
            "response indexes": {index["name"] for index in inspector.get_indexes("questionnaire_responses")},
            "versions": versions(connection),
        }

    found = await on(url, upgraded)
    assert found["rows"] == [
        ("fsm:7:7", "Questionnaire:age", named, 11, 7, 0, 0, None),
        ("fsm:8:8", None, '{"n": 1}', 12, None, 0, 0, None),
    ]
    assert {name: found["columns"][name] for name in ("outbox_queued", "outbox_sent", "outbox_due")} == {
        "outbox_queued": False,
        "outbox_sent": False,
        "outbox_due": True,
    }
    assert "ix_aiogram_fsm_data_outbox_due" in found["fsm indexes"]
    assert "kind" in found["response columns"]
    assert "ix_questionnaire_responses_completed_at" in found["response indexes"]
    assert found["versions"] == {"aiogram_fsm_data": 1, "questionnaire_responses": 1, "bot_forms": 1}


def ddl_and_locks(statements: list[str]) -> list[str]:
    writes = ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE", "BEGIN")
    return [s for s in statements if s.lstrip().upper().startswith(writes) or "LOCK(" in s.upper()]


async def test_a_process_finding_the_current_version_only_reads(databases: FreshDatabases) -> None:
    url = await databases.new()
    await (await create_sql_storages(url)).close()
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])  # (connection, cursor, statement, ...)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        await (await create_sql_storages(url)).close()
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert statements
    assert ddl_and_locks(statements) == []


async def test_a_schema_newer_than_the_bot_stops_it_with_one_line(databases: FreshDatabases) -> None:
    url = await databases.new()
    await (await create_sql_storages(url)).close()
    await on(url, lambda c: c.execute(text(f"UPDATE {VERSIONS} SET version = 2 WHERE table_name = 'aiogram_fsm_data'")))
    with pytest.raises(SchemaError) as refused:
        await create_sql_storages(url)
    assert str(refused.value) == (
        "the table aiogram_fsm_data is at schema version 2, this bot knows up to 1: "
        "a newer release of the bot upgraded the database; run that release (or newer)"
    )
    assert await on(url, versions) == {"aiogram_fsm_data": 2, "questionnaire_responses": 1, "bot_forms": 1}


async def test_tables_of_your_own_names_on_an_engine_of_your_own(databases: FreshDatabases) -> None:
    """The seed API: SQLAlchemyStorage(sessionmaker, metadata, table_name=...) and create_table(), in a transaction."""
    url = await databases.new()
    engine = create_async_engine(url)  # not AUTOCOMMIT: the set-up commits before letting the lock go
    storage = SQLAlchemyStorage(async_sessionmaker(engine), MetaData(), table_name="custom_fsm")
    try:
        await storage.create_table()
        await SQLResponseStore(storage, table_name="custom_responses", forms_table_name="custom_forms").create_table()
        await storage.set_state(storage_key(), "asking")
        assert await on(url, versions) == {"custom_fsm": 1, "custom_responses": 1, "custom_forms": 1}
        # A table dropped by hand is made again, though its version is recorded.
        await on(url, lambda c: c.execute(text("DROP TABLE custom_fsm")))
        await storage.create_table()
        assert await storage.get_state(storage_key()) is None
    finally:
        await engine.dispose()


async def owners_command(url: str, *args: str) -> tuple[int, str, str]:
    """`python main.py ARGS` on the database at `url`: exit code, stdout, stderr."""
    clean = {k: v for k, v in os.environ.items() if k not in {"STORAGE", "DATABASE_URL", "MONGO_URL", "MONGO_DB"}}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "main.py"), "--env-file", os.devnull, *args,
        env={**clean, "DATABASE_URL": url}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    shown, errors = await process.communicate()
    assert process.returncode is not None
    return process.returncode, shown.decode(), errors.decode()


async def test_stats_and_export_leave_a_database_the_bot_never_used_as_it_is(databases: FreshDatabases) -> None:
    """They only read (a read-only role will do): on a database without the bot's tables they say
    so in a line and make none; once the bot has started there, they read it."""
    url = await databases.new()
    if databases.name == "sqlite":
        await asyncio.to_thread(Path(make_url(url).database or "").touch)  # a file, empty: no tables
    for command in ("stats", "export"):
        code, shown, errors = await owners_command(url, command)
        assert (code, shown) == (2, "")
        assert errors.startswith("error: cannot use the database: the database at ")
        assert errors.endswith(
            " does not hold this bot's tables, or holds older ones: the bot makes and upgrades them when it "
            "starts; start it once, or check DATABASE_URL\n"
        )
    assert await on(url, tables) == set()

    await (await create_sql_storages(url)).close()  # the bot's start
    code, shown, errors = await owners_command(url, "stats")
    assert (code, errors) == (0, "")
    assert await on(url, tables) == BOT_TABLES | {VERSIONS}
