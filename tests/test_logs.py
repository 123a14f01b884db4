"""LOG_FORMAT=json: what a log shipper reads from the real `python main.py`, at DEBUG, through failures.

Every line is one JSON object; the token, the webhook secret and what users
answered appear in none of them.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from bot.emulator import BotAPIEmulator, Fault, running_emulator
from config import SettingsError, load_settings
from tests.support.bot_process import BotProcess
from tests.support.questionnaire import asked, conversation, keeps_as_typed, replies
from tests.support.webhook import SECRET, free_port, until_healthy, webhook_environment

SECRET_WORD = "Quokkaworth"  # in no log line by chance
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def secret_answers() -> dict[str, str]:
    """Answers no log line could contain by chance: one for each question that keeps a text as typed."""
    texts = ((question, f"Zebediah {SECRET_WORD} {number}") for number, question in enumerate(asked()))
    return {question.key: text for question, text in texts if keeps_as_typed(question, text)}


def json_lines(output: str) -> list[dict[str, str]]:
    entries = []
    for line in output.splitlines():
        entry = json.loads(line)  # a line that is not JSON fails here, and shows itself
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        assert entry["level"] in LEVELS, line
        entries.append(entry)
    return entries


def assert_nothing_secret(output: str, emulator: BotAPIEmulator, *secrets: str) -> None:
    for secret in (emulator.token, emulator.token.split(":")[1], *secrets):
        assert secret not in output
    for answer in (*secret_answers().values(), SECRET_WORD):
        assert answer not in output


async def questionnaire_through_failures(bot: BotProcess, user_id: int) -> None:
    """The whole questionnaire, its first answer met by 502s past the retries, its second (or the same) by a 429."""
    answers = secret_answers()
    messages, expected = conversation(**answers), replies(**answers)
    assert await bot.say(user_id, messages[0]) == [expected[0]]
    for step in range(1, len(messages)):
        if step == 1:
            bot.emulator.faults.append(Fault(method="sendMessage", status=502, count=3))
        if step == min(2, len(messages) - 1):
            bot.emulator.faults.append(Fault(method="sendMessage", status=429, count=1, retry_after=1))
        await bot.emulator.user_sends(user_id, {"text": messages[step]})
        texts = await bot.wait_for(user_id, expected[step])
        assert texts[-1] == expected[step]
    assert all(answer in expected[-1] for answer in answers.values())  # the user sees their answers; the logs do not


async def test_polling_logs_json_lines_without_secrets_or_answers(tmp_path: Path) -> None:
    async with (
        running_emulator(BotAPIEmulator()) as (emulator, api_url),
        BotProcess(
            emulator,
            api_url,
            tmp_path / "bot.log",
            {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}", "LOG_FORMAT": "json"},
        ) as bot,
    ):
        await bot.start()
        await questionnaire_through_failures(bot, 1)
        assert await bot.stop(signal.SIGTERM) == 0
    entries = json_lines(bot.output())
    loggers = {entry["logger"] for entry in entries}
    assert {"bot.running", "bot.polling", "bot.outbox"} <= loggers
    assert any(entry["level"] == "WARNING" and "wait 1 s" in entry["message"] for entry in entries)  # the 429
    assert_nothing_secret(bot.output(), emulator)


async def test_webhook_logs_json_lines_without_the_secret(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with (
        running_emulator(BotAPIEmulator()) as (emulator, api_url),
        BotProcess(
            emulator,
            api_url,
            tmp_path / "bot.log",
            webhook_environment(port, tmp_path / "bot.db") | {"LOG_FORMAT": "JSON"},
        ) as bot,
    ):
        await bot.start(ready_on="setWebhook")
        await until_healthy(base)
        await questionnaire_through_failures(bot, 2)
        assert await bot.stop(signal.SIGTERM) == 0
    entries = json_lines(bot.output())
    assert any(entry["logger"] == "bot.webhook" for entry in entries)
    assert_nothing_secret(bot.output(), emulator, SECRET)


def test_an_unknown_log_format_is_refused_by_name(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(f"BOT_TOKEN={BotAPIEmulator().token}\nLOG_FORMAT=yaml\n")
    with pytest.raises(SettingsError, match=r"^LOG_FORMAT must be text or json$"):
        load_settings(env)
