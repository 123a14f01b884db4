"""Calls that arrive together go to the database together.

While one batch is at the database, the calls that arrive wait; when it
returns, they all go in the next batch. A call that finds nobody ahead of it
goes at once, in its own task, so a bot with one user waits for nothing,
while 200 users at once send a few commands instead of 200. A call returns
only after its own batch has finished: a write is acknowledged before its
caller goes on.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_BATCH = 256

# One result per item, in order: a value, or the exception that item alone failed with.
RunBatch = Callable[[list[T]], Awaitable[list[R | BaseException]]]


class Batcher(Generic[T, R]):
    """`time_bound()` gives the seconds a batch may take (None: no bound), read when the batch starts.

    A call alone runs in its caller's task, under its caller's own time bound.
    A shared batch runs in a task of its own: bounded here, so that a command
    stuck on a dead connection fails its callers and the batches after it
    still run.
    """

    def __init__(
        self,
        run: RunBatch[T, R],
        time_bound: Callable[[], float | None] = lambda: None,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._run = run
        self._time_bound = time_bound
        self._max_batch = max_batch
        self._busy = False
        self._waiting: list[tuple[T, asyncio.Future[R], contextvars.Context]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        if self._busy:
            future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._waiting.append((item, future, contextvars.copy_context()))
            return await future
        self._busy = True
        try:
            (result,) = await self._run([item])
        finally:
            self._hand_over()
        if isinstance(result, BaseException):
            raise result
        return result

    def _hand_over(self) -> None:
        if not self._waiting:
            self._busy = False
            return
        # The next batch runs in the first waiter's context (log records, benchmark counters see it).
        context = self._waiting[0][2]
        self._drainer = asyncio.get_running_loop().create_task(self._drain(), context=context)

    async def _drain(self) -> None:
        batch: list[tuple[T, asyncio.Future[R], contextvars.Context]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch :]
                try:
                    async with asyncio.timeout(self._time_bound()):
                        results = await self._run([item for item, _, _ in batch])
                except Exception as error:  # the whole batch failed: each of its callers hears it
                    results = [error] * len(batch)
                for (_, future, _), result in zip(batch, results, strict=True):
                    _settle(future, result)
                batch = []
        finally:
            # Cancelled (the loop is closing): nobody is left waiting for an answer that never comes.
            for _, future, _ in batch + self._waiting:
                future.cancel()
            self._waiting = []
            self._busy = False
            self._drainer = None


def _settle(future: asyncio.Future[R], result: R | BaseException) -> None:
    if future.done():  # its caller gave up (time bound) while the batch ran
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
