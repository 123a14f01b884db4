"""Build the storages the settings ask for; the bot never knows which database runs."""

from __future__ import annotations

from dataclasses import dataclass

from aiogram.fsm.storage.base import BaseStorage

from config import Settings, StorageKind
from storage.fsm_sql import SQLAlchemyStorage
from storage.responses import ResponseStore, SQLResponseStore


@dataclass
class Storages:
    """The FSM storage and the completed-responses store, on one database."""

    fsm: BaseStorage
    responses: ResponseStore

    async def close(self) -> None:
        await self.fsm.close()


async def create_storages(settings: Settings) -> Storages:
    """Connect to the configured database and create the tables the bot needs."""
    if settings.storage is StorageKind.SQLALCHEMY:
        return await create_sql_storages(settings.database_url)
    msg = f"STORAGE={settings.storage.value} is not available in this build"
    raise NotImplementedError(msg)


async def create_sql_storages(database_url: str) -> Storages:
    fsm = await SQLAlchemyStorage.from_url(database_url)
    responses = SQLResponseStore(fsm.sessionmaker, fsm.metadata)
    try:
        await responses.create_table()
    except BaseException:
        await fsm.close()
        raise
    return Storages(fsm=fsm, responses=responses)
