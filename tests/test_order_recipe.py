"""README's "A form with buttons" recipe, run as written: an /order answered by presses and text, across a restart.

The block is taken from README.md and imported as `handlers.order`, listed
where README says; the test reads the recipe's own questions (their
`sample`s, its `summary`), so editing the recipe keeps it honest.
"""

from __future__ import annotations

import types
from datetime import UTC, datetime

import pytest
from aiogram import Router
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.methods import AnswerCallbackQuery, SendMessage
from aiogram.types import InlineKeyboardMarkup, Message

from admin.export import render as render_export
from admin.stats import count
from admin.stats import render as render_stats
from handlers import get_commands
from handlers.forms import ask, follow, step_aside
from states import FormError, Question, describe_form, questions
from states.form import short_text
from tests.support.chat import ChatHarness
from tests.support.questionnaire import asked, conversation
from tests.support.readme import install_recipe, readme_block
from tests.support.routers import add_router
from tools.check_replies import problems


@pytest.fixture
def order(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """README's handlers/order.py, imported as that module and listed where README says."""
    return install_recipe(monkeypatch, "handlers/order.py")


def buttons(reply: SendMessage) -> list[str]:
    assert isinstance(reply.reply_markup, InlineKeyboardMarkup), f"no buttons under {reply.text!r}"
    return [button.text for row in reply.reply_markup.inline_keyboard for button in row]


async def test_readmes_button_form_takes_presses_and_text_survives_a_restart_and_is_saved(
    chat: ChatHarness, order: types.ModuleType
) -> None:
    await chat.restart()  # built with the recipe's router
    steps = questions(order.Order)
    await chat.send("/start")  # in the middle of the questionnaire: /order steps aside from it
    at = await chat.state()

    [first] = await chat.send("/order")
    assert first == steps[0].prompt
    assert buttons(chat.last_reply()) == list(steps[0].choices)
    answers: dict[str, str] = {}
    for number, step in enumerate(steps):
        if step.inline:
            calls = await chat.press(step.sample)
            # The spinner stopped, then the next step: both from the one update of the press.
            assert [type(call) for call in calls] == [AnswerCallbackQuery, SendMessage]
            reply = chat.last_reply().text
        else:
            [reply] = await chat.send(step.sample)
        answers[step.key] = step.sample
        if number < len(steps) - 1:
            assert reply.endswith(steps[number + 1].prompt)
            if number == 0:
                await chat.restart()  # a deploy mid-order: the next answer is taken where it left off
    assert reply.startswith(order.summary(answers))
    assert reply.endswith(asked()[0].prompt)  # back in the questionnaire, at the same question
    assert await chat.state() == at

    [saved] = [r for r in await chat.storages.responses.completed() if r.kind == "order"]
    assert saved.answers == answers
    exported = render_export([saved], "jsonl").decode()
    assert '"kind": "order"' in exported
    assert "\nOrder forms\n  started           1\n  finished          1  100%\n" in render_stats(
        await count(chat.storages, datetime.now(UTC)), None
    )
    for text in conversation()[1:]:  # the questionnaire goes on and is saved on its own
        await chat.send(text)
    assert sorted(r.kind for r in await chat.storages.responses.completed()) == ["order", "questionnaire"]


async def test_readmes_button_form_refuses_a_typed_choice_it_does_not_offer(
    chat: ChatHarness, order: types.ModuleType
) -> None:
    await chat.restart()
    first = questions(order.Order)[0]
    await chat.send("/order")
    [refused] = await chat.send("not one of them")
    assert refused.endswith(first.prompt)
    assert all(choice in refused for choice in first.choices)  # the reason names what to pick
    assert await chat.state() == first.state
    [taken] = await chat.send(first.choices[0].lower())  # typed instead of pressed, in any case
    assert taken.endswith(questions(order.Order)[1].prompt)


def test_readmes_button_form_passes_check_replies_and_a_dropped_step_in_it_does_not() -> None:
    """`follow(router, Order, summary)` registers handlers (it builds no call); the recipe is clean as
    written, and its command handler's `ask(...)` without `return` is caught."""
    recipe = readme_block("handlers/order.py")
    assert list(problems(recipe, "handlers/order.py")) == []
    dropped = recipe.replace("    return ask(message, first)", "    ask(message, first)")
    assert dropped != recipe
    [problem] = problems(dropped, "handlers/order.py")
    assert "order: a reply built and dropped" in problem


async def test_a_press_on_a_form_left_for_another_with_a_same_named_question_is_refused(
    chat: ChatHarness, order: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Buttons name their form: the order's "confirm" pressed while a survey asks its own "confirm"
    (other choices, in another order) is not taken as the survey's answer."""
    survey = Router(name="survey")

    class Survey(StatesGroup):
        confirm = Question(
            "Happy?", read=short_text("answer"), label="Happy", sample="Yes", choices=("No", "Yes"), inline=True
        )

    @survey.message(Command("survey"))
    async def start_survey(message: Message, state: FSMContext) -> SendMessage:
        await step_aside(state, Survey.confirm)
        return ask(message, Survey.confirm)

    follow(survey, Survey, lambda answers: "Thanks.")
    add_router(monkeypatch, survey)
    await chat.restart()
    steps = questions(order.Order)
    await chat.send("/order")
    for step in steps[:-1]:
        await (chat.press(step.sample) if step.inline else chat.send(step.sample))
    order_question = chat.last_reply()
    assert order_question.text.endswith(steps[-1].prompt)
    await chat.send("/survey")

    calls = await chat.press(steps[-1].choices[0], under=order_question)

    assert [type(call) for call in calls] == [AnswerCallbackQuery, SendMessage]
    assert isinstance(calls[0], AnswerCallbackQuery)
    assert "earlier question" in str(calls[0].text)
    assert await chat.state() == Survey.confirm.state
    assert [r for r in await chat.storages.responses.completed() if r.kind in ("survey", "order")] == []


async def test_readmes_button_form_is_in_the_command_menu_and_in_help(
    chat: ChatHarness, order: types.ModuleType
) -> None:
    """Listed in handlers/__init__.py (two files in all): its `COMMANDS` join the menu and /help."""
    [command] = order.COMMANDS
    assert command in get_commands()
    await chat.restart()
    [shown] = await chat.send("/help")
    assert f"/{command.command}:" in shown


def test_a_form_whose_buttons_would_pass_telegrams_64_bytes_is_refused_naming_the_question() -> None:
    """Telegram keeps 64 bytes of a button's data (the form, the question, the choice): a longer
    one is refused when the form is followed, not when a user is first shown the buttons."""

    class Delivery(StatesGroup):
        the_preferred_time_window_for_the_courier_to_arrive = Question(
            "When?", read=short_text("time"), label="Time", sample="Morning", choices=("Morning", "Evening"),
            inline=True,
        )  # fmt: skip

    refused = (
        r"^Delivery\.the_preferred_time_window_for_the_courier_to_arrive: its buttons' callback data is over "
        r"Telegram's 64 bytes: shorten the form's class name or the question's name$"
    )
    with pytest.raises(FormError, match=refused):
        follow(Router(name="too long"), Delivery, lambda answers: "")


def test_a_form_whose_kind_would_not_fit_its_column_is_refused_at_start_up_naming_it() -> None:
    """A form's kind is its class's name in lower case, kept in 64 characters; a longer one stops the
    start (bot/running.py turns this into one line), not the first save of a response."""
    too_long = type("A" * 65, (StatesGroup,), {"step": State()})  # no Question: no other test sees it as a form
    with pytest.raises(FormError, match=r"^A{65}: a form's class name is its kind, kept in 64 characters: shorten it$"):
        describe_form(too_long)
