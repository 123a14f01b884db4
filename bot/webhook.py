"""Run the bot as a webhook server (WEBHOOK_URL set): one replica of possibly several behind a load balancer.

Telegram posts each update to WEBHOOK_URL with the WEBHOOK_SECRET header. The
answer goes back only once the update is handled, its changes committed and
its reply sent (aiogram's `handle_in_background=False`): Telegram then sends
that chat's next update only after this one, and sends this one again if the
answer is an error or does not come (a Telegram outage here leaves the
update to be delivered again, as in polling). A request without the secret,
or with a wrong one, gets 401 and changes nothing.

`GET /healthz` answers 200 while the database answers, 503 otherwise: what a
load balancer or an orchestrator checks.

On SIGTERM or SIGINT the server stops accepting connections and gives the
requests in progress up to SHUTDOWN_TIMEOUT seconds; the session and the
storage close only after that (not in aiohttp's `on_shutdown`, which runs
while requests are still being handled).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiogram import Bot, Dispatcher
from aiogram.webhook.aiohttp_server import SimpleRequestHandler
from aiohttp import web

from bot.running import running_bot, stop_on_signals
from config import Settings
from storage import FsmStorage, StorageUnavailableError

logger = logging.getLogger(__name__)


async def run_webhook(settings: Settings) -> None:
    async with running_bot(settings) as (bot, dispatcher):
        await serve_webhook(bot, dispatcher, settings)


def webhook_app(bot: Bot, dispatcher: Dispatcher, settings: Settings) -> web.Application:
    """The webhook route (WEBHOOK_URL's path) and /healthz."""
    assert settings.webhook_secret is not None  # config requires it with WEBHOOK_URL
    updates = SimpleRequestHandler(
        dispatcher, bot, handle_in_background=False, secret_token=settings.webhook_secret.get_secret_value()
    )
    app = web.Application()
    # Not updates.register(app): that closes the bot's session in on_shutdown, under requests still running.
    app.router.add_post(settings.webhook_path, updates.handle)
    app.router.add_get("/healthz", health_check(dispatcher.fsm.storage))
    return app


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
