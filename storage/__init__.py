"""FSM storages and completed-responses stores. Imports nothing from handlers/ or bot/.

The Mongo classes load the Mongo driver, so they are imported on first use:
a bot on SQL never pays for it.
"""

from typing import TYPE_CHECKING, Any

from storage.errors import CorruptDataError, StorageError, StorageUnavailableError
from storage.factory import Storages, create_storages
from storage.fsm_sql import SQLAlchemyStorage
from storage.responses import CompletedResponse, ResponseStore, SQLResponseStore

if TYPE_CHECKING:
    from storage.fsm_mongo import MongoStorage
    from storage.responses_mongo import MongoResponseStore

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


def __getattr__(name: str) -> Any:
    if name == "MongoStorage":
        from storage.fsm_mongo import MongoStorage

        return MongoStorage
    if name == "MongoResponseStore":
        from storage.responses_mongo import MongoResponseStore

        return MongoResponseStore
    raise AttributeError(name)
