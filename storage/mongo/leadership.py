"""Leadership on MongoDB: a lease document the leader renews.

`bot_leader` holds one document per bot, `{_id: name, holder, until, token}`:
`holder` is the leading process's random id, `until` when its lease ends
(seconds since the epoch, by the clock of the process that wrote it), and
`token` counts the leaders so far. The leader renews the lease every
`RENEW_SECONDS` for `LEASE_SECONDS`; a standby takes a lease that ran out,
so taking over from a leader that died waits out the rest of its lease (at
most `LEASE_SECONDS`). A renewal that finds the document no longer the
leader's own means another process took over: leadership is lost. While the
server does not answer, the leader goes on polling (its handlers fail as
they would with one process, and users are asked to send again) and renews
once it answers, unless another took over meanwhile. The clocks of the
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
        return True

    async def _renew(self) -> bool:
        """Extend the lease; False if it is no longer this process's (another took it over)."""
        result = await self._call(
            self._collection.update_one(
                {"_id": self.name, "holder": self.holder, "token": self.token},
                {"$set": {"until": time.time() + self.lease_seconds}},
            )
        )
        return bool(result.matched_count == 1)

    async def lost(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                if await self._renew():
                    if failing:
                        logger.info("The polling lease is renewed again")
                    failing = False
                    continue
            except StorageUnavailableError as error:
                if not failing:
                    logger.warning(
                        "Cannot renew the polling lease (%s): polling on, renewing it when it answers", error
                    )
                failing = True
                continue
            logger.warning("Leadership lost: another process took over the polling lease")
            self.token = None
            return

    async def release(self) -> None:
        if self.token is not None:
            self.token = None
            with contextlib.suppress(StorageUnavailableError):
                await self._call(self._collection.delete_one({"_id": self.name, "holder": self.holder}))
        client, self._client = self._client, None
        if client is not None:
            await close_client(client)
