from aiogram.fsm.state import StatesGroup

from states.form import Answer, InvalidAnswer, Question, Tally, next_question, question_at, questions
from states.questionnaire import Questionnaire

__all__ = [
    "Answer",
    "InvalidAnswer",
    "Question",
    "Questionnaire",
    "Tally",
    "is_defined",
    "next_question",
    "question_at",
    "questions",
]


def is_defined(raw_state: str) -> bool:
    """Whether a `StatesGroup` of this bot defines the state: not one left over from an older version."""
    groups = list(StatesGroup.__subclasses__())
    while groups:
        group = groups.pop()
        if raw_state in group.__all_states_names__:
            return True
        groups.extend(group.__subclasses__())
    return False
