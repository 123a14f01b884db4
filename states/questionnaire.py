from aiogram.fsm.state import State, StatesGroup


class Questionnaire(StatesGroup):
    """The questions, in the order they are asked."""

    name = State()
    age = State()
    colour = State()
