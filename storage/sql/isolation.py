"""One handler per FSM key at a time across processes, with the SQL server's own locks.

aiogram's `SimpleEventIsolation` orders one user's updates inside one
process. Webhook replicas behind a load balancer are several processes:
this isolation takes a lock in the database as well, around the FSM
middleware's read, for as long as the handler runs.

- PostgreSQL: `pg_advisory_xact_lock` on a 64-bit hash of the key, in a
  transaction of its own (released by its COMMIT or ROLLBACK, so never left
  behind on a pooled connection), bounded by `lock_timeout` (set once on
  each of the lock engine's connections).
- MySQL / MariaDB: `GET_LOCK` on a 44-character name made from the key
  (names may be at most 64 characters), released by `RELEASE_LOCK`; the
  server frees it too if the connection drops.

The locks run on an engine of their own, so handlers holding a lock never
take the connections the storage needs. Within a process an asyncio lock per
key comes first: one connection per key waits, not one per update.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiogram.fsm.storage.base import BaseEventIsolation, DefaultKeyBuilder, KeyBuilder, StorageKey
from aiogram.fsm.storage.memory import SimpleEventIsolation
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from storage.errors import DEFAULT_TIMEOUT_SECONDS, LockTimeoutError, database_call
from storage.sql.engine import SQL_OUTAGES, retried_on_a_closed_connection

logger = logging.getLogger(__name__)

# Held connections: one per user whose update is being handled in this process, at most
# ten; more users wait for one (up to the timeout). All are kept once opened, as the
# storage's own are (storage/sql/engine.py). With the storage's 15 that is 25 connections
# a replica: three replicas fit PostgreSQL's default of 100.
HOLDERS = 10
POSTGRES_LOCK_NOT_AVAILABLE = "55P03"
CONNECTION_LOST: tuple[type[BaseException], ...] = (DBAPIError, *SQL_OUTAGES)


class SQLEventIsolation(BaseEventIsolation):
    def __init__(
        self,
        engine: AsyncEngine,
        key_builder: KeyBuilder | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        holders: int = HOLDERS,
    ) -> None:
        """`holders`: how many handlers of this process may hold a lock at once (one connection each)."""
        dialect = engine.dialect.name
        if dialect not in ("postgresql", "mysql", "mariadb"):
            msg = f"no cross-process locks on {dialect}: use aiogram's SimpleEventIsolation"
            raise ValueError(msg)
        self.engine = engine
        self.key_builder = key_builder or DefaultKeyBuilder()
        self.timeout = timeout
        self.local = SimpleEventIsolation()
        # Users wait for a lock connection here, first come first served. The pool's own
        # queue lets a task that just gave a connection back take it again at once: with 50
        # users at once some waited 3 s (p99) while others went round and round; 0.34 s here.
        self.connection_slots = asyncio.Semaphore(holders)
        self._owned = False
        if dialect == "postgresql":
            event.listen(engine.sync_engine, "connect", self._set_lock_timeout)

    def _set_lock_timeout(self, dbapi_connection: Any, _record: Any) -> None:
        """Bound every lock wait on this engine's connections, once per connection (not per lock)."""
        wait = self._wait_seconds()
        milliseconds = 0 if wait is None else int(wait * 1000)  # 0: wait for ever
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET lock_timeout = {milliseconds}")
        cursor.close()
        # Committed: a SET inside a transaction that is later rolled back (the one that
        # timed out waiting for a lock, say) would be undone with it.
        dbapi_connection.commit()

    @classmethod
    def from_url(
        cls, url: str, timeout: float | None = DEFAULT_TIMEOUT_SECONDS, holders: int = HOLDERS
    ) -> SQLEventIsolation:
        engine = create_async_engine(
            url,
            pool_size=holders,  # one connection per holder, kept once opened
            max_overflow=0,
            pool_timeout=timeout or 30,
            # No ping per checkout: a connection the server closed is retried once (`_locked`).
            pool_pre_ping=False,
        )
        isolation = cls(engine, timeout=timeout, holders=holders)
        isolation._owned = True
        return isolation

    def _wait_seconds(self) -> float | None:
        # The database's own wait ends first, so a timeout is reported as the lock's.
        return None if self.timeout is None else max(self.timeout - 0.5, 0.1)

    @asynccontextmanager
    async def lock(self, key: StorageKey) -> AsyncIterator[None]:
        name = self.key_builder.build(key, "lock")
        async with self.local.lock(key):
            connection = await self._locked(name)
            try:
                yield
            finally:
                await self._unlock(connection, name)

    @database_call(SQL_OUTAGES)
    async def _locked(self, name: str) -> AsyncConnection:
        """A connection that holds the lock on `name`; LockTimeoutError if another process keeps it."""
        await self.connection_slots.acquire()  # given back by _unlock
        try:
            return await retried_on_a_closed_connection(lambda: self._lock_on_a_connection(name))
        except BaseException:
            self.connection_slots.release()
            raise

    async def _lock_on_a_connection(self, name: str) -> AsyncConnection:
        connection = await self.engine.connect()
        try:
            if self.engine.dialect.name == "postgresql":
                await connection.begin()
                await connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": postgres_lock_id(name)})
                return connection
            wait = self._wait_seconds()
            got = await connection.scalar(
                text("SELECT GET_LOCK(:name, :seconds)"),
                {"name": mysql_lock_name(name), "seconds": -1 if wait is None else wait},
            )
            if got != 1:
                raise LockTimeoutError(lock_timeout_message(name, self.timeout))
            return connection
        except DBAPIError as error:
            await connection.close()
            if getattr(error.orig, "sqlstate", None) == POSTGRES_LOCK_NOT_AVAILABLE:
                raise LockTimeoutError(lock_timeout_message(name, self.timeout)) from None
            raise
        except BaseException:
            await connection.close()
            raise

    async def _unlock(self, connection: AsyncConnection, name: str) -> None:
        try:
            if self.engine.dialect.name == "postgresql":
                await connection.commit()  # ends the transaction, and with it the lock
            else:
                await connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": mysql_lock_name(name)})
        except CONNECTION_LOST as error:
            # The connection is gone, and the server ended its locks with it; the handler's own
            # outcome (saved, or "send it again") stands.
            logger.warning("Lock %s released by its lost connection: %s", name, type(error).__name__)
            await connection.invalidate()
        finally:
            await connection.close()
            self.connection_slots.release()

    async def close(self) -> None:
        if self._owned:
            await self.engine.dispose()


def postgres_lock_id(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def mysql_lock_name(name: str) -> str:
    return "fsm:" + hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()


def lock_timeout_message(name: str, timeout: float | None) -> str:
    return f"another process held the lock of {name} for more than {timeout} s"
