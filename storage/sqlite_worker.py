"""One thread, one SQLite connection: how SQLAlchemyStorage talks to a SQLite file it opened itself.

SQLite has a single writer. Many connections writing at once only take turns
through the busy handler's sleeps; and the async driver hops threads several
times per statement. Here every call of the storage is one hop to one thread
that owns one connection, runs the call's statements and commits: calls from
any number of users queue up and never wait on each other's locks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from storage.sql_engine import configure_sqlite

T = TypeVar("T")


class SQLiteWorker:
    def __init__(self, async_url: str) -> None:
        # The same file through the standard library's driver, for use in one thread.
        url = make_url(async_url).set(drivername="sqlite")
        self._engine: Engine = create_engine(url, poolclass=NullPool)
        configure_sqlite(self._engine)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-fsm")
        self._connection: Connection | None = None

    async def run(self, operation: Callable[[Connection], T]) -> T:
        """Run `operation` on the connection in one transaction, committed before this returns."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, operation)

    def _call(self, operation: Callable[[Connection], T]) -> T:
        if self._connection is None:
            self._connection = self._engine.connect()
        try:
            result = operation(self._connection)
        except BaseException:
            self._connection.rollback()
            raise
        self._connection.commit()
        return result

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=False)

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._engine.dispose()
