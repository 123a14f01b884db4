"""The forms the owner's commands report on, and the words they report with."""

from __future__ import annotations

from storage import Records
from storage.records import QUESTIONNAIRE_KIND, FormInfo


async def bot_forms(records: Records) -> dict[str, FormInfo]:
    """Every form the bot described at its last start, by kind: the questionnaire first, then the others by kind.

    Read from the database (the bot writes them there, states.describe_form): the commands import
    neither aiogram nor the bot's handlers. Empty before the bot has started on this database.
    """
    by_kind = {form.kind: form for form in await records.responses.forms()}
    return dict(sorted(by_kind.items(), key=lambda item: (item[0] != QUESTIONNAIRE_KIND, item[0])))


# What stats and export say on a database no bot of this release has started on yet.
NOT_DESCRIBED = "No forms described in this database yet: the bot describes them when it starts."


def plural(count: int, one: str, many: str = "") -> str:
    """`1 answer`, `2 answers`; `many` for a word whose plural is not `one` + s (`1 reply`, `2 replies`)."""
    return f"{count} {one if count == 1 else many or one + 's'}"
