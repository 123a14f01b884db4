"""Build the storages the settings ask for; the bot never knows which database runs. The one reader of config."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from config import DEFAULT_FSM_TTL, MongoDriver, StorageKind, StorageSettings
from storage.errors import DEFAULT_TIMEOUT_SECONDS, SchemaError, StorageUnavailableError
from storage.interface import FsmStorage, ResponseRecords
from storage.leadership import Leadership, leadership_beside
from storage.sql.fsm import SQLAlchemyStorage
from storage.sql.responses import SQLResponseStore


@dataclass
class Storages:
    """The FSM storage and the completed-responses store, on one database.

    No lock is shared across processes: webhook replicas, or the old and the
    new process of a deploy, are kept apart by the FSM storage's fenced write
    (`FsmStorage.swap_state_and_data`), which holds whether or not anything is locked.
    """

    fsm: FsmStorage
    responses: ResponseRecords

    async def close(self) -> None:
        await self.fsm.close()


# The owner's commands read or copy whole tables: each call may take longer than a user's.
COMMAND_TIMEOUT_SECONDS = 300.0


async def create_storages(settings: StorageSettings, *, owner_command: bool = False) -> Storages:
    """Connect to the configured database and create what the bot needs there.

    For an owner's command (`owner_command`), calls get a longer time bound,
    and a Mongo TTL index is left as the bot set it (the command's own
    FSM_TTL may not be the bot's).
    """
    timeout = COMMAND_TIMEOUT_SECONDS if owner_command else DEFAULT_TIMEOUT_SECONDS
    if settings.storage is StorageKind.MONGO:
        return await create_mongo_storages(
            settings.mongo_url,
            settings.mongo_db,
            settings.mongo_driver,
            timeout=timeout,
            expire_after=settings.fsm_ttl,
            set_expiry_index=not owner_command,
        )
    engine_kwargs: dict[str, Any] = {}
    if owner_command and make_url(settings.database_url).get_backend_name() == "postgresql":
        # A table migrate fills grows faster than autovacuum analyzes it: a plan PostgreSQL
        # cached for a prepared statement while the table was nearly empty (a sequential
        # scan) would stay for the whole copy, each page's lookup reading the whole table.
        # Planned again on every run, the lookups use the primary key.
        engine_kwargs["connect_args"] = {"server_settings": {"plan_cache_mode": "force_custom_plan"}}
    storages = await create_sql_storages(settings.database_url, timeout=timeout, **engine_kwargs)
    if not owner_command:
        await _fill_user_ids(storages)
    return storages


# Records an older version wrote without a user id get one at the bot's start, this many per call.
FILL_BATCH = 1000


async def _fill_user_ids(storages: Storages) -> None:
    """Give every record an older version wrote without a user id its user, a short batch at a time:
    only the first start after an upgrade finds any (/forget finds them by key meanwhile)."""
    try:
        after = None
        while (after := await storages.fsm.fill_user_ids(after, FILL_BATCH)) is not None:
            pass
    except BaseException:
        await storages.close()
        raise


async def create_sql_storages(
    database_url: str,
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS,  # noqa: ASYNC109 - per database call
    **engine_kwargs: Any,
) -> Storages:
    try:
        # orjson: the same JSON, written and read several times faster than the standard library's.
        fsm = await SQLAlchemyStorage.from_url(
            database_url, json_dumps=orjson.dumps, json_loads=orjson.loads, timeout=timeout, **engine_kwargs
        )
    except SchemaError:
        raise
    except (SQLAlchemyError, OSError, TimeoutError, StorageUnavailableError) as error:
        where = make_url(database_url).render_as_string(hide_password=True)
        cause = error.__cause__ if isinstance(error, StorageUnavailableError) else error
        reason = str(cause) if isinstance(cause, OSError) else type(cause).__name__
        msg = f"cannot use the database at {where} ({reason}): check DATABASE_URL"
        raise StorageUnavailableError(msg) from error
    responses = SQLResponseStore(fsm)
    try:
        await responses.create_table()
    except BaseException:
        await fsm.close()
        raise
    return Storages(fsm=fsm, responses=responses)


# What the polling processes of one bot on one database take turns on (storage/leadership.py).
def polling_lock_name(bot_id: int) -> str:
    """The name of bot `bot_id`'s polling lock (another bot on the same database has its own)."""
    return f"aiogram_fsm_data.polling.{bot_id}"


def create_leadership(settings: StorageSettings, bot_id: int) -> Leadership:
    """The lock the polling processes of bot `bot_id` on this database share: one polls, the others
    stand by (another bot on the same database has a lock of its own).

    Nothing connects here: the first `acquire()` does.
    """
    name = polling_lock_name(bot_id)
    if settings.storage is StorageKind.MONGO:
        from storage.mongo.leadership import MongoLeadership

        return MongoLeadership(settings.mongo_url, settings.mongo_db, settings.mongo_driver, name)
    if make_url(settings.database_url).get_backend_name() == "sqlite":
        return leadership_beside(settings.sqlite_path, f"polling.{bot_id}")
    from storage.sql.leadership import SQLLeadership

    return SQLLeadership(settings.database_url, name)


async def create_mongo_storages(
    url: str,
    db_name: str,
    driver: MongoDriver = "pymongo",
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS,  # noqa: ASYNC109 - per database call
    expire_after: timedelta | None = DEFAULT_FSM_TTL,
    set_expiry_index: bool = True,
) -> Storages:
    """Mongo storages; the FSM collection's TTL index follows `expire_after` (None: no index)
    unless `set_expiry_index` is False (it is then left as it is)."""
    # Imported here: a bot on SQL never loads the Mongo driver (about 6 MB).
    from pymongo.errors import PyMongoError

    from storage.mongo.fsm import MongoStorage
    from storage.mongo.responses import MongoResponseStore

    fsm = MongoStorage.from_url(url, driver, db_name=db_name, timeout=timeout)
    try:
        await fsm.ping()
    except (StorageUnavailableError, PyMongoError) as error:  # unreachable, or refused (authentication)
        await fsm.close()
        reason = type(error.__cause__ or error).__name__
        msg = f"cannot reach MongoDB ({reason}): check MONGO_URL and that the server runs"
        raise StorageUnavailableError(msg) from error
    responses = MongoResponseStore(fsm.database, timeout=timeout)
    storages = Storages(fsm=fsm, responses=responses)
    if set_expiry_index:  # the bot, not an owner's command
        try:
            await fsm.ensure_expiry_index(expire_after)
            await fsm.ensure_indexes()
            await responses.ensure_indexes()
        except BaseException:
            await fsm.close()
            raise
        await _fill_user_ids(storages)
    return storages
