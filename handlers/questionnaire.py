"""The questionnaire's flow: /start asks the first question, each answer is read and checked, the last one sums up.

The questions themselves are in states/questionnaire.py; this module asks
them in that order (`follow`, handlers/forms.py: answers typed or pressed).
Handlers return their reply instead of sending it: bot/apply_once.py commits
the state change with the reply, and the courier (bot/outbox.py) sends it
after, so a user is told an answer was taken only once it is saved.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiogram import Router, html
from aiogram.fsm.context import FSMContext
from aiogram.methods import SendMessage
from aiogram.types import Message

from handlers.forms import ask, begin, follow
from states import Questionnaire, questions

router = Router(name=__name__)

NUMBERS = ("no", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten")


def how_many() -> str:
    """ "Three quick questions", for as many questions as there are."""
    count = len(questions(Questionnaire))
    number = NUMBERS[count] if count < len(NUMBERS) else str(count)
    return f"{number} quick question{'s' if count != 1 else ''}"


async def start_questionnaire(message: Message, state: FSMContext) -> SendMessage:
    first = questions(Questionnaire)[0]
    await begin(state, first)
    return ask(message, first, f"Hi! {how_many()}. Send /cancel at any time to stop.")


def summary(answers: Mapping[str, object]) -> str:
    lines = [
        f"• {asked.label}: <b>{html.quote(str(answers.get(asked.key, '?')))}</b>" for asked in questions(Questionnaire)
    ]
    return "Thank you! Here is what I saved:\n" + "\n".join(lines) + "\n\nSend /start to fill it in again."


follow(router, Questionnaire, summary)  # each answer typed or pressed, then saved and summed up
