"""What only the Mongo storage has: its document shape, its key escaping, its clients."""

from __future__ import annotations

import pytest
from aiogram.fsm.storage.base import BaseStorage
from pymongo import monitoring

from storage import MongoStorage, StorageUnavailableError
from storage.factory import create_mongo_storages
from storage.mongo.keys import escape_key, unescape_key
from tests.support.backends import MONGO_BACKENDS, Backend, storage_key
from tests.support.mongo_server import free_port

on_each_driver = pytest.mark.parametrize("backend", MONGO_BACKENDS, indirect=True)


@on_each_driver
async def test_one_document_per_key_with_escaped_data_keys(storage: BaseStorage) -> None:
    assert isinstance(storage, MongoStorage)
    await storage.set_state(storage_key(), "Form:name")
    await storage.update_data(storage_key(), {"a.b": 1, "$x": {"c.d": 2}, "plain": 3})
    document = await storage.collection.find_one({"_id": "fsm:1:1"})
    assert document is not None
    assert document["state"] == "Form:name"
    assert document["data"] == {"a%2Eb": 1, "%24x": {"c%2Ed": 2}, "plain": 3}
    assert document["updated_at"] is not None


@on_each_driver
async def test_empty_fields_are_left_out_of_the_document(storage: BaseStorage) -> None:
    assert isinstance(storage, MongoStorage)
    await storage.set_state(storage_key(), "s")
    await storage.set_data(storage_key(), {"a": 1})
    await storage.set_state(storage_key(), None)
    document = await storage.collection.find_one({"_id": "fsm:1:1"})
    assert document is not None
    assert "state" not in document
    assert document["data"] == {"a": 1}


class CommandLog(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@on_each_driver
async def test_clearing_a_finished_questionnaire_takes_three_commands(backend: Backend) -> None:
    log = CommandLog()
    storage = MongoStorage.from_url(backend.url, backend.driver, db_name=backend.place, event_listeners=[log])
    try:
        key = storage_key()
        await storage.set_state(key, "Form:colour")
        await storage.update_data(key, {"name": "Ann", "age": 30})
        log.names.clear()
        await storage.set_state(key, None)  # FSMContext.clear()
        await storage.set_data(key, {})
        # Each field removed by one findAndModify that returns what is left; the empty document then deleted.
        assert log.names == ["findAndModify", "findAndModify", "delete"]
        assert await backend.record_ids(storage) == []
    finally:
        await storage.close()


@on_each_driver
async def test_from_url_closes_the_client_it_created(backend: Backend) -> None:
    storage = MongoStorage.from_url(backend.url, backend.driver, db_name=backend.place)
    await storage.set_state(storage_key(), "s")
    await storage.close()
    with pytest.raises(Exception):  # noqa: B017, PT011 - each driver words a closed client its own way
        await storage.get_state(storage_key())


@on_each_driver
async def test_unreachable_server_is_reported(backend: Backend) -> None:
    with pytest.raises(StorageUnavailableError, match="cannot reach MongoDB"):
        await create_mongo_storages(f"mongodb://127.0.0.1:{free_port()}", "x", backend.driver)


def test_escaping_is_reversible_and_leaves_no_dot_or_dollar() -> None:
    for key in ["", "%", "%2E", "a.b", "$set", "a\x00b", "ключ", "%%..$$"]:
        escaped = escape_key(key)
        assert "." not in escaped
        assert not escaped.startswith("$")
        assert escaped
        assert unescape_key(escaped) == key
