"""What the bot asks of its storages, whatever the database: handlers and the factory see only this."""

from __future__ import annotations

import re
import secrets
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol, runtime_checkable

from aiogram.fsm.storage.base import BaseStorage, KeyBuilder, StateType, StorageKey

from storage.errors import CorruptDataError

# Responses saved before forms had kinds are the questionnaire's.
QUESTIONNAIRE_KIND = "questionnaire"


@dataclass(frozen=True)
class CompletedResponse:
    """One completed form: the questionnaire, or any other form a handler saves (its `kind`)."""

    # Made when the form starts: saving the same response twice keeps one.
    response_id: str
    user_id: int
    chat_id: int
    answers: dict[str, Any]
    completed_at: datetime
    kind: str = QUESTIONNAIRE_KIND  # the form's name: "questionnaire", "feedback", ...


@dataclass(frozen=True)
class FsmRecord:
    """One key's whole record, as the owner's commands (export, stats, migrate) see it."""

    key: str  # as the storage's key builder wrote it
    state: str | None
    data: dict[str, Any]
    updated_at: datetime  # UTC
    # The user the key belongs to (the StorageKey's), for /forget; None when it was written
    # by an older version of the bot and could not be told from the key.
    user_id: int | None = None


@dataclass(frozen=True)
class TextTally:
    """The commonest text answers to one question (trimmed), and how many text answers there are in all."""

    top: list[tuple[str, int]] = field(default_factory=list)
    total: int = 0


# The owner's commands read a table a page at a time: memory stays the same whatever its size.
PAGE_SIZE = 1000


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


class ResponseStore(Protocol):
    """Where handlers put completed forms, of every kind; they never see which database it is."""

    async def save(self, response: CompletedResponse) -> bool:
        """Keep `response`; False if one with its `response_id` was kept already (nothing changes then)."""
        ...

    async def for_user(self, user_id: int) -> list[CompletedResponse]: ...

    async def delete_for_user(self, user_id: int, only: Collection[str] | None = None) -> int:
        """Delete the user's responses (only those with these response ids, if given); how many went."""
        ...

    async def replace(self, response: CompletedResponse) -> None:
        """Keep `response` in place of any kept under its `response_id` (migrate --overwrite)."""
        ...

    async def completed(self, since: datetime | None = None) -> list[CompletedResponse]:
        """Every response completed at or after `since`, oldest first (a small table's; see `pages`)."""
        ...


class ResponseRecords(ResponseStore, Protocol):
    """A ResponseStore as the owner's commands read it: a page at a time, counted by the database."""

    def pages(
        self, since: datetime | None = None, kind: str | None = None, size: int = PAGE_SIZE
    ) -> AsyncIterator[list[CompletedResponse]]:
        """What `completed` gives (of one `kind`, if given), read `size` at a time: for tables of any size."""
        ...

    async def by_ids(self, response_ids: Sequence[str]) -> dict[str, CompletedResponse]:
        """The responses kept under these ids, by id (those not kept are left out)."""
        ...

    async def save_many(self, responses: Sequence[CompletedResponse]) -> None:
        """Keep each response not kept yet under its `response_id`, in one batch (migrate)."""
        ...

    async def count_kinds(self) -> dict[str, int]:
        """How many responses each kind has (counted by the database)."""
        ...

    async def text_answers(self, kind: str, key: str, top: int) -> TextTally:
        """The `top` commonest text answers under `key` in `kind`'s responses, counted by the database."""
        ...

    async def whole_numbers(self, kind: str, key: str) -> list[tuple[int, int]]:
        """Each whole-number answer under `key` in `kind`'s responses with how often it was given, smallest first."""
        ...


class FsmStorage(BaseStorage):
    """An aiogram storage that can also read and replace a key's state and data at once,
    and delete every session of one user, in every chat (/forget)."""

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
    async def ping(self) -> None:
        """Return once the database answers; StorageUnavailableError if it does not (for health checks)."""

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
    async def records(self, after: str | None = None, limit: int | None = None) -> list[FsmRecord]:
        """The keys' records sorted by key, from the first after `after`, at most `limit` of them
        (for the owner's commands, not for handlers: `record_pages` reads them all)."""

    async def record_pages(self, size: int = PAGE_SIZE) -> AsyncIterator[list[FsmRecord]]:
        """Every key's record, sorted by key, `size` at a time: one short call per page."""
        after = None
        while page := await self.records(after, size):
            yield page
            after = page[-1].key

    @abstractmethod
    async def records_for(self, keys: Sequence[str]) -> dict[str, FsmRecord]:
        """The records of these keys, by key (keys without one are left out)."""

    async def put_record(self, record: FsmRecord) -> None:
        """Write `record` as it is, its `updated_at` included (migrate)."""
        await self.put_records([record])

    @abstractmethod
    async def put_records(self, records: Sequence[FsmRecord]) -> None:
        """Write `records` as they are, their `updated_at` included, in one batch (migrate)."""

    @abstractmethod
    async def count_states(self, states: Collection[str], active_since: datetime) -> tuple[int, int]:
        """How many keys are in one of `states`: (touched since `active_since`, not), counted by the database."""

    @abstractmethod
    async def fill_user_ids(self, after: str | None, limit: int) -> str | None:
        """Give up to `limit` of the records an older version wrote without a user id, the first
        after the key `after`, their user (read from the key); the last key looked at, None when
        there is none left. Each call is one short batch: the bot's start-up calls it until None."""

    @abstractmethod
    async def expire(self, ttl: timedelta, limit: int) -> int:
        """Delete at most `limit` keys untouched for longer than `ttl`; return how many went.

        A key written meanwhile stays: the delete checks the time again.
        """


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


ALL_DONE = 2**62  # `Versioned.sent` of a record whose outbox no commit wrote


def new_version() -> int:
    """A record's next version: random, so a deleted key's old version cannot come back."""
    return secrets.randbits(62)


def as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
