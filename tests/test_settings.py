"""Settings errors: one clear line, exit code 2, no traceback, never the token."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from config import SettingsError, StorageKind, load_settings, load_storage_settings, to_async_database_url

ROOT = Path(__file__).resolve().parent.parent
SECRET_TOKEN = "123456789:AAHsecretsecretsecretsecretsecret12"


def run_main(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"BOT_TOKEN", "STORAGE", "DATABASE_URL"}}
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py")],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_missing_token_is_one_line_naming_botfather(tmp_path: Path) -> None:
    result = run_main(tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "BOT_TOKEN" in line
    assert "@BotFather" in line
    assert "Traceback" not in result.stderr


def test_empty_token_in_env_file_counts_as_missing(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BOT_TOKEN=\n")
    result = run_main(tmp_path)
    assert result.returncode == 2
    assert "BOT_TOKEN is not set" in result.stderr


def test_malformed_token_is_named_but_never_printed(tmp_path: Path) -> None:
    bad = "123456789 AAHsecretsecret"
    result = run_main(tmp_path, BOT_TOKEN=bad)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "BOT_TOKEN does not look like a bot token" in line
    assert "secret" not in line


def test_unknown_storage_lists_the_known_ones(tmp_path: Path) -> None:
    result = run_main(tmp_path, BOT_TOKEN=SECRET_TOKEN, STORAGE="redis")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "STORAGE must be one of: sqlalchemy, mongo" in line
    assert SECRET_TOKEN not in result.stderr


def test_settings_come_from_the_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("BOT_TOKEN", "STORAGE", "DATABASE_URL", "LOG_LEVEL"):
        monkeypatch.delenv(variable, raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text(f"BOT_TOKEN={SECRET_TOKEN}\nLOG_LEVEL=debug\n")
    settings = load_settings(env_file)
    assert settings.bot_token.get_secret_value() == SECRET_TOKEN
    assert settings.storage is StorageKind.SQLALCHEMY
    assert settings.database_url == "sqlite+aiosqlite:///data/bot.db"
    assert settings.log_level == "DEBUG"
    assert SECRET_TOKEN not in repr(settings)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///data/bot.db", "sqlite+aiosqlite:///data/bot.db"),
        ("postgres://u:p@db/bot", "postgresql+asyncpg://u:p@db/bot"),
        ("postgresql://u:p@db/bot", "postgresql+asyncpg://u:p@db/bot"),
        ("mysql://u:p@db/bot", "mysql+asyncmy://u:p@db/bot"),
        ("postgresql+asyncpg://u:p@db/bot", "postgresql+asyncpg://u:p@db/bot"),
    ],
)
def test_plain_database_urls_get_their_async_driver(given: str, expected: str) -> None:
    assert to_async_database_url(given) == expected


def test_sync_driver_gets_told_what_to_write(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_TOKEN", SECRET_TOKEN)
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg2://user:hunter2@db/bot")
    with pytest.raises(SettingsError, match=r"write postgresql\+asyncpg://") as error:
        load_settings(None)
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LOG_LEVEL", "loud", "LOG_LEVEL must be one of"),
        ("TELEGRAM_API_URL", "localhost:8081", "TELEGRAM_API_URL must be the base URL"),
        ("MONGO_DRIVER", "mongoose", "MONGO_DRIVER must be one of: pymongo, motor"),
        # A bare number would be read as seconds by most parsers: 30 meant as days would expire everything.
        ("FSM_TTL", "30", "FSM_TTL must be a duration with a unit, like 30d"),
        ("FSM_TTL", "-1d", "FSM_TTL must be a duration with a unit"),
        ("FSM_TTL", "0d", "FSM_TTL must be more than 0"),
    ],
)
def test_other_bad_settings_are_named(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str) -> None:
    monkeypatch.setenv("BOT_TOKEN", SECRET_TOKEN)
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=message):
        load_settings(None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("1.5m", timedelta(seconds=90)), ("0", None)],
)
def test_fsm_ttl_takes_a_duration_or_0_for_never(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: timedelta | None
) -> None:
    monkeypatch.setenv("FSM_TTL", value)
    assert load_storage_settings(None).fsm_ttl == expected
    assert load_storage_settings(None).model_copy().fsm_ttl == expected


def test_the_owners_commands_need_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOT_TOKEN", raising=False)
    assert load_storage_settings(None).fsm_ttl == timedelta(days=30)
    with pytest.raises(SettingsError, match="BOT_TOKEN"):
        load_settings(None)


def test_a_webhook_without_a_secret_is_refused_in_one_line(tmp_path: Path) -> None:
    result = run_main(tmp_path, BOT_TOKEN=SECRET_TOKEN, WEBHOOK_URL="https://bot.example/telegram")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: WEBHOOK_SECRET is not set")


@pytest.mark.parametrize("secret", ["has space", "x" * 257, "naïve"])
def test_a_webhook_secret_telegram_would_refuse_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    monkeypatch.setenv("BOT_TOKEN", SECRET_TOKEN)
    monkeypatch.setenv("WEBHOOK_URL", "https://bot.example/telegram")
    monkeypatch.setenv("WEBHOOK_SECRET", secret)
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET must be 1-256 characters") as error:
        load_settings(None)
    assert secret not in str(error.value)


def test_the_webhook_path_is_the_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_TOKEN", SECRET_TOKEN)
    monkeypatch.setenv("WEBHOOK_URL", "https://bot.example/telegram/updates")
    monkeypatch.setenv("WEBHOOK_SECRET", "s3cret_-")
    settings = load_settings(None)
    assert settings.webhook_path == "/telegram/updates"
    assert "s3cret" not in repr(settings)


def test_make_replicas_refuses_a_sqlite_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"DATABASE_URL=sqlite+aiosqlite:///{tmp_path / 'bot.db'}\n")
    env = {k: v for k, v in os.environ.items() if k not in {"BOT_TOKEN", "STORAGE", "DATABASE_URL"}}
    result = subprocess.run(
        [sys.executable, "-m", "bot.emulator.replicas", "--env-file", str(tmp_path / ".env")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("error: replicas share one database")
