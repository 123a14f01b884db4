"""The terminal sandbox: `python main.py --sandbox`, stopped half-way and started again."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from pathlib import Path

import pytest
from aiogram import F, Router
from aiogram.filters import Command
from aiogram.methods import AnswerCallbackQuery, SendMessage
from aiogram.types import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    Message,
    ReplyKeyboardMarkup,
)

from bot.emulator import EMULATOR_BOT_TOKEN
from bot.emulator.sandbox import format_keyboard, run_sandbox
from config import Settings, load_settings
from tests.support.bot_process import ROOT, finish, stop_process
from tests.support.questionnaire import asked, conversation, shows_summary, told_apart, typed
from tests.support.routers import add_router


async def start_sandbox(folder: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if k not in {"BOT_TOKEN", "STORAGE", "DATABASE_URL"}}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "main.py"),
        "--sandbox",
        cwd=folder,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def chat(folder: Path, *lines: str) -> str:
    """Type `lines`, then end the input (Ctrl-D); return what the terminal showed."""
    sandbox = await start_sandbox(folder)
    stdout, stderr = await finish(sandbox, 60, "".join(f"{line}\n" for line in lines).encode())
    assert sandbox.returncode == 0, stderr
    return stdout


async def read_until(stream: asyncio.StreamReader, text: str) -> str:
    seen = ""
    while text not in seen:
        chunk = await asyncio.wait_for(stream.read(4096), 60)
        assert chunk, f"the sandbox ended before showing {text!r}:\n{seen}"
        seen += chunk.decode()
    return seen


async def test_two_answers_then_end_of_input_then_finish_in_a_second_run(tmp_path: Path) -> None:
    first = await chat(tmp_path, *conversation()[:2])
    assert asked()[0].prompt in first
    assert asked()[1].prompt in first
    assert (tmp_path / "data" / "bot.db").exists()

    # The rest, picking each offered choice by its number (the last one), and a photo in between.
    lines, picked = [], {}
    for question, text in zip(asked()[1:], typed()[1:], strict=True):
        if question.choices:
            lines.append(str(len(question.choices)))
            picked[question.key] = question.choices[-1]
        else:
            lines.append(text)
    second = await chat(tmp_path, ":photo", *lines)  # a photo at the second question first
    assert "I can only read text here." in second
    assert all(f"[{len(q.choices)}] {q.choices[-1]}" in second for q in asked()[1:] if q.choices)
    assert shows_summary(second, **picked)


async def test_ctrl_c_half_way_and_start_again(tmp_path: Path) -> None:
    bob = told_apart("Bob")
    sandbox = await start_sandbox(tmp_path)
    try:
        assert sandbox.stdin is not None
        assert sandbox.stdout is not None
        sandbox.stdin.write("".join(f"{line}\n" for line in conversation(**bob)[:2]).encode())
        await sandbox.stdin.drain()
        await read_until(sandbox.stdout, asked()[1].prompt)
        sandbox.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(sandbox.wait(), 30) == 0
    finally:
        await stop_process(sandbox)

    finished = await chat(tmp_path, *typed(**bob)[1:])
    assert shows_summary(finished, **bob)


async def test_every_reply_to_a_message_is_shown_in_its_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler may send more than one message (here, one sent directly and one returned, a moment apart)."""
    router = Router(name="two_replies")

    @router.message(Command("two"))
    async def two_replies(message: Message) -> SendMessage:
        await message.answer("first of two")
        await asyncio.sleep(0.5)
        return message.answer("second of two")

    add_router(monkeypatch, router)
    settings = load_settings(None, bot_token=EMULATOR_BOT_TOKEN).model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"}
    )
    shown = io.StringIO()
    await asyncio.wait_for(run_sandbox(settings, io.StringIO("/two\n"), shown), 60)
    output = shown.getvalue()
    assert "bot> first of two" in output
    assert "bot> second of two" in output


async def test_stopped_at_a_question_with_buttons_a_number_still_picks_a_button(tmp_path: Path) -> None:
    """README's demo: answer up to a question with buttons, stop, start again and pick one by its number."""
    at = next(index for index, question in enumerate(asked()) if question.choices)
    await chat(tmp_path, *conversation()[: at + 1])
    question = asked()[at]
    lines = ["1", *typed()[at + 1 :]]
    second = await chat(tmp_path, *lines)
    assert f"You were answering: {question.prompt}" in second
    assert shows_summary(second, **{question.key: question.choices[0]})


def first_inline() -> int:
    """Where the questionnaire's first inline-button question is (it has one: states/questionnaire.py)."""
    return next(index for index, question in enumerate(asked()) if question.inline)


async def test_an_inline_question_shows_its_buttons_and_takes_a_press_by_number_or_by_label(tmp_path: Path) -> None:
    at = first_inline()
    question = asked()[at]
    by_number = [*conversation()[: at + 1], str(len(question.choices)), *typed()[at + 1 :]]
    by_label = [*conversation()[: at + 1], question.choices[0], *typed()[at + 1 :]]
    shown = await chat(tmp_path, *by_number, *by_label)
    assert format_keyboard([list(question.choices[:3])]).splitlines()[0] in shown  # numbered, as many as fit a row
    first, second = shown.split("Thank you!")[1:]
    assert shows_summary("Thank you!" + first, **{question.key: question.choices[-1]})
    assert shows_summary("Thank you!" + second, **{question.key: question.choices[0]})


def settings_in(folder: Path) -> Settings:
    return load_settings(None, bot_token=EMULATOR_BOT_TOKEN).model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{folder / 'bot.db'}"}
    )


async def test_a_press_shows_its_notice_and_a_number_is_the_inline_buttons_while_there_are_any(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inline buttons under the last message are pressed by number or label; else a number is the keyboard's."""
    router = Router(name="drinks")

    @router.message(Command("menu"))
    async def menu(message: Message) -> list[SendMessage]:
        keyboard = ReplyKeyboardMarkup(keyboard=[[KeyboardButton(text="Typed")]])
        drinks = InlineKeyboardMarkup(
            inline_keyboard=[
                [
                    InlineKeyboardButton(text="Tea", callback_data="drink:tea"),
                    InlineKeyboardButton(text="Coffee", callback_data="drink:coffee"),
                ]
            ]
        )
        return [message.answer("A keyboard", reply_markup=keyboard), message.answer("Drinks", reply_markup=drinks)]

    @router.callback_query(F.data.startswith("drink:"))
    async def drink(callback: CallbackQuery) -> AnswerCallbackQuery:
        return callback.answer(f"You pressed {callback.data}", show_alert=callback.data == "drink:tea")

    @router.message(F.text == "Typed")
    async def typed_text(message: Message) -> SendMessage:
        return message.answer("typed, not pressed")

    add_router(monkeypatch, router)
    shown = io.StringIO()
    lines = ["/menu", "2", "Tea", "Typed", "1"]
    await asyncio.wait_for(
        run_sandbox(settings_in(tmp_path), io.StringIO("".join(f"{line}\n" for line in lines)), shown), 60
    )
    output = shown.getvalue()
    assert "     [1] Tea  [2] Coffee\n" in output
    assert "toast> You pressed drink:coffee\n" in output  # "2": the inline button, not the keyboard's (it has one)
    assert "alert> You pressed drink:tea\n" in output  # by its label
    # "Typed" is no inline label: a message. Its reply has no inline buttons, so "1" is the keyboard's button.
    assert output.count("bot> typed, not pressed") == 2
    assert "     [1] Typed\n" in output
