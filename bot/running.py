"""Start and stop the bot, whichever way updates arrive: storages, token check, commands, signals."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

from aiogram import Bot, Dispatcher
from aiogram.exceptions import TelegramRetryAfter, TelegramServerError, TelegramUnauthorizedError
from aiogram.methods import DeleteWebhook, GetMe, SetMyCommands, SetWebhook, TelegramMethod
from aiogram.types import User

from bot.delivery import TELEGRAM_FAULTS, deliver
from bot.expiry import ExpirySweeper
from bot.guards import HandlerCheckError
from bot.metrics import MetricsListener
from bot.outbox import TAKEOVER_SECONDS, FloodControl
from bot.setup import create_bot, create_dispatcher
from config import Settings
from handlers import get_commands
from states import FormError, described_forms
from storage import SchemaError, StorageUnavailableError, create_storages
from storage.sql.in_use import held_while_running

logger = logging.getLogger(__name__)

# How long start-up waits for a busy Telegram (429, 5xx) before it gives up.
STARTUP_PATIENCE = 60.0


class StartupError(Exception):
    """The bot cannot start; the message says why and what to change."""


@asynccontextmanager
async def running_bot(settings: Settings) -> AsyncIterator[tuple[Bot, Dispatcher]]:
    """Storages connected, token checked, commands published; everything closed on exit."""
    try:
        storages = await create_storages(settings)
    except (StorageUnavailableError, SchemaError) as error:
        raise StartupError(str(error)) from None
    bot = create_bot(settings)
    # Tells `python main.py migrate` that the SQLite file is in use (storage/sql/in_use.py);
    # let go last, after the storage closed the file (closing another descriptor of a
    # SQLite file while its connection is open drops that connection's locks).
    with held_while_running(settings.sqlite_path):
        try:
            flood = FloodControl(
                settings.chat_burst, settings.group_messages_per_minute, settings.bot_messages_per_second
            )
            try:
                dispatcher = create_dispatcher(storages.fsm, storages.responses, flood=flood)
            except HandlerCheckError as error:  # a handler asks for what nothing provides, or uses Scenes
                raise StartupError(str(error)) from None
            # The handlers are imported now, and with them every form: `stats` and `export` read
            # them from the database, never importing the bot (admin/forms.py).
            try:
                await storages.responses.describe_forms(described_forms())
            except (FormError, StorageUnavailableError) as error:
                raise StartupError(str(error)) from None
            if settings.fsm_ttl is not None:
                sweeper = ExpirySweeper(storages.fsm, settings.fsm_ttl)
                dispatcher.startup.register(sweeper.start)
                dispatcher.shutdown.register(sweeper.stop)
            courier = dispatcher["courier"]
            # Polling is the only process handling this bot: whatever waits in the outbox is its own,
            # also what a paced call had put off. Webhook replicas leave to another what it carries now.
            pick_up_after = TAKEOVER_SECONDS if settings.webhook_url else None

            async def start_courier(bot: Bot) -> None:
                await courier.start(bot, pick_up_after=pick_up_after)

            async def stop_courier() -> None:
                await courier.stop(settings.shutdown_timeout)

            dispatcher.startup.register(start_courier)
            dispatcher.shutdown.register(stop_courier)
            close_storage_last(dispatcher)
            await introduce(bot, dispatcher, settings)
            if settings.metrics_port is not None:
                await serve_metrics(dispatcher, settings.web_server_host, settings.metrics_port)
            yield bot, dispatcher
        finally:
            await bot.session.close()
            await storages.close()


def close_storage_last(dispatcher: Dispatcher) -> None:
    """Move aiogram's own shutdown hook that closes the storage (registered first) after ours.

    The courier records what it carried out when it stops, and its lanes may still be
    carrying entries out: with the storage closed first, those writes fail and the
    stop ends in an error (the sandbox stopped right after a reply did).
    """
    hooks = dispatcher.shutdown.handlers
    closing = [hook for hook in hooks if hook.callback == dispatcher.fsm.close]
    hooks[:] = [hook for hook in hooks if hook not in closing] + closing


async def introduce(bot: Bot, dispatcher: Dispatcher, settings: Settings) -> None:
    """Check the token, switch to polling or to the webhook, and publish the command menu."""
    try:
        me = await first_contact(bot)
    except TelegramUnauthorizedError:
        msg = "Telegram rejected BOT_TOKEN (401 Unauthorized): copy the token from @BotFather again"
        raise StartupError(msg) from None
    except TELEGRAM_FAULTS as error:
        server = bot.session.api.base.split("/bot")[0]
        reason = type(error).__name__
        msg = f"cannot reach the Bot API at {server} ({reason}): check the network or TELEGRAM_API_URL"
        raise StartupError(msg) from None
    # Updates sent while the bot was down are answered, not dropped.
    # Replicas starting together are where Telegram answers 429: each call waits its turn.
    if settings.webhook_url and settings.webhook_secret:
        # Every replica sets it: the same URL and secret, so the last one changes nothing.
        webhook: TelegramMethod[bool] = SetWebhook(
            url=settings.webhook_url,
            secret_token=settings.webhook_secret.get_secret_value(),
            allowed_updates=dispatcher.resolve_used_update_types(),
            drop_pending_updates=False,
        )
    else:
        webhook = DeleteWebhook(drop_pending_updates=False)
    await deliver(bot, webhook, patience=STARTUP_PATIENCE)
    await deliver(bot, SetMyCommands(commands=get_commands()), patience=STARTUP_PATIENCE)
    logger.info("Bot @%s (id %s) is starting", me.username, me.id)


async def first_contact(bot: Bot) -> User:
    """getMe. Telegram busy (429, 5xx) is waited out; no answer at all (a wrong address, no network) is said at once."""
    try:
        return await bot.get_me()
    except (TelegramRetryAfter, TelegramServerError):
        return await deliver(bot, GetMe(), patience=STARTUP_PATIENCE)


async def serve_metrics(dispatcher: Dispatcher, host: str, port: int) -> None:
    """/metrics on METRICS_PORT from now until the dispatcher's shutdown."""
    listener = MetricsListener(host, port)
    try:
        await listener.start()
    except OSError as error:
        msg = f"cannot serve metrics on {host}:{port} ({error.strerror}): choose another METRICS_PORT"
        raise StartupError(msg) from None
    dispatcher.shutdown.register(listener.stop)


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call `stop` on SIGINT and SIGTERM while inside (where the platform allows it)."""
    loop = asyncio.get_running_loop()
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
    try:
        for sig in signals:
            loop.add_signal_handler(sig, stop)
    except (NotImplementedError, RuntimeError):  # not on Windows, not outside the main thread
        signals = ()
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
