"""FSM storages and completed-responses stores. Imports nothing from handlers/ or bot/."""

from storage.factory import Storages, StorageUnavailableError, create_storages
from storage.fsm_mongo import MongoStorage
from storage.fsm_sql import SQLAlchemyStorage
from storage.responses import CompletedResponse, MongoResponseStore, ResponseStore, SQLResponseStore

__all__ = [
    "CompletedResponse",
    "MongoResponseStore",
    "MongoStorage",
    "ResponseStore",
    "SQLAlchemyStorage",
    "SQLResponseStore",
    "StorageUnavailableError",
    "Storages",
    "create_storages",
]
