"""The questionnaire, defined once: each question, in the order it is asked.

Everything else reads it from here: the handlers, the greeting, the summary,
/help, `export`, `stats` and the tests (which answer each question with its
`sample`). To add a question, add a line; to reorder them, move the lines.
"""

from aiogram.fsm.state import StatesGroup

from states.form import Question, Tally, short_text, whole_number

COLOURS = ("Red", "Orange", "Yellow", "Green", "Blue", "Purple")


class Questionnaire(StatesGroup):
    """The questions, in the order they are asked."""

    name = Question(
        "What is your name?",
        read=short_text("name"),
        label="Name",
        sample="Ann",
        thanks="Nice to meet you, {}!",
    )
    age = Question(
        "How old are you?",
        read=whole_number("age", 1, 120),
        label="Age",
        sample="30",
        tally=Tally.RANGE,
    )
    colour = Question(
        "What is your favourite colour? Pick one below or type your own.",
        read=short_text("colour"),
        label="Favourite colour",
        sample="Blue",
        choices=COLOURS,
        inline=True,  # buttons under the question, answered by a press
        tally=Tally.COUNTS,
    )
