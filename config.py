"""Settings: read from the environment and `.env`, validated, nothing else.

Importing this module is cheap (no aiogram) and has no side effects, so a
wrong setting is reported in well under a second.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

# @BotFather hands out "<bot id>:<35 characters>".
_TOKEN_PATTERN = re.compile(r"^\d{1,20}:[A-Za-z0-9_-]{30,}$")
_SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,256}")

# A plain `postgresql://` URL (as hosting panels print them) means "the usual
# async driver for this database"; anything explicitly synchronous is an error.
_DEFAULT_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "mysql": "mysql+asyncmy",
    "mariadb": "mariadb+asyncmy",
}
_ASYNC_DRIVERS = {"aiosqlite", "asyncpg", "psycopg", "asyncmy", "aiomysql"}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_FSM_TTL = timedelta(days=30)
_DURATION_PATTERN = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

BOT_TOKEN_HELP = (
    "BOT_TOKEN is not set: create a bot with @BotFather in Telegram and put "
    "BOT_TOKEN=<the token it gives you> in .env (see .env.example)"
)


MongoDriver = Literal["pymongo", "motor"]


class StorageKind(StrEnum):
    SQLALCHEMY = "sqlalchemy"
    MONGO = "mongo"


class SettingsError(Exception):
    """A setting is missing or wrong. The message names it and the fix, never its value."""


class StorageSettings(BaseSettings):
    """Where conversations and answers are kept: all the owner's commands need (no token)."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
    )

    storage: StorageKind = StorageKind.SQLALCHEMY
    # URLs may carry passwords: keep them out of repr() and so out of logs.
    database_url: str = Field("sqlite+aiosqlite:///data/bot.db", repr=False)
    mongo_url: str = Field("mongodb://localhost:27017", repr=False)
    mongo_db: str = "aiogram_fsm"
    mongo_driver: MongoDriver = "pymongo"
    # A conversation untouched this long is removed ("30d", "12h", "90m", "45s"; 0: never).
    fsm_ttl: timedelta | None = DEFAULT_FSM_TTL

    @field_validator("database_url")
    @classmethod
    def _database_url_is_async(cls, value: str) -> str:
        return to_async_database_url(value)

    @field_validator("fsm_ttl", mode="before")
    @classmethod
    def _ttl_has_a_unit(cls, value: object) -> timedelta | None:
        if isinstance(value, timedelta) or value is None:
            return value or None
        text = str(value).strip().lower()
        if text == "0":
            return None
        match = _DURATION_PATTERN.fullmatch(text)
        if not match:
            raise ValueError("FSM_TTL must be a duration with a unit, like 30d, 12h, 90m or 45s (0: never expire)")
        amount = float(match.group(1))
        if amount <= 0:
            raise ValueError("FSM_TTL must be more than 0 (0 alone: never expire)")
        return timedelta(seconds=amount * _DURATION_UNITS[match.group(2)])

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file the bot keeps its data in, or None on other databases."""
        url = make_url(self.database_url)
        if (
            self.storage is not StorageKind.SQLALCHEMY
            or url.get_backend_name() != "sqlite"
            or url.database in (None, "", ":memory:")
        ):
            return None
        return Path(url.database)


class Settings(StorageSettings):
    """Everything the bot reads."""

    bot_token: SecretStr
    telegram_api_url: str | None = None
    log_level: str = "INFO"
    # text: one line a person reads; json: one JSON object per line, for a log shipper.
    log_format: Literal["text", "json"] = "text"
    # Serve Prometheus metrics at http://WEB_SERVER_HOST:METRICS_PORT/metrics (unset: no listener;
    # the webhook server has /metrics on WEB_SERVER_PORT anyway).
    metrics_port: int | None = Field(None, ge=1, le=65535)
    # On SIGTERM or SIGINT, how long the updates in progress may take to finish;
    # what is still running then is left for Telegram to deliver again.
    shutdown_timeout: float = Field(20.0, ge=0, le=600)
    # How fast the bot sends, kept under Telegram's limits (its FAQ; docs/delivery.md): into one
    # chat at most CHAT_BURST messages within CHAT_BURST seconds (about one a second), into a group
    # GROUP_MESSAGES_PER_MINUTE, and BOT_MESSAGES_PER_SECOND over all chats.
    chat_burst: int = Field(3, ge=1, le=100)
    group_messages_per_minute: int = Field(20, ge=1, le=1000)
    bot_messages_per_second: int = Field(30, ge=1, le=1000)
    # Setting WEBHOOK_URL switches from long polling to a webhook (see docs/scale-out.md).
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    web_server_host: str = "0.0.0.0"
    web_server_port: int = Field(8080, ge=1, le=65535)

    @field_validator("bot_token")
    @classmethod
    def _token_has_botfather_shape(cls, value: SecretStr) -> SecretStr:
        if not _TOKEN_PATTERN.match(value.get_secret_value().strip()):
            raise ValueError(
                "BOT_TOKEN does not look like a bot token: @BotFather gives one like "
                "123456789:AAH...(35 characters); copy it again into .env"
            )
        return SecretStr(value.get_secret_value().strip())

    @field_validator("telegram_api_url")
    @classmethod
    def _api_url_is_http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("TELEGRAM_API_URL must be the base URL of a Bot API server, like http://localhost:8081")
        return value.rstrip("/")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url_is_http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", value.strip()):
            raise ValueError(
                "WEBHOOK_URL must be the public URL Telegram posts to, like https://bot.example.com/webhook"
            )
        return value.strip()

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_is_telegrams_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _SECRET_PATTERN.fullmatch(value.get_secret_value()):
            raise ValueError("WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @model_validator(mode="after")
    def _webhook_has_a_secret(self) -> Settings:
        if self.webhook_url and self.webhook_secret is None:
            raise ValueError(
                "WEBHOOK_SECRET is not set: a webhook needs one so that only Telegram can post updates "
                "(1-256 characters of A-Z, a-z, 0-9, _ and -; for example from `openssl rand -hex 32`)"
            )
        return self

    @model_validator(mode="after")
    def _metrics_port_is_free(self) -> Settings:
        if self.webhook_url and self.metrics_port == self.web_server_port:
            raise ValueError(
                "METRICS_PORT is WEB_SERVER_PORT: the webhook server has /metrics already; "
                "leave METRICS_PORT unset or pick another port"
            )
        return self

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format_is_known(cls, value: object) -> object:
        text = str(value).strip().lower()
        if text not in ("text", "json"):
            raise ValueError("LOG_FORMAT must be text or json")
        return text

    @property
    def webhook_path(self) -> str:
        """The path the webhook server answers on: WEBHOOK_URL's."""
        return urlsplit(self.webhook_url or "").path or "/"

    @field_validator("log_level")
    @classmethod
    def _log_level_is_known(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in _LOG_LEVELS:
            raise ValueError(f"LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}")
        return level


def to_async_database_url(value: str) -> str:
    """Return DATABASE_URL with an async driver, or raise naming what to write."""
    try:
        url: URL = make_url(value.strip())
    except ArgumentError:
        raise ValueError(
            "DATABASE_URL is not a database URL; write for example "
            "sqlite+aiosqlite:///data/bot.db or postgresql+asyncpg://user:password@host/db"
        ) from None
    backend, driver = url.get_backend_name(), url.drivername.partition("+")[2]
    if not driver and backend in _DEFAULT_ASYNC_DRIVERS:
        url = url.set(drivername=_DEFAULT_ASYNC_DRIVERS[backend])
    elif driver not in _ASYNC_DRIVERS:
        suggestion = _DEFAULT_ASYNC_DRIVERS.get(backend, f"{backend}+<async driver>")
        raise ValueError(
            f"DATABASE_URL uses the synchronous driver {url.drivername!r}; "
            f"the bot needs an async one: write {suggestion}://..."
        )
    return url.render_as_string(hide_password=False)


def load_settings(env_file: str | Path | None = ".env", *, bot_token: str | None = None) -> Settings:
    """Read and validate the settings; raise SettingsError with one readable line.

    `bot_token` replaces BOT_TOKEN (the sandbox brings its own).
    """
    try:
        if bot_token is not None:
            return Settings(_env_file=env_file, bot_token=SecretStr(bot_token))
        return Settings(_env_file=env_file)
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


def describe_duration(span: timedelta) -> str:
    """A duration as a person reads it: "30 days", "24 hours", else "0:00:02"."""
    seconds = span.total_seconds()
    if seconds % 86400 == 0 and seconds > 86400:
        return f"{seconds / 86400:g} days"
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g} hours"
    return str(span)


def load_storage_settings(env_file: str | Path | None = ".env") -> StorageSettings:
    """The storage settings alone, for the owner's commands: no BOT_TOKEN needed."""
    try:
        return StorageSettings(_env_file=env_file)
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


def _describe(error: ValidationError) -> str:
    """One line per problem, naming the variable; values are left out (the token is secret)."""
    lines = []
    for problem in error.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in problem["loc"]).upper()
        if problem["type"] == "missing":
            lines.append(BOT_TOKEN_HELP if name == "BOT_TOKEN" else f"{name} is not set")
        elif name == "STORAGE":
            known = ", ".join(kind.value for kind in StorageKind)
            lines.append(f"STORAGE must be one of: {known}")
        elif name == "MONGO_DRIVER":
            lines.append("MONGO_DRIVER must be one of: pymongo, motor")
        elif problem["type"] == "value_error":  # the validators' messages name the setting
            lines.append(str(problem["msg"]).removeprefix("Value error, "))
        else:  # pydantic's own ("Input should be greater than or equal to 1") do not
            lines.append(f"{name}: {problem['msg']}")
    return "; ".join(lines)
