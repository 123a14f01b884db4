from states.form import (
    Answer,
    FormError,
    InvalidAnswer,
    Question,
    Tally,
    describe_form,
    described_forms,
    form_kind,
    forms,
    next_question,
    question_at,
    questions,
    state_groups,
)
from states.questionnaire import Questionnaire

__all__ = [
    "Answer",
    "FormError",
    "InvalidAnswer",
    "Question",
    "Questionnaire",
    "Tally",
    "describe_form",
    "described_forms",
    "form_kind",
    "forms",
    "is_defined",
    "next_question",
    "question_at",
    "questions",
    "state_groups",
]


def is_defined(raw_state: str) -> bool:
    """Whether a `StatesGroup` of this bot defines the state: not one left over from an older version."""
    return any(raw_state in group.__all_states_names__ for group in state_groups())
