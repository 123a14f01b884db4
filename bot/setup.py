"""Build the Bot and the Dispatcher. Nothing is built at import time."""

from __future__ import annotations

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.session.base import BaseSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.fsm.storage.base import BaseEventIsolation, BaseStorage

from bot.apply_once import ApplyOnce
from bot.guards import CountSends, ReplyGuard, check_dependencies
from bot.key_locks import KeyLocks
from bot.metrics import CountTelegramErrors, MeasureUpdates
from bot.outbox import Courier, FloodControl
from config import Settings
from handlers import get_routers
from storage import ResponseStore


def create_bot(settings: Settings, session: BaseSession | None = None) -> Bot:
    """A Bot that speaks HTML, to Telegram or to the server TELEGRAM_API_URL names."""
    if session is None and settings.telegram_api_url:
        session = AiohttpSession(api=TelegramAPIServer.from_base(settings.telegram_api_url))
    bot = Bot(
        token=settings.bot_token.get_secret_value(),
        session=session,
        default=DefaultBotProperties(parse_mode=ParseMode.HTML),
    )
    bot.session.middleware(CountSends())  # for ReplyGuard: what a handler sends itself
    bot.session.middleware(CountTelegramErrors())  # metrics: every error answer Telegram gave
    return bot


def create_dispatcher(
    storage: BaseStorage,
    responses: ResponseStore,
    isolation: BaseEventIsolation | None = None,
    flood: FloodControl | None = None,
) -> Dispatcher:
    """The Dispatcher with every router; `responses` reaches handlers as workflow data.

    Its `courier` (bot/outbox.py) carries out what updates commit: at once while
    it is not started (tests), per chat in the background once the runner starts it.
    """
    # One key's updates are handled one at a time in this process; that only saves work:
    # across processes the fenced commit keeps the data right (bot/apply_once.py).
    dispatcher = Dispatcher(
        storage=storage,
        events_isolation=isolation or KeyLocks(),
        # ApplyOnce is the FSM middleware: it reads state and data at once, and saves them at once.
        disable_fsm=True,
        responses=responses,
        courier=Courier(storage, responses, flood),
    )
    dispatcher.update.outer_middleware(MeasureUpdates())  # metrics: how each update's handling ended
    dispatcher.update.outer_middleware(ApplyOnce(dispatcher.fsm))
    # Around every handler of every router: a reply sent before the changes are saved is reported.
    dispatcher.message.middleware(ReplyGuard())
    dispatcher.callback_query.middleware(ReplyGuard())
    dispatcher.include_routers(*get_routers())
    check_dependencies(dispatcher)  # a handler asking for what nothing provides stops the bot here
    return dispatcher
