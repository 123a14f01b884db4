"""`python main.py stats`: how many questionnaires were started, finished and abandoned, and the answers.

Each question with a `tally` gets a section (states/questionnaire.py); other
forms' responses are counted by kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from admin.errors import opened
from config import StorageSettings, describe_duration
from states import Questionnaire, Tally, questions
from storage import Storages
from storage.interface import QUESTIONNAIRE_KIND, TextTally

# A questionnaire nobody answered for this long counts as abandoned (FSM_TTL removes it later).
ABANDONED_AFTER = timedelta(days=1)
TOP_ANSWERS = 10


@dataclass
class Stats:
    finished: int = 0
    in_progress: int = 0
    abandoned: int = 0
    texts: dict[str, TextTally] = field(default_factory=dict)  # by question key (Tally.COUNTS)
    numbers: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # (Tally.RANGE): value, how often
    other_forms: dict[str, int] = field(default_factory=dict)  # completed, by kind

    @property
    def started(self) -> int:
        return self.finished + self.in_progress + self.abandoned


async def count(storages: Storages, now: datetime) -> Stats:
    """Every number counted by the database: the answers are never read into memory."""
    in_progress, abandoned = await storages.fsm.count_states(
        Questionnaire.__all_states_names__, active_since=now - ABANDONED_AFTER
    )
    kinds = await storages.responses.count_kinds()
    stats = Stats(finished=kinds.pop(QUESTIONNAIRE_KIND, 0), in_progress=in_progress, abandoned=abandoned)
    stats.other_forms = kinds
    for question in questions(Questionnaire):
        if question.tally is Tally.RANGE:
            stats.numbers[question.key] = await storages.responses.whole_numbers(QUESTIONNAIRE_KIND, question.key)
        elif question.tally is not None:
            stats.texts[question.key] = await storages.responses.text_answers(
                QUESTIONNAIRE_KIND, question.key, TOP_ANSWERS
            )
    return stats


def render(stats: Stats, ttl: timedelta | None) -> str:
    expiry = f"removed after {describe_duration(ttl)} (FSM_TTL)" if ttl else "kept: FSM_TTL=0"
    lines = [
        "Questionnaires",
        f"  started      {stats.started:>6}",
        f"  finished     {stats.finished:>6}{_share(stats.finished, stats.started)}",
        f"  in progress  {stats.in_progress:>6}  answered in the last {describe_duration(ABANDONED_AFTER)}",
        f"  abandoned    {stats.abandoned:>6}  silent for longer; {expiry}",
    ]
    for question in questions(Questionnaire):
        # A question nobody has answered yet (just added) has no section until someone does.
        if question.tally is Tally.RANGE:
            numbers = stats.numbers.get(question.key, [])
            if numbers or not stats.finished:
                lines += ["", question.label, *number_range(numbers)]
        elif question.tally is not None:
            texts = stats.texts.get(question.key, TextTally())
            if texts.total or not stats.finished:
                lines += ["", question.label, *text_counts(texts, stats.finished)]
    if stats.other_forms:
        lines += ["", "Other forms, completed"]
        lines += [f"  {kind[:20]:<20} {number:>6}" for kind, number in sorted(stats.other_forms.items())]
    return "\n".join(lines) + "\n"


def number_range(numbers: list[tuple[int, int]]) -> list[str]:
    """The smallest, the median and the largest answer, from each answer's count (smallest first)."""
    answers = sum(n for _, n in numbers)
    if not answers:
        return ["  (no answers yet)"]
    middle = (nth(numbers, (answers - 1) // 2) + nth(numbers, answers // 2)) / 2
    return [f"  {numbers[0][0]} to {numbers[-1][0]}, median {middle:g} ({answers} answers)"]


def nth(numbers: list[tuple[int, int]], position: int) -> int:
    """The answer at `position` (from 0) in the sorted answers that `numbers` counts."""
    for value, n in numbers:
        if position < n:
            return value
        position -= n
    raise IndexError(position)


def text_counts(texts: TextTally, finished: int) -> list[str]:
    if not texts.total:
        return ["  (no answers yet)"]
    lines = [f"  {answer[:20]:<20} {number:>6}{_share(number, finished)}" for answer, number in texts.top]
    if others := texts.total - sum(number for _, number in texts.top):
        lines.append(f"  {'(other answers)':<20} {others:>6}{_share(others, finished)}")
    return lines


def _share(part: int, whole: int) -> str:
    return f"  {part / whole:4.0%}" if whole else ""


async def stats(settings: StorageSettings) -> int:
    async with opened(settings) as storages:
        counted = await count(storages, datetime.now(UTC))
    print(render(counted, settings.fsm_ttl), end="")
    return 0
