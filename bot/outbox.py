"""The outbox: what an update sends and saves is committed with its changes, then carried out per chat.

A handler returns its Bot API calls (one, or several in order: `callback.answer()`
and the next question; "thanks" and then the summary), and the completed forms it
saves or the deletions it asks for (`responses.save`, `/forget`) are queued as
well. `ApplyOnce` (bot/apply_once.py) writes them, numbered, into the key's
record in the same fenced write as the new state and data: one atomic commit
per update. From then on the update is done (polling confirms it, the webhook
answers 200) and the `Courier` here carries the entries out:

- **Per chat, in commit order**: a lane per chat; entries of one key keep their
  numbers' order. One chat waiting on Telegram never holds up another chat, nor
  the fetching of updates.
- **Marked when done**: the key's `outbox_sent` number is raised (a batch every
  `MARK_SECONDS` for every key, changing no version), so a crash repeats at most
  the entries carried out since the last batch.
- **Picked up again**: the key is due while an entry waits; at start-up every due
  key's entries are queued, and a sweep every `SWEEP_SECONDS` takes those another
  process left for longer than `TAKEOVER_SECONDS` (a replica that died). A chat in
  a flood wait is postponed in the database, so no other replica sends into it.
- **Flood control as Telegram applies it** (`FloodControl`): a 429 holds back the
  chat it was for; 429s for several chats at once hold back the bot; and sends are
  paced under the limits (per chat, per group, per bot) so that 429s stay rare.
- 5xx, network errors and stalls are tried again with a growing delay, in the
  chat's lane. What Telegram refuses for good (a blocked bot, a bad request) is
  logged and passed over. Effects (saving a response, deleting a user's data)
  are each safe to repeat, and tried again while the database is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiogram.methods
from aiogram import Bot, Dispatcher
from aiogram.dispatcher.middlewares.user_context import UserContextMiddleware
from aiogram.exceptions import TelegramAPIError, TelegramRetryAfter
from aiogram.fsm.storage.base import BaseStorage, StateType, StorageKey
from aiogram.methods import TelegramMethod
from aiogram.types import Update
from aiogram.utils.backoff import Backoff, BackoffConfig

from bot.delivery import TELEGRAM_FAULTS, refused_for_now
from bot.metrics import get_metrics, measure_update
from storage import CompletedResponse, FsmStorage, ResponseStore, StorageUnavailableError
from storage.records import ALL_DONE

logger = logging.getLogger(__name__)

MARK_SECONDS = 0.05  # how often the entries done are recorded, in one batch for all keys
SWEEP_SECONDS = 5.0  # how often the database is asked for entries no process is carrying out
# How long a key's entries wait in the database, not renewed by a mark or a postponement, before
# another process takes them: longer than a request may stall (REQUEST_TIMEOUT).
TAKEOVER_SECONDS = 30.0
SWEEP_BATCH = 1000
EVERYTHING = timedelta(days=3650)  # a start-up sweep that takes all that waits, however far put off
RETRY_BACKOFF = BackoffConfig(min_delay=0.5, max_delay=30.0, factor=2.0, jitter=0.1)
# A request that stalls this long is given up and tried again (it may have reached Telegram).
REQUEST_TIMEOUT = 15
# 429s for this many different chats within BOT_WAIT_WINDOW seconds: the bot's own limit was met.
BOT_WAIT_CHATS = 3
BOT_WAIT_WINDOW = 1.0
# Each window is kept this much longer than Telegram's: a request may reach it later than it left.
PACING_MARGIN = 0.1

Entry = dict[str, Any]  # {"seq": n, "call": {...}} | {"seq": n, "save": {...}} | {"seq": n, "delete": {...}}


class OwnKeyWriteError(RuntimeError):
    """A handler wrote its own update's key through `fsm_storage` instead of its `state`."""


# Kept in the key's FSM data; handlers never see it.
APPLIED = "__applied_updates__"
# Telegram hands out at most 100 updates per getUpdates; a redelivery comes from among them.
REMEMBERED_UPDATES = 100


@dataclass
class AppliedRecord:
    """What a key's record keeps beside state and data: the updates applied, and the outbox.

    `queued` numbers the entries; `outbox` holds those not yet known to be done
    (the storage's `outbox_sent` says up to which number they are).
    """

    updates: list[int] = field(default_factory=list)
    queued: int = 0
    outbox: list[Entry] = field(default_factory=list)
    key: StorageKey | None = None

    @classmethod
    def read(cls, stored: Any) -> AppliedRecord:
        """The record as stored; one of another shape (written by hand, or damaged) is read as none."""
        if stored is None:
            return cls()
        try:
            updates = [int(update) for update in stored.get("updates", [])]
            outbox = [dict(entry) for entry in stored.get("outbox", [])]
            for entry in outbox:
                entry["seq"] = int(entry["seq"])
            key = StorageKey(**stored["key"]) if stored.get("key") else None
            return cls(updates, int(stored.get("queued", 0)), outbox, key)
        except (AttributeError, KeyError, TypeError, ValueError):
            logger.warning("A key's applied-updates record has an unknown shape; it is started afresh")
            return cls()

    def dump(self) -> dict[str, Any]:
        return {
            "updates": self.updates[-REMEMBERED_UPDATES:],
            "queued": self.queued,
            "outbox": self.outbox,
            "key": None if self.key is None else dump_key(self.key),
        }


# --- what a handler's update queues ---------------------------------------------------


def call_entry(bot: Bot, call: TelegramMethod[Any]) -> Entry:
    """A Bot API call as JSON: the parameters the session would send now (the bot's defaults filled in)."""
    prepared = (
        (name, bot.session.prepare_value(value, bot=bot, files={}, _dumps_json=False))
        for name, value in call.model_dump(warnings=False).items()
    )
    return {"call": {"method": type(call).__name__, "params": {k: v for k, v in prepared if v is not None}}}


def load_call(stored: Mapping[str, Any]) -> TelegramMethod[Any]:
    method = getattr(aiogram.methods, str(stored["method"]), None)
    if not (isinstance(method, type) and issubclass(method, TelegramMethod)):
        msg = f"not a Bot API method: {stored['method']!r}"
        raise ValueError(msg)
    return method.model_validate(stored["params"])


def calls_in(result: Any) -> list[TelegramMethod[Any]]:
    """What a handler returned, as calls: one, a sequence of them, or none."""
    if isinstance(result, TelegramMethod):
        return [result]
    if isinstance(result, list | tuple):
        return [call for call in result if isinstance(call, TelegramMethod)]
    return []


class PendingResponses:
    """The `responses` store as one update's handlers see it: reads go to the store, writes are queued
    into the update's commit (and carried out after it, in order, before the replies after them)."""

    def __init__(self, store: ResponseStore, effects: list[Entry]) -> None:
        self.store = store
        self.effects = effects

    async def save(self, response: CompletedResponse) -> bool:
        self.effects.append({"save": dump_response(response)})
        return True

    async def delete_for_user(self, user_id: int, only: Collection[str] | None = None) -> int:
        """Queue the deletion of the user's responses kept now (by their ids: one saved after this
        update, by another chat's, is not among them); how many there are."""
        kept = [response.response_id for response in await self.store.for_user(user_id)]
        chosen = kept if only is None else [response_id for response_id in kept if response_id in only]
        self.effects.append({"delete": {"responses_of": user_id, "ids": chosen}})
        return len(chosen)

    async def for_user(self, user_id: int) -> list[CompletedResponse]:
        return await self.store.for_user(user_id)

    async def replace(self, response: CompletedResponse) -> None:
        msg = "replace() is for the owner's commands (migrate), not for handlers"
        raise RuntimeError(msg)

    async def completed(self, since: datetime | None = None) -> list[CompletedResponse]:
        return await self.store.completed(since)


class UpdateStorage(BaseStorage):
    """`fsm_storage` as one update's handlers see it: other keys as the storage has them; the update's
    own key only through its `state` (FSMContext); `delete_user` (for /forget) queued into the commit."""

    def __init__(self, storage: BaseStorage, key: StorageKey, effects: list[Entry]) -> None:
        self.storage = storage
        self.key = key
        self.effects = effects

    def _not_own(self, key: StorageKey) -> None:
        if key == self.key:
            msg = (
                "a handler wrote its own key through fsm_storage; use its FSMContext (the `state` argument) "
                "instead: that write is committed with the update, once"
            )
            raise OwnKeyWriteError(msg)

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        self._not_own(key)
        await self.storage.set_state(key, state)

    async def get_state(self, key: StorageKey) -> str | None:
        return await self.storage.get_state(key)

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        self._not_own(key)
        await self.storage.set_data(key, data)

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        return await self.storage.get_data(key)

    async def delete_user(self, user_id: int) -> int:
        """Queue the deletion of the user's conversations in every other chat; 0 (counted when done)."""
        self.effects.append({"delete": {"keys_of": user_id}})
        return 0

    async def close(self) -> None:
        pass


def dump_response(response: CompletedResponse) -> dict[str, Any]:
    return {
        "response_id": response.response_id,
        "user_id": response.user_id,
        "chat_id": response.chat_id,
        "answers": response.answers,
        "completed_at": response.completed_at.isoformat(),
        "kind": response.kind,
    }


def load_response(stored: Mapping[str, Any]) -> CompletedResponse:
    return CompletedResponse(**{**stored, "completed_at": datetime.fromisoformat(stored["completed_at"])})


def dump_key(key: StorageKey) -> dict[str, Any]:
    return {
        "bot_id": key.bot_id,
        "chat_id": key.chat_id,
        "user_id": key.user_id,
        "thread_id": key.thread_id,
        "business_connection_id": key.business_connection_id,
        "destiny": key.destiny,
    }


# --- what the courier carries -----------------------------------------------------------


@dataclass
class Delivery:
    """One update's entries to carry out, in order: committed (`key` set) or not (an error's apology)."""

    entries: list[Entry]
    key: StorageKey | None = None
    lane: int | str = 0  # the chat, or something of the update's own when it has none
    # The first entry this update committed: those before it were committed earlier and are
    # perhaps being carried out by another process (None: take them all, as the sweep does).
    fresh_from: int | None = None
    done_elsewhere: int = 0  # found carried out by another process (`Courier._await_others`)

    @property
    def durable(self) -> bool:
        return self.key is not None


@dataclass
class FloodControl:
    """Telegram's limits, kept: per chat (a short burst, then about one a second), per group, per bot.

    Each is a sliding window: at most `limit` sends within `period` seconds. A 429
    holds back the chat it was for, for its `retry_after`; 429s for `BOT_WAIT_CHATS`
    chats within `BOT_WAIT_WINDOW` seconds hold back the whole bot, for the shortest
    of those waits.
    """

    chat_burst: int = 3
    group_per_minute: int = 20
    bot_per_second: int = 30
    clock: Callable[[], float] = time.monotonic
    _sent: dict[int, deque[float]] = field(default_factory=dict)
    _bot_sent: deque[float] = field(default_factory=deque)
    _held: dict[int, float] = field(default_factory=dict)
    _bot_held: float = 0.0
    _refusals: deque[tuple[float, int, float]] = field(default_factory=deque)

    def wait_for(self, chat: int | None) -> float:
        """Seconds until a call into `chat` (None: a call into no chat) may go out."""
        now = self.clock()
        waits = [0.0, self._bot_held - now]
        if chat is not None:
            waits.append(self._held.get(chat, 0.0) - now)
            limit, period = (self.group_per_minute, 60.0) if chat < 0 else (self.chat_burst, float(self.chat_burst))
            waits.append(_window_wait(self._sent.get(chat), limit, period, now))
            waits.append(_window_wait(self._bot_sent, self.bot_per_second, 1.0, now))
        return max(waits)

    def took(self, chat: int | None) -> None:
        """A call into `chat` goes out now."""
        if chat is None:
            return
        now = self.clock()
        self._sent.setdefault(chat, deque()).append(now)
        self._bot_sent.append(now)

    def refused(self, chat: int | None, retry_after: float) -> None:
        """Telegram answered 429 for a call into `chat`."""
        now = self.clock()
        if chat is None:
            self._bot_held = max(self._bot_held, now + retry_after)
            return
        self._held[chat] = max(self._held.get(chat, 0.0), now + retry_after)
        self._refusals.append((now, chat, retry_after))
        while self._refusals and self._refusals[0][0] < now - BOT_WAIT_WINDOW:
            self._refusals.popleft()
        if len({refused_chat for _, refused_chat, _ in self._refusals}) >= BOT_WAIT_CHATS:
            shortest = min(wait for _, _, wait in self._refusals)
            logger.warning("Telegram refused %d chats at once: the bot waits %.0f s", BOT_WAIT_CHATS, shortest)
            self._bot_held = max(self._bot_held, now + shortest)

    def forget_idle(self) -> None:
        """Drop what no longer limits anything (chats long quiet), so memory stays small."""
        now = self.clock()
        for chat in [chat for chat, sent in self._sent.items() if not sent or sent[-1] < now - 60.0]:
            del self._sent[chat]
        for chat in [chat for chat, until in self._held.items() if until < now]:
            del self._held[chat]


def _window_wait(sent: deque[float] | None, limit: int, period: float, now: float) -> float:
    if sent is None:
        return 0.0
    period += PACING_MARGIN
    while sent and sent[0] <= now - period:
        sent.popleft()
    return 0.0 if len(sent) < limit else sent[0] + period - now


def chat_of(call: TelegramMethod[Any]) -> int | None:
    """The chat a call sends into (None for calls into no chat, such as answerCallbackQuery)."""
    chat = getattr(call, "chat_id", None)
    return chat if isinstance(chat, int) else None


class Courier:
    """Carries out committed entries: a lane per chat, flood control, marks, and the sweep."""

    def __init__(
        self,
        storage: BaseStorage,
        responses: ResponseStore | None,
        flood: FloodControl | None = None,
        *,
        takeover: float = TAKEOVER_SECONDS,
    ) -> None:
        self.bot: Bot | None = None  # the bot of the last update handed in (or of start())
        self.running = False  # started: deliveries wait in lanes; else they are carried out at once
        self.stopped = False  # started and stopped: what comes in now waits in the database
        self.storage = storage
        self.responses = responses
        self.flood = flood or FloodControl()
        self.takeover = takeover
        self._lanes: dict[int | str, deque[tuple[Delivery, Entry]]] = {}
        self._tasks: dict[int | str, asyncio.Task[None]] = {}
        self._known: set[tuple[StorageKey, int]] = set()  # entries queued in this process, not yet done
        self._marks: dict[StorageKey, int] = {}  # entries done, to record in the next batch
        self._writing: dict[StorageKey, int] = {}  # the batch being recorded
        self._recorded: dict[StorageKey, int] = {}  # recorded done since the last sweep began
        self._marked = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._background: list[asyncio.Task[None]] = []
        self._closing = asyncio.Event()  # stop(): the marks and the sweep end after their current call

    @property
    def durable(self) -> bool:
        return isinstance(self.storage, FsmStorage)

    # --- lifecycle (dp.startup / dp.shutdown) ---

    async def start(self, bot: Bot, *, pick_up_after: float | None = None) -> None:
        """Queue what waits in the database, then sweep now and then.

        `pick_up_after`: None (polling, one process) takes all of it, also what a paced or refused
        call had put off; webhook replicas take only what has waited over that many seconds (what
        no live replica is carrying out).
        """
        self.bot = bot
        self.running = True
        self.stopped = False
        self._closing.clear()
        if self.durable:
            await self.sweep(older_than=pick_up_after)
            self._background = [
                asyncio.create_task(self._mark_in_batches()),
                asyncio.create_task(self._sweep_now_and_then()),
            ]

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - the whole stop's, not one call's
        """Give the lanes up to `timeout` s, record what is done; what is left waits in the database."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        lanes = list(self._tasks.values())
        for task in lanes:
            task.cancel()
        # The marks and the sweep finish what they are at (a database call cancelled half-way can hang
        # a driver), then end; nothing handed in from now on is carried out here.
        self._closing.set()
        self.stopped = True
        self._marked.set()
        await asyncio.gather(*lanes, *self._background, return_exceptions=True)
        self.running = False
        with contextlib.suppress(StorageUnavailableError):
            await self._write_marks()
        if any(self._lanes.values()):
            logger.info("%d entries left in the outbox for the next start", sum(map(len, self._lanes.values())))

    async def idle(self) -> None:
        """Wait until every lane is empty (tests, benchmarks)."""
        await self._idle.wait()

    # --- queueing ---

    def hand(self, delivery: Delivery) -> int:
        """Queue `delivery`'s entries in its lane (entries this process queued already are passed over);
        how many it queued.

        Earlier entries of its key that this process does not know of were committed by another
        process, which may be carrying them out now: they go after it has (or after `takeover` s).
        """
        if self._closing.is_set():  # stopping: committed, it waits in the database for the next start
            return 0
        entries = delivery.entries
        if delivery.key is not None:
            # Not those queued here already, nor those done here and not yet recorded as done.
            done = max(
                self._marks.get(delivery.key, 0),
                self._writing.get(delivery.key, 0),
                self._recorded.get(delivery.key, 0),
            )
            entries = [
                entry for entry in entries if entry["seq"] > done and (delivery.key, entry["seq"]) not in self._known
            ]
            self._known.update((delivery.key, entry["seq"]) for entry in entries)
            fresh = delivery.fresh_from
            if fresh is not None and self.running and self.durable and entries and entries[0]["seq"] < fresh:
                older = max(entry["seq"] for entry in entries if entry["seq"] < fresh)
                entries = [{"await": older}, *entries]
        for entry in entries:
            self._lanes.setdefault(delivery.lane, deque()).append((delivery, entry))
            get_metrics().replies_waiting.inc()  # metrics: committed, not yet carried out
        queued = sum(1 for entry in entries if "seq" in entry)
        if self._lanes.get(delivery.lane) and delivery.lane not in self._tasks:
            self._idle.clear()
            self._tasks[delivery.lane] = asyncio.create_task(self._run_lane(delivery.lane))
        return queued

    async def carry_now(self, delivery: Delivery) -> None:
        """Carry out `delivery` here and now, in order, and record it done (not started: tests, benchmarks)."""
        for entry in delivery.entries:
            await self._carry(delivery, entry)
        if delivery.key is not None and delivery.entries and self.durable:
            await self._storage.mark_sent([(delivery.key, int(delivery.entries[-1]["seq"]))])

    async def _run_lane(self, lane: int | str) -> None:
        queue = self._lanes[lane]
        try:
            while queue:
                delivery, entry = queue[0]
                if "await" in entry:
                    await self._await_others(delivery, entry["await"])
                elif not self._done_by_another(delivery, entry):
                    await self._carry(delivery, entry)
                queue.popleft()
                get_metrics().replies_waiting.dec()
                if delivery.key is not None and "seq" in entry:
                    self._known.discard((delivery.key, entry["seq"]))
                    self._mark(delivery.key, entry["seq"])
        finally:
            if not queue:
                self._lanes.pop(lane, None)
            del self._tasks[lane]
            if not self._tasks:
                self._idle.set()
                self.flood.forget_idle()

    @staticmethod
    def _done_by_another(delivery: Delivery, entry: Entry) -> bool:
        return delivery.done_elsewhere > 0 and "seq" in entry and int(entry["seq"]) <= delivery.done_elsewhere

    async def _await_others(self, delivery: Delivery, upto: int) -> None:
        """Wait (at most `takeover` s) until another process has carried out the key's entries up to `upto`."""
        assert delivery.key is not None
        deadline = time.monotonic() + self.takeover
        while time.monotonic() < deadline:
            try:
                sent = (await self._storage.get_versioned(delivery.key)).sent
            except StorageUnavailableError:
                sent = 0
            if upto <= sent < ALL_DONE:  # ALL_DONE: the record was rewritten by other means; no signal
                delivery.done_elsewhere = sent
                return
            await asyncio.sleep(0.2)
        logger.info(
            "Entries another process committed were not carried out in %s s: this one takes them", self.takeover
        )

    # --- carrying one entry out ---

    async def _carry(self, delivery: Delivery, entry: Entry) -> None:
        backoff = Backoff(RETRY_BACKOFF)
        while True:
            try:
                if "call" in entry:
                    await self._send(delivery, load_call(entry["call"]))
                else:
                    await self._apply(delivery, entry)
                return
            except TelegramRetryAfter as error:
                delay: float = error.retry_after
            except StorageUnavailableError as error:
                delay = next(backoff)
                logger.warning("An outbox entry waits for the database (%s); again in %.1f s", error, delay)
            except TELEGRAM_FAULTS as error:
                if not refused_for_now(error):
                    logger.error("Telegram refused a call for good: %s", error)
                    return
                delay = next(backoff)
                logger.info("Telegram did not take a call (%s); again in %.1f s", type(error).__name__, delay)
            except TelegramAPIError as error:  # refused for good: a blocked bot, a bad request
                logger.error("Telegram refused a call for good: %s", error)
                return
            except Exception:  # a bug, or an entry this version cannot read: passed over, never a stuck chat
                what = entry["call"].get("method") if "call" in entry else next(iter(entry.keys() - {"seq"}), "?")
                logger.exception("An outbox entry (%s) failed and is passed over", what)
                return
            if delivery.key is not None and delay > 1 and self.durable:
                await self._postpone(delivery.key, delay)
            await asyncio.sleep(delay)

    async def _send(self, delivery: Delivery, call: TelegramMethod[Any]) -> None:
        chat = chat_of(call)
        while (wait := self.flood.wait_for(chat)) > 0:
            if wait > 1 and delivery.key is not None and self.durable:
                await self._postpone(delivery.key, wait)  # paced, not abandoned: no other replica takes it
            await asyncio.sleep(wait)
        self.flood.took(chat)
        assert self.bot is not None  # set by start() or by handle_update
        try:
            await self.bot(call, request_timeout=REQUEST_TIMEOUT)
        except TelegramRetryAfter as error:
            self.flood.refused(chat, error.retry_after)
            logger.warning("Telegram asks to wait %s s before sending into this chat again", error.retry_after)
            raise

    async def _apply(self, delivery: Delivery, entry: Entry) -> None:
        needs_responses = "save" in entry or "responses_of" in entry.get("delete", {})
        if needs_responses and self.responses is None:  # a dispatcher built without a responses store
            logger.error("An outbox entry needs a responses store, and the dispatcher has none")
            return
        if "save" in entry:
            assert self.responses is not None
            await self.responses.save(load_response(entry["save"]))
            return
        deletion = entry["delete"]
        if "responses_of" in deletion:
            assert self.responses is not None
            await self.responses.delete_for_user(int(deletion["responses_of"]), deletion["ids"])
        elif isinstance(self.storage, FsmStorage):
            await self.storage.delete_user(int(deletion["keys_of"]), keep=delivery.key)

    async def _postpone(self, key: StorageKey, delay: float) -> None:
        """Keep other processes' sweeps off this key while it waits here (they would send into the wait)."""
        until = datetime.now(UTC) + timedelta(seconds=delay)  # then, if not carried out, `takeover` s more
        with contextlib.suppress(StorageUnavailableError):
            await self._storage.postpone_outbox(key, until)

    # --- marks and the sweep ---

    @property
    def _storage(self) -> FsmStorage:
        assert isinstance(self.storage, FsmStorage)
        return self.storage

    def _mark(self, key: StorageKey, seq: int) -> None:
        if self.durable:
            self._marks[key] = max(self._marks.get(key, 0), seq)
            self._marked.set()

    async def _mark_in_batches(self) -> None:
        while not self._closing.is_set():
            await self._marked.wait()
            # One batch for what the next moments carry out: a user answering right away (or many
            # users) costs one write per batch, not one per reply (make bench: 3.25 calls per
            # update one user at a time when idle marks went at once, 2.25 with many users).
            await asyncio.sleep(MARK_SECONDS)
            try:
                await self._write_marks()
            except StorageUnavailableError as error:
                logger.warning("Could not record the outbox entries done (%s); trying again", error)
                await asyncio.sleep(1.0)

    async def _write_marks(self) -> None:
        marks, self._marks = self._marks, {}
        self._marked.clear()
        if not marks:
            return
        self._writing = marks  # done here, not yet in the database: the sweep must not queue them again
        try:
            await self._storage.mark_sent(list(marks.items()))
            for key, seq in marks.items():  # a sweep reading before this write must not queue them again
                self._recorded[key] = max(self._recorded.get(key, 0), seq)
        except BaseException:
            for key, seq in marks.items():  # kept for the next batch
                self._marks[key] = max(self._marks.get(key, 0), seq)
            self._marked.set()
            raise
        finally:
            self._writing = {}

    async def _sweep_now_and_then(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), SWEEP_SECONDS)
            if self._closing.is_set():
                return
            try:
                await self.sweep(older_than=self.takeover)
            except StorageUnavailableError as error:
                logger.warning("The outbox sweep could not read the database (%s)", error)

    async def sweep(self, older_than: float | None) -> int:
        """Queue the entries that have waited in the database longer than `older_than` s (None: all,
        also those put off into the future); how many."""
        queued = 0
        self._recorded = {}  # marks written from now on are seen here, whatever the sweep reads
        self.flood.forget_idle()
        now = datetime.now(UTC)
        before = now + EVERYTHING if older_than is None else now - timedelta(seconds=older_than)
        while True:
            new = 0
            for due in await self._storage.due_outboxes(before, SWEEP_BATCH):
                delivery = pending_delivery(due.data, due.sent)
                if delivery is None or delivery.key is None:
                    continue
                if self.bot is not None and delivery.key.bot_id != self.bot.id:
                    continue  # another bot's (a database two bots share): its own courier carries it out
                if not delivery.entries:  # due with nothing left (a mark raced a commit): clear it
                    assert delivery.key is not None
                    self._mark(delivery.key, AppliedRecord.read(due.data.get(APPLIED)).queued)
                    continue
                new += self.hand(delivery)
            queued += new
            if new == 0:
                return queued


def pending_delivery(data: Mapping[str, Any], sent: int) -> Delivery | None:
    """The entries still waiting in a key's record (those numbered after `sent`); None if it has no record."""
    record = AppliedRecord.read(data.get(APPLIED))
    if record.key is None:
        return None
    return Delivery([entry for entry in record.outbox if entry["seq"] > sent], record.key, record.key.chat_id)


@measure_update  # metrics: the update's outcome and handling time
async def handle_update(dispatcher: Dispatcher, bot: Bot, update: Update, **kwargs: Any) -> None:
    """Handle `update` (ApplyOnce commits what it changes, saves and sends), then hand that to the courier.

    A courier not started (tests, benchmarks) carries it out before this returns.
    """
    result = await dispatcher.feed_update(bot, update, **kwargs)
    if not isinstance(result, Delivery):  # an error handler's apology (nothing was saved), or no handler
        chat = UserContextMiddleware.resolve_event_context(update).chat_id
        lane = chat if chat is not None else f"update {update.update_id}"
        result = Delivery([call_entry(bot, call) for call in calls_in(result)], lane=lane)
    courier = dispatcher.workflow_data.get("courier")
    if not isinstance(courier, Courier):
        courier = Courier(dispatcher.fsm.storage, dispatcher.workflow_data.get("responses"))
    courier.bot = courier.bot or bot
    if courier.running:
        courier.hand(result)
    elif not (courier.stopped and courier.durable):
        await courier.carry_now(result)
    # else: stopped (a shutdown, or another process took over polling): it waits in the outbox
