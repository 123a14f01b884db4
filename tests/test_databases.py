"""Each test session works in databases of its own (tests/support/databases.py): two runs never share one."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.bot_process import ROOT, finish, started
from tests.support.databases import NAME, OwnDatabase, database_exists

REPORT = "SESSION_DATABASES_REPORT"  # set by the outer session for the inner one


async def current_database(url: str) -> str:
    query = "SELECT current_database()" if url.startswith("postgresql") else "SELECT DATABASE()"
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return str((await connection.execute(text(query))).scalar_one())
    finally:
        await engine.dispose()


async def test_the_session_works_in_a_new_database_on_each_configured_server(
    session_databases: list[OwnDatabase],
) -> None:
    configured = [variable for variable in ("POSTGRES_TEST_URL", "MYSQL_TEST_URL") if os.environ.get(variable)]
    assert sorted(database.variable for database in session_databases) == sorted(configured)
    for database in session_databases:
        assert os.environ[database.variable] == database.url  # what tests and the processes they start read
        assert NAME.fullmatch(database.name), database.name
        assert database.name != make_url(database.base_url).database
        assert await current_database(os.environ[database.variable]) == database.name
    if report := os.environ.get(REPORT):
        names = {database.variable: database.name for database in session_databases}
        await asyncio.to_thread(Path(report).write_text, json.dumps(names))


async def test_a_second_session_at_the_same_time_has_databases_of_its_own(
    session_databases: list[OwnDatabase], tmp_path: Path
) -> None:
    if not session_databases:
        pytest.skip("POSTGRES_TEST_URL and MYSQL_TEST_URL are both empty")
    if os.environ.get(REPORT):
        pytest.skip("the inner session")
    report = tmp_path / "inner.json"
    env = {**os.environ, REPORT: str(report)}
    env.update({database.variable: database.base_url for database in session_databases})  # as `make test` sets them
    async with started(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        f"{Path(__file__).relative_to(ROOT)}::test_the_session_works_in_a_new_database_on_each_configured_server",
        cwd=ROOT, env=env, stdout=PIPE, stderr=PIPE,
    ) as inner:  # fmt: skip
        shown, errors = await finish(inner, 90)
    assert inner.returncode == 0, shown + errors
    theirs = json.loads(report.read_text())
    for database in session_databases:
        assert theirs[database.variable] != database.name
        assert not await database_exists(database.base_url, theirs[database.variable])  # dropped at its end
        assert await database_exists(database.base_url, database.name)  # ours is untouched
