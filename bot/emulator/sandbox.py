"""Chat with the real bot in the terminal: no token, no network.

The bot runs exactly as in production (same dispatcher, handlers and
configured storage) against the Bot API emulator inside this process; you
are one of its users. Its state is in the configured storage, so stopping the
sandbox and starting it again resumes the questionnaire where it was.

Each line typed is one message, or a press of a button; the sandbox waits
until the bot has finished handling it, then shows every reply it got,
however many, and a pressed button's notice (Telegram's toast).

Buttons are shown numbered under what the bot said. A line that is the
number or the exact label of an inline button under the bot's last message
presses that button. Otherwise a number picks that reply-keyboard button
(sent as its text, as Telegram's keyboard does), and anything else is sent as
a message. Only one set of buttons is ever numbered: the inline buttons
under the last message when it has any, else the reply keyboard.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from aiogram import Bot, Dispatcher
from aiogram.types import Update

from bot.emulator.server import BotAPIEmulator, ChatLog, running_emulator
from bot.polling import Poller
from bot.running import running_bot
from config import Settings
from handlers.forms import keyboard_for
from states import question_at

SANDBOX_USER_ID = 100_000_001
REPLY_WAIT_SECONDS = 10
HELP = (
    "Sandbox: you are chatting with the bot as user {user}; its state is kept in {where}.\n"
    "Type /start to begin. Press a button by typing its number or its label (the buttons\n"
    "under the bot's last message, else the keyboard's). Send a photo with :photo, a sticker\n"
    "with :sticker. Ctrl-C (or Ctrl-D) stops; run the sandbox again to carry on.\n"
)
NOTICE_WAIT_SECONDS = 2
RESUMED = "You were answering: {prompt}\n(/cancel stops it; /start begins the questionnaire again.)\n"
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
            courier = dispatcher["courier"]
            marking: set[asyncio.Task[None]] = set()

            async def mark_once_carried_out(update_id: int) -> None:
                await courier.idle()
                handled.mark(update_id, len(emulator.chats.get(SANDBOX_USER_ID, ChatLog()).messages))

            # The calls an update's handler returned are committed with it and handed to the courier
            # (bot/outbox.py) as soon as the dispatcher returns, in the same step: the update's replies
            # (and a press's answer) are out once the courier is idle again.
            async def feed_and_mark(bot: Bot, update: Update, **kwargs: Any) -> Any:
                try:
                    return await feed(bot, update, **kwargs)
                finally:
                    task = asyncio.create_task(mark_once_carried_out(update.update_id))
                    marking.add(task)
                    task.add_done_callback(marking.discard)

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
        # The question, as the bot sent it, back in the chat: its buttons work as they did.
        markup = keyboard_for(question).model_dump(mode="json", exclude_none=True)
        emulator.add_bot_message(SANDBOX_USER_ID, question.prompt, markup)
        stdout.write(format_keyboard(buttons_shown(emulator)[1]))


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
    """Read lines as the user's messages or presses; after each, once the bot has handled it, print what it did."""
    lines = read_lines_in_background(stdin)
    seen = len(await emulator.bot_messages(SANDBOX_USER_ID))  # a question put back at start-up is shown already
    while (line := await lines.get()) is not None:
        text = line.strip()
        if not text:
            continue
        inline, buttons = buttons_shown(emulator)
        what = message_for(text, emulator.keyboard(SANDBOX_USER_ID), buttons if inline else None)
        if "press" in what:
            update = await emulator.user_presses(SANDBOX_USER_ID, what["press"])
        else:
            [update] = await emulator.user_sends(SANDBOX_USER_ID, what)
        expected = await handled.wait(update["update_id"], REPLY_WAIT_SECONDS)
        if "callback_query" in update:
            answer = await emulator.callback_answer(update["callback_query"]["id"], wait=NOTICE_WAIT_SECONDS)
            if answer is not None and answer["text"]:
                stdout.write(format_notice(answer))
        messages = await emulator.bot_messages(SANDBOX_USER_ID, expected, wait=REPLY_WAIT_SECONDS)
        for message in messages[seen:]:
            stdout.write(format_message(message))
        seen = len(messages)
        if buttons := buttons_shown(emulator)[1]:
            stdout.write(format_keyboard(buttons))
        stdout.flush()
    stop()


def buttons_shown(emulator: BotAPIEmulator) -> tuple[bool, list[list[str]]]:
    """The buttons a number picks: the inline ones under the bot's last message (True), else the keyboard's."""
    if inline := emulator.inline_buttons(SANDBOX_USER_ID):
        return True, [[str(button["text"]) for button in row] for row in inline]
    return False, emulator.keyboard(SANDBOX_USER_ID) or []


def message_for(text: str, keyboard: list[list[str]] | None, inline: list[list[str]] | None = None) -> dict[str, Any]:
    """What the user's line means: a special message, a press of an inline button (`{"press": its place}`)
    by its number or label, a keyboard button by its number, or text.

    `inline` are the inline buttons under the bot's last message: while there
    are any, a number is theirs, not the reply keyboard's.
    """
    if text in SPECIAL_MESSAGES:
        return SPECIAL_MESSAGES[text]
    if inline:
        labels = [button for row in inline for button in row]
        if text.isdigit() and 1 <= int(text) <= len(labels):
            return {"press": int(text) - 1}
        if text in labels:
            return {"press": labels.index(text)}
        return {"text": text}
    buttons = [button for row in keyboard or [] for button in row]
    if text.isdigit() and 1 <= int(text) <= len(buttons):
        return {"text": buttons[int(text) - 1]}
    return {"text": text}


def format_message(message: dict[str, Any]) -> str:
    first, *rest = str(message["text"]).splitlines() or [""]
    return "".join([f"bot> {first}\n", *(f"     {line}".rstrip() + "\n" for line in rest)])


def format_notice(answer: dict[str, Any]) -> str:
    """A pressed button's answer with text: Telegram shows it over the chat for a moment (an alert: until closed)."""
    return f"{'alert' if answer['show_alert'] else 'toast'}> {answer['text']}\n"


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
