"""`python main.py` as a real process against the Bot API emulator, for end-to-end tests.

Every process a test starts is stopped however the test ends: `BotProcess` is an
async context manager, `started()` wraps any other command, and `finish()` stops
what it waited for (SIGTERM, then SIGKILL, then reaped: `stop_process()`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bot.emulator import BotAPIEmulator
from tests.support.backends import Backend

ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 60
REPLY_SECONDS = 20


async def drop_bot_tables(database_url: str) -> None:
    engine = create_async_engine(database_url)
    async with engine.begin() as connection:
        for table in ("aiogram_fsm_data", "questionnaire_responses", "bot_forms"):
            await connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
    await engine.dispose()


def bot_environment(backend: Backend, folder: Path) -> dict[str, str]:
    """The settings that point a bot process at `backend`."""
    if backend.is_mongo:
        return {
            "STORAGE": "mongo",
            "MONGO_URL": backend.url,
            "MONGO_DB": backend.place,
            "MONGO_DRIVER": backend.driver,
        }
    if backend.name == "sqlite":
        return {"DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'data' / 'bot.db'}"}
    return {"DATABASE_URL": backend.url}


STOP_SECONDS = 10


async def stop_process(process: asyncio.subprocess.Process, wait: float = STOP_SECONDS) -> None:
    """Stop `process` if it still runs: SIGTERM, SIGKILL after `wait` s, then reap it. For `finally`."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), wait)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    await process.wait()


@contextlib.asynccontextmanager
async def started(*command: str | Path, **options: Any) -> AsyncIterator[asyncio.subprocess.Process]:
    """`asyncio.create_subprocess_exec(*command, **options)`, stopped on the way out whatever happened."""
    process = await asyncio.create_subprocess_exec(*command, **options)
    try:
        yield process
    finally:
        await stop_process(process)


class BotProcess:
    """One bot process at a time; its stdout and stderr go to one log file.

    Use it as `async with BotProcess(...) as bot:`: a bot still running on the way
    out (a failed assertion, a timeout) is stopped there.
    """

    def __init__(self, emulator: BotAPIEmulator, api_url: str, log_path: Path, env: dict[str, str]) -> None:
        self.emulator = emulator
        self.log_path = log_path
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in {"STORAGE", "DATABASE_URL", "MONGO_URL"}},
            "BOT_TOKEN": emulator.token,
            "TELEGRAM_API_URL": api_url,
            "LOG_LEVEL": "DEBUG",
            **env,
        }
        self.process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the bot if it still runs (SIGTERM, then SIGKILL) and close its log; nothing if it stopped."""
        try:
            if self.process is not None:
                await stop_process(self.process)
        finally:
            if self._log is not None:
                self._log.close()

    async def _spawn(self, *command: str) -> None:
        if self.process is not None and self.process.returncode is None:
            msg = "start() while the bot still runs: stop() it first"
            raise AssertionError(msg)
        self._log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            *command, cwd=self.log_path.parent, env=self.env, stdout=self._log, stderr=asyncio.subprocess.STDOUT
        )

    async def start(self, ready_on: str = "getUpdates") -> None:
        """Start the bot and wait until it calls `ready_on` (getUpdates: it polls)."""
        polls_before = self.emulator.calls.count(ready_on)
        await self._spawn(sys.executable, str(ROOT / "main.py"), "--env-file", os.devnull)
        await self._until(lambda: self.emulator.calls.count(ready_on) != polls_before, f"call {ready_on}")

    async def start_standby(self) -> None:
        """Start the bot while another process polls; wait until it says it stands by."""
        logged_before = len(self.output())
        await self._spawn(sys.executable, str(ROOT / "main.py"), "--env-file", os.devnull)
        await self._until(lambda: "Standing by" in self.output()[logged_before:], "stand by")

    async def _until(self, ready: Callable[[], bool], what: str) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_SECONDS
        while not ready():
            if self.process.returncode is not None:
                msg = f"the bot exited with {self.process.returncode}:\n{self.output()}"
                raise AssertionError(msg)
            if time.monotonic() > deadline:
                msg = f"the bot did not {what} within {START_SECONDS} s:\n{self.output()}"
                raise AssertionError(msg)
            await asyncio.sleep(0.05)

    async def stop(self, sig: signal.Signals = signal.SIGTERM, wait: float = 20) -> int:
        """Send `sig` and wait for the exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        try:
            return await asyncio.wait_for(self.process.wait(), wait)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            msg = f"the bot did not stop within {wait} s after {sig.name}"
            raise AssertionError(msg) from None
        finally:
            if self._log is not None:
                self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def say(self, user_id: int, *texts: str, replies: int | None = None) -> list[str]:
        """A user sends `texts` (in one getUpdates batch); return the bot's new replies."""
        return await self.send(user_id, *({"text": text} for text in texts), replies=replies)

    async def wait_for(self, user_id: int, part: str, wait: float = REPLY_SECONDS) -> list[str]:
        """The bot's messages to `user_id`, once one contains `part` (after a restart a reply may come twice)."""
        deadline = time.monotonic() + wait
        while True:
            texts = [str(message["text"]) for message in await self.emulator.bot_messages(user_id)]
            if any(part in text for text in texts):
                return texts
            if time.monotonic() > deadline:
                msg = f"no message with {part!r} in {texts}:\n{self.output()[-3000:]}"
                raise AssertionError(msg)
            await self.emulator.bot_messages(user_id, len(texts) + 1, wait=deadline - time.monotonic())

    async def send(self, user_id: int, *contents: dict[str, Any], replies: int | None = None) -> list[str]:
        before = len(await self.emulator.bot_messages(user_id))
        await self.emulator.user_sends(user_id, *contents)
        expected = before + (len(contents) if replies is None else replies)
        messages = await self.emulator.bot_messages(user_id, expected, wait=REPLY_SECONDS)
        texts = [str(message["text"]) for message in messages[before:]]
        assert len(texts) >= expected - before, f"expected a reply, got {texts}:\n{self.output()[-3000:]}"
        return texts


async def finish(process: asyncio.subprocess.Process, seconds: float, typed: bytes | None = None) -> tuple[str, str]:
    """Feed `typed`, wait for the exit and return stdout and stderr; kill the process if it overruns.

    However this ends (an overrun, a cancellation), the process is not left running.
    """
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(typed), seconds)
    except TimeoutError:
        process.kill()
        await process.wait()
        msg = f"the process did not exit within {seconds} s"
        raise AssertionError(msg) from None
    finally:
        await stop_process(process)
    return stdout.decode(errors="replace"), stderr.decode(errors="replace")
