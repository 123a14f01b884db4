"""Start-up failures of a real `python main.py`: one line naming the fix, exit code 2, no traceback."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from bot.emulator import BotAPIEmulator, Fault, running_emulator
from tests.support.bot_process import ROOT, BotProcess, finish
from tests.support.mongo_server import free_port
from tests.support.questionnaire import asked

VALID_TOKEN = "123456789:AAHsecretsecretsecretsecretsecret12"


async def run_bot(tmp_path: Path, **env: str) -> tuple[int, str]:
    """Run the bot until it exits (it must, by itself, within 30 s); return its exit code and stderr."""
    clean = {k: v for k, v in os.environ.items() if k not in {"STORAGE", "DATABASE_URL", "MONGO_URL"}}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "main.py"),
        cwd=tmp_path,
        env={**clean, "BOT_TOKEN": VALID_TOKEN, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await finish(process, 30)
    assert process.returncode is not None
    return process.returncode, stderr


def the_one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert VALID_TOKEN not in stderr
    return errors[0]


async def test_token_rejected_by_telegram(tmp_path: Path) -> None:
    async with running_emulator(BotAPIEmulator()) as (_, api_url):
        code, stderr = await run_bot(tmp_path, TELEGRAM_API_URL=api_url)
    assert code == 2
    assert "Telegram rejected BOT_TOKEN" in the_one_error_line(stderr)


@pytest.mark.parametrize("driver", ["pymongo", "motor"])
async def test_unreachable_mongodb(tmp_path: Path, driver: str) -> None:
    url = f"mongodb://127.0.0.1:{free_port()}"
    code, stderr = await run_bot(tmp_path, STORAGE="mongo", MONGO_URL=url, MONGO_DRIVER=driver)
    assert code == 2
    assert "check MONGO_URL" in the_one_error_line(stderr)


async def test_unreachable_postgresql(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://bot:hunter2@127.0.0.1:{free_port()}/bot"
    code, stderr = await run_bot(tmp_path, DATABASE_URL=url)
    assert code == 2
    line = the_one_error_line(stderr)
    assert "check DATABASE_URL" in line
    assert "hunter2" not in stderr


async def test_sqlite_folder_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where the database folder should be")
    code, stderr = await run_bot(tmp_path, DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/taken/data/bot.db")
    assert code == 2
    line = the_one_error_line(stderr)
    assert "check DATABASE_URL" in line
    assert "Not a directory" in line


async def test_bot_api_unreachable(tmp_path: Path) -> None:
    code, stderr = await run_bot(tmp_path, TELEGRAM_API_URL=f"http://127.0.0.1:{free_port()}")
    assert code == 2
    assert "cannot reach the Bot API" in the_one_error_line(stderr)


async def test_a_table_another_fsm_storage_made(tmp_path: Path) -> None:
    """aiogram-sqlalchemy-storage's table (no `version` column): refused at start-up, not failing every answer."""
    with sqlite3.connect(tmp_path / "bot.db") as connection:
        connection.execute("CREATE TABLE aiogram_fsm_data (id VARCHAR(255) PRIMARY KEY, state VARCHAR(255), data TEXT)")
    code, stderr = await run_bot(tmp_path, DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/bot.db")
    assert code == 2
    line = the_one_error_line(stderr)
    assert "the table aiogram_fsm_data has no column version, updated_at" in line
    assert "rename or drop it" in line


async def test_a_busy_telegram_at_start_up_is_waited_out(tmp_path: Path) -> None:
    """Replicas starting together meet 429s and 502s from Telegram: each start-up call waits its turn."""
    (tmp_path / "data").mkdir()
    async with running_emulator(BotAPIEmulator()) as (emulator, api_url):
        emulator.faults += [
            Fault(method="getMe", status=502, count=1),
            Fault(method="deleteWebhook", status=502, count=2),
            Fault(method="setMyCommands", status=429, count=1, retry_after=1),
        ]
        database = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/data/bot.db"}
        async with BotProcess(emulator, api_url, tmp_path / "bot.log", database) as bot:
            await bot.start()
            assert all(fault.count == 0 for fault in emulator.faults)
            assert emulator.commands, "the command menu was published"
            assert asked()[0].prompt in (await bot.say(1, "/start"))[0]
            assert await bot.stop() == 0
