"""Which fetched updates are running or done, and the getUpdates offset that confirms only finished ones.

Telegram forgets every update below the `offset` of a getUpdates call, and
returns the others again on the next call. So the offset may pass an update
only once its handling has finished, and an update that comes back while it
is still running (or already done, waiting for a lower one) is not started
twice. (An update Telegram refuses the reply of is retried in its chat's
lane, bot/polling.py: it stays running meanwhile.)

Update ids are compared only among the updates of the batches in hand: once
an offset has confirmed all of them, the next call asks from 0 ("whatever is
left"), so Telegram starting its numbering again at a lower random value
after a week without updates cannot hide a new update behind an old offset.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class UpdateLedger:
    highest: int | None = None  # the highest id taken and not yet confirmed
    running: set[int] = field(default_factory=set)
    done: set[int] = field(default_factory=set)

    @property
    def offset(self) -> int:
        """What to ask getUpdates for next: it confirms every update below it, and only finished ones are."""
        if self.running:
            return min(self.running)
        return 0 if self.highest is None else self.highest + 1

    def take(self, update_ids: Iterable[int]) -> list[int]:
        """Of the ids getUpdates returned, those to start now."""
        started = []
        for update_id in update_ids:
            if update_id in self.running or update_id in self.done:
                continue
            self.running.add(update_id)
            self.highest = update_id if self.highest is None else max(self.highest, update_id)
            started.append(update_id)
        return started

    def finish(self, update_id: int) -> None:
        """Handling ended (done, or failed for good): the update may be confirmed."""
        self.running.discard(update_id)
        self.done.add(update_id)

    def confirmed(self, offset: int) -> None:
        """A getUpdates call with `offset` answered: Telegram has forgotten every update below it."""
        self.done = {update_id for update_id in self.done if update_id >= offset}
        if self.highest is not None and offset > self.highest:
            self.highest = None
