"""One thread, one SQLite connection: how SQLAlchemyStorage talks to a SQLite file it opened itself.

SQLite has a single writer. Many connections writing at once only take turns
through the busy handler's sleeps, and the async driver hops threads several
times per statement. Here every storage call is one hop to one thread that
owns one connection. Calls that arrive while it is busy are run together in
one transaction with one commit (group commit); each call's future is settled
only after that commit, so a call never returns before its data is committed.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from storage.sql.engine import configure_sqlite

T = TypeVar("T")
MAX_BATCH = 256


@dataclass
class _Job(Generic[T]):
    operation: Callable[[Connection], T]
    context: contextvars.Context
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (its time bound ran out)
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class SQLiteWorker:
    def __init__(self, async_url: str) -> None:
        # The same file through the standard library's driver, used by one thread only.
        url = make_url(async_url).set(drivername="sqlite")
        self.engine: Engine = create_engine(url, poolclass=NullPool)
        configure_sqlite(self.engine)
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="sqlite-fsm", daemon=True)
        self._thread.start()

    async def run(self, operation: Callable[[Connection], T]) -> T:
        """Run `operation` in a transaction; return once that transaction is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        # The caller's context goes along, so its context variables (and SQLAlchemy events) see it.
        self._jobs.put(_Job(operation, contextvars.copy_context(), loop, future))
        return await future

    async def close(self) -> None:
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    def _serve(self) -> None:
        connection = self.engine.connect()
        try:
            while (job := self._jobs.get()) is not None:
                batch = [job]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        waiting = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if waiting is None:
                        stop = True
                        break
                    batch.append(waiting)
                self._run_batch(connection, batch)
                if stop:
                    break
        finally:
            connection.close()
            self.engine.dispose()

    def _run_batch(self, connection: Connection, batch: list[_Job[Any]]) -> None:
        results = []
        try:
            for job in batch:
                results.append(job.context.run(job.operation, connection))
            connection.commit()
        except Exception as error:
            connection.rollback()
            if len(batch) == 1:
                batch[0].settle(error=error)
                return
            # Run them one by one, so only the job that failed fails.
            for job in batch:
                self._run_batch(connection, [job])
            return
        for job, result in zip(batch, results, strict=True):
            job.settle(result)
