"""One handler per FSM key at a time across processes, with lease documents in MongoDB.

A lease is `{_id: key, owner, expires_at}` in the `fsm_locks` collection,
`expires_at` in milliseconds since the epoch (a number: compared the same way
by every server; nx-27017, the tests' server, stores a date given to `$set`
as text and then compares it wrongly).
A process takes it with one conditional upsert (it matches only a lease that
is free: expired, or already ours; a lease held by another process makes the
upsert collide on `_id`), renews it while the handler runs, and deletes it
only if it is still its own. A process that dies leaves a lease that expires
after `lease_seconds` (a few seconds, not the TTL monitor's minute: waiting
processes read `expires_at` themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiogram.fsm.storage.base import BaseEventIsolation, DefaultKeyBuilder, KeyBuilder, StorageKey
from aiogram.fsm.storage.memory import SimpleEventIsolation
from pymongo.errors import DuplicateKeyError

from storage.errors import DEFAULT_TIMEOUT_SECONDS, LockTimeoutError, database_call
from storage.mongo.client import MONGO_OUTAGES

LEASE_SECONDS = 5.0
RETRY_SECONDS = (0.005, 0.1)  # the first and the longest pause between two tries


class MongoEventIsolation(BaseEventIsolation):
    def __init__(
        self,
        database: Any,
        key_builder: KeyBuilder | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        lease_seconds: float = LEASE_SECONDS,
        collection_name: str = "fsm_locks",
    ) -> None:
        self.collection = database[collection_name]
        self.key_builder = key_builder or DefaultKeyBuilder()
        self.timeout = timeout
        self.lease_ms = int(lease_seconds * 1000)
        self.owner = uuid.uuid4().hex  # this process
        self.local = SimpleEventIsolation()

    @asynccontextmanager
    async def lock(self, key: StorageKey) -> AsyncIterator[None]:
        name = self.key_builder.build(key, "lock")
        async with self.local.lock(key):
            await self._acquire(name)
            released = asyncio.Event()
            renewing = asyncio.create_task(self._renew(name, released))
            try:
                yield
            finally:
                released.set()
                renewing.cancel()  # cuts a renewal in flight
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
                await self._release(name)

    @database_call(MONGO_OUTAGES)
    async def _acquire(self, name: str) -> None:
        pause = RETRY_SECONDS[0]
        deadline = None if self.timeout is None else asyncio.get_running_loop().time() + self.timeout - 0.5
        while True:
            now = epoch_ms()
            # In `$and`, not beside `_id`: nx-27017 drops `_id` from an update's filter that
            # also has `$or`, and took another key's lease instead (README, nx-27017).
            free = {"$and": [{"_id": name}, {"$or": [{"expires_at": {"$lt": now}}, {"owner": self.owner}]}]}
            try:
                await self.collection.update_one(
                    free, {"$set": {"owner": self.owner, "expires_at": now + self.lease_ms}}, upsert=True
                )
                return
            except DuplicateKeyError:  # held by another process
                pass
            if deadline is not None and asyncio.get_running_loop().time() + pause > deadline:
                msg = f"another process held the lock of {name} for more than {self.timeout} s"
                raise LockTimeoutError(msg)
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_SECONDS[1])

    async def _renew(self, name: str, released: asyncio.Event) -> None:
        """Push the lease's expiry forward every third of a lease, until `released` is set.

        The event, not the cancellation alone, ends it: PyMongo may turn the
        cancellation of a command in flight into a connection error, or retry
        the command and return as if nothing happened, and `lock` waits for
        this task before it releases.
        """
        while not await is_set_within(released, self.lease_ms / 3000):
            expires = epoch_ms() + self.lease_ms
            # A renewal that fails is settled by the next one, or by the lease's expiry.
            with contextlib.suppress(*MONGO_OUTAGES):
                await self.collection.update_one({"_id": name, "owner": self.owner}, {"$set": {"expires_at": expires}})

    @database_call(MONGO_OUTAGES)
    async def _release(self, name: str) -> None:
        await self.collection.delete_one({"_id": name, "owner": self.owner})

    async def close(self) -> None:
        pass  # the client belongs to the storage


async def is_set_within(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; whether it is set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


def epoch_ms() -> int:
    return time.time_ns() // 1_000_000
