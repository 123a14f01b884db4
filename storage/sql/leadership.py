"""Leadership on a database server: a PostgreSQL advisory lock or a MySQL/MariaDB named lock.

The lock belongs to a connection of its own, held open for as long as this
process leads (not one of the storage's pooled connections, which come and
go). The server lets go of it when that connection ends, so a process killed
with SIGKILL, or a machine that is gone, leaves it to a standby as soon as
the server sees the connection closed. While leading, the connection is
asked every second whether it still holds the lock; no answer within a few
seconds, or a no, means leadership is lost.

The lock needs a session of its own: behind PgBouncer in transaction pooling
mode each statement may run on another server connection, so point the bot
at PostgreSQL itself, or at a pool in session mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import NullPool

from storage.errors import StorageUnavailableError
from storage.leadership import Leadership
from storage.sql.engine import SQL_OUTAGES, create_engine_for_url

logger = logging.getLogger(__name__)

# While leading, ask whether the lock is still held this often, waiting this long for the answer.
CHECK_SECONDS = 1.0
CALL_TIMEOUT_SECONDS = 5.0
_FAILURES: tuple[type[BaseException], ...] = (*SQL_OUTAGES, DBAPIError, TimeoutError)
# MySQL's lock names are server-wide and at most 64 characters.
_MYSQL_NAME_LIMIT = 64


def advisory_key(name: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, the same in every process for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class SQLLeadership(Leadership):
    """`pg_try_advisory_lock` or `GET_LOCK(name, 0)` on a connection held for the purpose."""

    def __init__(self, url: str, name: str) -> None:
        parsed = make_url(url)
        self.backend = parsed.get_backend_name()
        self.name = name
        if self.backend == "postgresql":
            key = advisory_key(name)
            self._take = text("SELECT pg_try_advisory_lock(:key)").bindparams(key=key)
            # The lock as pg_locks lists it: the key's high and low 32 bits, objsubid 1 for a bigint key.
            self._held = text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                " AND granted AND classid = :high AND objid = :low AND objsubid = 1"
            ).bindparams(high=(key >> 32) & 0xFFFFFFFF, low=key & 0xFFFFFFFF)
            self._let_go = text("SELECT pg_advisory_unlock(:key)").bindparams(key=key)
            self._whoami = text("SELECT pg_backend_pid()")
        else:  # MySQL, MariaDB: a lock name is server-wide, so it names the database too
            lock_name = f"{parsed.database}.{name}"
            if len(lock_name) > _MYSQL_NAME_LIMIT:
                lock_name = hashlib.sha256(lock_name.encode()).hexdigest()
            self._take = text("SELECT GET_LOCK(:name, 0)").bindparams(name=lock_name)
            self._held = text("SELECT IS_USED_LOCK(:name) = CONNECTION_ID()").bindparams(name=lock_name)
            self._let_go = text("SELECT RELEASE_LOCK(:name)").bindparams(name=lock_name)
            self._whoami = text("SELECT CONNECTION_ID()")
        self._engine = create_engine_for_url(url, poolclass=NullPool)
        self._connection: AsyncConnection | None = None
        self.holder_id: int | None = None  # the server's id of the connection that holds the lock

    async def _ask(self, statement: object) -> object:
        """One statement on the lock's connection (opened if need be), bounded in time."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
                if self._connection is None:
                    self._connection = await self._engine.connect()
                return await self._connection.scalar(statement)  # type: ignore[call-overload]
        except _FAILURES as error:
            await self._drop_connection()
            msg = f"the leadership lock's connection failed: {type(error).__name__}"
            raise StorageUnavailableError(msg) from error

    async def _drop_connection(self) -> None:
        connection, self._connection, self.holder_id = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.invalidate()
            with contextlib.suppress(Exception):
                await connection.close()

    async def try_acquire(self) -> bool:
        if self.holder_id is not None:
            return True
        if not await self._ask(self._take):
            return False
        holder = await self._ask(self._whoami)
        self.holder_id = int(holder)  # type: ignore[call-overload]
        return True

    async def lost(self) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            try:
                held = await self._ask(self._held)
            except StorageUnavailableError as error:
                logger.warning("Leadership lost: %s", error)
                return
            if not held:
                logger.warning("Leadership lost: the database no longer holds this process's lock")
                await self._drop_connection()
                return

    async def release(self) -> None:
        if self.holder_id is not None and self._connection is not None:
            with contextlib.suppress(StorageUnavailableError):
                await self._ask(self._let_go)
        await self._drop_connection()  # closing the connection lets go of the lock anyway
        await self._engine.dispose()
