"""FSM storages and completed-responses stores. Imports nothing from handlers/ or bot/.

`storage.sql` and `storage.mongo` hold one backend each; the Mongo classes
load the Mongo driver, so they are imported on first use: a bot on SQL never
pays for it.
"""

from typing import TYPE_CHECKING, Any

from storage.errors import CorruptDataError, SchemaError, StorageError, StorageUnavailableError
from storage.factory import Storages, create_leadership, create_storages
from storage.interface import CompletedResponse, DueOutbox, ErasesUsers, FsmRecord, FsmStorage, ResponseStore, Versioned
from storage.leadership import Leadership
from storage.sql.fsm import SQLAlchemyStorage
from storage.sql.responses import SQLResponseStore

if TYPE_CHECKING:
    from storage.mongo.fsm import MongoStorage
    from storage.mongo.responses import MongoResponseStore

__all__ = [
    "CompletedResponse",
    "CorruptDataError",
    "DueOutbox",
    "ErasesUsers",
    "FsmRecord",
    "FsmStorage",
    "Leadership",
    "MongoResponseStore",
    "MongoStorage",
    "ResponseStore",
    "SQLAlchemyStorage",
    "SQLResponseStore",
    "SchemaError",
    "StorageError",
    "StorageUnavailableError",
    "Storages",
    "Versioned",
    "create_leadership",
    "create_storages",
]


def __getattr__(name: str) -> Any:
    if name == "MongoStorage":
        from storage.mongo.fsm import MongoStorage

        return MongoStorage
    if name == "MongoResponseStore":
        from storage.mongo.responses import MongoResponseStore

        return MongoResponseStore
    raise AttributeError(name)
