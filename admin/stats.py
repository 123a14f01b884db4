"""`python main.py stats`: how many questionnaires were started, finished and abandoned, and the answers."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from admin.errors import opened
from config import StorageSettings, describe_duration
from states import Questionnaire
from storage import CompletedResponse, FsmRecord

# A questionnaire nobody answered for this long counts as abandoned (FSM_TTL removes it later).
ABANDONED_AFTER = timedelta(days=1)
TOP_COLOURS = 10


@dataclass
class Stats:
    finished: int = 0
    in_progress: int = 0
    abandoned: int = 0
    colours: Counter[str] = field(default_factory=Counter)
    ages: list[int] = field(default_factory=list)

    @property
    def started(self) -> int:
        return self.finished + self.in_progress + self.abandoned


def count(records: list[FsmRecord], responses: list[CompletedResponse], now: datetime) -> Stats:
    stats = Stats(finished=len(responses))
    for record in records:
        if record.state in Questionnaire.__all_states_names__:
            if now - record.updated_at > ABANDONED_AFTER:
                stats.abandoned += 1
            else:
                stats.in_progress += 1
    for response in responses:
        colour = response.answers.get("colour")
        if isinstance(colour, str):
            stats.colours[colour.strip()] += 1
        age = response.answers.get("age")
        if isinstance(age, int) and not isinstance(age, bool):
            stats.ages.append(age)
    return stats


def render(stats: Stats, ttl: timedelta | None) -> str:
    expiry = f"removed after {describe_duration(ttl)} (FSM_TTL)" if ttl else "kept: FSM_TTL=0"
    lines = [
        "Questionnaires",
        f"  started      {stats.started:>6}",
        f"  finished     {stats.finished:>6}{_share(stats.finished, stats.started)}",
        f"  in progress  {stats.in_progress:>6}  answered in the last {describe_duration(ABANDONED_AFTER)}",
        f"  abandoned    {stats.abandoned:>6}  silent for longer; {expiry}",
        "",
        "Favourite colour",
    ]
    top = stats.colours.most_common(TOP_COLOURS)
    lines += [f"  {colour[:20]:<20} {number:>6}{_share(number, stats.finished)}" for colour, number in top]
    if others := sum(stats.colours.values()) - sum(number for _, number in top):
        lines.append(f"  {'(other answers)':<20} {others:>6}{_share(others, stats.finished)}")
    if not stats.colours:
        lines.append("  (no answers yet)")
    lines += ["", "Age"]
    if stats.ages:
        low, middle, high = min(stats.ages), statistics.median(stats.ages), max(stats.ages)
        lines.append(f"  {low} to {high}, median {middle:g} ({len(stats.ages)} answers)")
    else:
        lines.append("  (no answers yet)")
    return "\n".join(lines) + "\n"


def _share(part: int, whole: int) -> str:
    return f"  {part / whole:4.0%}" if whole else ""


async def stats(settings: StorageSettings) -> int:
    async with opened(settings) as storages:
        records = await storages.fsm.records()
        responses = await storages.responses.completed()
    print(render(count(records, responses, datetime.now(UTC)), settings.fsm_ttl), end="")
    return 0
