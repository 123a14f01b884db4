"""`python main.py stats`: how many questionnaires were started, finished and abandoned, and the answers.

Each question with a `tally` gets a section (states/questionnaire.py); other
forms' responses are counted by kind.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from admin.errors import opened
from config import StorageSettings, describe_duration
from states import Question, Questionnaire, Tally, questions
from storage import CompletedResponse, FsmRecord
from storage.interface import QUESTIONNAIRE_KIND

# A questionnaire nobody answered for this long counts as abandoned (FSM_TTL removes it later).
ABANDONED_AFTER = timedelta(days=1)
TOP_ANSWERS = 10


@dataclass
class Stats:
    finished: int = 0
    in_progress: int = 0
    abandoned: int = 0
    answers: dict[str, list[object]] = field(default_factory=dict)  # by question key
    other_forms: Counter[str] = field(default_factory=Counter)  # completed, by kind

    @property
    def started(self) -> int:
        return self.finished + self.in_progress + self.abandoned


def count(records: list[FsmRecord], responses: list[CompletedResponse], now: datetime) -> Stats:
    stats = Stats()
    for record in records:
        if record.state in Questionnaire.__all_states_names__:
            if now - record.updated_at > ABANDONED_AFTER:
                stats.abandoned += 1
            else:
                stats.in_progress += 1
    for response in responses:
        if response.kind != QUESTIONNAIRE_KIND:
            stats.other_forms[response.kind] += 1
            continue
        stats.finished += 1
        for name, answer in response.answers.items():
            stats.answers.setdefault(name, []).append(answer)
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
        if question.tally is not None and (question.key in stats.answers or not stats.finished):
            lines += ["", question.label, *tally(question, stats.answers.get(question.key, []), stats.finished)]
    if stats.other_forms:
        lines += ["", "Other forms, completed"]
        lines += [f"  {kind[:20]:<20} {number:>6}" for kind, number in sorted(stats.other_forms.items())]
    return "\n".join(lines) + "\n"


def tally(question: Question, answers: list[object], finished: int) -> list[str]:
    if question.tally is Tally.RANGE:
        numbers = [answer for answer in answers if isinstance(answer, int) and not isinstance(answer, bool)]
        if not numbers:
            return ["  (no answers yet)"]
        low, middle, high = min(numbers), statistics.median(numbers), max(numbers)
        return [f"  {low} to {high}, median {middle:g} ({len(numbers)} answers)"]
    counted = Counter(answer.strip() for answer in answers if isinstance(answer, str))
    if not counted:
        return ["  (no answers yet)"]
    top = counted.most_common(TOP_ANSWERS)
    lines = [f"  {answer[:20]:<20} {number:>6}{_share(number, finished)}" for answer, number in top]
    if others := sum(counted.values()) - sum(number for _, number in top):
        lines.append(f"  {'(other answers)':<20} {others:>6}{_share(others, finished)}")
    return lines


def _share(part: int, whole: int) -> str:
    return f"  {part / whole:4.0%}" if whole else ""


async def stats(settings: StorageSettings) -> int:
    async with opened(settings) as storages:
        records = await storages.fsm.records()
        responses = await storages.responses.completed()
    print(render(count(records, responses, datetime.now(UTC)), settings.fsm_ttl), end="")
    return 0
