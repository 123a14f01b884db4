"""Commands that work in every state: /start, /help, /cancel, /forget."""

from __future__ import annotations

from aiogram import Router
from aiogram.filters import Command, CommandStart
from aiogram.fsm.context import FSMContext
from aiogram.fsm.storage.base import BaseStorage
from aiogram.methods import SendMessage
from aiogram.types import BotCommand, Message, ReplyKeyboardRemove, User

from handlers.questionnaire import start_questionnaire
from storage import FsmStorage, ResponseStore

router = Router(name=__name__)

COMMANDS = [
    BotCommand(command="start", description="Start the questionnaire (again)"),
    BotCommand(command="cancel", description="Stop the questionnaire"),
    BotCommand(command="help", description="What this bot does"),
    BotCommand(command="forget", description="Delete everything the bot keeps about you"),
]

HELP = (
    "I ask three questions (your name, age and favourite colour) and remember "
    "where you are, even if I am restarted.\n\n"
    "/start: start the questionnaire (again)\n"
    "/cancel: stop it and forget the answers so far\n"
    "/forget: delete everything I keep about you, finished questionnaires included\n"
    "/help: this message"
)


@router.message(CommandStart())
async def start(message: Message, state: FSMContext) -> SendMessage:
    return await start_questionnaire(message, state)


@router.message(Command("help"))
async def show_help(message: Message) -> SendMessage:
    return message.answer(HELP)


@router.message(Command("cancel"))
async def cancel(message: Message, state: FSMContext, raw_state: str | None) -> SendMessage:
    if raw_state is None:
        return message.answer("Nothing to cancel. Send /start to begin the questionnaire.")
    await state.clear()
    return message.answer(
        "Cancelled, and your answers so far are forgotten. Send /start to begin again.",
        reply_markup=ReplyKeyboardRemove(),
    )


@router.message(Command("forget"))
async def forget(
    message: Message, state: FSMContext, event_from_user: User, fsm_storage: BaseStorage, responses: ResponseStore
) -> SendMessage:
    if isinstance(fsm_storage, FsmStorage):
        await fsm_storage.delete_user(event_from_user.id)  # in every chat, not only this one
    else:
        await state.clear()  # a storage that cannot find a user's other chats (aiogram's own)
    deleted = await responses.delete_for_user(event_from_user.id)
    return message.answer(
        f"Done: I deleted your answers in progress and {deleted} finished questionnaire(s).",
        reply_markup=ReplyKeyboardRemove(),
    )
