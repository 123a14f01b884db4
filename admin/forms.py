"""The forms the owner's commands report on, and the words they report with."""

from __future__ import annotations

from aiogram.fsm.state import StatesGroup

from states import form_kind, forms
from storage.interface import QUESTIONNAIRE_KIND


def bot_forms() -> dict[str, type[StatesGroup]]:
    """Every form the bot defines, by kind: the questionnaire first, then the others by kind."""
    import handlers  # noqa: F401 - the bot's modules: importing them defines each of its forms

    by_kind = {form_kind(form): form for form in forms()}
    return dict(sorted(by_kind.items(), key=lambda item: (item[0] != QUESTIONNAIRE_KIND, item[0])))


def plural(count: int, one: str, many: str = "") -> str:
    """`1 answer`, `2 answers`; `many` for a word whose plural is not `one` + s (`1 reply`, `2 replies`)."""
    return f"{count} {one if count == 1 else many or one + 's'}"
