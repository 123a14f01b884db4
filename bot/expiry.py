"""Conversations untouched for FSM_TTL are removed while the bot runs, a bounded batch at a time.

On MongoDB a TTL index does the same on the server, even while no bot runs;
this sweep runs on every backend alike, so expiry does not wait for the
server's TTL monitor (once a minute) and is tested the same way everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from bot.metrics import count_storage_error, count_sweep
from config import describe_duration
from storage import FsmStorage, StorageUnavailableError

logger = logging.getLogger(__name__)

BATCH = 1000  # keys removed per statement at most: one never holds the database long
# Batches per sweep at most: while a full batch went, the next goes at once, up to this many
# (100,000 keys); users' calls take their turns between batches.
BATCHES_PER_SWEEP = 100
LONGEST_PAUSE = 600.0  # seconds between sweeps, or less for a short FSM_TTL
PAUSE_AFTER_A_FULL_SWEEP = 1.0  # more keys are waiting: go on soon, leaving room for users


async def sweep(storage: FsmStorage, ttl: timedelta, limit: int = BATCH, batches: int = 1) -> int:
    """Remove expired conversations, `limit` at a time, another batch at once while a full one went,
    at most `batches` of them; how many went (logged when any)."""
    removed = 0
    for _ in range(batches):
        went = await storage.expire(ttl, limit)
        removed += went
        if went < limit:
            break
    if removed:
        logger.info("Removed %d conversation(s) untouched for more than %s (FSM_TTL)", removed, describe_duration(ttl))
    return removed


class ExpirySweeper:
    """Sweeps from the dispatcher's startup to its shutdown (`dp.startup`, `dp.shutdown`)."""

    def __init__(self, storage: FsmStorage, ttl: timedelta) -> None:
        self.storage = storage
        self.ttl = ttl
        self.pause = min(LONGEST_PAUSE, max(ttl.total_seconds() / 4, 1.0))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="expiry")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                removed = await sweep(self.storage, self.ttl, BATCH, BATCHES_PER_SWEEP)
                count_sweep("ok", removed)
            except StorageUnavailableError as error:
                logger.warning("Expiry skipped this time: %s", error)
                count_sweep("skipped")
                count_storage_error(error, "expiry")
                removed = 0
            except Exception:
                # Expiry must never end for the rest of the run, nor take the bot down with it.
                # (At shutdown the dispatcher closes the storage before it stops this task.)
                logger.exception("Expiry failed this time; it runs again later")
                count_sweep("failed")
                removed = 0
            full = removed >= BATCH * BATCHES_PER_SWEEP
            await asyncio.sleep(PAUSE_AFTER_A_FULL_SWEEP if full else self.pause)
