"""FSM storages and completed-responses stores. Imports nothing from handlers/ or bot/."""

from storage.factory import Storages, create_storages
from storage.fsm_sql import SQLAlchemyStorage
from storage.responses import CompletedResponse, ResponseStore, SQLResponseStore

__all__ = [
    "CompletedResponse",
    "ResponseStore",
    "SQLAlchemyStorage",
    "SQLResponseStore",
    "Storages",
    "create_storages",
]
