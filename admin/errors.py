"""What the owner's commands raise for bad input: main.py prints it as one line and exits with 2."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from config import StorageSettings
from storage import Records, SchemaError, StorageUnavailableError, open_records


class CommandError(Exception):
    """The command cannot run as asked; the message says why and what to change."""


def reason_of(cause: BaseException) -> str:
    """The driver's own words where they help and hold no secret (a socket's error, a database that
    does not exist on the server); else only its error's name (a message may quote a URL)."""
    text = str(cause)
    if isinstance(cause, OSError) or "does not exist" in text or "Unknown database" in text:
        return text
    return type(cause).__name__


@asynccontextmanager
async def opened(settings: StorageSettings, what: str = "the database", reading: bool = True) -> AsyncIterator[Records]:
    """The records the settings name (no aiogram), closed on exit; CommandError when they cannot be opened.

    A database only `reading` from must exist: a mistyped SQLite path is reported, not
    created empty.
    """
    sqlite_file = settings.sqlite_path
    if reading and sqlite_file is not None and not sqlite_file.exists():
        where = "DATABASE_URL" if what == "the database" else "--from (or DATABASE_URL)"
        raise CommandError(f"there is no database at {sqlite_file}: the bot makes it when it starts; check {where}")
    try:
        records = await open_records(settings, reading=reading)
    except SchemaError as error:
        raise CommandError(f"cannot use {what}: {error}") from None
    except StorageUnavailableError as error:
        # The factory's own message names DATABASE_URL or MONGO_URL; here the URL may be --to's.
        cause: BaseException = error
        while cause.__cause__ is not None:  # the driver's own error, under the storage's
            cause = cause.__cause__
        raise CommandError(f"cannot reach {what} ({reason_of(cause)})") from None
    try:
        yield records
    finally:
        await records.close()
