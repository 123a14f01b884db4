"""Run the bot by long polling until SIGINT or SIGTERM, confirming only the updates it has committed.

aiogram's own `start_polling` confirms an update as soon as it starts
handling it, and a stop does not wait for the handlers still running: a
crash or a deploy then loses the messages in flight. `Poller` keeps them:
getUpdates' offset passes an update only once its handling has finished,
that is once ApplyOnce committed it with everything it sends
(bot/update_ledger.py); Telegram delivers an unfinished one again after a
crash, and ApplyOnce keeps one already applied from being applied twice.

What updates send is carried out by the courier (bot/outbox.py) after the
commit, per chat: a chat Telegram refuses or makes wait holds up nothing
here, neither other chats nor the fetching of updates. Each chat's updates
are handled one after another, in Telegram's order (a lane per chat);
different chats at once. On SIGINT or SIGTERM it stops fetching, gives the
running handlers and the courier up to `shutdown_timeout` seconds each,
confirms what finished, and only then lets the session and the storage close.

Several processes may run this on one database: `run_polling` first takes
the database's polling lock (storage/leadership.py). The others stand by,
connected, until the leader stops (it lets go after its shutdown hooks) or
dies; then one of them polls, and its courier's start picks up whatever the
previous leader left in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from aiogram import Bot, Dispatcher
from aiogram.dispatcher.middlewares.user_context import UserContextMiddleware
from aiogram.exceptions import TelegramAPIError, TelegramRetryAfter, TelegramUnauthorizedError
from aiogram.types import Update
from aiogram.utils.backoff import Backoff, BackoffConfig

from bot.delivery import RESEND_BACKOFF, TELEGRAM_FAULTS, refused_for_now
from bot.metrics import get_metrics
from bot.outbox import handle_update
from bot.running import running_bot, stop_on_signals
from bot.update_ledger import UpdateLedger
from config import Settings
from storage import Leadership, create_leadership

logger = logging.getLogger(__name__)


POLL_SECONDS = 30
# When getUpdates returns only updates already running, wait this long at most for one
# of them to finish before asking again (it answers at once while any is unconfirmed).
IDLE_WAIT_SECONDS = 0.5
# Telegram unreachable or a second instance polling: retry, more slowly each time.
FETCH_BACKOFF = BackoffConfig(min_delay=1.0, max_delay=30.0, factor=1.5, jitter=0.1)


class LeadershipLostError(Exception):
    """Another process may poll now: this one stopped; started again, it stands by."""


async def run_polling(settings: Settings) -> None:
    """Stand by until no other process polls this bot on this database, then poll until stopped.

    Raises LeadershipLostError when another process took over the lock (while
    this one could not reach the database, storage/leadership.py): the poller
    has stopped, and the supervisor's restart makes the process a standby again.
    """
    async with running_bot(settings) as (bot, dispatcher):
        leadership = create_leadership(settings, bot.id)
        try:
            leading = get_metrics().polling_leader
            leading.set(0)
            if not await stand_by(leadership):
                return
            leading.set(1)
            poller = Poller(bot, dispatcher, settings.shutdown_timeout)
            polling = asyncio.create_task(poller.run())
            lost = asyncio.create_task(leadership.lost())
            await asyncio.wait({polling, lost}, return_when=asyncio.FIRST_COMPLETED)
            if polling.done():
                lost.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lost
                await polling
                return
            if (failure := lost.exception()) is not None:  # a fault of the watch itself, not of the lock
                logger.error("Watching the polling lock failed", exc_info=failure)
            logger.warning("Another process may poll this bot now: stopping at once")
            poller.stop()
            poller.stop()  # again: no waiting for what runs; the new leader carries out what is left
            await dispatcher["courier"].stop(0)  # nothing more sent from here (the new leader sends it)
            await polling
            msg = (
                "the polling lock could not be watched (see the error above)"
                if failure is not None
                else "another process took over the polling lock (see the warnings above)"
            )
            raise LeadershipLostError(msg)
        finally:
            await leadership.release()


async def stand_by(leadership: Leadership) -> bool:
    """Wait until this process leads (True), or for SIGINT or SIGTERM (False)."""
    stopped = asyncio.Event()
    waited = False

    def standing_by() -> None:
        nonlocal waited
        waited = True
        logger.info("Standing by: another process polls this bot; taking over when it stops")

    with stop_on_signals(stopped.set):
        acquiring = asyncio.create_task(leadership.acquire(standing_by))
        stopping = asyncio.create_task(stopped.wait())
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if acquiring.done():
            acquiring.result()
            if waited:
                logger.info("Taking over: no other process polls this bot now")
            return True
        acquiring.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquiring
    logger.info("Stopped while standing by")
    return False


class Poller:
    """Fetch updates and handle them concurrently; confirm each only once it is finished."""

    def __init__(self, bot: Bot, dispatcher: Dispatcher, shutdown_timeout: float) -> None:
        self.bot = bot
        self.dispatcher = dispatcher
        self.shutdown_timeout = shutdown_timeout
        self.ledger = UpdateLedger()
        self.workflow_data: dict[str, Any] = {"bots": [bot]}
        self._lanes: dict[tuple[str, int], deque[Update]] = {}  # each chat's updates, in order
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}  # the lanes at work
        self._progress = asyncio.Event()
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._confirmed = 0  # the offset of the last getUpdates that answered

    def stop(self) -> None:
        """Stop fetching and finish what is running; called a second time, stop waiting for it."""
        if self._stopping.is_set():
            self._forced.set()
        self._stopping.set()

    async def run(self) -> None:
        """Poll until `stop()`, SIGINT or SIGTERM; then finish, confirm and run the shutdown hooks."""
        await self.dispatcher.emit_startup(bot=self.bot, **self.workflow_data)
        logger.info("Polling for updates")
        try:
            with stop_on_signals(self.stop):
                await self._poll()
                await self._finish_running()
        finally:
            await self.dispatcher.emit_shutdown(bot=self.bot, **self.workflow_data)

    async def _poll(self) -> None:
        backoff = Backoff(FETCH_BACKOFF)
        allowed_updates = self.dispatcher.resolve_used_update_types()
        while not self._stopping.is_set():
            self._progress.clear()  # before fetching, so a handler finishing meanwhile is not missed
            try:
                offset = self.ledger.offset
                updates = await self._until_stopped(
                    self.bot.get_updates(offset=offset, timeout=POLL_SECONDS, allowed_updates=allowed_updates)
                )
            except TelegramAPIError as error:  # unreachable, 5xx, or 409: another instance polls
                if isinstance(error, TelegramUnauthorizedError):
                    raise
                logger.warning("getUpdates failed (%s); trying again in %.1f s", error, backoff.next_delay)
                await self._until_stopped(backoff.asleep())
                continue
            if updates is None:
                return
            self._confirmed = offset
            self.ledger.confirmed(offset)
            backoff.reset()
            started = set(self.ledger.take(update.update_id for update in updates))
            for update in updates:  # in Telegram's order, which is each chat's order
                if update.update_id in started:
                    self._enqueue(update)
            if updates and not started:
                # Telegram answered at once with updates already running: wait for one to finish.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), IDLE_WAIT_SECONDS)

    async def _until_stopped(self, call: Any) -> Any:
        """Await `call` unless a stop comes first (then cancel it and return None)."""
        task = asyncio.ensure_future(call)
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
        return task.result()

    def _enqueue(self, update: Update) -> None:
        lane = lane_of(update)
        self._lanes.setdefault(lane, deque()).append(update)
        if lane not in self._tasks:
            self._tasks[lane] = asyncio.create_task(self._run_lane(lane))

    async def _run_lane(self, lane: tuple[str, int]) -> None:
        """Handle the lane's updates one by one until it is empty."""
        queue = self._lanes[lane]
        try:
            while queue:
                await self._handle(queue[0])
                queue.popleft()
        finally:
            if not queue:
                del self._lanes[lane]
            del self._tasks[lane]

    async def _handle(self, update: Update) -> None:
        """Handle `update`; again while a call its handler makes itself is refused for now."""
        backoff = Backoff(RESEND_BACKOFF)
        while True:
            try:
                await handle_update(self.dispatcher, self.bot, update, **self.workflow_data)
                break
            except TELEGRAM_FAULTS as error:
                if not refused_for_now(error):
                    logger.exception("Update %s failed", update.update_id)
                    break
                # From a call a handler made itself (its effects are not committed): handled again.
                delay = error.retry_after if isinstance(error, TelegramRetryAfter) else next(backoff)
                logger.warning(
                    "Update %s: Telegram refused (%s); trying again in %.1f s", update.update_id, error, delay
                )
                await asyncio.sleep(delay)
            except Exception:
                logger.exception("Update %s failed", update.update_id)
                break
        self.ledger.finish(update.update_id)
        self._progress.set()

    async def _finish_running(self) -> None:
        """Give running handlers up to `shutdown_timeout` s, confirm what finished, cancel the rest."""
        running = set(self._tasks.values())
        if running:
            logger.info(
                "Stopping: waiting up to %s s for %d update(s) in progress", self.shutdown_timeout, len(running)
            )
            all_done = asyncio.ensure_future(asyncio.wait(running))
            forced = asyncio.ensure_future(self._forced.wait())
            await asyncio.wait({all_done, forced}, timeout=self.shutdown_timeout, return_when=asyncio.FIRST_COMPLETED)
            all_done.cancel()  # only the waiting: the handlers themselves are cancelled below
            forced.cancel()
        unfinished = [task for task in running if not task.done()]
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        if unfinished:
            logger.warning("%d update(s) did not finish; Telegram will deliver them again", len(unfinished))
        await self._confirm()

    async def _confirm(self) -> None:
        """Tell Telegram which updates are done: a getUpdates whose offset passes them."""
        offset = self.ledger.offset
        if offset in (0, self._confirmed):
            return
        try:
            await self.bot.get_updates(offset=offset, limit=1, timeout=0)
        except TelegramAPIError as error:
            logger.warning("Could not confirm the last updates (%s); Telegram will deliver them again", error)


def lane_of(update: Update) -> tuple[str, int]:
    """The lane an update waits in: its chat's, else its user's, else its own."""
    context = UserContextMiddleware.resolve_event_context(update)
    if context.chat_id is not None:
        return "chat", context.chat_id
    if context.user_id is not None:
        return "user", context.user_id
    return "update", update.update_id
