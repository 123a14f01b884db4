"""The catch-all for messages outside any flow. Its router is included last."""

from aiogram import Router
from aiogram.filters import StateFilter
from aiogram.types import Message

router = Router(name=__name__)


@router.message(StateFilter(None))
async def outside_the_flow(message: Message) -> None:
    await message.answer("Send /start to fill in the questionnaire, or /help to learn more.")
