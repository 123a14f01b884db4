"""`python main.py export`: one form's completed responses as CSV, JSON or JSON Lines.

One form per export, never two forms' columns in one file: the
questionnaire's, or with `--kind` another form's. One row per completed
response: user id, chat id, the form's kind, each answer in its own column
(the form's questions in the order they are asked, then any other answer an
older version of the bot kept), and the completion time in UTC. Without
`--kind`, a note on standard error names the other kinds in the database.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import sys
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from admin.errors import CommandError, opened
from admin.forms import NOT_DESCRIBED, bot_forms, plural
from config import StorageSettings
from storage.records import QUESTIONNAIRE_KIND, CompletedResponse, FormInfo

FORMATS = ("csv", "json", "jsonl")
# A byte-order mark: without it Excel reads UTF-8 as the local code page (é, emoji garbled).
CSV_BOM = "\ufeff"
# A cell starting with one of these is a formula to a spreadsheet (=HYPERLINK(...)): the
# answers are users' text, so such a cell is written with a leading apostrophe, shown as text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def columns_for(form: FormInfo | None, names: Iterable[str]) -> list[str]:
    """The columns for one form's responses whose answers have these `names` (`form`: None if the bot
    no longer defines it): its questions' names in the order they are asked (name, age, colour), then
    the other names (answers an older version kept), sorted."""
    asked = [question.key for question in form.questions] if form is not None else []
    others = sorted(set(names) - set(asked))
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


def render(responses: Sequence[CompletedResponse], file_format: str, form: FormInfo | None = None) -> bytes:
    """The export of `responses`, all of one kind (`form`'s, its questions' columns first), encoded as
    UTF-8: what `export` writes, for a list in hand."""
    kinds = {response.kind for response in responses} | ({form.kind} if form is not None else set())
    if len(kinds) > 1:
        msg = f"one form per export: these responses are of {len(kinds)} kinds ({', '.join(sorted(kinds))})"
        raise ValueError(msg)
    names = (name for response in responses for name in response.answers)
    output = io.BytesIO()
    writer = ExportWriter(output, columns_for(form, names), file_format)
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
    """Standard output, or the file `output`, readable by its owner only (users' answers): created so,
    or an existing file emptied and made so before anything is written to it."""
    if output is None:
        yield sys.stdout.buffer
        return
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        # The mode above is for a new file only; an existing one keeps its own (0644, say) unless changed.
        # A device or a pipe (/dev/stdout) is not the owner's to change.
        if stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.fchmod(descriptor, 0o600)
        yield file


def write(content: bytes, output: Path | None) -> None:
    with opened_output(output) as stream:
        stream.write(content)
        stream.flush()


async def export(
    settings: StorageSettings, file_format: str, since: datetime | None, output: Path | None, kind: str | None = None
) -> int:
    """Export one kind (`kind`, or the questionnaire). Read its responses twice, a page at a time:
    once for the columns (every answer's name), once to write them. Memory stays the same whatever
    the number of responses."""
    chosen = QUESTIONNAIRE_KIND if kind is None else kind
    async with opened(settings) as storages:
        forms = await bot_forms(storages)
        kinds = await storages.responses.count_kinds()
        if kind is not None and kind not in forms and kind not in kinds:
            known = ", ".join(sorted(forms.keys() | kinds.keys()))
            raise CommandError(f"no form has the kind {kind!r}: --kind takes one of {known}")
        names: set[str] = set()
        async for page in storages.responses.pages(since, chosen):
            names.update(name for response in page for name in response.answers)
        with opened_output(output) as stream:
            writer = ExportWriter(stream, columns_for(forms.get(chosen), names), file_format)
            async for page in storages.responses.pages(since, chosen):
                writer.write(page)
            writer.finish()
    if output is not None:
        print(f"Exported {plural(writer.rows, chosen + ' response')} to {output}", file=sys.stderr)
    others = {other: number for other, number in sorted(kinds.items()) if other != chosen}
    if not forms:
        print(f"{NOT_DESCRIBED} Until then the answers' columns are in the order of their names.", file=sys.stderr)
    if kind is None and others:
        listed = ", ".join(plural(number, other + " response") for other, number in others.items())
        example = next(iter(others))
        print(f"In the database but not in this export: {listed}; export each with --kind {example}", file=sys.stderr)
    return 0
