"""Chat with the real bot in the terminal: no token, no network.

The bot runs exactly as in production (same dispatcher, handlers and
configured storage) against the Bot API emulator inside this process; you
are one of its users. Its state is in the configured storage, so stopping the
sandbox and starting it again resumes the questionnaire where it was.

Each line typed is one message; the sandbox waits until the bot has finished
handling it, then shows every reply it got, however many.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from aiogram import Bot, Dispatcher
from aiogram.types import ReplyKeyboardMarkup, Update

from bot.emulator.server import BotAPIEmulator, ChatLog, running_emulator
from bot.outbox import Delivery, calls_in
from bot.polling import Poller
from bot.running import running_bot
from config import Settings
from handlers.forms import keyboard_for
from states import question_at

SANDBOX_USER_ID = 100_000_001
REPLY_WAIT_SECONDS = 10
HELP = (
    "Sandbox: you are chatting with the bot as user {user}; its state is kept in {where}.\n"
    "Type /start to begin. Pick a keyboard button by its number. Send a photo with :photo,\n"
    "a sticker with :sticker. Ctrl-C (or Ctrl-D) stops; run the sandbox again to carry on.\n"
)
RESUMED = "You were answering: {prompt}\n(/start begins again from the first question.)\n"
SPECIAL_MESSAGES = {":photo": {"kind": "photo"}, ":sticker": {"kind": "sticker"}, ":voice": {"kind": "voice"}}


async def run_sandbox(settings: Settings, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    emulator = BotAPIEmulator(settings.bot_token.get_secret_value())
    async with running_emulator(emulator) as (_, api_url):
        bot_settings = settings.model_copy(update={"telegram_api_url": api_url, "webhook_url": None})
        async with running_bot(bot_settings) as (bot, dispatcher):
            stdout.write(HELP.format(user=SANDBOX_USER_ID, where=describe_storage(settings)))
            await show_where_the_user_was(bot, dispatcher, emulator, stdout)
            stdout.flush()
            handled = HandledUpdates()
            feed = dispatcher.feed_update

            # Once the dispatcher has handled an update, the messages its handler sent itself are in
            # the chat; the messages it committed are more, sent by the courier (bot/outbox.py) after.
            async def feed_and_mark(bot: Bot, update: Update, **kwargs: Any) -> Any:
                result = None
                try:
                    result = await feed(bot, update, **kwargs)
                    return result
                finally:
                    sent = len(emulator.chats.get(SANDBOX_USER_ID, ChatLog()).messages)
                    handled.mark(update.update_id, sent + messages_in(result))

            dispatcher.feed_update = feed_and_mark  # type: ignore[method-assign]
            poller = Poller(bot, dispatcher, settings.shutdown_timeout)
            chat = asyncio.create_task(terminal_chat(emulator, poller.stop, stdin, stdout, handled))
            try:
                await poller.run()
            finally:
                chat.cancel()


async def show_where_the_user_was(bot: Bot, dispatcher: Dispatcher, emulator: BotAPIEmulator, stdout: TextIO) -> None:
    """After a restart: the question the user is at, with its buttons (the emulator starts with an empty chat)."""
    context = dispatcher.fsm.resolve_context(bot, chat_id=SANDBOX_USER_ID, user_id=SANDBOX_USER_ID)
    question = None if context is None else question_at(await context.get_state())
    if question is None:
        return
    stdout.write(RESUMED.format(prompt=question.prompt))
    if question.choices:
        keyboard = keyboard_for(question)
        assert isinstance(keyboard, ReplyKeyboardMarkup)
        rows = [[button.text for button in row] for row in keyboard.keyboard]
        emulator.chats.setdefault(SANDBOX_USER_ID, ChatLog()).keyboard = rows
        stdout.write(format_keyboard(rows))


def messages_in(result: Any) -> int:
    """How many messages an update's result sends into the chat: its committed calls (or an apology's)."""
    if isinstance(result, Delivery):
        fresh = [entry for entry in result.entries if entry.get("seq", 0) >= (result.fresh_from or 0)]
        return sum(1 for entry in fresh if "call" in entry and entry["call"]["method"].startswith("Send"))
    return sum(1 for call in calls_in(result) if call.__api_method__.startswith("send"))


class HandledUpdates:
    """Which updates the bot has handled, and how many messages the chat holds once each one's replies are out."""

    def __init__(self) -> None:
        self._done: dict[int, asyncio.Event] = {}
        self._messages: dict[int, int] = {}

    def _event(self, update_id: int) -> asyncio.Event:
        return self._done.setdefault(update_id, asyncio.Event())

    def mark(self, update_id: int, messages: int) -> None:
        self._messages[update_id] = messages
        self._event(update_id).set()

    async def wait(self, update_id: int, timeout: float) -> int:  # noqa: ASYNC109 - a bound, not a deadline
        """The chat's message count once `update_id`'s replies are out; 0 if `timeout` seconds pass first."""
        try:
            await asyncio.wait_for(self._event(update_id).wait(), timeout)
        except TimeoutError:
            return 0
        return self._messages[update_id]


async def terminal_chat(
    emulator: BotAPIEmulator, stop: Callable[[], None], stdin: TextIO, stdout: TextIO, handled: HandledUpdates
) -> None:
    """Read lines as the user's messages; after each, once the bot has handled it, print every reply it got."""
    lines = read_lines_in_background(stdin)
    seen = 0
    while (line := await lines.get()) is not None:
        text = line.strip()
        if not text:
            continue
        [update] = await emulator.user_sends(SANDBOX_USER_ID, message_for(text, emulator.keyboard(SANDBOX_USER_ID)))
        expected = await handled.wait(update["update_id"], REPLY_WAIT_SECONDS)
        messages = await emulator.bot_messages(SANDBOX_USER_ID, expected, wait=REPLY_WAIT_SECONDS)
        for message in messages[seen:]:
            stdout.write(format_message(message))
        seen = len(messages)
        if keyboard := emulator.keyboard(SANDBOX_USER_ID):
            stdout.write(format_keyboard(keyboard))
        stdout.flush()
    stop()


def message_for(text: str, keyboard: list[list[str]] | None) -> dict[str, Any]:
    """What the user's line means: a special message, a keyboard button by number, or text."""
    if text in SPECIAL_MESSAGES:
        return SPECIAL_MESSAGES[text]
    buttons = [button for row in keyboard or [] for button in row]
    if text.isdigit() and 1 <= int(text) <= len(buttons):
        return {"text": buttons[int(text) - 1]}
    return {"text": text}


def format_message(message: dict[str, Any]) -> str:
    first, *rest = str(message["text"]).splitlines() or [""]
    return "".join([f"bot> {first}\n", *(f"     {line}".rstrip() + "\n" for line in rest)])


def format_keyboard(keyboard: list[list[str]]) -> str:
    numbered = iter(range(1, 1 + sum(len(row) for row in keyboard)))
    rows = ["  ".join(f"[{next(numbered)}] {button}" for button in row) for row in keyboard]
    return "".join(f"     {row}\n" for row in rows)


def describe_storage(settings: Settings) -> str:
    if settings.storage.value == "mongo":
        return f"MongoDB database {settings.mongo_db!r}"
    path = settings.sqlite_path
    return str(path) if path is not None else "the SQL database of DATABASE_URL"


def read_lines_in_background(stdin: TextIO) -> asyncio.Queue[str | None]:
    """Lines from `stdin`, then None at its end.

    The reader is a daemon thread, so Ctrl-C never waits for a line to be typed.
    """
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, name="sandbox-stdin", daemon=True).start()
    return lines
