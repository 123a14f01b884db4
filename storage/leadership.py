"""Which of several polling processes on one database polls: a lock the database holds for the leader.

Any number of processes may run the bot in polling mode on one database: one
leads (polls and handles), the others stand by, started and connected, and
take over when it dies or stops. The lock only saves work and keeps each
chat's order in the normal case; correctness never depends on it (the fenced
commit and the record of applied updates keep the data right even when two
processes poll at once, as during a partition).

One implementation per backend, built by the storage factory
(`create_leadership`): a PostgreSQL advisory lock or a MySQL/MariaDB named
lock on a connection of its own (storage/sql/leadership.py), a lease document
on MongoDB (storage/mongo/leadership.py), and `flock` on a file beside a
SQLite database (here): several processes on one machine, as in a restart
without downtime.
"""

from __future__ import annotations

import asyncio
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from storage.errors import StorageUnavailableError

try:
    import fcntl
except ImportError:  # Windows: no flock, so no standby
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

# A process standing by asks for the lock this often.
ACQUIRE_POLL_SECONDS = 0.25


class Leadership(ABC):
    """The right to poll: at most one process holds it at a time (while the database keeps its locks)."""

    poll_seconds = ACQUIRE_POLL_SECONDS

    @abstractmethod
    async def try_acquire(self) -> bool:
        """Lead if nobody does (True, also when this process already leads); False at once otherwise.

        Raises StorageUnavailableError when the database does not answer.
        """

    @abstractmethod
    async def lost(self) -> None:
        """Return once another process holds the lock. Only while leading.

        While the database does not answer, this process goes on leading (and polling, as a
        single process would) and returns only if, once it answers, another took over meanwhile.
        """

    @abstractmethod
    async def release(self) -> None:
        """Stop leading (nothing if not leading) and close what this holds; a standby takes over."""

    async def acquire(self, standing_by: Callable[[], None] | None = None) -> None:
        """Wait until this process leads; call `standing_by` once if it cannot lead at once.

        A database that does not answer is waited out (a warning each time it stops answering).
        """
        waiting = False
        failing = False
        while True:
            try:
                if await self.try_acquire():
                    return
                failing = False
            except StorageUnavailableError as error:
                if not failing:
                    logger.warning("Cannot ask the database who polls (%s); trying again", error)
                failing = True
            if not waiting and standing_by is not None:
                standing_by()
            waiting = True
            await asyncio.sleep(self.poll_seconds)


class SoleLeadership(Leadership):
    """Always leads: where nothing can be locked (an in-memory SQLite database, no flock)."""

    async def try_acquire(self) -> bool:
        return True

    async def lost(self) -> None:
        await asyncio.Event().wait()

    async def release(self) -> None:
        pass


class FileLeadership(Leadership):
    """An exclusive `flock` on a file: the processes on one machine that share a SQLite database.

    The kernel lets go of it when the process exits, however it exits (kill -9 too).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._descriptor: int | None = None

    async def try_acquire(self) -> bool:
        assert fcntl is not None
        if self._descriptor is not None:
            return True
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        except BaseException:
            os.close(descriptor)
            raise
        self._descriptor = descriptor
        return True

    async def lost(self) -> None:
        await asyncio.Event().wait()  # held until released or the process ends

    async def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # and with it the lock
            self._descriptor = None


def leadership_beside(database: Path | None, name: str = "polling") -> Leadership:
    """`flock` on `<database>.<name>.leader` where the platform has it; else this process alone leads."""
    if database is None or fcntl is None:
        return SoleLeadership()
    return FileLeadership(database.with_name(f"{database.name}.{name}.leader"))
