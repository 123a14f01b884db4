"""A small Telegram Bot API server for trying and testing the bot without Telegram.

It answers `/bot<token>/<method>` like api.telegram.org does for the methods
this bot uses (same JSON shapes, same error codes and descriptions), delivers
updates by long polling or by webhook, and has a control API under
`/_emulator/` through which a test or a person acts as Telegram users.

Run it alone with `python -m bot.emulator --port 8081`, then start the bot
with TELEGRAM_API_URL=http://127.0.0.1:8081.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import itertools
import json
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from bot.emulator.flood import FloodControl, FloodLimits, chat_of_call
from bot.emulator.telegram_html import EntityParseError, parse_html, utf16_length

logger = logging.getLogger(__name__)

MAX_MESSAGE_LENGTH = 4096
MAX_CALLBACK_ANSWER_LENGTH = 200
CHAT_INSTANCE_BASE = -4_611_686_018_427_387_904  # callback queries' chat_instance: this minus the chat's id
MAX_LONG_POLL_SECONDS = 50
# Telegram gives up on a webhook request after about a minute and sends the update again.
WEBHOOK_TIMEOUT_SECONDS = 60
EMULATOR_BOT_TOKEN = "123456789:EMULATORTOKEN-emulator-token-000000"
UPDATE_TYPES = ("message", "edited_message", "callback_query")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class BotAPIError(Exception):
    """An error answer, in the Bot API's shape."""

    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code, self.description, self.retry_after = code, description, retry_after

    def response(self) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": self.code, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return web.json_response(body, status=self.code)


@dataclass
class Fault:
    """Make the next `count` calls of `method` ('*' for any) fail as Telegram can; only those into `chat`, if set."""

    method: str
    status: int
    count: int
    retry_after: int | None = None
    chat: int | None = None


@dataclass
class Chaos:
    """Telegram pushing back: its flood control (`flood`) and, at random, faults.

    A share (`shares`, per method) of calls is refused: answered 429 (its
    `retry_after` 1 to `max_retry_after` seconds, and once `long_retry_after`),
    502, or stalled `stall_seconds` before it is answered. getUpdates gets no
    429. A 429 is for one chat, as Telegram's are: the call's `chat_id`, or
    the whole bot for a call without one (answerCallbackQuery names no chat).
    With `scope="bot"`
    every 429 is the whole bot's, as this emulator used to answer.

    `flood` then refuses calls for that chat (every call but getUpdates for
    the bot's) until `retry_after` has passed and counts the ones sent into
    the wait; with `FloodLimits` set, it also answers 429 to sends over them.
    """

    shares: dict[str, float] = field(default_factory=dict)
    max_retry_after: int = 5
    long_retry_after: int | None = None
    stall_seconds: float = 3.0
    seed: int | None = None
    scope: Literal["chat", "bot"] = "chat"
    flood: FloodControl = field(default_factory=FloodControl)
    refused: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @property
    def ignored_flood_waits(self) -> int:
        """How many calls were sent into a flood wait, in all chats (see `FloodControl`)."""
        return self.flood.ignored_flood_waits

    async def apply(self, method: str, chat: int | None) -> None:
        """Refuse or stall a call of `method` for `chat` (None: no chat) as Telegram might; return to let it through."""
        polling = method.lower() == "getupdates"
        if not polling and (left := self.flood.waiting(chat, time.monotonic())) is not None:
            raise too_many_requests(left)
        if self.rng.random() < self.shares.get(method, 0.0):
            await self._refuse_at_random(polling, chat)
        if (retry_after := self.flood.over_limits(method, chat, time.monotonic())) is not None:
            raise too_many_requests(retry_after)

    async def _refuse_at_random(self, polling: bool, chat: int | None) -> None:
        kind = self.rng.choice(("502", "stall") if polling else ("429", "502", "stall"))
        self.refused[kind] += 1
        if kind == "stall":
            await asyncio.sleep(self.stall_seconds)
            return
        if kind == "502":
            raise BotAPIError(502, "Bad Gateway")
        retry_after = self.rng.randint(1, self.max_retry_after)
        if self.long_retry_after is not None:
            retry_after, self.long_retry_after = self.long_retry_after, None
        self.flood.open(chat if self.scope == "chat" else None, retry_after, time.monotonic())
        raise too_many_requests(retry_after)


def too_many_requests(retry_after: int) -> BotAPIError:
    """Telegram's 429, with its `retry_after`."""
    return BotAPIError(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)


@dataclass
class ChatLog:
    """What the bot sent to one chat (each message with its inline keyboard), and the reply keyboard shown now."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    keyboard: list[list[str]] | None = None
    # Set on every new or edited message and every answered button press in the chat.
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class BotAPIEmulator:
    """One bot's view of Telegram: its users, their updates and its messages."""

    def __init__(self, token: str = EMULATOR_BOT_TOKEN, username: str = "questionnaire_emulator_bot") -> None:
        self.token = token
        self.bot_user = {
            "id": int(token.split(":", 1)[0]),
            "is_bot": True,
            "first_name": "Questionnaire",
            "username": username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        self.updates: list[dict[str, Any]] = []
        self.allowed_updates: list[str] = []
        self.chats: dict[int, ChatLog] = {}
        self.users: dict[int, dict[str, Any]] = {}
        # Groups the bot may send to (negative ids, as Telegram's), by title: see add_group.
        self.groups: dict[int, str] = {}
        self.commands: list[dict[str, Any]] = []
        # Every Bot API method called, in order (refused calls too).
        self.calls: list[str] = []
        # Button presses (`user_presses`) by callback query id, and every answerCallbackQuery
        # made for one, in order: see `callback_answers`.
        self.callback_queries: dict[str, dict[str, Any]] = {}
        self.callback_answers: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.chaos: Chaos | None = None
        self.webhook_url = ""
        self.webhook_secret: str | None = None
        self.webhook_targets: list[str] = []
        # Called after each webhook delivery with (address, update, delivered): for watching it work.
        self.on_delivery: Callable[[str, dict[str, Any], bool], None] | None = None
        # Telegram numbers a bot's updates from a random start (and starts again at a random
        # value after a week without updates), never from 1.
        self._update_ids = itertools.count(random.randrange(1, 2**30))
        self._user_message_ids = itertools.count(1)
        self._callback_query_ids = itertools.count(random.randrange(10**17, 10**18))
        self._new_update = asyncio.Condition()
        self._poller = 0
        self._closing = False
        self._webhook_task: asyncio.Task[None] | None = None
        self._methods: dict[str, Handler] = {
            "getme": self._get_me,
            "getupdates": self._get_updates,
            "deletewebhook": self._delete_webhook,
            "setwebhook": self._set_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "sendmessage": self._send_message,
            "editmessagetext": self._edit_message_text,
            "editmessagereplymarkup": self._edit_message_reply_markup,
            "setmycommands": self._set_my_commands,
            "getmycommands": self._get_my_commands,
            "sendchataction": self._true,
            "answercallbackquery": self._answer_callback_query,
            "close": self._true,
            "logout": self._true,
        }

    # --- the web application -------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle_method)
        app.router.add_post("/_emulator/users/{user_id}/send", self._control_send)
        app.router.add_post("/_emulator/users/{user_id}/press", self._control_press)
        app.router.add_get("/_emulator/chats/{chat_id}", self._control_chat)
        app.router.add_post("/_emulator/faults", self._control_fault)
        app.router.add_post("/_emulator/flood_limits", self._control_flood_limits)
        app.router.add_delete("/_emulator/flood_limits", self._control_flood_limits)
        app.router.add_post("/_emulator/webhook_targets", self._control_webhook_targets)
        app.router.add_get("/_emulator/status", self._control_status)
        app.on_shutdown.append(self._end_long_polls)
        app.on_cleanup.append(self._stop_webhook)
        return app

    async def _end_long_polls(self, _app: web.Application) -> None:
        """Answer waiting getUpdates calls now, so shutting down does not wait out their timeout."""
        async with self._new_update:
            self._closing = True
            self._new_update.notify_all()

    async def _handle_method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return BotAPIError(401, "Unauthorized").response()
        method = request.match_info["method"]
        handler = self._methods.get(method.lower())
        if handler is None:
            return BotAPIError(404, "Not Found").response()
        self.calls.append(method)
        params = await _read_parameters(request)
        try:
            self._apply_fault(method, chat_of_call(params))
            if self.chaos is not None:
                await self.chaos.apply(method, chat_of_call(params))
            result = await handler(params)
        except BotAPIError as error:
            return error.response()
        return web.json_response({"ok": True, "result": result})

    def _apply_fault(self, method: str, chat: int | None) -> None:
        for fault in self.faults:
            if fault.method in ("*", method) and fault.count > 0 and fault.chat in (None, chat):
                fault.count -= 1
                if fault.status == 429:
                    raise too_many_requests(fault.retry_after or 1)
                description = "Bad Gateway" if fault.status == 502 else "Internal Server Error"
                raise BotAPIError(fault.status, description)

    # --- Bot API methods -----------------------------------------------------

    async def _true(self, _: dict[str, Any]) -> bool:
        return True

    async def _get_me(self, _: dict[str, Any]) -> dict[str, Any]:
        return self.bot_user

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook_url:
            raise BotAPIError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = int(params.get("offset", 0))
        limit = min(max(int(params.get("limit", 100)), 1), 100)
        timeout = min(max(float(params.get("timeout", 0)), 0), MAX_LONG_POLL_SECONDS)
        if "allowed_updates" in params:
            # Telegram keeps the last list given until another one is.
            self.allowed_updates = list(params["allowed_updates"] or [])
        self._confirm(offset)
        deadline = time.monotonic() + timeout
        async with self._new_update:
            # Like Telegram, a new getUpdates ends the one still waiting.
            self._poller += 1
            poller = self._poller
            self._new_update.notify_all()
            while True:
                if poller != self._poller:
                    raise BotAPIError(
                        409,
                        "Conflict: terminated by other getUpdates request; "
                        "make sure that only one bot instance is running",
                    )
                pending = self._pending(offset)[:limit]
                remaining = deadline - time.monotonic()
                if pending or remaining <= 0 or self._closing:
                    return pending
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new_update.wait(), remaining)

    def _confirm(self, offset: int) -> None:
        if offset > 0:
            self.updates = [update for update in self.updates if update["update_id"] >= offset]
        elif offset < 0:
            self.updates = self.updates[offset:]

    def _pending(self, offset: int) -> list[dict[str, Any]]:
        wanted = self.allowed_updates or [kind for kind in UPDATE_TYPES if kind != "chat_member"]
        return [
            update
            for update in self.updates
            if update["update_id"] >= offset and any(kind in update for kind in wanted)
        ]

    async def _delete_webhook(self, params: dict[str, Any]) -> bool:
        self.webhook_url, self.webhook_secret = "", None
        await self._stop_webhook()
        if _truthy(params.get("drop_pending_updates")):
            self.updates.clear()
        return True

    async def _set_webhook(self, params: dict[str, Any]) -> bool:
        url = str(params.get("url", ""))
        if not url:
            return await self._delete_webhook(params)
        if not url.startswith(("http://", "https://")):
            raise BotAPIError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        self.webhook_url, self.webhook_secret = url, params.get("secret_token")
        if _truthy(params.get("drop_pending_updates")):
            self.updates.clear()
        await self._stop_webhook()
        self._webhook_task = asyncio.create_task(self._deliver_by_webhook())
        return True

    async def _get_webhook_info(self, _: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": self.webhook_url,
            "has_custom_certificate": False,
            "pending_update_count": len(self.updates),
        }

    async def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params)
        text, entities = self._message_text(params)
        return self._append_message(chat, text, entities, params.get("reply_markup") or {})

    def _append_message(
        self, chat: dict[str, Any], text: str, entities: list[dict[str, Any]], markup: dict[str, Any]
    ) -> dict[str, Any]:
        """A bot message into `chat`, kept with its inline keyboard; a reply keyboard replaces the one shown."""
        log = self.chats.setdefault(chat["id"], ChatLog())
        message: dict[str, Any] = {
            "message_id": len(log.messages) + 1,
            "from": self.bot_user,
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        }
        if entities:
            message["entities"] = entities
        _set_inline_markup(message, _inline_markup(markup))
        if "keyboard" in markup:
            log.keyboard = [[_button_text(button) for button in row] for row in markup["keyboard"]]
        elif markup.get("remove_keyboard"):
            log.keyboard = None
        log.messages.append(message)
        log.changed.set()
        return message

    async def _edit_message_text(self, params: dict[str, Any]) -> dict[str, Any]:
        """The new text; the inline keyboard becomes `reply_markup`'s, or none (as Telegram's edit does)."""
        message, log = self._message_to_edit(params)
        text, entities = self._message_text(params)
        markup = _inline_markup(params.get("reply_markup"))
        if (
            message["text"] == text
            and message.get("entities", []) == entities
            and message.get("reply_markup") == markup
        ):
            raise not_modified()
        message.update(text=text, edit_date=int(time.time()), entities=entities)
        _set_inline_markup(message, markup)
        log.changed.set()
        return message

    async def _edit_message_reply_markup(self, params: dict[str, Any]) -> dict[str, Any]:
        """The message's inline keyboard replaced by `reply_markup`'s, or removed without one."""
        message, log = self._message_to_edit(params)
        markup = _inline_markup(params.get("reply_markup"))
        if message.get("reply_markup") == markup:
            raise not_modified()
        message["edit_date"] = int(time.time())
        _set_inline_markup(message, markup)
        log.changed.set()
        return message

    def _message_to_edit(self, params: dict[str, Any]) -> tuple[dict[str, Any], ChatLog]:
        chat = self._chat(params)
        log = self.chats.get(chat["id"], ChatLog())
        try:
            message_id = int(params.get("message_id", 0))
        except (TypeError, ValueError):
            message_id = 0
        if not 0 < message_id <= len(log.messages):
            raise BotAPIError(400, "Bad Request: message to edit not found")
        return log.messages[message_id - 1], log

    async def _answer_callback_query(self, params: dict[str, Any]) -> bool:
        """Stop a pressed button's spinner, with an optional notice; recorded in `callback_answers`.

        Like Telegram: a query no user made, or one answered already, is refused.
        """
        query_id = str(params.get("callback_query_id", ""))
        query = self.callback_queries.get(query_id)
        if query is None or query.get("answered"):
            raise BotAPIError(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        text = str(params.get("text") or "")
        if len(text) > MAX_CALLBACK_ANSWER_LENGTH:
            raise BotAPIError(400, "Bad Request: MESSAGE_TOO_LONG")
        query["answered"] = True
        chat_id = int(query["message"]["chat"]["id"])
        log = self.chats.setdefault(chat_id, ChatLog())
        self.callback_answers.append(
            {
                "callback_query_id": query_id,
                "text": text,
                "show_alert": _truthy(params.get("show_alert")),
                "chat_id": chat_id,
                "message_id": query["message"]["message_id"],
                # Where it came: its place in `calls`, and how many messages the bot had sent to the chat.
                "call": len(self.calls) - 1,
                "messages_before": len(log.messages),
            }
        )
        log.changed.set()
        return True

    async def _set_my_commands(self, params: dict[str, Any]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise BotAPIError(400, "Bad Request: can't parse commands JSON object")
        self.commands = commands
        return True

    async def _get_my_commands(self, _: dict[str, Any]) -> list[dict[str, Any]]:
        return self.commands

    def _chat(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            chat_id = int(params.get("chat_id", ""))
        except ValueError:
            raise BotAPIError(400, "Bad Request: chat not found") from None
        if chat_id in self.groups:
            return {"id": chat_id, "type": "group", "title": self.groups[chat_id]}
        user = self.users.get(chat_id)
        if user is None:
            raise BotAPIError(400, "Bad Request: chat not found")
        return {"id": chat_id, "type": "private", "first_name": user["first_name"]}

    def _message_text(self, params: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
        source = str(params.get("text", ""))
        if str(params.get("parse_mode", "")).lower() == "html":
            try:
                text, entities = parse_html(source)
            except EntityParseError as error:
                raise BotAPIError(400, f"Bad Request: can't parse entities: {error}") from None
        else:
            text, entities = source, list(params.get("entities") or [])
        if not text.strip():
            raise BotAPIError(400, "Bad Request: message text is empty")
        if utf16_length(text) > MAX_MESSAGE_LENGTH:
            raise BotAPIError(400, "Bad Request: message is too long")
        return text, entities

    # --- acting as users -----------------------------------------------------

    def _user(self, user_id: int) -> dict[str, Any]:
        self.chats.setdefault(user_id, ChatLog())
        return self.users.setdefault(
            user_id, {"id": user_id, "is_bot": False, "first_name": f"User {user_id}", "language_code": "en"}
        )

    async def _post(self, updates: list[dict[str, Any]]) -> None:
        """Make `updates` waiting: for getUpdates (a waiting call answers at once), or for the webhook."""
        async with self._new_update:
            self.updates.extend(updates)
            self._new_update.notify_all()

    async def user_sends(self, user_id: int, *contents: dict[str, Any]) -> list[dict[str, Any]]:
        """Post one or more messages from a user at once (they arrive in one getUpdates batch)."""
        user = self._user(user_id)
        updates = []
        for content in contents:
            message = {
                "message_id": next(self._user_message_ids),
                "from": user,
                "chat": {"id": user_id, "type": "private", "first_name": user["first_name"]},
                "date": int(time.time()),
                **_message_content(content),
            }
            updates.append({"update_id": next(self._update_ids), "message": message})
        await self._post(updates)
        return updates

    async def user_presses(self, user_id: int, button: str | int, message_id: int | None = None) -> dict[str, Any]:
        """The user presses an inline button under the bot's last message to them (or message `message_id`).

        `button` is the button's text, or its place (from 0, row by row). The
        `callback_query` update, with the message the button is under as
        Telegram sends it, is delivered as `user_sends`' messages are; its
        `callback_query.id` is what the bot's answerCallbackQuery names.
        """
        user = self._user(user_id)
        message = self._message_with_buttons(user_id, message_id)
        buttons = [pressed for row in message["reply_markup"]["inline_keyboard"] for pressed in row]
        if isinstance(button, int):
            if not 0 <= button < len(buttons):
                msg = f"message {message['message_id']} has {len(buttons)} buttons: no button {button}"
                raise ValueError(msg)
            pressed = buttons[button]
        else:
            found = [candidate for candidate in buttons if candidate.get("text") == button]
            if not found:
                labels = [candidate.get("text") for candidate in buttons]
                msg = f"message {message['message_id']} has no button {button!r}; its buttons: {labels}"
                raise ValueError(msg)
            pressed = found[0]
        if "callback_data" not in pressed:
            msg = f"button {pressed.get('text')!r} sends no callback data (a link or another kind of button)"
            raise ValueError(msg)
        query = {
            "id": str(next(self._callback_query_ids)),
            "from": user,
            "message": copy.deepcopy(message),
            # Telegram's: the same for every press in this chat, and only in it.
            "chat_instance": str(CHAT_INSTANCE_BASE - int(message["chat"]["id"])),
            "data": pressed["callback_data"],
        }
        self.callback_queries[query["id"]] = query
        update = {"update_id": next(self._update_ids), "callback_query": query}
        await self._post([update])
        return update

    def _message_with_buttons(self, chat_id: int, message_id: int | None) -> dict[str, Any]:
        log = self.chats.get(chat_id, ChatLog())
        if not log.messages:
            msg = f"the bot has sent nothing to chat {chat_id}: no buttons to press"
            raise ValueError(msg)
        if message_id is None:
            message = log.messages[-1]
        elif 0 < message_id <= len(log.messages):
            message = log.messages[message_id - 1]
        else:
            msg = f"chat {chat_id} has no message {message_id}"
            raise ValueError(msg)
        if "reply_markup" not in message:
            msg = f"message {message['message_id']} in chat {chat_id} has no inline buttons"
            raise ValueError(msg)
        return message

    def inline_buttons(self, chat_id: int, message_id: int | None = None) -> list[list[dict[str, Any]]] | None:
        """The inline buttons under the bot's last message to `chat_id` (or message `message_id`), row by row.

        Each button as the bot sent it (`{"text": ..., "callback_data": ...}`);
        None if that message has none (or there is no such message).
        """
        log = self.chats.get(chat_id, ChatLog())
        if message_id is None:
            message = log.messages[-1] if log.messages else {}
        else:
            message = log.messages[message_id - 1] if 0 < message_id <= len(log.messages) else {}
        markup = message.get("reply_markup")
        return None if markup is None else copy.deepcopy(markup["inline_keyboard"])

    async def callback_answer(self, callback_query_id: str, wait: float = 0) -> dict[str, Any] | None:
        """The bot's answer to a press (`callback_answers`' entry), waiting up to `wait` seconds; None if none."""
        query = self.callback_queries.get(callback_query_id)
        if query is None:
            return None
        log = self.chats.setdefault(int(query["message"]["chat"]["id"]), ChatLog())
        deadline = time.monotonic() + wait
        while True:
            found = [answer for answer in self.callback_answers if answer["callback_query_id"] == callback_query_id]
            if found or (remaining := deadline - time.monotonic()) <= 0:
                return found[0] if found else None
            log.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(log.changed.wait(), remaining)

    def add_bot_message(self, chat_id: int, text: str, reply_markup: dict[str, Any] | None = None) -> dict[str, Any]:
        """Put a message the bot sent before into a private chat, as if it had been there all along.

        The emulator starts with empty chats; the sandbox, started again, puts
        back the question the user was answering so its buttons can be pressed.
        """
        user = self._user(chat_id)
        chat = {"id": chat_id, "type": "private", "first_name": user["first_name"]}
        return self._append_message(chat, text, [], reply_markup or {})

    def add_group(self, chat_id: int, title: str = "Group") -> None:
        """Put the bot in a group (`chat_id` negative, as Telegram's), so it can send there."""
        if chat_id >= 0:
            msg = "a group's chat id is negative"
            raise ValueError(msg)
        self.groups[chat_id] = title
        self.chats.setdefault(chat_id, ChatLog())

    async def bot_messages(self, chat_id: int, count: int = 0, wait: float = 0) -> list[dict[str, Any]]:
        """The bot's messages to a chat, waiting up to `wait` seconds until there are `count`."""
        log = self.chats.setdefault(chat_id, ChatLog())
        deadline = time.monotonic() + wait
        while len(log.messages) < count and (remaining := deadline - time.monotonic()) > 0:
            log.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(log.changed.wait(), remaining)
        return list(log.messages)

    def keyboard(self, chat_id: int) -> list[list[str]] | None:
        """The reply keyboard the user of `chat_id` sees now, as rows of button texts."""
        log = self.chats.get(chat_id)
        return None if log is None else log.keyboard

    async def _control_send(self, request: web.Request) -> web.Response:
        user_id = int(request.match_info["user_id"])
        body = await request.json()
        contents = body.get("messages") or [body]
        try:
            updates = await self.user_sends(user_id, *contents)
        except ValueError as error:
            return web.json_response({"ok": False, "description": str(error)}, status=400)
        return web.json_response({"ok": True, "updates": updates})

    async def _control_press(self, request: web.Request) -> web.Response:
        """Body: `{"button": <its text, or its place from 0>, "message_id": <optional>}`."""
        user_id = int(request.match_info["user_id"])
        body = await request.json()
        button = body.get("button")
        message_id = body.get("message_id")
        if not isinstance(button, str | int) or isinstance(button, bool):
            return web.json_response({"ok": False, "description": "button: its text or its place"}, status=400)
        try:
            update = await self.user_presses(user_id, button, None if message_id is None else int(message_id))
        except ValueError as error:
            return web.json_response({"ok": False, "description": str(error)}, status=400)
        return web.json_response({"ok": True, "update": update})

    async def _control_chat(self, request: web.Request) -> web.Response:
        chat_id = int(request.match_info["chat_id"])
        count = int(request.query.get("count", 0))
        wait = min(float(request.query.get("wait", 0)), 60)
        messages = await self.bot_messages(chat_id, count, wait)
        log = self.chats[chat_id]
        return web.json_response(
            {
                "ok": True,
                "messages": messages,
                "keyboard": log.keyboard,
                "inline_buttons": self.inline_buttons(chat_id),
                "callback_answers": [answer for answer in self.callback_answers if answer["chat_id"] == chat_id],
            }
        )

    async def _control_fault(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.faults.append(
            Fault(
                method=body.get("method", "*"),
                status=int(body["status"]),
                count=int(body.get("count", 1)),
                retry_after=body.get("retry_after"),
                chat=body.get("chat"),
            )
        )
        return web.json_response({"ok": True})

    async def _control_flood_limits(self, request: web.Request) -> web.Response:
        """POST: enforce Telegram's flood limits (body: `FloodLimits` fields, any left out at their defaults).

        DELETE: stop enforcing them. The limits live in `chaos.flood`; a
        `Chaos` without random faults is set up if there is none.
        """
        if request.method == "DELETE":
            if self.chaos is not None:
                self.chaos.flood.limits = None
            return web.json_response({"ok": True, "limits": None})
        body = await request.json() if request.can_read_body else {}
        try:
            limits = FloodLimits(**body)
        except TypeError as error:
            return web.json_response({"ok": False, "description": str(error)}, status=400)
        if self.chaos is None:
            self.chaos = Chaos()
        self.chaos.flood.limits = limits
        return web.json_response({"ok": True, "limits": asdict(limits)})

    async def _control_webhook_targets(self, request: web.Request) -> web.Response:
        """Deliver webhooks round-robin to these addresses (replicas) instead of the webhook URL; [] undoes it."""
        body = await request.json()
        self.webhook_targets = [str(url) for url in body.get("urls", [])]
        return web.json_response({"ok": True, "webhook_targets": self.webhook_targets})

    async def _control_status(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "ok": True,
                "pending_updates": len(self.updates),
                "webhook_url": self.webhook_url,
                "commands": self.commands,
                "calls": len(self.calls),
                "flood": self._flood_status(),
            }
        )

    def _flood_status(self) -> dict[str, Any]:
        """Flood control as the status shows it: limits, open waits, calls sent into a wait, random refusals."""
        chaos = self.chaos or Chaos()
        return {
            **chaos.flood.status(time.monotonic()),
            "scope": chaos.scope,
            "shares": chaos.shares,
            "refused": dict(chaos.refused),
        }

    # --- webhook delivery ----------------------------------------------------

    async def _deliver_by_webhook(self) -> None:
        """Post updates as Telegram does: in order per chat, one in flight per chat, each until a 2xx.

        A failed or timed-out delivery is retried later, with a growing delay;
        chats do not wait for each other. With `webhook_targets` set (the
        control API), deliveries go round-robin over those addresses instead
        of the webhook URL, as a load balancer in front of replicas would.
        """
        headers = {"X-Telegram-Bot-Api-Secret-Token": self.webhook_secret} if self.webhook_secret else {}
        busy_chats: set[int] = set()
        attempts: dict[int, int] = {}
        retry_at: dict[int, float] = {}
        targets = itertools.count()
        tasks: set[asyncio.Task[None]] = set()

        async def deliver(session: ClientSession, update: dict[str, Any], chat: int) -> None:
            update_id = update["update_id"]
            addresses = self.webhook_targets or [self.webhook_url]
            url = addresses[next(targets) % len(addresses)]
            try:
                async with session.post(url, json=update, headers=headers) as response:
                    delivered = 200 <= response.status < 300
            except (ClientError, TimeoutError):
                delivered = False
            if self.on_delivery is not None:
                self.on_delivery(url, update, delivered)
            async with self._new_update:
                if delivered:
                    self.updates = [kept for kept in self.updates if kept["update_id"] != update_id]
                    attempts.pop(update_id, None)
                    retry_at.pop(update_id, None)
                else:
                    attempts[update_id] = attempts.get(update_id, 0) + 1
                    retry_at[update_id] = time.monotonic() + min(0.2 * 2 ** attempts[update_id], 5.0)
                busy_chats.discard(chat)
                self._new_update.notify_all()

        def ready() -> list[tuple[dict[str, Any], int]]:
            """The first waiting update of each chat that has none in flight, if its retry time has come."""
            now, seen, found = time.monotonic(), set(), []
            for update in self.updates:
                chat = _chat_of(update)
                if chat in seen:
                    continue
                seen.add(chat)
                if chat not in busy_chats and retry_at.get(update["update_id"], now) <= now:
                    found.append((update, chat))
            return found

        async with ClientSession(timeout=ClientTimeout(total=WEBHOOK_TIMEOUT_SECONDS)) as session:
            try:
                await self._webhook_rounds(ready, deliver, session, busy_chats, tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _webhook_rounds(
        self,
        ready: Callable[[], list[tuple[dict[str, Any], int]]],
        deliver: Callable[[ClientSession, dict[str, Any], int], Coroutine[Any, Any, None]],
        session: ClientSession,
        busy_chats: set[int],
        tasks: set[asyncio.Task[None]],
    ) -> None:
        """Start a delivery for every chat that has an update ready, until the webhook is removed."""
        while self.webhook_url:
            async with self._new_update:
                waiting = ready()
                if not waiting:
                    # Woken by a new update or a finished delivery; or soon, for a retry that comes due.
                    # (asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
                    # cancellation that deleteWebhook and shutdown use to end this loop.)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.1):
                            await self._new_update.wait()
                    continue
                for update, chat in waiting:
                    busy_chats.add(chat)
                    task = asyncio.create_task(deliver(session, update, chat))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

    async def _stop_webhook(self, _app: web.Application | None = None) -> None:
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._webhook_task
            self._webhook_task = None


def _message_content(content: dict[str, Any]) -> dict[str, Any]:
    """The message fields for a text, photo, sticker or voice message, in the Bot API's shape."""
    kind = content.get("kind") or next((k for k in ("photo", "sticker", "voice") if content.get(k)), "text")
    file = {"file_id": f"{kind}-file-id", "file_unique_id": f"{kind}-unique"}
    if kind == "text":
        text = str(content.get("text", ""))
        if not text:
            msg = "a text message needs non-empty text"
            raise ValueError(msg)
        fields: dict[str, Any] = {"text": text}
        if text.startswith("/"):
            command = text.split()[0]
            fields["entities"] = [{"type": "bot_command", "offset": 0, "length": utf16_length(command)}]
        return fields
    if kind == "photo":
        return {"photo": [{**file, "width": 90, "height": 90, "file_size": 1024}]}
    if kind == "sticker":
        return {
            "sticker": {
                **file,
                "type": "regular",
                "width": 512,
                "height": 512,
                "is_animated": False,
                "is_video": False,
                "emoji": "👍",
            }
        }
    if kind == "voice":
        return {"voice": {**file, "duration": 2, "mime_type": "audio/ogg"}}
    msg = f"unknown message kind {kind!r}: use text, photo, sticker or voice"
    raise ValueError(msg)


def _chat_of(update: dict[str, Any]) -> int:
    """The chat an update belongs to: Telegram keeps each chat's updates in order."""
    for kind in ("message", "edited_message"):
        if kind in update:
            return int(update[kind]["chat"]["id"])
    if "callback_query" in update:
        return int(update["callback_query"]["from"]["id"])
    return 0


def not_modified() -> BotAPIError:
    return BotAPIError(
        400,
        "Bad Request: message is not modified: specified new message content and reply "
        "markup are exactly the same as a current content and reply markup of the message",
    )


def _inline_markup(markup: Any) -> dict[str, Any] | None:
    """A `reply_markup`'s inline keyboard, as a message keeps it; None for none (or another kind of markup)."""
    if not isinstance(markup, dict) or not any(markup.get("inline_keyboard") or []):
        return None
    return {"inline_keyboard": markup["inline_keyboard"]}


def _set_inline_markup(message: dict[str, Any], markup: dict[str, Any] | None) -> None:
    if markup is None:
        message.pop("reply_markup", None)
    else:
        message["reply_markup"] = markup


def _button_text(button: Any) -> str:
    return str(button["text"]) if isinstance(button, dict) else str(button)


def _truthy(value: Any) -> bool:
    return value in (True, "true", "True", "1", 1)


async def _read_parameters(request: web.Request) -> dict[str, Any]:
    """Parameters from the query, a form (aiogram sends multipart) or a JSON body; JSON values decoded."""
    params: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        body = await request.json() if request.can_read_body else {}
        params.update(body)
        return params
    if request.can_read_body:
        form = await request.post()
        params.update({key: value for key, value in form.items() if isinstance(value, str)})
    for key, value in params.items():
        if isinstance(value, str) and value[:1] in ("{", "["):
            with contextlib.suppress(json.JSONDecodeError):
                params[key] = json.loads(value)
    return params


@contextlib.asynccontextmanager
async def running_emulator(
    emulator: BotAPIEmulator | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[tuple[BotAPIEmulator, str]]:
    """Serve an emulator on loopback; yields (emulator, base URL)."""
    emulator = emulator or BotAPIEmulator()
    runner = web.AppRunner(emulator.app(), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1]
    try:
        yield emulator, f"http://{host}:{bound_port}"
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="A local Telegram Bot API emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--token", default=EMULATOR_BOT_TOKEN, help="the one bot token it accepts")
    parser.add_argument(
        "--flood-limits", action="store_true", help="answer 429 over Telegram's flood limits (docs/emulator.md)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    emulator = BotAPIEmulator(args.token)
    if args.flood_limits:
        emulator.chaos = Chaos(flood=FloodControl(limits=FloodLimits()))
    web.run_app(emulator.app(), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
