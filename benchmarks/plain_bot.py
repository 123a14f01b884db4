"""The plain aiogram bot a copier would otherwise write: the same questionnaire, aiogram's FSM example's shape.

What the whole-bot benchmark measures this project's machinery against
(`ApplyOnce`, the outbox and its courier, the guards, the metrics): the
same three questions (states/questionnaire.py as it stands: name, age,
colour), read and checked the same way, and the same summary, written as
aiogram's `examples/finite_state_machine.py` writes a form: a `StatesGroup`,
handlers that `await message.answer(...)` themselves, aiogram's own FSM
middleware on `MemoryStorage`, no event isolation. A completed form is kept
in the same in-memory store the benchmark's references use. Nothing here is
committed once, retried or carried out after a crash: that is what it saves.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiogram import Dispatcher, F, Router, html
from aiogram.filters import CommandStart
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import BaseStorage
from aiogram.types import Message, ReplyKeyboardRemove
from aiogram.utils.keyboard import ReplyKeyboardBuilder

from storage import CompletedResponse, ResponseStore

COLOURS = ("Red", "Orange", "Yellow", "Green", "Blue", "Purple")


class Form(StatesGroup):
    name = State()
    age = State()
    colour = State()


def create_plain_dispatcher(storage: BaseStorage, responses: ResponseStore) -> Dispatcher:
    """A Dispatcher with aiogram's FSM middleware on `storage` and the questionnaire's handlers."""
    router = Router()

    @router.message(CommandStart())
    async def start(message: Message, state: FSMContext) -> None:
        await state.set_state(Form.name)
        await state.set_data({"response_id": uuid.uuid4().hex})
        await message.answer(
            "Hi! Three quick questions. Send /cancel at any time to stop.\n\nWhat is your name?",
            reply_markup=ReplyKeyboardRemove(),
        )

    @router.message(Form.name, F.text, ~F.text.startswith("/"))
    async def take_name(message: Message, state: FSMContext) -> None:
        name = (message.text or "").strip()
        if not name or len(name) > 64:
            await message.answer("Please keep the name to 1 to 64 characters.\n\nWhat is your name?")
            return
        await state.update_data(name=name)
        await state.set_state(Form.age)
        await message.answer(
            f"Nice to meet you, {html.quote(name)}!\n\nHow old are you?", reply_markup=ReplyKeyboardRemove()
        )

    @router.message(Form.age, F.text, ~F.text.startswith("/"))
    async def take_age(message: Message, state: FSMContext) -> None:
        text = (message.text or "").strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 3 and 1 <= int(text) <= 120):
            await message.answer("Please send your age as a whole number from 1 to 120.\n\nHow old are you?")
            return
        await state.update_data(age=int(text))
        await state.set_state(Form.colour)
        keyboard = ReplyKeyboardBuilder()
        for colour in COLOURS:
            keyboard.button(text=colour)
        keyboard.adjust(3)
        await message.answer(
            "What is your favourite colour? Pick one below or type your own.",
            reply_markup=keyboard.as_markup(
                resize_keyboard=True, one_time_keyboard=True, input_field_placeholder="Favourite colour"
            ),
        )

    @router.message(Form.colour, F.text, ~F.text.startswith("/"))
    async def take_colour(message: Message, state: FSMContext) -> None:
        colour = (message.text or "").strip()
        if not colour or len(colour) > 64:
            await message.answer("Please keep the colour to 1 to 64 characters.")
            return
        data = await state.update_data(colour=colour)
        answers = {key: data[key] for key in ("name", "age", "colour")}
        await responses.save(
            CompletedResponse(
                response_id=data["response_id"],
                user_id=message.from_user.id if message.from_user else message.chat.id,
                chat_id=message.chat.id,
                answers=answers,
                completed_at=datetime.now(UTC),
                kind="questionnaire",
            )
        )
        await state.clear()
        labels = {"name": "Name", "age": "Age", "colour": "Favourite colour"}
        lines = [f"• {labels[key]}: <b>{html.quote(str(value))}</b>" for key, value in answers.items()]
        await message.answer(
            "Thank you! Here is what I saved:\n" + "\n".join(lines) + "\n\nSend /start to fill it in again.",
            reply_markup=ReplyKeyboardRemove(),
        )

    dispatcher = Dispatcher(storage=storage)
    dispatcher.include_router(router)
    return dispatcher
