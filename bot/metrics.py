"""Prometheus metrics: what the bot is doing, for an operator to scrape and alert on.

One registry per process, made on first use (`get_metrics()`); nothing is
built at import. Labels are bounded: an outcome, a Bot API method name, an
error code or an error class, never a user or chat id. Served at `/metrics`
on the webhook server (bot/webhook.py) and, when METRICS_PORT is set, on a
listener of its own (`MetricsListener`, started with the bot in either mode).

Where the numbers come from:

- `measure_update`, on bot/outbox.py's `handle_update` (polling and the
  webhook both hand each update to it): how each update's handling ended
  and how long it took, up to its commit;
- `MeasureUpdates`, an outer middleware on the dispatcher's updates (inside
  aiogram's error middleware, outside `ApplyOnce`): an update that failed
  although an error handler answered the user, and the storage errors;
- `note_already_applied()` and `count_commit_conflict()`, called by
  `ApplyOnce`: an update applied before (delivered again), a fenced commit
  lost to another writer (the update is handled again);
- `timed_lock()`, around the key's in-process lock in `ApplyOnce`: lock waits;
- `replies_waiting`, kept by the courier (bot/outbox.py): the outbox's
  entries committed and not yet carried out, including those waiting out a
  429; `waiting_reply` on bot/delivery.py's `deliver` (start-up's calls);
- `CountTelegramErrors`, the session's request middleware: every error
  answer Telegram gave;
- bot/expiry.py: sweeps and the conversations they removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from aiogram import BaseMiddleware
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.methods import TelegramMethod
from aiogram.methods.base import TelegramType
from aiogram.types import TelegramObject
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from storage import CorruptDataError, SchemaError, StorageError, StorageUnavailableError

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.methods import Response

logger = logging.getLogger(__name__)

Outcome = Literal["applied", "already_applied", "failed", "redelivery"]
OUTCOMES: tuple[Outcome, ...] = ("applied", "already_applied", "failed", "redelivery")
SWEEP_RESULTS = ("ok", "skipped", "failed")
STORAGE_ERROR_KINDS = tuple(kind.__name__ for kind in (StorageUnavailableError, CorruptDataError, SchemaError))
STORAGE_ERROR_PLACES = ("update", "expiry")
# What Telegram may answer for now and accept later (bot/delivery.py's TELEGRAM_FAULTS):
# the update is handled again (polling: in its lane; webhook: when Telegram posts it again).
TELEGRAM_FAULTS = (TelegramRetryAfter, TelegramServerError, TelegramNetworkError)
# Seconds: a handler with its database round trips and its reply takes tens of milliseconds;
# the long tail is a reply waiting out a 429 or Telegram's outage.
HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LOCK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

T = TypeVar("T")
P = ParamSpec("P")


class BotMetrics:
    """The bot's metrics, in a registry of their own (not prometheus_client's global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.updates = Counter(
            "bot_updates",
            "Updates handled, by outcome: applied; already_applied (delivered again, applied before); "
            "failed (the user was told, or nothing could be done); redelivery (Telegram refused for now: "
            "handled again, in its lane when polling, when Telegram posts it again by webhook)",
            ["outcome"],
            registry=r,
        )
        self.handling = Histogram(
            "bot_update_handling_seconds",
            "Time from an update's arrival to its commit (what it sends is then in the outbox), or its failure",
            buckets=HANDLING_BUCKETS,
            registry=r,
        )
        self.replies_waiting = Gauge(
            "bot_replies_waiting",
            "Replies committed and not yet accepted by Telegram, including those waiting out flood control (429)",
            registry=r,
        )
        self.telegram_errors = Counter(
            "bot_telegram_errors",
            "Error answers from the Bot API (every try), by method and code (5xx: server errors; network: no answer)",
            ["method", "code"],
            registry=r,
        )
        self.lock_wait = Histogram(
            "bot_lock_wait_seconds",
            "Time an update waited for its key's lock in this process (behind the same chat's update)",
            buckets=LOCK_BUCKETS,
            registry=r,
        )
        self.commit_conflicts = Counter(
            "bot_commit_conflicts",
            "Fenced commits lost to another writer of the same key (a replica, a deploy's other process); "
            "the update was handled again",
            registry=r,
        )
        self.storage_errors = Counter(
            "bot_storage_errors",
            "Storage errors, by kind (StorageUnavailableError, CorruptDataError...) and where",
            ["kind", "where"],
            registry=r,
        )
        self.expiry_sweeps = Counter(
            "bot_expiry_sweeps",
            "Expiry sweeps (FSM_TTL), by result: ok, skipped (database unavailable), failed",
            ["result"],
            registry=r,
        )
        self.expired = Counter(
            "bot_expired_conversations", "Conversations removed for being untouched longer than FSM_TTL", registry=r
        )
        # Every outcome is exported from the start, at 0: a rate() over it needs no first event,
        # and a first storage error is an increase (a series born at 1 has none: no alert).
        for outcome in OUTCOMES:
            self.updates.labels(outcome=outcome)
        for result in SWEEP_RESULTS:
            self.expiry_sweeps.labels(result=result)
        for kind in STORAGE_ERROR_KINDS:
            for where in STORAGE_ERROR_PLACES:
                self.storage_errors.labels(kind=kind, where=where)

    @functools.cached_property
    def polling_leader(self) -> Gauge:
        """Made by polling only: webhook replicas export no such series (an alert reads its 0 as "nobody polls")."""
        return Gauge(
            "bot_polling_leader",
            "1 while this process polls; 0 while it stands by, another process polling",
            registry=self.registry,
        )

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry as text (Prometheus' format, or OpenMetrics if `accept` asks for it) and its type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


@functools.cache
def get_metrics() -> BotMetrics:
    """This process's metrics, made on first use."""
    return BotMetrics()


# --- updates -----------------------------------------------------------------


@dataclass
class _UpdateOutcome:
    outcome: Outcome = "applied"


_current_update: ContextVar[_UpdateOutcome | None] = ContextVar("current_update", default=None)


def note_already_applied() -> None:
    """The update being handled was applied before (delivered again): count it so, not as applied."""
    current = _current_update.get()
    if current is not None:
        current.outcome = "already_applied"


def count_commit_conflict() -> None:
    get_metrics().commit_conflicts.inc()


def count_storage_error(error: StorageError, where: str) -> None:
    get_metrics().storage_errors.labels(kind=type(error).__name__, where=where).inc()


def measure_update(handle: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Count how each call of `handle` (one update, its reply delivered) ended, and time it."""

    @functools.wraps(handle)
    async def measured(*args: P.args, **kwargs: P.kwargs) -> T:
        metrics = get_metrics()
        current = _UpdateOutcome()
        token = _current_update.set(current)
        started = time.perf_counter()
        try:
            return await handle(*args, **kwargs)
        except (*TELEGRAM_FAULTS, asyncio.CancelledError):
            # Cancelled: a stop that did not wait for it; it is unconfirmed, so delivered again.
            current.outcome = "redelivery"
            raise
        except Exception:
            current.outcome = "failed"
            raise
        finally:
            _current_update.reset(token)
            metrics.handling.observe(time.perf_counter() - started)
            metrics.updates.labels(outcome=current.outcome).inc()

    return measured


class MeasureUpdates(BaseMiddleware):
    """Marks an update failed when its handler raised, though an error handler may answer the user after."""

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        try:
            return await handler(event, data)
        except Exception as error:
            current = _current_update.get()
            if current is not None:
                current.outcome = "redelivery" if isinstance(error, TELEGRAM_FAULTS) else "failed"
            if isinstance(error, StorageError):
                count_storage_error(error, "update")
            raise


@contextlib.asynccontextmanager
async def timed_lock(lock: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
    """`async with timed_lock(isolation.lock(key)) as held:` is the lock, its wait measured."""
    async with contextlib.AsyncExitStack() as stack:
        started = time.perf_counter()
        held = await stack.enter_async_context(lock)
        get_metrics().lock_wait.observe(time.perf_counter() - started)
        yield held


def waiting_reply(deliver: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """A reply counts as waiting on Telegram for as long as `deliver` is at it."""

    @functools.wraps(deliver)
    async def delivering(*args: P.args, **kwargs: P.kwargs) -> T:
        waiting = get_metrics().replies_waiting
        waiting.inc()
        try:
            return await deliver(*args, **kwargs)
        finally:
            waiting.dec()

    return delivering


# --- the Bot API session -----------------------------------------------------


def error_code(error: TelegramAPIError) -> str:
    """The HTTP status the Bot API answered with, as far as aiogram's exception tells it."""
    codes: tuple[tuple[type[TelegramAPIError], str], ...] = (
        (TelegramRetryAfter, "429"),
        (TelegramMigrateToChat, "400"),
        (TelegramBadRequest, "400"),
        (TelegramUnauthorizedError, "401"),
        (TelegramForbiddenError, "403"),
        (TelegramNotFound, "404"),
        (TelegramConflictError, "409"),
        (TelegramEntityTooLarge, "413"),
        (TelegramServerError, "5xx"),
        (TelegramNetworkError, "network"),
    )
    return next((code for kind, code in codes if isinstance(error, kind)), "other")


class CountTelegramErrors(BaseRequestMiddleware):
    """On the Bot API session: every error answer Telegram itself gave, each try of a request included."""

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        try:
            return await make_request(bot, method)
        except TelegramAPIError as error:
            get_metrics().telegram_errors.labels(method=method.__api_method__, code=error_code(error)).inc()
            raise


# --- expiry ------------------------------------------------------------------


def count_sweep(result: Literal["ok", "skipped", "failed"], removed: int = 0) -> None:
    metrics = get_metrics()
    metrics.expiry_sweeps.labels(result=result).inc()
    if removed:
        metrics.expired.inc(removed)


# --- serving -----------------------------------------------------------------


async def metrics_view(request: web.Request) -> web.Response:
    body, content_type = get_metrics().exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


def add_metrics_route(app: web.Application) -> None:
    """`GET /metrics` on an aiohttp application (the webhook server's)."""
    app.router.add_get("/metrics", metrics_view)


class MetricsListener:
    """`GET /metrics` on a port of its own (METRICS_PORT), from `start()` to `stop()`."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        add_metrics_route(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        logger.info("Metrics on http://%s:%s/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
