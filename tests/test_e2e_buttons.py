"""End to end, a button flow: a real `python main.py` process; its questionnaire's inline question pressed.

The question is the first one of states/questionnaire.py asked with inline
buttons (its definition has one); the test reaches it by typing the sample
answers before it, presses, and checks what Telegram would have seen: the
press answered (the spinner stopped), then the next step, both from the one
update. Then the same across a restart of the process at that question.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from bot.emulator import BotAPIEmulator, running_emulator
from handlers.questionnaire import how_many
from states import Question, next_question
from tests.support.backends import ALL_BACKENDS, MONGO_BACKENDS, SQL_URL_VARIABLES, make_backend
from tests.support.bot_process import REPLY_SECONDS, BotProcess, bot_environment, drop_bot_tables
from tests.support.questionnaire import asked, shows_summary, typed

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=ALL_BACKENDS)
async def bot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BotProcess]:
    folder = tmp_path_factory.mktemp(f"e2e-buttons-{request.param}")
    mongo = request.getfixturevalue("mongo_url") if request.param in MONGO_BACKENDS else None
    backend = make_backend(request.param, folder, mongo)
    if backend.name in SQL_URL_VARIABLES:
        await drop_bot_tables(backend.url)
    async with (
        running_emulator(BotAPIEmulator()) as (emulator, api_url),
        BotProcess(emulator, api_url, folder / "bot.log", bot_environment(backend, folder)) as process,
    ):
        await process.start()
        yield process
        await process.stop()
        assert "Telegram refused" not in process.output()  # every call made was taken: no answer twice
    if backend.is_mongo:
        await backend.drop()


def inline_question() -> Question:
    """The questionnaire's first question asked with inline buttons."""
    found = [question for question in asked() if question.inline]
    assert found, "states/questionnaire.py asks no question with inline buttons (inline=True)"
    return found[0]


async def reach(bot: BotProcess, user_id: int, question: Question) -> dict[str, Any]:
    """/start, then the sample answers until `question` is asked; the message asking it."""
    await bot.say(user_id, "/start")
    for before, text in zip(asked(), typed(), strict=True):
        if before is question:
            break
        await bot.say(user_id, text)
    *_, asking = await bot.emulator.bot_messages(user_id)
    assert str(asking["text"]).endswith(question.prompt)
    return asking


async def press(
    bot: BotProcess, user_id: int, button: str | int, message_id: int | None = None
) -> tuple[dict[str, Any], str]:
    """Press `button`; the bot's answer to the press and the one message it sent after it."""
    before = len(await bot.emulator.bot_messages(user_id))
    update = await bot.emulator.user_presses(user_id, button, message_id)
    messages = await bot.emulator.bot_messages(user_id, before + 1, wait=REPLY_SECONDS)
    answer = await bot.emulator.callback_answer(update["callback_query"]["id"], wait=REPLY_SECONDS)
    assert answer is not None, f"the press was not answered: its button would spin\n{bot.output()[-3000:]}"
    assert len(messages) == before + 1, [message["text"] for message in messages[before:]]
    # The spinner was stopped before the next step went out, and with no notice (the press was taken).
    assert answer["messages_before"] == before
    assert bot.emulator.calls[answer["call"]] == "answerCallbackQuery"
    assert answer["text"] == ""
    return answer, str(messages[-1]["text"])


def is_next_step(reply: str, question: Question, choice: str) -> bool:
    """Whether `reply` follows `question` answered with `choice`: the next question, or the summary naming it."""
    following = next_question(question)
    if following is not None:
        return reply.endswith(following.prompt)
    return shows_summary(reply, **{question.key: choice})


async def finish(bot: BotProcess, user_id: int, question: Question, choice: str) -> None:
    """Type the sample answers after `question`; the summary names `choice` as its answer."""
    position = asked().index(question)
    reply = None
    for text in typed()[position + 1 :]:
        [reply] = await bot.say(user_id, text)
    if reply is not None:
        assert shows_summary(reply, **{question.key: choice})


async def test_a_press_stops_the_spinner_then_the_next_step_goes_out(bot: BotProcess) -> None:
    question = inline_question()
    await reach(bot, 1, question)
    shown = [[button["text"] for button in row] for row in bot.emulator.inline_buttons(1) or []]
    assert [label for row in shown for label in row] == list(question.choices)
    assert bot.emulator.keyboard(1) is None  # buttons under the question, no keyboard in place of the user's

    _, reply = await press(bot, 1, 0)
    assert is_next_step(reply, question, question.choices[0])
    await finish(bot, 1, question, question.choices[0])


async def test_the_buttons_of_a_question_asked_before_a_restart_still_work(bot: BotProcess) -> None:
    question = inline_question()
    asking = await reach(bot, 2, question)
    assert await bot.stop(signal.SIGTERM) == 0
    await bot.start()

    _, reply = await press(bot, 2, question.choices[-1], message_id=asking["message_id"])
    assert is_next_step(reply, question, question.choices[-1])
    await finish(bot, 2, question, question.choices[-1])


async def test_a_button_of_a_question_already_answered_gets_a_notice_and_changes_nothing(bot: BotProcess) -> None:
    question = inline_question()
    asking = await reach(bot, 3, question)
    _, reply = await press(bot, 3, 0)
    before = len(await bot.emulator.bot_messages(3))
    update = await bot.emulator.user_presses(3, 1, message_id=asking["message_id"])
    answer = await bot.emulator.callback_answer(update["callback_query"]["id"], wait=REPLY_SECONDS)
    assert answer is not None
    assert answer["text"]  # why the button did nothing, shown as a notice
    # Then /start: its greeting comes after whatever the stale press sent (a chat's replies go out in order).
    await bot.emulator.user_sends(3, {"text": "/start"})
    texts: list[str] = []
    while not any(text.startswith(f"Hi! {how_many()}") for text in texts[before:]):
        messages = await bot.emulator.bot_messages(3, len(texts) + 1, wait=REPLY_SECONDS)
        assert len(messages) > len(texts), f"no greeting after {texts[before:]}\n{bot.output()[-3000:]}"
        texts = [str(message["text"]) for message in messages]
    following, again = next_question(question), texts[before:-1]
    if following is None:  # the questionnaire was done: nothing more is said, and the press before was kept
        assert again == []
        assert shows_summary(reply, **{question.key: question.choices[0]})
    else:  # the question the user is at, asked again
        assert len(again) == 1
        assert again[0].endswith(following.prompt)
