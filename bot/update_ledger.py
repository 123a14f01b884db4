"""Which fetched updates are running or done, and the getUpdates offset that confirms only finished ones.

Telegram forgets every update below the `offset` of a getUpdates call, and
returns the others again on the next call. So the offset may pass an update
only once its handling has finished, and an update that comes back while it
is still running (or already done, waiting for a lower one) is not started
twice. One that failed in a way worth retrying (Telegram unreachable) is
taken again when it comes back, a little later each time, up to a limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

MAX_ATTEMPTS = 5
RETRY_DELAY_SECONDS = 1.0


@dataclass
class UpdateLedger:
    max_attempts: int = MAX_ATTEMPTS
    retry_delay: float = RETRY_DELAY_SECONDS
    clock: Callable[[], float] = time.monotonic
    highest: int | None = None
    running: set[int] = field(default_factory=set)
    done: set[int] = field(default_factory=set)
    # Updates that failed and will be taken again: attempts so far, and not before when.
    attempts: dict[int, int] = field(default_factory=dict)
    retry_at: dict[int, float] = field(default_factory=dict)

    @property
    def offset(self) -> int:
        """What to ask getUpdates for next: it confirms every update below it, and only finished ones are."""
        unfinished = self.running | self.retry_at.keys()
        if unfinished:
            return min(unfinished)
        return 0 if self.highest is None else self.highest + 1

    def take(self, update_ids: Iterable[int]) -> list[int]:
        """Of the ids getUpdates returned, those to start now."""
        now = self.clock()
        started = []
        for update_id in update_ids:
            if update_id in self.running or update_id in self.done or self.retry_at.get(update_id, now) > now:
                continue
            self.retry_at.pop(update_id, None)
            self.running.add(update_id)
            self.highest = update_id if self.highest is None else max(self.highest, update_id)
            started.append(update_id)
        self._forget_confirmed()
        return started

    def finish(self, update_id: int, *, retry: bool = False) -> bool:
        """Handling ended; with `retry`, it failed and should run again. False when it has no tries left."""
        self.running.discard(update_id)
        if retry:
            attempts = self.attempts.get(update_id, 0) + 1
            if attempts < self.max_attempts:
                self.attempts[update_id] = attempts
                self.retry_at[update_id] = self.clock() + self.retry_delay * attempts
                return True
        self.attempts.pop(update_id, None)
        self.done.add(update_id)
        return not retry

    def _forget_confirmed(self) -> None:
        offset = self.offset
        self.done = {update_id for update_id in self.done if update_id >= offset}
