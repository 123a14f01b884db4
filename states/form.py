"""A question is a `State` that also knows how it is asked, read, shown and counted.

Put `Question`s in a `StatesGroup` and that group is a form: the handlers ask
its questions in the order the group lists them, and the summary, `/help`,
`export`, `stats` and the tests read them from there. Adding a question is
adding one line to the group.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence

from aiogram.fsm.state import State, StatesGroup

from storage.records import KIND_LENGTH, FormInfo, QuestionInfo
from storage.records import Tally as Tally  # how `stats` sums up a question (defined beside the records it reads)

# What an answer is kept as: JSON, so changing the questions needs no migration.
Answer = str | int
# Reads the text a user sent (stripped); raises InvalidAnswer with what to send instead.
Reader = Callable[[str], Answer]


class InvalidAnswer(ValueError):
    """The text is not an answer to the question; the message is what the user reads."""


class FormError(ValueError):
    """A form is defined in a way the bot cannot ask or keep; the message names it and what to change.
    Raised as the handlers are imported (`follow`) or when the bot describes its forms at start-up:
    either way `python main.py` says it in one line and exits with 2."""


class Question(State):
    """One question: its prompt, how the answer is read and checked, its label, and a sample answer.

    The answer is saved under the question's name in the group (`Questionnaire.age` -> `age`).
    """

    def __init__(
        self,
        prompt: str,
        *,
        read: Reader,
        label: str,
        sample: str,
        choices: Sequence[str] = (),
        tally: Tally | None = None,
        thanks: str = "",
        inline: bool = False,
    ) -> None:
        super().__init__()
        self.prompt = prompt
        self.read = read
        self.label = label  # in the summary, /help and stats
        self.sample = sample  # what the tests answer
        self.choices = tuple(choices)  # offered as keyboard buttons; typing something else is fine
        # The choices as buttons under the question (an inline keyboard, answered by a press)
        # instead of a keyboard in place of the user's; typing an answer still works.
        self.inline = inline
        self.tally = tally
        self.thanks = thanks  # said before the next question; "{}" is the answer (HTML-escaped)

    @property
    def key(self) -> str:
        """The name the answer is saved under: the attribute's name in its group."""
        return (self.state or "").rpartition(":")[2]


def questions(group: type[StatesGroup]) -> tuple[Question, ...]:
    """The group's questions, in the order they are asked."""
    return tuple(state for state in group.__all_states__ if isinstance(state, Question))


def state_groups() -> Iterator[type[StatesGroup]]:
    """Every `StatesGroup` defined so far (in the modules imported so far), the latest defined first."""
    groups = list(StatesGroup.__subclasses__())
    while groups:
        group = groups.pop()
        yield group
        groups.extend(group.__subclasses__())


def form_kind(group: type[StatesGroup]) -> str:
    """The kind a form's completed responses are saved as: its class's name in lower case (`Feedback` -> `feedback`)."""
    return group.__name__.lower()


def forms() -> list[type[StatesGroup]]:
    """Every form defined so far: each group with a `Question` (of two of the same kind, the latest defined)."""
    found: dict[str, type[StatesGroup]] = {}
    for group in state_groups():
        if questions(group):
            found.setdefault(form_kind(group), group)
    return list(found.values())


def describe_form(group: type[StatesGroup]) -> FormInfo:
    """The form as the owner's commands know it (they import no aiogram): the bot describes each
    of its forms in the database at start-up (`ResponseRecords.describe_forms`)."""
    kind = form_kind(group)
    if len(kind) > KIND_LENGTH:
        msg = f"{group.__name__}: a form's class name is its kind, kept in {KIND_LENGTH} characters: shorten it"
        raise FormError(msg)
    asked = (QuestionInfo(q.key, q.label, q.tally) for q in questions(group))
    return FormInfo(kind, tuple(group.__all_states_names__), tuple(asked))


def described_forms() -> list[FormInfo]:
    """Every form defined so far (`forms()`), described for the owner's commands."""
    return [describe_form(group) for group in forms()]


def question_at(raw_state: str | None) -> Question | None:
    """The question a user in `raw_state` is answering, in any form of the bot; None if it is no question."""
    for group in state_groups():
        for question in questions(group):
            if question.state == raw_state:
                return question
    return None


def next_question(question: Question) -> Question | None:
    """The question after `question` in its form; None after the last one."""
    asked = questions(question.group)
    position = asked.index(question)
    return asked[position + 1] if position + 1 < len(asked) else None


# Readers for the usual kinds of answer. Each refuses what it cannot keep, with the reason.


def short_text(what: str, limit: int = 64) -> Reader:
    """Any text of 1 to `limit` characters: a name, a colour, a city."""

    def read(text: str) -> str:
        if not text:
            raise InvalidAnswer(f"The {what} can't be empty.")
        if len(text) > limit:
            raise InvalidAnswer(f"That's {len(text)} characters; please keep the {what} to {limit}.")
        return text

    return read


def whole_number(what: str, low: int, high: int) -> Reader:
    """A whole number from `low` to `high`, written in ASCII digits."""
    digits = len(str(high))

    def read(text: str) -> int:
        if not re.fullmatch(rf"\d{{1,{digits}}}", text, flags=re.ASCII):
            raise InvalidAnswer(f"Please send your {what} as a whole number.")
        number = int(text)
        if not low <= number <= high:
            raise InvalidAnswer(f"The {what} must be between {low} and {high}.")
        return number

    return read


def one_of(what: str, choices: Sequence[str]) -> Reader:
    """One of `choices` (as offered on the buttons; typed in any case): a size, yes or no."""
    by_folded = {choice.casefold(): choice for choice in choices}

    def read(text: str) -> str:
        if text.casefold() not in by_folded:
            raise InvalidAnswer(f"Please pick the {what}: {', '.join(choices)}.")
        return by_folded[text.casefold()]

    return read
