"""Leadership on a database server: a PostgreSQL advisory lock or a MySQL/MariaDB named lock.

The lock belongs to a connection of its own, held open for as long as this
process leads (not one of the storage's pooled connections, which come and
go). The server lets go of it when that connection ends: at once when the
process dies on a machine that lives (kill -9: the kernel closes the
socket), and after `SESSION_TIMEOUT_SECONDS` without a word from a machine
that is gone (the session is idle past its limit: PostgreSQL's
`idle_session_timeout`, from version 14, and TCP keepalives; MySQL's
`wait_timeout`). A standby then takes it.

While leading, the connection is asked every second whether it still holds
the lock. When it does not answer, the leader goes on polling (its handlers
fail as they would with one process, and users are asked to send again) and
takes the lock again on a new connection once the database answers; only
when another process holds it by then is leadership lost. Its own old
session, not yet ended by the server, is waited out.

The lock needs a session of its own: behind PgBouncer in transaction pooling
mode each statement may run on another server connection, so point the bot
at PostgreSQL itself, or at a pool in session mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Any

from sqlalchemy import Executable, text
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
# The server ends the lock's session (and so lets go of the lock) after this long without a word.
SESSION_TIMEOUT_SECONDS = 10.0
_FAILURES: tuple[type[BaseException], ...] = (*SQL_OUTAGES, DBAPIError, TimeoutError)
# MySQL's lock names are server-wide and at most 64 characters.
_MYSQL_NAME_LIMIT = 64


def advisory_key(name: str) -> int:
    """A signed 64-bit key for pg_advisory_lock, the same in every process for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class SQLLeadership(Leadership):
    """`pg_try_advisory_lock` or `GET_LOCK(name, 0)` on a connection held for the purpose."""

    check_seconds = CHECK_SECONDS

    def __init__(self, url: str, name: str) -> None:
        parsed = make_url(url)
        self.backend = parsed.get_backend_name()
        self.name = name
        timeout = int(SESSION_TIMEOUT_SECONDS)
        if self.backend == "postgresql":
            key = advisory_key(name)
            lock = "locktype = 'advisory' AND granted AND classid = :high AND objid = :low AND objsubid = 1"
            # The lock as pg_locks lists it: the key's high and low 32 bits, objsubid 1 for a bigint key.
            halves = {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF}
            self._take = text("SELECT pg_try_advisory_lock(:key)").bindparams(key=key)
            self._held = text(f"SELECT count(*) FROM pg_locks WHERE {lock} AND pid = pg_backend_pid()").bindparams(
                **halves
            )
            self._holder = text(
                f"SELECT min(pid) FROM pg_locks WHERE {lock}"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).bindparams(**halves)
            self._let_go = text("SELECT pg_advisory_unlock(:key)").bindparams(key=key)
            self._whoami = text("SELECT pg_backend_pid()")
            self._session = [
                text(f"SET idle_session_timeout = '{timeout}s'"),  # PostgreSQL 14 and later
                text("SET tcp_keepalives_idle = 5"),
                text("SET tcp_keepalives_interval = 2"),
                text("SET tcp_keepalives_count = 3"),
            ]
        else:  # MySQL, MariaDB: a lock name is server-wide, so it names the database too
            lock_name = f"{parsed.database}.{name}"
            if len(lock_name) > _MYSQL_NAME_LIMIT:
                lock_name = hashlib.sha256(lock_name.encode()).hexdigest()
            self._take = text("SELECT GET_LOCK(:name, 0)").bindparams(name=lock_name)
            self._held = text("SELECT IS_USED_LOCK(:name) = CONNECTION_ID()").bindparams(name=lock_name)
            self._holder = text("SELECT IS_USED_LOCK(:name)").bindparams(name=lock_name)
            self._let_go = text("SELECT RELEASE_LOCK(:name)").bindparams(name=lock_name)
            self._whoami = text("SELECT CONNECTION_ID()")
            self._session = [text(f"SET SESSION wait_timeout = {timeout}")]
        self._engine = create_engine_for_url(url, poolclass=NullPool)
        self._connection: AsyncConnection | None = None
        self.holder_id: int | None = None  # the server's id of the connection that holds the lock

    async def _ask(self, statement: Executable) -> Any:
        """One statement on the lock's connection (opened if need be), bounded in time."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
                if self._connection is None:
                    self._connection = await self._open()
                return await self._connection.scalar(statement)
        except _FAILURES as error:
            await self._drop_connection()
            msg = f"the polling lock's connection failed: {type(error).__name__}"
            raise StorageUnavailableError(msg) from error

    async def _open(self) -> AsyncConnection:
        connection = await self._engine.connect()
        for setting in self._session:
            try:
                await connection.execute(setting)
            except DBAPIError as error:  # an older server without the setting
                if error.connection_invalidated:
                    raise
                logger.debug("The polling lock's session goes without %s (%s)", setting, type(error).__name__)
        return connection

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
        self.holder_id = int(await self._ask(self._whoami))
        return True

    async def lost(self) -> None:
        while True:
            await asyncio.sleep(self.check_seconds)
            previous = self.holder_id
            try:
                if await self._ask(self._held):
                    continue
                logger.warning("The database no longer holds this process's polling lock")
                await self._drop_connection()
                previous = None  # it answered: no old session of ours holds the lock
            except StorageUnavailableError as error:
                logger.warning("Cannot check the polling lock (%s): polling on, taking it again when it answers", error)
            if not await self._take_again(previous):
                return
            logger.info("This process holds the polling lock again")

    async def _take_again(self, previous: int | None) -> bool:
        """Take the lock again on a new connection (True), unless another process holds it (False).

        First wait a check's time: a standby, which asks more often, takes over from a leader whose
        connection failed. The server may not have ended `previous`, this process's old session: wait for it.
        """
        while True:
            await asyncio.sleep(self.check_seconds)
            try:
                if await self.try_acquire():
                    return True
                holder = await self._ask(self._holder)
            except StorageUnavailableError:
                continue  # still out of reach
            if holder is not None and int(holder) != previous:
                logger.warning("Leadership lost: another process holds the polling lock")
                await self._drop_connection()
                return False

    async def release(self) -> None:
        if self.holder_id is not None and self._connection is not None:
            with contextlib.suppress(StorageUnavailableError):
                await self._ask(self._let_go)
        await self._drop_connection()  # closing the connection lets go of the lock anyway
        await self._engine.dispose()
