"""Build the storages the settings ask for; the bot never knows which database runs. The one reader of config.

`create_storages`: the bot's, aiogram storages (imported here only when
asked for). `open_records`: the owner's commands', the same tables and
collections as whole records, without aiogram.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from config import DEFAULT_FSM_TTL, MongoDriver, StorageKind, StorageSettings
from storage.errors import DEFAULT_TIMEOUT_SECONDS, SchemaError, StorageUnavailableError
from storage.leadership import Leadership, leadership_beside
from storage.records import FsmRecords, ResponseRecords
from storage.sql.records import SQLRecords
from storage.sql.responses import SQLResponseStore

if TYPE_CHECKING:
    from storage.interface import FsmStorage
    from storage.mongo.records import MongoRecords
    from storage.mongo.responses import MongoResponseStore

S = TypeVar("S", bound=SQLRecords)


@dataclass
class Records:
    """The FSM records and the completed responses, on one database, as the owner's commands see them."""

    fsm: FsmRecords
    responses: ResponseRecords

    async def close(self) -> None:
        await self.fsm.close()


@dataclass
class Storages(Records):
    """The bot's FSM storage (aiogram's) and the completed-responses store, on one database.

    No lock is shared across processes: webhook replicas, or the old and the
    new process of a deploy, are kept apart by the FSM storage's fenced write
    (`FsmStorage.swap_state_and_data`), which holds whether or not anything is locked.
    """

    fsm: FsmStorage


# The owner's commands read or copy whole tables: each call may take longer than a user's.
COMMAND_TIMEOUT_SECONDS = 300.0


async def create_storages(settings: StorageSettings) -> Storages:
    """Connect to the configured database and create what the bot needs there (aiogram's storages)."""
    if settings.storage is StorageKind.MONGO:
        return await create_mongo_storages(
            settings.mongo_url, settings.mongo_db, settings.mongo_driver, expire_after=settings.fsm_ttl
        )
    storages = await create_sql_storages(settings.database_url)
    await _fill_user_ids(storages)
    return storages


async def open_records(settings: StorageSettings, *, reading: bool = True) -> Records:
    """The configured database's records for an owner's command: no aiogram is imported, calls get a
    longer time bound, and nothing the bot keeps up (a Mongo TTL index) is changed.

    `reading`: the database is left as it is, and must hold the bot's tables at this release's
    versions (SchemaError otherwise: the bot makes and upgrades them at its start); else (migrate's
    target) the tables are made as the bot makes them.
    """
    if settings.storage is StorageKind.MONGO:
        from storage.mongo.records import MongoRecords

        # A count or an aggregation over a whole collection may take longer than the bot's 10 s socket
        # bound; and a server busy with one (nx-27017 serves one command at a time, docs/nx-27017.md)
        # answers the driver's heartbeat late, which must not cancel the command either.
        command_ms = int(COMMAND_TIMEOUT_SECONDS * 1000)
        records = MongoRecords.from_url(
            settings.mongo_url,
            settings.mongo_driver,
            db_name=settings.mongo_db,
            timeout=COMMAND_TIMEOUT_SECONDS,
            socketTimeoutMS=command_ms,
            connectTimeoutMS=command_ms,
        )
        return Records(records, await _reachable_mongo_responses(records, COMMAND_TIMEOUT_SECONDS))
    engine_kwargs: dict[str, Any] = {}
    if make_url(settings.database_url).get_backend_name() == "postgresql":
        # A table migrate fills grows faster than autovacuum analyzes it: a plan PostgreSQL
        # cached for a prepared statement while the table was nearly empty (a sequential
        # scan) would stay for the whole copy, each page's lookup reading the whole table.
        # Planned again on every run, the lookups use the primary key.
        engine_kwargs["connect_args"] = {"server_settings": {"plan_cache_mode": "force_custom_plan"}}
    fsm = await _sql_opened(
        SQLRecords, settings.database_url, COMMAND_TIMEOUT_SECONDS, {**engine_kwargs, "set_up": not reading}
    )
    if not reading:
        return Records(fsm, await _sql_responses(fsm))
    responses = SQLResponseStore(fsm)
    try:
        if not (await fsm.is_set_up() and await responses.is_set_up()):
            where = make_url(settings.database_url).render_as_string(hide_password=True)
            msg = (
                f"the database at {where} does not hold this bot's tables, or holds older ones: the bot makes "
                "and upgrades them when it starts; start it once, or check DATABASE_URL"
            )
            raise SchemaError(msg)
    except BaseException:
        await fsm.close()
        raise
    return Records(fsm, responses)


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
    from storage.sql.fsm import SQLAlchemyStorage

    fsm = await _sql_opened(SQLAlchemyStorage, database_url, timeout, engine_kwargs)
    return Storages(fsm, await _sql_responses(fsm))


async def _sql_opened(
    kind: type[S],
    database_url: str,
    timeout: float | None,  # noqa: ASYNC109 - per database call
    engine_kwargs: dict[str, Any],
) -> S:
    try:
        # orjson: the same JSON, written and read several times faster than the standard library's.
        return await kind.from_url(
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


async def _sql_responses(fsm: SQLRecords) -> SQLResponseStore:
    responses = SQLResponseStore(fsm)
    try:
        await responses.create_table()
    except BaseException:
        await fsm.close()
        raise
    return responses


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
) -> Storages:
    """Mongo storages; the FSM collection's TTL index follows `expire_after` (None: no index)."""
    # Imported here: a bot on SQL never loads the Mongo driver (about 6 MB).
    from storage.mongo.fsm import MongoStorage

    fsm = MongoStorage.from_url(url, driver, db_name=db_name, timeout=timeout)
    responses = await _reachable_mongo_responses(fsm, timeout)
    storages = Storages(fsm, responses)
    try:
        await fsm.ensure_expiry_index(expire_after)
        await fsm.ensure_indexes()
        await responses.ensure_indexes()
    except BaseException:
        await fsm.close()
        raise
    await _fill_user_ids(storages)
    return storages


async def _reachable_mongo_responses(
    fsm: MongoRecords,
    timeout: float | None,  # noqa: ASYNC109 - per database call
) -> MongoResponseStore:
    """The responses store beside `fsm`, once the server answers; StorageUnavailableError if it does not."""
    from pymongo.errors import PyMongoError

    from storage.mongo.responses import MongoResponseStore

    try:
        await fsm.ping()
    except (StorageUnavailableError, PyMongoError) as error:  # unreachable, or refused (authentication)
        await fsm.close()
        reason = type(error.__cause__ or error).__name__
        msg = f"cannot reach MongoDB ({reason}): check MONGO_URL and that the server runs"
        raise StorageUnavailableError(msg) from error
    return MongoResponseStore(fsm.database, timeout=timeout)
