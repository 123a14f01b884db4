"""`python main.py stats`: for each form, how many were started, finished and abandoned, and the answers.

Every form the bot defines gets the same report: the questionnaire first,
then the others by kind. Each question with a `tally` gets a section (see
states/questionnaire.py). Responses of a kind no form defines any more (a
form removed from the bot) are counted by kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from admin.errors import opened
from admin.forms import NOT_DESCRIBED, bot_forms, plural
from config import StorageSettings, describe_duration
from storage import Records
from storage.records import QUESTIONNAIRE_KIND, FormInfo, Tally, TextTally

# A form nobody answered for this long counts as abandoned (FSM_TTL removes it later).
ABANDONED_AFTER = timedelta(days=1)
TOP_ANSWERS = 10


@dataclass
class FormStats:
    """One form's numbers, all counted by the database."""

    form: FormInfo
    finished: int = 0
    in_progress: int = 0
    abandoned: int = 0
    texts: dict[str, TextTally] = field(default_factory=dict)  # by question key (Tally.COUNTS)
    numbers: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # (Tally.RANGE): value, how often

    @property
    def kind(self) -> str:
        return self.form.kind

    @property
    def started(self) -> int:
        return self.finished + self.in_progress + self.abandoned


@dataclass
class Stats:
    forms: list[FormStats] = field(default_factory=list)  # in the order they are shown
    undefined: dict[str, int] = field(default_factory=dict)  # completed, by kind: kinds no form defines


async def count(storages: Records, now: datetime, forms: Sequence[FormInfo] | None = None) -> Stats:
    """Every number counted by the database: the answers are never read into memory.

    `forms`: those to report on, in that order (default: every form the bot described at its start).
    """
    kinds = await storages.responses.count_kinds()
    stats = Stats()
    for form in (await bot_forms(storages)).values() if forms is None else forms:
        stats.forms.append(await count_form(storages, form, kinds.pop(form.kind, 0), now))
    stats.undefined = kinds
    return stats


async def count_form(storages: Records, form: FormInfo, finished: int, now: datetime) -> FormStats:
    in_progress, abandoned = await storages.fsm.count_states(form.states, active_since=now - ABANDONED_AFTER)
    counted = FormStats(form, finished=finished, in_progress=in_progress, abandoned=abandoned)
    kind = form.kind
    for question in form.questions:
        if question.tally is Tally.RANGE:
            counted.numbers[question.key] = await storages.responses.whole_numbers(kind, question.key)
        elif question.tally is not None:
            counted.texts[question.key] = await storages.responses.text_answers(kind, question.key, TOP_ANSWERS)
    return counted


def render(stats: Stats, ttl: timedelta | None) -> str:
    expiry = f"removed after {describe_duration(ttl)} (FSM_TTL)" if ttl else "kept: FSM_TTL=0"
    sections = [render_form(form, expiry) for form in stats.forms]
    if not stats.forms:
        sections.append([NOT_DESCRIBED])
    if stats.undefined:
        sections.append(
            ["Other kinds, completed (no form of the bot defines them)"]
            + [f"  {kind[:20]:<20} {number:>6}" for kind, number in sorted(stats.undefined.items())]
        )
    return "\n\n".join("\n".join(lines) for lines in sections) + "\n"


def title(kind: str) -> str:
    """What a form's section is headed with: `Questionnaires`, `Feedback forms`."""
    return "Questionnaires" if kind == QUESTIONNAIRE_KIND else f"{kind[:1].upper()}{kind[1:]} forms"


def render_form(form: FormStats, expiry: str) -> list[str]:
    lines = [
        title(form.kind),
        f"  started      {form.started:>6}",
        f"  finished     {form.finished:>6}{_share(form.finished, form.started)}",
        f"  in progress  {form.in_progress:>6}  answered in the last {describe_duration(ABANDONED_AFTER)}",
        f"  abandoned    {form.abandoned:>6}  silent for longer; {expiry}",
    ]
    for question in form.form.questions:
        # A question nobody has answered yet (just added) has no section until someone does.
        if question.tally is Tally.RANGE:
            numbers = form.numbers.get(question.key, [])
            if numbers or not form.finished:
                lines += ["", question.label, *number_range(numbers)]
        elif question.tally is not None:
            texts = form.texts.get(question.key, TextTally())
            if texts.total or not form.finished:
                lines += ["", question.label, *text_counts(texts, form.finished)]
    return lines


def number_range(numbers: list[tuple[int, int]]) -> list[str]:
    """The smallest, the median and the largest answer, from each answer's count (smallest first)."""
    answers = sum(n for _, n in numbers)
    if not answers:
        return ["  (no answers yet)"]
    middle = (nth(numbers, (answers - 1) // 2) + nth(numbers, answers // 2)) / 2
    return [f"  {numbers[0][0]} to {numbers[-1][0]}, median {middle:g} ({plural(answers, 'answer')})"]


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
