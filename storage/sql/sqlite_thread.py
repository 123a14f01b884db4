"""One thread, one SQLite connection: how the storages talk to a SQLite file the bot opened itself.

SQLite has a single writer. Many connections writing at once only take turns
through the busy handler's sleeps, and the async driver hops threads several
times per statement. Here each call is one hop to one thread that owns one
connection and runs the call in one transaction of its own. The FSM storage
and the completed-responses store share it, so a bot writes its file through
one connection only.

A call whose caller has given up (its time bound ran out) is never committed
later: the user was told to send it again. Not started yet, it is dropped;
already running (say, waiting for another process's write lock), it is
rolled back instead of committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from storage.sql.engine import configure_sqlite

T = TypeVar("T")


class _CallerGaveUp(Exception):
    """Nobody waits for this transaction's result any more: it is rolled back."""


class SQLiteThread:
    def __init__(self, async_url: str) -> None:
        # The same file through the standard library's driver, used by one thread only.
        url = make_url(async_url).set(drivername="sqlite")
        self.engine: Engine = create_engine(url, poolclass=NullPool)
        configure_sqlite(self.engine)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._connection: Connection | None = None

    async def run(self, operation: Callable[[Connection], T]) -> T:
        """Run `operation` in a transaction of its own; return once it is committed."""
        # The caller's context goes along, so its context variables (and SQLAlchemy events) see it.
        context = contextvars.copy_context()
        gave_up = threading.Event()
        try:
            # Cancelling the awaiting task cancels the job too, if the thread has not started it.
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, context.run, self._transaction, operation, gave_up
            )
        except asyncio.CancelledError:
            gave_up.set()
            raise

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=True)
        self.engine.dispose()

    def _transaction(self, operation: Callable[[Connection], T], gave_up: threading.Event) -> T:
        connection = self._connection or self._connect()
        try:
            result = operation(connection)
            if gave_up.is_set():
                raise _CallerGaveUp
            connection.commit()
        except BaseException:
            try:
                connection.rollback()
            except Exception:  # the connection itself is broken: the next call opens a new one
                self._disconnect()
            raise
        return result

    def _connect(self) -> Connection:
        self._connection = self.engine.connect()
        return self._connection

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):  # already broken: nothing left to release
                connection.close()
