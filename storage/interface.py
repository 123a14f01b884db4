"""What the bot asks of its storages, whatever the database: the aiogram side (handlers and the
factory see only this). The records side, which the owner's commands use without aiogram, is
storage/records.py."""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol, runtime_checkable

from aiogram.fsm.storage.base import BaseStorage, KeyBuilder, StateType, StorageKey

from storage.errors import CorruptDataError
from storage.records import FsmRecords


class Versioned(NamedTuple):
    """A key's state and data as read, with the version a fenced write compares against."""

    state: str | None
    # Unreadable data comes as the error, so that a caller may still replace it.
    data: dict[str, Any] | CorruptDataError
    version: int | None  # None: the key has no record
    # The number of the last outbox entry done (bot/outbox.py). A record no commit of the bot's
    # outbox wrote (copied by migrate, written by an older version) has every entry done.
    sent: int = 0


@dataclass(frozen=True)
class DueOutbox:
    """A key whose outbox has calls waiting (found at start-up and by the sweep): its data and what is done."""

    data: dict[str, Any]
    sent: int


@runtime_checkable
class ErasesUsers(Protocol):
    """A storage that can delete every conversation of one user, in every chat (/forget)."""

    async def delete_user(self, user_id: int) -> int: ...


class FsmStorage(BaseStorage, FsmRecords):
    """An aiogram storage that can also read and replace a key's state and data at once,
    and delete every session of one user, in every chat (/forget); its records side
    (`FsmRecords`: whole records by key, for the owner's commands) needs no aiogram."""

    @abstractmethod
    async def get_state_and_data(self, key: StorageKey) -> tuple[str | None, dict[str, Any]]:
        """The key's state and data, read at once (one statement or command): what `get_state`
        and `get_data` would give. CorruptDataError if either is unreadable."""

    @abstractmethod
    async def set_state_and_data(self, key: StorageKey, state: StateType, data: Mapping[str, Any]) -> None:
        """Replace the key's state and data at once: a reader sees both old or both new, never a mix."""

    @abstractmethod
    async def get_versioned(self, key: StorageKey) -> Versioned:
        """The key's state, data and version, read at once; CorruptDataError only if the state is unreadable."""

    @abstractmethod
    async def swap_state_and_data(
        self, key: StorageKey, expected: int | None, state: StateType, data: Mapping[str, Any]
    ) -> bool:
        """Replace the key's state and data at once, only if its version is still `expected`
        (None: it still has no record); False, changing nothing, if another writer came first.

        This is the fence: a writer that lost its lock, or never had one, cannot
        overwrite what another wrote after its read.
        """

    @abstractmethod
    async def delete_user(self, user_id: int, keep: StorageKey | None = None) -> int:
        """Delete every key of `user_id` (but `keep`); return how many there were."""

    # --- the outbox (bot/outbox.py): what an update sends, committed with it ---

    @abstractmethod
    async def swap_with_outbox(
        self,
        key: StorageKey,
        expected: int | None,
        state: StateType,
        data: Mapping[str, Any],
        queued: int,
        sent: int = 0,
    ) -> bool:
        """`swap_state_and_data` for ApplyOnce's commit: `data` holds the outbox, whose last entry is
        number `queued` (`sent`: the last one done, as read); the key is due (found by `due_outboxes`)
        while `queued` passes the last one done.
        The record stays even when state and data are otherwise empty (it remembers applied updates)."""

    @abstractmethod
    async def mark_sent(self, marks: Sequence[tuple[StorageKey, int]]) -> None:
        """Record each key's outbox as done up to its number, in one batch; no version changes."""

    @abstractmethod
    async def postpone_outbox(self, key: StorageKey, until: datetime) -> None:
        """Keep other processes' sweeps off this key's waiting calls until `until` (a flood wait)."""

    @abstractmethod
    async def due_outboxes(self, before: datetime, limit: int) -> list[DueOutbox]:
        """Keys whose outbox has had calls waiting since before `before`, longest-waiting first."""

    @abstractmethod
    async def fill_user_ids(self, after: str | None, limit: int) -> str | None:
        """Give up to `limit` of the records an older version wrote without a user id, the first
        after the key `after`, their user (read from the key); the last key looked at, None when
        there is none left. Each call is one short batch: the bot's start-up calls it until None."""


def user_key_pattern(key_builder: KeyBuilder, user_id: int) -> tuple[str, str]:
    """The (start, end) every key of `user_id` has, whatever its chat, topic or bot.

    Built from two keys that differ only in bot and chat, so it follows the key
    builder's own layout (prefix, separator, destiny) instead of guessing it.
    ValueError when the builder does not end its keys with the user (the
    pattern would match other users' keys too).
    """
    one, two = (key_builder.build(StorageKey(bot_id=n, chat_id=n, user_id=user_id)) for n in (1, 2))
    first = next(i for i, (a, b) in enumerate(zip(one, two, strict=True)) if a != b)
    last = next(i for i, (a, b) in enumerate(zip(one[::-1], two[::-1], strict=True)) if a != b)
    start, end = one[:first], one[len(one) - last :]
    someone_else = key_builder.build(StorageKey(bot_id=1, chat_id=1, user_id=user_id + 1))
    if not end or (someone_else.startswith(start) and someone_else.endswith(end)):
        msg = f"{type(key_builder).__name__} does not end its keys with the user: their keys cannot be told apart"
        raise ValueError(msg)
    return start, end


def user_reader(key_builder: KeyBuilder) -> Callable[[str], int | None] | None:
    """A function giving the user a key belongs to, read from the key itself; None when the
    builder does not end its keys with the user (see `user_key_pattern`).

    Only for records an older version wrote without a user id: the storages keep each
    key's `StorageKey.user_id` beside it.
    """
    probe = 9_876_543_210
    try:
        _, end = user_key_pattern(key_builder, probe)
    except ValueError:
        return None
    at = end.rfind(str(probe))
    if at < 0:
        return None
    pattern = re.compile(re.escape(end[:at]) + r"(-?\d+)" + re.escape(end[at + len(str(probe)) :]) + r"\Z")

    def user_of(key: str) -> int | None:
        found = pattern.search(key)
        return int(found.group(1)) if found else None

    # Checked on a key of another shape than the probe's, so a layout this reading misses gives None.
    sample = key_builder.build(StorageKey(bot_id=5, chat_id=-100123, user_id=77, thread_id=3))
    return user_of if user_of(sample) == 77 else None
