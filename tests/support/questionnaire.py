"""The questionnaire as the tests answer it, read from its definition (states/questionnaire.py).

No test spells out the questions: a test goes through the flow with
`conversation()` or `fill_in()`, which answer each question with its `sample`
(or with what the test names by the question's key: `typed(name="Bob")`),
and checks what the bot says with `summary_lines()` and each question's
`prompt`. A question added to the definition is then answered by every test.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from aiogram import html

from bot.emulator.telegram_html import parse_html
from handlers.forms import thanks_for
from handlers.questionnaire import how_many, summary
from states import Answer, InvalidAnswer, Question, Questionnaire, next_question, questions

Reply = TypeVar("Reply")


def asked() -> tuple[Question, ...]:
    """The questions, in the order they are asked (as the definition stands when called)."""
    return questions(Questionnaire)


def typed(**answers: str) -> list[str]:
    """What a user types to answer every question in turn: each question's sample, or `answers[key]`."""
    keys = [question.key for question in asked()]
    if unknown := set(answers) - set(keys):
        msg = f"the questionnaire asks no {sorted(unknown)}; it asks {keys}"
        raise KeyError(msg)
    return [answers.get(question.key, question.sample) for question in asked()]


def conversation(**answers: str) -> list[str]:
    """`/start`, then every answer: the whole questionnaire as a user types it."""
    return ["/start", *typed(**answers)]


def saved(**answers: str) -> dict[str, Answer]:
    """The answers as the bot keeps them: each typed text read by its question (`"30"` -> `30`)."""
    return {question.key: question.read(text.strip()) for question, text in zip(asked(), typed(**answers), strict=True)}


def summary_lines(**answers: str) -> list[str]:
    """The summary's lines for these answers as the user reads them (`Age: 30`): Telegram shows the HTML parsed."""
    return [f"{question.label}: {value}" for question, value in zip(asked(), saved(**answers).values(), strict=True)]


def shows_summary(reply: str, **answers: str) -> bool:
    """Whether `reply` is the summary of these answers: as the bot sent it (HTML), or as Telegram shows it."""
    sent = [
        f"{question.label}: <b>{html.quote(str(value))}</b>"
        for question, value in zip(asked(), saved(**answers).values(), strict=True)
    ]
    return all(line in reply for line in sent) or all(line in reply for line in summary_lines(**answers))


async def fill_in(send: Callable[[str], Awaitable[Reply]], **answers: str) -> list[Reply]:
    """Send `/start` and every answer through `send`, one after the other; what each send returned."""
    return [await send(text) for text in conversation(**answers)]


def keeps_as_typed(question: Question, text: str) -> bool:
    """Whether `question` takes `text` as its answer unchanged (free text does; a number question does not)."""
    try:
        return question.read(text) == text
    except InvalidAnswer:
        return False


def told_apart(tag: str) -> dict[str, str]:
    """Answers that tell one user from another: `tag` for the first question that keeps it as typed.

    `typed(**told_apart("Ann"))`: the samples, but "Ann" where free text goes (not to a number question).
    """
    for question in asked():
        if keeps_as_typed(question, tag):
            return {question.key: tag}
    msg = f"no question takes {tag!r} as typed: the tests tell users apart by a free-text answer"
    raise LookupError(msg)


def saved_first(count: int, **answers: str) -> dict[str, Answer]:
    """The answers kept after the first `count` questions are answered."""
    return dict(list(saved(**answers).items())[:count])


def replies(**answers: str) -> list[str]:
    """What the bot answers to each message of `conversation(**answers)`, as the user reads them."""
    return bot_replies(conversation(**answers), saved(**answers))


def exchanges(**answers: str) -> list[tuple[str, str]]:
    """Each message of `conversation(**answers)` with the bot's reply to it, as the user reads it."""
    return list(zip(conversation(**answers), replies(**answers), strict=True))


# The summary's last line: what the reply to the last answer ends with.
SUMMARY_END = summary({}).rpartition("\n")[2]


def what_follows(question: Question) -> str:
    """What the bot's reply to an answer to `question` ends with: the next question's prompt, or the summary's end."""
    following = next_question(question)
    return following.prompt if following is not None else SUMMARY_END


def bot_replies(messages: list[str], answers: dict[str, Answer]) -> list[str]:
    """What the bot answers to each of `conversation()`'s messages, as the user reads them (HTML parsed)."""
    questions_asked = asked()
    greeting = f"Hi! {how_many()}. Send /cancel at any time to stop.\n\n{questions_asked[0].prompt}"
    replies = [greeting]
    for question, following in itertools.pairwise(questions_asked):
        thanks = thanks_for(question, answers[question.key])
        replies.append(f"{thanks}\n\n{following.prompt}" if thanks else following.prompt)
    replies.append(summary(answers))
    assert len(replies) == len(messages)
    return [parse_html(reply)[0] for reply in replies]


def add_question(monkeypatch: pytest.MonkeyPatch, key: str, question: Question, after: Question) -> None:
    """Put `question` into the questionnaire as `key`, right after `after`, for one test only.

    The same as adding its line to states/questionnaire.py: the class gets the
    attribute, and the tuples aiogram's StatesGroup keeps of its states list it
    in its place. monkeypatch puts everything back after the test.
    """
    question.__set_name__(Questionnaire, key)
    monkeypatch.setattr(Questionnaire, key, question, raising=False)
    states = list(Questionnaire.__states__)
    states.insert(states.index(after) + 1, question)
    names = tuple(state.state for state in states if state.state)
    for attribute, value in (
        ("__states__", tuple(states)),
        ("__all_states__", tuple(states)),
        ("__state_names__", names),
        ("__all_states_names__", names),
    ):
        monkeypatch.setattr(Questionnaire, attribute, value)
