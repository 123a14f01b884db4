"""Cross-process event isolation: two isolations on one database play two replicas."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiogram.fsm.storage.base import BaseEventIsolation
from pymongo.errors import AutoReconnect
from sqlalchemy.ext.asyncio import create_async_engine

from storage.errors import LockTimeoutError
from storage.mongo.client import close_client, create_client
from storage.mongo.isolation import LEASE_SECONDS, MongoEventIsolation, epoch_ms
from storage.sql.isolation import SQLEventIsolation
from tests.support.backends import MONGO_BACKENDS, Backend, backend_params, storage_key

TIMEOUT = 1.5
ROOT = Path(__file__).resolve().parent.parent


async def replicas(
    backend: Backend, wait: float = TIMEOUT, **options: Any
) -> AsyncIterator[Sequence[BaseEventIsolation]]:
    if backend.is_mongo:
        client = create_client(backend.url, backend.driver)
        yield [MongoEventIsolation(client[backend.place], timeout=wait, **options) for _ in range(2)]
        await close_client(client)
        return
    isolations = [SQLEventIsolation.from_url(backend.url, timeout=wait) for _ in range(2)]
    yield isolations
    for isolation in isolations:
        await isolation.close()


@pytest_asyncio.fixture
async def two(backend: Backend) -> AsyncIterator[Sequence[BaseEventIsolation]]:
    async for isolations in replicas(backend):
        yield isolations


SHARED = backend_params("postgresql", "mysql", *MONGO_BACKENDS)


@pytest.mark.parametrize("backend", SHARED, indirect=True)
async def test_one_key_is_handled_by_one_replica_at_a_time(two: Sequence[BaseEventIsolation]) -> None:
    inside: list[int] = []
    overlaps: list[tuple[int, ...]] = []

    async def handle(replica: int) -> None:
        async with two[replica].lock(storage_key(7)):
            inside.append(replica)
            if len(inside) > 1:
                overlaps.append(tuple(inside))
            await asyncio.sleep(0.05)
            inside.remove(replica)

    await asyncio.gather(*(handle(n % 2) for n in range(8)))
    assert overlaps == []


@pytest.mark.parametrize("backend", SHARED, indirect=True)
async def test_other_keys_do_not_wait(two: Sequence[BaseEventIsolation]) -> None:
    async with two[0].lock(storage_key(1)):
        started = time.monotonic()
        async with two[1].lock(storage_key(2)):
            assert time.monotonic() - started < TIMEOUT / 2


@pytest.mark.parametrize("backend", SHARED, indirect=True)
async def test_a_wait_too_long_gives_up_and_leaves_nothing_behind(two: Sequence[BaseEventIsolation]) -> None:
    async with two[0].lock(storage_key(3)):
        for _ in range(2):  # the second wait is on the connection the first one timed out on
            with pytest.raises(LockTimeoutError):
                async with two[1].lock(storage_key(3)):
                    pytest.fail("entered a key another replica holds")
    async with asyncio.timeout(TIMEOUT), two[1].lock(storage_key(3)):
        pass


@pytest.mark.parametrize("backend", SHARED, indirect=True)
async def test_a_replica_holding_several_users_still_keeps_each_one(two: Sequence[BaseEventIsolation]) -> None:
    """While one replica handles two users, the other replica waits for either of them.

    nx-27017 once let the second lease overwrite the first one's document (it drops
    `_id` from an update's filter that also has `$or`): the second user was then
    held by no document at all, and the other replica walked in.
    """
    async with two[0].lock(storage_key(8)), two[0].lock(storage_key(9)):
        for user in (8, 9):
            with pytest.raises(LockTimeoutError):
                async with two[1].lock(storage_key(user)):
                    pytest.fail(f"entered user {user}, whom another replica holds")


@pytest.mark.parametrize("backend", backend_params(*MONGO_BACKENDS), indirect=True)
async def test_a_dead_replicas_lease_frees_within_seconds(backend: Backend) -> None:
    async for isolation, _ in replicas(backend):
        assert isinstance(isolation, MongoEventIsolation)
        name = isolation.key_builder.build(storage_key(4), "lock")
        expires = epoch_ms() + 500
        await isolation.collection.insert_one({"_id": name, "owner": "a dead replica", "expires_at": expires})
        started = time.monotonic()
        async with isolation.lock(storage_key(4)):
            assert 0.3 < time.monotonic() - started < TIMEOUT


@pytest.mark.parametrize("backend", SHARED, indirect=True)
async def test_a_replica_killed_holding_a_lock_frees_it_within_seconds(backend: Backend) -> None:
    """kill -9 mid-handler: a SQL lock ends with the dead connection; a Mongo lease runs out (5 s)."""
    command = [sys.executable, "-m", "tests.support.lock_holder", backend.name, backend.url, backend.place]
    holder = await asyncio.create_subprocess_exec(*command, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    assert holder.stdout is not None
    try:
        async with asyncio.timeout(30):
            assert await holder.stdout.readline() == b"locked\n"
        async for isolation, _ in replicas(backend):
            with pytest.raises(LockTimeoutError):
                async with isolation.lock(storage_key(4)):
                    pytest.fail("entered a key a live replica holds")
        holder.kill()
        await holder.wait()
        async for isolation, _ in replicas(backend, wait=LEASE_SECONDS + 5):
            started = time.monotonic()
            async with isolation.lock(storage_key(4)):
                waited = time.monotonic() - started
        assert waited < (LEASE_SECONDS + 1 if backend.is_mongo else 1)
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


@pytest.mark.parametrize("backend", backend_params(*MONGO_BACKENDS), indirect=True)
async def test_a_lease_is_renewed_while_its_handler_runs(backend: Backend) -> None:
    async for first, second in replicas(backend, lease_seconds=0.6):
        async with first.lock(storage_key(5)):
            await asyncio.sleep(1.2)  # two leases long
            with pytest.raises(LockTimeoutError):
                async with second.lock(storage_key(5)):
                    pytest.fail("took a lease still being renewed")


class CutMidCommand:
    """A lease collection whose renewal is in flight when the release cancels it, and answers as `cut` says."""

    def __init__(self, cut: Callable[[], Awaitable[None]]) -> None:
        self.cut = cut
        self.in_flight = asyncio.Event()
        self.renewals_after_the_cut = 0
        self.was_cut = False

    async def update_one(self, *args: Any, upsert: bool = False, **kwargs: Any) -> None:
        if upsert:  # taking the lease
            return
        if self.was_cut:
            self.renewals_after_the_cut += 1
            return
        self.in_flight.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            self.was_cut = True
            await self.cut()

    async def delete_one(self, *args: Any, **kwargs: Any) -> None:
        pass


async def raise_a_connection_error() -> None:
    raise AutoReconnect("connection closed while the command was in flight")


async def retry_and_succeed() -> None:
    pass  # as a driver that retries a write cut mid-flight: the cancellation is gone


@pytest.mark.parametrize("cut", [raise_a_connection_error, retry_and_succeed])
async def test_a_renewal_cut_by_the_release_does_not_hold_the_lock_for_ever(
    cut: Callable[[], Awaitable[None]],
) -> None:
    """PyMongo may turn the cancellation of a command in flight into a connection error, or retry it.

    The renewal must still end when the handler is done: `lock` waits for it
    before releasing, and a renewal that carried on held the user's lock (and
    the update) for ever. Both were seen under load in the whole-bot benchmark,
    the second with three users stuck and their leases renewed for ever.
    """
    leases = CutMidCommand(cut)
    isolation = MongoEventIsolation({"fsm_locks": leases}, lease_seconds=0.03)
    released = False

    async def handle() -> None:
        nonlocal released
        async with isolation.lock(storage_key(1)):
            await asyncio.wait_for(leases.in_flight.wait(), 1)
        released = True

    handling = asyncio.create_task(handle())
    done, _ = await asyncio.wait({handling}, timeout=1)
    handling.cancel()
    assert handling in done, "the lock was never released: its renewal carried on"
    assert released
    await asyncio.sleep(0.05)  # five renewal periods
    assert leases.renewals_after_the_cut == 0


@pytest.mark.parametrize("backend", backend_params("postgresql", "mysql"), indirect=True)
async def test_users_waiting_for_a_lock_connection_are_served_in_turn(backend: Backend) -> None:
    """With every lock connection taken, the next one goes to who waited longest, not to who just gave one back."""
    engine = create_async_engine(backend.url, pool_size=1, max_overflow=0)
    isolation = SQLEventIsolation(engine, timeout=5, holders=1)
    served: list[str] = []
    first_inside = asyncio.Event()

    async def handle(who: str, key: int, updates: int) -> None:
        for _ in range(updates):
            async with isolation.lock(storage_key(key)):
                served.append(who)
                first_inside.set()
                await asyncio.sleep(0.05)

    try:
        busy = asyncio.create_task(handle("busy user", 1, 2))  # two updates, back to back
        await first_inside.wait()
        others = [asyncio.create_task(handle(f"user {key}", key, 1)) for key in (2, 3)]
        await asyncio.gather(busy, *others)
    finally:
        await engine.dispose()
    assert served == ["busy user", "user 2", "user 3", "busy user"]
