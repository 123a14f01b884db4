"""Leadership on MongoDB: a lease document the leader renews.

`bot_leader` holds one document per bot, `{_id: name, holder, until, token}`:
`holder` is the leading process's random id, `until` when its lease ends
(seconds since the epoch, by the clock of the process that wrote it), and
`token` counts the leaders so far. The leader renews the lease every
`RENEW_SECONDS` for `LEASE_SECONDS`; a standby takes a lease that ran out.
A renewal that finds the document no longer its own, or none that succeeds
before the lease runs out, means leadership is lost: the leader stops polling
no later than a standby may take over. Taking over after a leader died waits
out the rest of its lease (at most `LEASE_SECONDS`). The clocks of the
machines must agree to well within a lease (NTP does).

Three commands, never one with `$or` beside `_id` (nx-27017 loses the `_id`
then, docs/nx-27017.md; also plainer on MongoDB): renew one's own lease, take
one that ran out, or create the document (DuplicateKeyError: another holds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from pymongo.errors import DuplicateKeyError, PyMongoError

from storage.errors import StorageUnavailableError
from storage.leadership import Leadership
from storage.mongo.client import Driver, close_client, create_client

logger = logging.getLogger(__name__)

COLLECTION = "bot_leader"
LEASE_SECONDS = 1.5
RENEW_SECONDS = 0.4
CALL_TIMEOUT_SECONDS = 5.0


class MongoLeadership(Leadership):
    """A lease in `bot_leader`, renewed while leading."""

    lease_seconds = LEASE_SECONDS
    renew_seconds = RENEW_SECONDS

    def __init__(self, url: str, db_name: str, driver: Driver = "pymongo", name: str = "polling") -> None:
        self.name = name
        self.holder = uuid.uuid4().hex
        self.token: int | None = None  # this process's turn while it leads
        self._url, self._driver, self._db_name = url, driver, db_name
        self._client: Any = None  # created on first use, closed by release()
        self._until = 0.0  # the monotonic time the lease runs out, as this process counts it

    @property
    def _collection(self) -> Any:
        if self._client is None:
            self._client = create_client(self._url, self._driver)
        return self._client[self._db_name][COLLECTION]

    async def _call(self, operation: Any, timeout: float = CALL_TIMEOUT_SECONDS) -> Any:  # noqa: ASYNC109
        try:
            async with asyncio.timeout(timeout):
                return await operation
        except DuplicateKeyError:
            raise
        except (PyMongoError, TimeoutError) as error:
            msg = f"the leadership lease could not be read or written: {type(error).__name__}"
            raise StorageUnavailableError(msg) from error

    async def try_acquire(self) -> bool:
        if self.token is not None:
            return True
        started = time.monotonic()
        now = time.time()
        taken = await self._call(
            self._collection.find_one_and_update(
                {"_id": self.name, "until": {"$lt": now}},
                {"$set": {"holder": self.holder, "until": now + self.lease_seconds}, "$inc": {"token": 1}},
                projection={"token": 1},
                return_document=True,
            )
        )
        if taken is None:
            try:
                await self._call(
                    self._collection.insert_one(
                        {"_id": self.name, "holder": self.holder, "until": now + self.lease_seconds, "token": 1}
                    )
                )
            except DuplicateKeyError:
                return False  # another process's lease, still running
            taken = {"token": 1}
        self.token = int(taken["token"])
        self._until = started + self.lease_seconds
        return True

    async def _renew(self) -> bool:
        """Extend the lease; False if it is no longer this process's."""
        started = time.monotonic()
        result = await self._call(
            self._collection.update_one(
                {"_id": self.name, "holder": self.holder, "token": self.token},
                {"$set": {"until": time.time() + self.lease_seconds}},
            ),
            timeout=max(self._until - started, 0.001),
        )
        if result.matched_count != 1:
            return False
        self._until = started + self.lease_seconds
        return True

    async def lost(self) -> None:
        while True:
            await asyncio.sleep(min(self.renew_seconds, max(self._until - time.monotonic(), 0)))
            if time.monotonic() >= self._until:
                logger.warning("Leadership lost: the lease ran out before it could be renewed")
                break
            try:
                if await self._renew():
                    continue
            except StorageUnavailableError as error:
                if time.monotonic() < self._until:
                    continue  # tried again until the lease runs out
                logger.warning("Leadership lost: %s", error)
                break
            logger.warning("Leadership lost: another process took over the lease")
            break
        self.token = None

    async def release(self) -> None:
        if self.token is not None:
            self.token = None
            with contextlib.suppress(StorageUnavailableError):
                await self._call(self._collection.delete_one({"_id": self.name, "holder": self.holder}))
        client, self._client = self._client, None
        if client is not None:
            await close_client(client)
