"""Commands that work in every state: /start, /help, /cancel, /forget."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandStart
from aiogram.fsm.context import FSMContext
from aiogram.fsm.storage.base import BaseStorage
from aiogram.methods import SendMessage
from aiogram.types import BotCommand, Message, ReplyKeyboardRemove, User

import handlers
from handlers.forms import RETURN_TO, come_back
from handlers.questionnaire import how_many, start_questionnaire
from states import Questionnaire, questions
from storage import ErasesUsers, ResponseStore

router = Router(name=__name__)

COMMANDS = [  # this module's entries in the command menu and /help (handlers.get_commands())
    BotCommand(command="start", description="Start the questionnaire (again)"),
    BotCommand(command="cancel", description="Stop it and forget the answers so far"),
    BotCommand(command="forget", description="Delete everything I keep about you, finished forms included"),
    BotCommand(command="help", description="What this bot does"),
]


def help_text() -> str:
    asked = [question.label.lower() for question in questions(Questionnaire)]
    listed = ", ".join(asked[:-1]) + f" and {asked[-1]}" if len(asked) > 1 else asked[0]
    return (
        f"I ask {how_many().lower()} (your {listed}) and remember where you are, even if I am restarted.\n\n"
        + "\n".join(
            f"/{command.command}: {command.description[0].lower()}{command.description[1:]}"
            for command in handlers.get_commands()
        )
    )


@router.message(CommandStart())
async def start(message: Message, state: FSMContext) -> SendMessage:
    return await start_questionnaire(message, state)


@router.message(Command("help"))
async def show_help(message: Message) -> SendMessage:
    return message.answer(help_text())


@router.message(Command("cancel"))
async def cancel(message: Message, state: FSMContext, raw_state: str | None) -> SendMessage:
    if raw_state is None:
        return message.answer("Nothing to cancel. Send /start to begin the questionnaire.")
    if RETURN_TO in await state.get_data():  # in a form taken aside (/feedback): back to where the user was
        return await come_back(message, state, "Cancelled.")
    await state.clear()
    return message.answer(
        "Cancelled, and your answers so far are forgotten. Send /start to begin again.",
        reply_markup=ReplyKeyboardRemove(),
    )


@router.message(Command("forget"))
async def forget(
    message: Message, state: FSMContext, event_from_user: User, fsm_storage: BaseStorage, responses: ResponseStore
) -> SendMessage:
    # Both deletions are committed with this update and carried out after it (bot/outbox.py):
    # sent again, /forget is found applied and deletes nothing saved after it.
    await state.clear()
    if isinstance(fsm_storage, ErasesUsers):
        await fsm_storage.delete_user(event_from_user.id)  # in every other chat too
    deleted = await responses.delete_for_user(event_from_user.id)
    return message.answer(
        f"Done: I deleted your answers in progress and {deleted} finished form(s).",
        reply_markup=ReplyKeyboardRemove(),
    )
