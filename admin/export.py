"""`python main.py export`: the completed forms as CSV, JSON or JSON Lines.

One row per completed form (the questionnaire, and any other form the bot
saves): user id, chat id, the form's kind, each answer in its own column
(the questionnaire's in the order its questions are asked, then any other
answer: another form's, or one an older version of the bot kept), and the
completion time in UTC. `--kind` keeps one kind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from admin.errors import opened
from config import StorageSettings
from states import Questionnaire, questions
from storage import CompletedResponse

FORMATS = ("csv", "json", "jsonl")
# A byte-order mark: without it Excel reads UTF-8 as the local code page (é, emoji garbled).
CSV_BOM = "\ufeff"
# A cell starting with one of these is a formula to a spreadsheet (=HYPERLINK(...)): the
# answers are users' text, so such a cell is written with a leading apostrophe, shown as text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def columns_for(responses: Sequence[CompletedResponse]) -> list[str]:
    # The answers' names are the questions' names in the group (name, age, colour), in that order.
    given = {name for response in responses for name in response.answers}
    asked = [question.key for question in questions(Questionnaire) if question.key in given]
    others = sorted(given - set(asked))
    return ["user_id", "chat_id", "kind", *asked, *others, "completed_at"]


def as_row(response: CompletedResponse, columns: list[str]) -> dict[str, Any]:
    fixed = {
        "user_id": response.user_id,
        "chat_id": response.chat_id,
        "kind": response.kind,
        "completed_at": utc_text(response.completed_at),
    }
    return {column: fixed[column] if column in fixed else response.answers.get(column) for column in columns}


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render(responses: Sequence[CompletedResponse], file_format: str) -> bytes:
    """The export, encoded as UTF-8."""
    columns = columns_for(responses)
    rows = [as_row(response, columns) for response in responses]
    if file_format == "json":
        return (json.dumps(rows, ensure_ascii=False, indent=2) + "\n").encode()
    if file_format == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    buffer = io.StringIO()
    # RFC 4180: CRLF line ends; a cell with a comma, quote or line break is quoted.
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows([spreadsheet_safe(row[column]) for column in columns] for row in rows)
    return (CSV_BOM + buffer.getvalue()).encode()


def spreadsheet_safe(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write(content: bytes, output: Path | None) -> None:
    if output is None:
        sys.stdout.buffer.write(content)
        sys.stdout.buffer.flush()
    else:
        # Users' answers: readable by the owner only, as the database file is.
        with os.fdopen(os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as file:
            file.write(content)


async def export(
    settings: StorageSettings, file_format: str, since: datetime | None, output: Path | None, kind: str | None = None
) -> int:
    async with opened(settings) as storages:
        responses = await storages.responses.completed(since)
    if kind is not None:
        responses = [response for response in responses if response.kind == kind]
    write(render(responses, file_format), output)
    if output is not None:
        print(f"Exported {len(responses)} completed form(s) to {output}", file=sys.stderr)
    return 0
