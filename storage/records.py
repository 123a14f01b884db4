"""The records side of the storages: what the owner's commands and expiry read and write. No aiogram.

`stats`, `export` and `migrate` import this side only (storage/sql/records.py,
storage/mongo/records.py and the responses stores), so they start in well
under a second and never load aiogram; the bot's aiogram storages
(storage/interface.py's `FsmStorage`) are these same classes with aiogram's
`BaseStorage` on top.
"""

from __future__ import annotations

import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

# Responses saved before forms had kinds are the questionnaire's.
QUESTIONNAIRE_KIND = "questionnaire"
KIND_LENGTH = 64  # the longest kind (a form's class name in lower case) the tables keep
# The owner's commands read a table a page at a time: memory stays the same whatever its size.
PAGE_SIZE = 1000
ALL_DONE = 2**62  # `Versioned.sent` of a record whose outbox no commit wrote


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


class Tally(StrEnum):
    """How `python main.py stats` sums up a question's answers (a `Question`'s `tally`)."""

    COUNTS = "counts"  # how many gave each answer, the commonest first
    RANGE = "range"  # lowest, highest and median of whole numbers


@dataclass(frozen=True)
class QuestionInfo:
    """A question as the owner's commands know it: the key its answer is saved under, its label, its tally."""

    key: str
    label: str
    tally: Tally | None = None


@dataclass(frozen=True)
class FormInfo:
    """A form of the bot as the owner's commands know it, described by the bot at start-up
    (states.describe_form): its kind, every state of its group, and its questions in order."""

    kind: str
    states: tuple[str, ...]
    questions: tuple[QuestionInfo, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "states": list(self.states),
            "questions": [{"key": q.key, "label": q.label, "tally": q.tally} for q in self.questions],
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> FormInfo:
        questions = tuple(
            QuestionInfo(q["key"], q["label"], None if q.get("tally") is None else Tally(q["tally"]))
            for q in value["questions"]
        )
        return cls(value["kind"], tuple(value["states"]), questions)


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
    """A ResponseStore as the owner's commands read it: a page at a time, counted by the database,
    with the forms the bot described at its start."""

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

    async def describe_forms(self, forms: Sequence[FormInfo]) -> None:
        """Keep `forms` as the bot's forms, in place of those described before (the bot's start-up)."""
        ...

    async def forms(self) -> list[FormInfo]:
        """The forms the bot last described, by kind; none before the bot has started on this database."""
        ...


class FsmRecords(ABC):
    """The FSM table or collection read and written as whole records by key: the owner's commands,
    expiry. The bot's aiogram storage (storage/interface.py's `FsmStorage`) is one of these too."""

    timeout: float | None

    @abstractmethod
    async def ping(self) -> None:
        """Return once the database answers; StorageUnavailableError if it does not (for health checks)."""

    @abstractmethod
    async def close(self) -> None: ...

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
    async def expire(self, ttl: timedelta, limit: int) -> int:
        """Delete at most `limit` keys untouched for longer than `ttl`; return how many went.

        A key written meanwhile stays: the delete checks the time again.
        """


# A key aiogram's DefaultKeyBuilder writes with its defaults: fsm:<chat>:<user>, or fsm:<chat>:<topic>:<user>.
_DEFAULT_KEY = re.compile(r"fsm:-?\d+:(?:-?\d+:)?(-?\d+)")


def default_key_user(key: str) -> int | None:
    """The user of a key in the default layout (what the bot writes unless given a key builder of its own);
    None for any other. For records an older version wrote without a user id, read without aiogram."""
    found = _DEFAULT_KEY.fullmatch(key)
    return int(found.group(1)) if found else None


def new_version() -> int:
    """A record's next version: random, so a deleted key's old version cannot come back."""
    return secrets.randbits(62)


def as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
