"""FSM storages and completed-responses stores. Imports nothing from handlers/ or bot/."""

from storage.errors import CorruptDataError, StorageError, StorageUnavailableError
from storage.factory import Storages, create_storages
from storage.fsm_mongo import MongoStorage
from storage.fsm_sql import SQLAlchemyStorage
from storage.responses import CompletedResponse, MongoResponseStore, ResponseStore, SQLResponseStore

__all__ = [
    "CompletedResponse",
    "CorruptDataError",
    "MongoResponseStore",
    "MongoStorage",
    "ResponseStore",
    "SQLAlchemyStorage",
    "SQLResponseStore",
    "StorageError",
    "StorageUnavailableError",
    "Storages",
    "create_storages",
]
