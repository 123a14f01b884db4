"""A database of the session's own on each configured SQL server, so two runs on one machine never meet.

POSTGRES_TEST_URL and MYSQL_TEST_URL (the Makefile's) name a server and a
database to connect to; the session creates `test_<8 hex>` there (with the
pytest-xdist worker's id after it, under xdist: one database per worker),
points the variable at it for the whole session, subprocesses included, and
drops it at the end. A configured server that does not answer fails the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from collections.abc import Coroutine, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import URL, make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from tests.support.backends import SQL_URL_VARIABLES

NAME = re.compile(r"test_[0-9a-f]{8}(_gw\d+)?")
DROP_SECONDS = 60
T = TypeVar("T")


@dataclass(frozen=True)
class OwnDatabase:
    variable: str  # POSTGRES_TEST_URL or MYSQL_TEST_URL
    base_url: str  # as configured: where CREATE DATABASE runs
    url: str  # the session's own database on that server

    @property
    def name(self) -> str:
        return str(make_url(self.url).database)


def database_name() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1... under pytest-xdist
    return f"test_{uuid.uuid4().hex[:8]}" + (f"_{worker}" if worker else "")


def _render(url: URL) -> str:
    return url.render_as_string(hide_password=False)


async def _create_on(connection: AsyncConnection, dialect: str, name: str) -> None:
    """CREATE DATABASE `name` with the base database's encoding and collation."""
    if dialect == "postgresql":
        row = (
            await connection.execute(
                text(
                    "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database"
                    " WHERE datname = current_database()"
                )
            )
        ).one()
        encoding, collate, ctype = (str(value).replace("'", "''") for value in row)
        await connection.execute(
            text(
                f"CREATE DATABASE {name} TEMPLATE template0 ENCODING '{encoding}'"
                f" LC_COLLATE '{collate}' LC_CTYPE '{ctype}'"
            )
        )
        return
    row = (await connection.execute(text("SELECT @@character_set_database, @@collation_database"))).one()
    charset, collation = (re.sub(r"\W", "", str(value)) for value in row)
    await connection.execute(text(f"CREATE DATABASE {name} CHARACTER SET {charset} COLLATE {collation}"))


async def create_database(base_url: str, name: str) -> str:
    """Create `name` on the server `base_url` names; its URL. A server that does not answer raises."""
    url = make_url(base_url)
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await _create_on(connection, url.get_backend_name(), name)
    finally:
        await engine.dispose()
    return _render(url.set(database=name))


async def drop_database(base_url: str, name: str) -> None:
    """Drop `name` (connected to the base database), with whatever connections are still open to it."""
    url = make_url(base_url)
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            if url.get_backend_name() == "postgresql":
                await connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            else:
                await connection.execute(text(f"SET SESSION lock_wait_timeout = {DROP_SECONDS}"))
                await connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
    finally:
        await engine.dispose()


async def database_exists(base_url: str, name: str) -> bool:
    url = make_url(base_url)
    if url.get_backend_name() == "postgresql":
        query = text("SELECT count(*) FROM pg_database WHERE datname = :name")
    else:
        query = text("SELECT count(*) FROM information_schema.schemata WHERE schema_name = :name")
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return bool((await connection.execute(query, {"name": name})).scalar_one())
    finally:
        await engine.dispose()


def run_apart(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on a loop of its own, leaving the thread's current loop (pytest-asyncio's) alone."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


@contextlib.contextmanager
def own_databases(environ: MutableMapping[str, str] = os.environ) -> Iterator[list[OwnDatabase]]:
    """A new database on each configured server, its URL in `environ` until the end, then dropped.

    A server that does not answer raises (after dropping what was created already).
    """
    created: list[OwnDatabase] = []
    try:
        for variable in SQL_URL_VARIABLES.values():
            base_url = environ.get(variable)
            if not base_url:
                continue  # left out, as everywhere
            try:
                url = run_apart(create_database(base_url, database_name()))
            except Exception as error:
                shown = make_url(base_url).render_as_string(hide_password=True)
                msg = f"{variable} ({shown}) is configured but the session cannot create its database there: {error}"
                raise RuntimeError(msg) from error
            created.append(OwnDatabase(variable, base_url, url))
            environ[variable] = url
        yield created
    finally:
        failures: list[Exception] = []
        for database in reversed(created):
            environ[database.variable] = database.base_url
            try:
                run_apart(drop_database(database.base_url, database.name))
            except Exception as error:  # the next one is dropped all the same
                failures.append(error)
        if failures:
            msg = "the session's own databases were not all dropped"
            raise ExceptionGroup(msg, failures)
