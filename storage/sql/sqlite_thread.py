"""One thread, one SQLite connection: how the storages talk to a SQLite file the bot opened itself.

SQLite has a single writer. Many connections writing at once only take turns
through the busy handler's sleeps, and the async driver hops threads several
times per statement. Here each call is one hop to one thread that owns one
connection and runs the call in one transaction of its own. The FSM storage
and the completed-responses store share it, so a bot writes its file through
one connection only. Calls that arrive while the thread is busy run one
after another, each in its own transaction, and their callers are woken
together when the queue is empty, or at the latest a millisecond after the
first of them finished: one wake-up of the event loop for many calls.

A call whose caller has given up (its time bound ran out) is never committed
later: the user was told to send it again. Not started yet, it is dropped;
already running (say, waiting for another process's write lock), it is
rolled back instead of committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from storage.sql.engine import configure_sqlite

T = TypeVar("T")
# Callers of finished calls are woken together, but never later than this after the first finished.
MAX_WAKE_DELAY = 0.001


class _CallerGaveUp(Exception):
    """Nobody waits for this transaction's result any more: it is rolled back."""


class ClosedError(RuntimeError):
    """The storage was closed: nothing more runs on its SQLite thread."""


@dataclass
class _Call(Generic[T]):
    operation: Callable[[Connection], T]
    context: contextvars.Context
    future: asyncio.Future[T]
    gave_up: bool = False  # set by the caller's task, read by the thread
    outcome: tuple[Any, BaseException | None] = field(default=(None, None))


class SQLiteThread:
    def __init__(self, async_url: str) -> None:
        # The same file through the standard library's driver, used by one thread only.
        url = make_url(async_url).set(drivername="sqlite")
        self.engine: Engine = create_engine(url, poolclass=NullPool, hide_parameters=True)
        configure_sqlite(self.engine)
        self._calls: queue.SimpleQueue[_Call[Any] | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="sqlite", daemon=True)
        self._thread.start()

    async def run(self, operation: Callable[[Connection], T]) -> T:
        """Run `operation` in a transaction of its own; return once it is committed."""
        if self._closed:
            raise ClosedError("the storage is closed")
        # The caller's context goes along, so its context variables (and SQLAlchemy events) see it.
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        call = _Call(operation, contextvars.copy_context(), future)
        self._calls.put(call)
        try:
            return await future
        except asyncio.CancelledError:
            call.gave_up = True
            raise

    async def close(self) -> None:
        self._closed = True
        self._calls.put(None)
        await asyncio.to_thread(self._thread.join)
        self.engine.dispose()

    def _serve(self) -> None:
        connection: Connection | None = None
        finished: list[_Call[Any]] = []  # callers not woken yet
        first_finished_at = 0.0
        while True:
            try:
                call = self._calls.get_nowait() if finished else self._calls.get()
            except queue.Empty:  # nothing else waiting: wake the callers of what ran
                self._wake(finished)
                finished = []
                continue
            if call is None:
                break
            if finished and time.monotonic() - first_finished_at > MAX_WAKE_DELAY:
                self._wake(finished)  # a long queue (or a call stuck on a lock) must not hold them
                finished = []
            connection = self._transaction(connection, call)
            if not finished:
                first_finished_at = time.monotonic()
            finished.append(call)
        self._wake(finished)
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()
        # Anything queued behind the stop: its callers must not wait out their time bounds.
        left = []
        with contextlib.suppress(queue.Empty):
            while (call := self._calls.get_nowait()) is not None:
                call.outcome = (None, ClosedError("the storage was closed"))
                left.append(call)
        self._wake(left)

    def _wake(self, calls: list[_Call[Any]]) -> None:
        """Settle `calls` on their event loops: one wake-up per loop for all of them."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Call[Any]]] = {}
        for call in calls:
            by_loop.setdefault(call.future.get_loop(), []).append(call)
        for loop, waiting in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there any more
                loop.call_soon_threadsafe(_settle, waiting)

    def _transaction(self, connection: Connection | None, call: _Call[Any]) -> Connection | None:
        """Run one call; the connection to use next (None when this one broke: the next call opens another)."""
        if call.gave_up:
            call.outcome = (None, _CallerGaveUp())
            return connection
        try:
            connection = connection or self.engine.connect()
            result = call.context.run(call.operation, connection)
            if call.gave_up:
                raise _CallerGaveUp
            connection.commit()
        except BaseException as error:  # whatever it is, it is the caller's: the thread goes on
            call.outcome = (None, error)
            try:
                if connection is not None:
                    connection.rollback()
            except Exception:
                with contextlib.suppress(Exception):
                    connection.close()  # type: ignore[union-attr]
                return None
            return connection
        call.outcome = (result, None)
        return connection


def _settle(calls: list[_Call[Any]]) -> None:
    for call in calls:
        if call.future.done():  # its caller gave up
            continue
        result, error = call.outcome
        if error is None:
            call.future.set_result(result)
        else:
            call.future.set_exception(error)
