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
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

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


def columns_for(names: Iterable[str]) -> list[str]:
    """The columns for responses whose answers have these `names`."""
    # The answers' names are the questions' names in the group (name, age, colour), in that order.
    given = set(names)
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
    """The export of `responses`, encoded as UTF-8: what `export` writes, for a list in hand."""
    output = io.BytesIO()
    writer = ExportWriter(output, columns_for(name for response in responses for name in response.answers), file_format)
    writer.write(responses)
    writer.finish()
    return output.getvalue()


class ExportWriter:
    """Writes the export to a binary stream a page of responses at a time, as UTF-8."""

    def __init__(self, output: BinaryIO, columns: list[str], file_format: str) -> None:
        self.output = output
        self.columns = columns
        self.file_format = file_format
        self.rows = 0
        if file_format == "csv":
            self._put(CSV_BOM + self._csv([columns]))

    def write(self, responses: Sequence[CompletedResponse]) -> None:
        rows = [as_row(response, self.columns) for response in responses]
        if self.file_format == "json":
            # As json.dumps(all rows, indent=2) lays them out, one element at a time.
            elements = (textwrap.indent(json.dumps(row, ensure_ascii=False, indent=2), "  ") for row in rows)
            self._put("".join(("[\n" if self.rows + n == 0 else ",\n") + element for n, element in enumerate(elements)))
        elif self.file_format == "jsonl":
            self._put("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        else:
            self._put(self._csv([spreadsheet_safe(row[column]) for column in self.columns] for row in rows))
        self.rows += len(rows)

    def finish(self) -> None:
        if self.file_format == "json":
            self._put("\n]\n" if self.rows else "[]\n")
        self.output.flush()

    def _put(self, text: str) -> None:
        self.output.write(text.encode())

    @staticmethod
    def _csv(rows: Iterable[Iterable[Any]]) -> str:
        buffer = io.StringIO()
        # RFC 4180: CRLF line ends; a cell with a comma, quote or line break is quoted.
        csv.writer(buffer, lineterminator="\r\n").writerows(rows)
        return buffer.getvalue()


def spreadsheet_safe(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


@contextmanager
def opened_output(output: Path | None) -> Iterator[BinaryIO]:
    """Standard output, or the file `output`, created readable by its owner only (users' answers)."""
    if output is None:
        yield sys.stdout.buffer
        return
    with os.fdopen(os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as file:
        yield file


def write(content: bytes, output: Path | None) -> None:
    with opened_output(output) as stream:
        stream.write(content)
        stream.flush()


async def export(
    settings: StorageSettings, file_format: str, since: datetime | None, output: Path | None, kind: str | None = None
) -> int:
    """Read the responses twice, a page at a time: once for the columns (every answer's name), once
    to write them. Memory stays the same whatever the number of responses."""
    async with opened(settings) as storages:
        names: set[str] = set()
        async for page in storages.responses.pages(since, kind):
            names.update(name for response in page for name in response.answers)
        with opened_output(output) as stream:
            writer = ExportWriter(stream, columns_for(names), file_format)
            async for page in storages.responses.pages(since, kind):
                writer.write(page)
            writer.finish()
    if output is not None:
        print(f"Exported {writer.rows} completed form(s) to {output}", file=sys.stderr)
    return 0
