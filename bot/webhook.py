"""Run the bot as a webhook server (WEBHOOK_URL set): one replica of possibly several behind a load balancer.

Telegram posts each update to WEBHOOK_URL with the WEBHOOK_SECRET header. The
answer is 200 once the update is committed with everything it sends (the
outbox, bot/apply_once.py); the courier (bot/outbox.py) carries the calls out
after that, per chat, however long Telegram makes it wait, and a replica
that dies meanwhile leaves them to another's sweep. Nothing relies on
Telegram posting an update again to get a reply out. A request without the
secret, or with a wrong one, gets 401 and changes nothing.

`GET /healthz` answers 200 while the database answers, 503 otherwise: what a
load balancer or an orchestrator checks.

On SIGTERM or SIGINT the server stops accepting connections and gives the
requests in progress, then the courier, up to SHUTDOWN_TIMEOUT seconds; the
session and the storage close only after that (not in aiohttp's
`on_shutdown`, which runs while requests are still being handled).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable

from aiogram import Bot, Dispatcher
from aiogram.exceptions import TelegramAPIError
from aiogram.types import Update
from aiohttp import web
from pydantic import ValidationError

from bot.delivery import refused_for_now
from bot.metrics import add_metrics_route
from bot.outbox import handle_update
from bot.running import running_bot, stop_on_signals
from config import Settings
from storage import FsmStorage, StorageUnavailableError

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


async def run_webhook(settings: Settings) -> None:
    async with running_bot(settings) as (bot, dispatcher):
        await serve_webhook(bot, dispatcher, settings)


def webhook_app(bot: Bot, dispatcher: Dispatcher, settings: Settings) -> web.Application:
    """The webhook route (WEBHOOK_URL's path), /healthz and /metrics."""
    assert settings.webhook_secret is not None  # config requires it with WEBHOOK_URL
    app = web.Application()
    app.router.add_post(
        settings.webhook_path, update_handler(bot, dispatcher, settings.webhook_secret.get_secret_value())
    )
    app.router.add_get("/healthz", health_check(dispatcher.fsm.storage))
    add_metrics_route(app)
    return app


def update_handler(bot: Bot, dispatcher: Dispatcher, secret: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    expected = secret.encode()

    async def handle(request: web.Request) -> web.Response:
        # Bytes, not text: a header with characters outside ASCII is simply wrong.
        given = request.headers.get(SECRET_HEADER, "").encode(errors="replace")
        if not hmac.compare_digest(given, expected):
            return web.json_response({"ok": False, "error": "wrong secret token"}, status=401)
        try:
            update = Update.model_validate(await request.json(), context={"bot": bot})
        except (ValueError, ValidationError):
            return web.json_response({"ok": False, "error": "not an update"}, status=400)
        try:
            await handle_update(dispatcher, bot, update)
        except TelegramAPIError as error:  # from a call a handler made itself, before its commit
            if refused_for_now(error):
                logger.warning("Update %s left for Telegram to post again: %s", update.update_id, error)
                return web.json_response({"ok": False, "error": "Telegram refused a call for now"}, status=503)
            # Refused for good (the user blocked the bot, a malformed call): posting it again changes nothing.
            logger.error("Update %s: Telegram refused a call for good: %s", update.update_id, error)
        except Exception:
            logger.exception("Update %s failed", update.update_id)
            return web.json_response({"ok": False}, status=500)
        return web.json_response({})

    return handle


def health_check(storage: object) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def healthz(_: web.Request) -> web.Response:
        if isinstance(storage, FsmStorage):
            try:
                await storage.ping()
            except StorageUnavailableError as error:
                logger.warning("Health check: the database does not answer: %s", error)
                return web.json_response({"ok": False, "database": "unavailable"}, status=503)
        return web.json_response({"ok": True})

    return healthz


async def serve_webhook(bot: Bot, dispatcher: Dispatcher, settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM; then finish the requests in progress."""
    runner = web.AppRunner(
        webhook_app(bot, dispatcher, settings), access_log=None, shutdown_timeout=settings.shutdown_timeout
    )
    await runner.setup()
    stopping = asyncio.Event()
    await dispatcher.emit_startup(bot=bot, bots=[bot])
    try:
        with stop_on_signals(stopping.set):
            await web.TCPSite(runner, settings.web_server_host, settings.web_server_port).start()
            logger.info(
                "Webhook server on %s:%s, path %s",
                settings.web_server_host,
                settings.web_server_port,
                settings.webhook_path,
            )
            await stopping.wait()
            logger.info("Stopping: up to %s s for the requests in progress", settings.shutdown_timeout)
    finally:
        await runner.cleanup()  # stops accepting, then waits for the requests in progress
        await dispatcher.emit_shutdown(bot=bot, bots=[bot])
