"""Chat with the real bot in the terminal: no token, no network.

The bot runs exactly as in production (same dispatcher, handlers and
configured storage) against the Bot API emulator inside this process; you
are one of its users. Its state is in the configured storage, so stopping the
sandbox and starting it again resumes the questionnaire where it was.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from bot.emulator.server import BotAPIEmulator, running_emulator
from bot.polling import Poller
from bot.running import running_bot
from config import Settings

SANDBOX_USER_ID = 100_000_001
REPLY_WAIT_SECONDS = 10
HELP = (
    "Sandbox: you are chatting with the bot as user {user}; its state is kept in {where}.\n"
    "Type /start to begin. Pick a keyboard button by its number. Send a photo with :photo,\n"
    "a sticker with :sticker. Ctrl-C (or Ctrl-D) stops; run the sandbox again to carry on.\n"
)
SPECIAL_MESSAGES = {":photo": {"kind": "photo"}, ":sticker": {"kind": "sticker"}, ":voice": {"kind": "voice"}}


async def run_sandbox(settings: Settings, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    emulator = BotAPIEmulator(settings.bot_token.get_secret_value())
    async with running_emulator(emulator) as (_, api_url):
        bot_settings = settings.model_copy(update={"telegram_api_url": api_url, "webhook_url": None})
        async with running_bot(bot_settings) as (bot, dispatcher):
            stdout.write(HELP.format(user=SANDBOX_USER_ID, where=describe_storage(settings)))
            stdout.flush()
            poller = Poller(bot, dispatcher, settings.shutdown_timeout)
            chat = asyncio.create_task(terminal_chat(emulator, poller.stop, stdin, stdout))
            try:
                await poller.run()
            finally:
                chat.cancel()


async def terminal_chat(emulator: BotAPIEmulator, stop: Callable[[], None], stdin: TextIO, stdout: TextIO) -> None:
    """Read lines as the user's messages and print the bot's answers, until end of input."""
    lines = read_lines_in_background(stdin)
    seen = 0
    while (line := await lines.get()) is not None:
        text = line.strip()
        if not text:
            continue
        await emulator.user_sends(SANDBOX_USER_ID, message_for(text, emulator.keyboard(SANDBOX_USER_ID)))
        messages = await emulator.bot_messages(SANDBOX_USER_ID, seen + 1, wait=REPLY_WAIT_SECONDS)
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
