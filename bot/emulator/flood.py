"""Telegram's flood control as the emulator plays it: waits per chat or for the whole bot, and optional limits.

Telegram's FAQ ("My bot is hitting limits, how do I avoid this?") asks a bot
to send no more than about one message per second in one chat (short bursts
go through), no more than 20 messages per minute in one group, and no more
than about 30 messages per second in all. A bot over a limit is answered 429
with `retry_after`, and until that has passed Telegram refuses the calls
for the chat it was about: other chats go on. A wait that is the whole bot's
(the bot-wide limit) refuses every call but getUpdates.

`FloodControl` keeps those waits, enforces `FloodLimits` when it has them
(off by default: most tests want speed, not pacing), and counts the calls
a bot sends into a wait, so a test can prove the bot honours `retry_after`
for exactly the chat it was given for.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict, deque
from dataclasses import asdict, dataclass, field
from typing import Any

# The methods that put something into a chat: only these count toward the limits. answerCallbackQuery,
# sendChatAction and getUpdates do not (getUpdates is never limited, nor refused by a wait).
SENDING_METHODS = frozenset(
    name.lower()
    for name in (
        "sendMessage",
        "editMessageText",
        "editMessageCaption",
        "editMessageReplyMarkup",
        "sendPhoto",
        "sendDocument",
        "sendSticker",
        "sendVoice",
        "sendVideo",
        "sendAnimation",
        "sendAudio",
        "sendMediaGroup",
        "sendLocation",
        "sendPoll",
        "copyMessage",
        "forwardMessage",
    )
)


@dataclass
class FloodLimits:
    """How much a bot may send before Telegram answers 429 (Telegram's FAQ numbers by default).

    Every chat: `per_chat_burst` messages within `per_chat_window` seconds
    (about one a second, a short burst allowed). A group (negative chat id),
    on top of that: `per_group` within `per_group_window` seconds. The whole
    bot: `per_bot` within `per_bot_window` seconds. Tests use smaller windows.
    """

    per_chat_burst: int = 3
    per_chat_window: float = 3.0
    per_group: int = 20
    per_group_window: float = 60.0
    per_bot: int = 30
    per_bot_window: float = 1.0


@dataclass
class Wait:
    """A flood wait: opened (its 429 answered) at `since`, refusing calls until `until` (monotonic seconds)."""

    since: float
    until: float


@dataclass
class FloodControl:
    """The flood waits Telegram holds a bot to, its limits if any, and the calls sent into a wait.

    `waits` is keyed by chat id; the key None is the whole bot's wait. A call
    that comes while its chat's wait or the bot's is open, more than `grace`
    seconds after the 429 that opened it was answered (so not one already on
    its way then), is counted: in `ignored_flood_waits` (all of them) and, if
    the call has a chat, in `ignored_by_chat`.
    """

    limits: FloodLimits | None = None
    grace: float = 1.0
    waits: dict[int | None, Wait] = field(default_factory=dict)
    ignored_flood_waits: int = 0
    ignored_by_chat: Counter[int] = field(default_factory=Counter)
    over_limit: Counter[str] = field(default_factory=Counter)
    # When each accepted send went out, per (limit, chat); ("bot", None) for the bot-wide limit.
    sent: defaultdict[tuple[str, int | None], deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def waiting(self, chat: int | None, now: float) -> int | None:
        """The seconds left (rounded up) if a call for `chat` (None: no chat) falls in an open wait; else None.

        Counts the call as sent into the wait if it came after the grace.
        """
        candidates = [self.waits.get(None)] + ([self.waits.get(chat)] if chat is not None else [])
        open_waits = [wait for wait in candidates if wait is not None and now < wait.until]
        if not open_waits:
            return None
        wait = max(open_waits, key=lambda wait: wait.until)
        if now > wait.since + self.grace:
            self.ignored_flood_waits += 1
            if chat is not None:
                self.ignored_by_chat[chat] += 1
        return math.ceil(wait.until - now)

    def open(self, chat: int | None, retry_after: int, now: float) -> None:
        """Refuse calls for `chat` (None: every call but getUpdates) for `retry_after` seconds from `now`."""
        self.waits[chat] = Wait(since=now, until=now + retry_after)

    def over_limits(self, method: str, chat: int | None, now: float) -> int | None:
        """The `retry_after` if this send goes over a limit (opening that chat's or the bot's wait); else None.

        A send under every limit is recorded toward them. `retry_after` is
        honest: when the oldest send in the full window leaves it, rounded up
        to whole seconds as Telegram gives them.
        """
        if self.limits is None or chat is None or method.lower() not in SENDING_METHODS:
            return None
        limits = self.limits
        checks: list[tuple[str, int | None, int, float]] = [
            ("chat", chat, limits.per_chat_burst, limits.per_chat_window)
        ]
        if chat < 0:
            checks.append(("group", chat, limits.per_group, limits.per_group_window))
        checks.append(("bot", None, limits.per_bot, limits.per_bot_window))
        for kind, scope, limit, window in checks:
            times = self.sent[kind, scope]
            while times and times[0] <= now - window:
                times.popleft()
            if len(times) >= limit:
                retry_after = max(1, math.ceil(times[0] + window - now))
                self.over_limit[kind] += 1
                self.open(scope, retry_after, now)
                return retry_after
        for kind, scope, _, _ in checks:
            self.sent[kind, scope].append(now)
        return None

    def status(self, now: float) -> dict[str, Any]:
        """For the control API's status: limits, open waits (seconds left; "bot" for the bot's) and counts."""
        return {
            "limits": asdict(self.limits) if self.limits is not None else None,
            "grace": self.grace,
            "waits": {
                "bot" if chat is None else str(chat): round(wait.until - now, 3)
                for chat, wait in self.waits.items()
                if now < wait.until
            },
            "ignored_flood_waits": self.ignored_flood_waits,
            "ignored_by_chat": {str(chat): count for chat, count in self.ignored_by_chat.items()},
            "over_limit": dict(self.over_limit),
        }


def chat_of_call(params: dict[str, Any]) -> int | None:
    """The chat a Bot API call is for: its numeric `chat_id`.

    None for a call without one (answerCallbackQuery, setMyCommands...): its
    429 is the whole bot's.
    """
    try:
        return int(params["chat_id"])
    except (KeyError, TypeError, ValueError):
        return None
