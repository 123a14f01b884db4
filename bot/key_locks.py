"""One update per FSM key at a time within this process; a key's lock lives only while it is used.

aiogram's `SimpleEventIsolation` keeps a lock for every key it ever saw, so
its memory grows with every user. Here a lock is dropped as soon as nobody
holds or waits for it.

This lock only saves work: two handlers of one key in this process would
otherwise both run and one of them lose the fenced commit
(`FsmStorage.swap_state_and_data`) and run again. Correctness never depends
on it, so no lock is taken across processes: replicas and the old and new
process of a deploy are kept apart by the fence alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiogram.fsm.storage.base import BaseEventIsolation, StorageKey


class KeyLocks(BaseEventIsolation):
    def __init__(self) -> None:
        self._locks: dict[StorageKey, asyncio.Lock] = {}
        self._users: dict[StorageKey, int] = {}  # holders and waiters of each lock

    @asynccontextmanager
    async def lock(self, key: StorageKey) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]

    @property
    def held(self) -> int:
        """How many keys have a lock now (held or waited for)."""
        return len(self._locks)

    async def close(self) -> None:
        pass
