"""FSM storages and completed-responses stores. Imports nothing from handlers/ or bot/.

Two sides: the records (storage/records.py, `open_records`; what the owner's
commands use) import no aiogram; the aiogram storages (storage/interface.py's
`FsmStorage`, `SQLAlchemyStorage`, `MongoStorage`; what the bot uses) are the
same classes with aiogram's `BaseStorage` on top, imported on first use, so
`python main.py stats` never pays for aiogram. `storage.sql` and
`storage.mongo` hold one backend each; a bot on SQL never loads the Mongo
driver.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from storage.errors import CorruptDataError, SchemaError, StorageError, StorageUnavailableError
from storage.factory import Records, Storages, create_leadership, create_storages, open_records
from storage.leadership import Leadership
from storage.records import CompletedResponse, FormInfo, FsmRecord, FsmRecords, ResponseRecords, ResponseStore

if TYPE_CHECKING:
    from storage.interface import DueOutbox, ErasesUsers, FsmStorage, Versioned
    from storage.mongo.fsm import MongoStorage
    from storage.mongo.responses import MongoResponseStore
    from storage.sql.fsm import SQLAlchemyStorage
    from storage.sql.responses import SQLResponseStore

__all__ = [
    "CompletedResponse",
    "CorruptDataError",
    "DueOutbox",
    "ErasesUsers",
    "FormInfo",
    "FsmRecord",
    "FsmRecords",
    "FsmStorage",
    "Leadership",
    "MongoResponseStore",
    "MongoStorage",
    "Records",
    "ResponseRecords",
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
    "open_records",
]

# Imported on first use: each loads aiogram (or the Mongo driver).
_LAZY = {
    "DueOutbox": "storage.interface",
    "ErasesUsers": "storage.interface",
    "FsmStorage": "storage.interface",
    "Versioned": "storage.interface",
    "MongoStorage": "storage.mongo.fsm",
    "MongoResponseStore": "storage.mongo.responses",
    "SQLAlchemyStorage": "storage.sql.fsm",
    "SQLResponseStore": "storage.sql.responses",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(name)
