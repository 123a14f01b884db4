"""MongoStorage: aiogram FSM state and data in MongoDB, through PyMongo's async client or motor.

One document per storage key: `{_id: key, state, data, updated_at}`, present
only while the key has a state or data; an empty `state` or `data` is left
out of the document rather than stored as null or {}. Every call is one round trip, plus a
conditional delete when a write leaves the key empty. `update_data` is one
atomic `findAndModify` with `$set` on `data.<key>`.

Calls that arrive while others are at the server share commands (see
storage/batching.py): reads one `find` with `$in`, state writes one unordered
`update`, and `update_data` calls one `update` and then one `find` that reads
their data back (so a write another process makes in between shows in what
they return, as it would in a `get_data` just after).

Data keys are user data, not field paths: `.`, `$`, `%` and NUL in keys (at
any depth) are stored percent-escaped, so `{"a.b": 1}` reads back as
`{"a.b": 1}`, never as `{"a": {"b": 1}}`.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder, KeyBuilder, StateType, StorageKey
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    WTimeoutError,
)

from config import MongoDriver
from storage.batching import Batcher
from storage.errors import DEFAULT_TIMEOUT_SECONDS, CorruptDataError, database_call
from storage.mongo.keys import escape_key, escape_value, unescape_value

SERVER_SELECTION_TIMEOUT_MS = 5_000
# What a server that is down, restarting or unreachable raises through PyMongo (and motor).
MONGO_OUTAGES: tuple[type[BaseException], ...] = (ConnectionFailure, ExecutionTimeout, WTimeoutError)

_ONLY_FIELDS = {"_id": 0, "updated_at": 0}
_PATH_NOT_VIABLE = 28  # MongoDB's code for "$set: {data.k}" where data is not a document
_MAX_HINTS = 10_000
Field = Literal["state", "data"]


def create_client(url: str, driver: MongoDriver = "pymongo", **client_kwargs: Any) -> Any:
    """An async client for `url`: PyMongo's own (the default) or motor's."""
    client_kwargs.setdefault("serverSelectionTimeoutMS", SERVER_SELECTION_TIMEOUT_MS)
    client_kwargs.setdefault("tz_aware", True)
    if driver == "motor":
        # Imported only when chosen: motor is deprecated and optional.
        from motor.motor_asyncio import AsyncIOMotorClient

        return AsyncIOMotorClient(url, **client_kwargs)
    from pymongo import AsyncMongoClient

    return AsyncMongoClient(url, **client_kwargs)


async def close_client(client: Any) -> None:
    # PyMongo's async close() is a coroutine; motor's is a plain method.
    result = client.close()
    if inspect.isawaitable(result):
        await result


class MongoStorage(BaseStorage):
    """aiogram FSM storage on MongoDB.

    `client` is a PyMongo `AsyncMongoClient` or a motor `AsyncIOMotorClient`;
    `MongoStorage.from_url(url)` creates (and on close() closes) one itself.
    """

    def __init__(
        self,
        client: Any,
        key_builder: KeyBuilder | None = None,
        db_name: str = "aiogram_fsm",
        collection_name: str = "states_and_data",
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.client = client
        # Each call gives up after this many seconds, so a stuck server never freezes a user.
        self.timeout = timeout
        self.database = client[db_name]
        self.collection = self.database[collection_name]
        self.key_builder = key_builder or DefaultKeyBuilder()
        self._owns_client = False
        # Keys whose `state` or `data` this process emptied while the other one stayed: a hint that
        # emptying the other one can be a single conditional delete. Any write to the key drops it.
        self._emptied: OrderedDict[str, Field] = OrderedDict()
        bound = self._time_bound
        self._read_states = Batcher[str, Any](lambda ids: self._find(ids, "state"), bound)
        self._read_data = Batcher[str, Any](lambda ids: self._find(ids, "data"), bound)
        self._write_states = Batcher[tuple[str, dict[str, Any]], None](lambda w: self._upsert_many(w, False), bound)
        self._write_data = Batcher[tuple[str, dict[str, Any]], Any](lambda w: self._upsert_many(w, True), bound)

    @classmethod
    def from_url(
        cls,
        url: str,
        driver: MongoDriver = "pymongo",
        *,
        key_builder: KeyBuilder | None = None,
        db_name: str = "aiogram_fsm",
        collection_name: str = "states_and_data",
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        **client_kwargs: Any,
    ) -> MongoStorage:
        storage = cls(
            create_client(url, driver, **client_kwargs),
            key_builder=key_builder,
            db_name=db_name,
            collection_name=collection_name,
            timeout=timeout,
        )
        storage._owns_client = True
        return storage

    async def ping(self) -> None:
        """Raise a PyMongoError unless the server answers (within serverSelectionTimeoutMS)."""
        await self.database.command("ping")

    async def close(self) -> None:
        if self._owns_client:
            await close_client(self.client)

    # --- BaseStorage -------------------------------------------------------

    @database_call(MONGO_OUTAGES)
    async def get_state(self, key: StorageKey) -> str | None:
        document = await self._read_states(self._id(key))
        state = None if document is None else document.get("state")
        if state is not None and not isinstance(state, str):
            msg = f"stored FSM state is a {type(state).__name__}, not a string"
            raise CorruptDataError(msg)
        return state

    @database_call(MONGO_OUTAGES)
    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        value = state.state if isinstance(state, State) else state
        if value is None:
            await self._clear_field(key, "state")
        else:
            key_id = self._id(key)
            self._emptied.pop(key_id, None)
            await self._write_states((key_id, {"state": value}))

    @database_call(MONGO_OUTAGES)
    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        return _data_of(await self._read_data(self._id(key)))

    @database_call(MONGO_OUTAGES)
    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        if not isinstance(data, dict):
            msg = f"Data must be a dict or dict-like object, got {type(data).__name__}"
            raise DataNotDictLikeError(msg)
        if data:
            key_id = self._id(key)
            self._emptied.pop(key_id, None)
            await self._upsert(key_id, {"data": escape_value(data)})
        else:
            await self._clear_field(key, "data")

    @database_call(MONGO_OUTAGES)
    async def update_data(self, key: StorageKey, data: Mapping[str, Any]) -> dict[str, Any]:
        if not data:
            return await self.get_data(key)
        changes = {f"data.{escape_key(str(name))}": escape_value(value) for name, value in data.items()}
        key_id = self._id(key)
        self._emptied.pop(key_id, None)
        try:
            document = await self._write_data((key_id, changes))
        except OperationFailure as error:
            if error.code == _PATH_NOT_VIABLE:
                msg = "stored FSM data is not a document, so it cannot be updated"
                raise CorruptDataError(msg) from None
            raise
        return _data_of(document)

    # --- commands ----------------------------------------------------------

    def _id(self, key: StorageKey) -> str:
        return self.key_builder.build(key)

    def _time_bound(self) -> float | None:
        return self.timeout

    async def _find(self, ids: list[str], field: Field) -> list[Any]:
        """The documents of `ids` (None where there is none), with `_id` and `field` only."""
        if len(ids) == 1:
            return [await self.collection.find_one({"_id": ids[0]}, {field: 1})]
        unique = list(dict.fromkeys(ids))
        cursor = self.collection.find({"_id": {"$in": unique}}, {field: 1}, batch_size=len(unique))
        found = {document["_id"]: document async for document in cursor}
        return [found.get(key_id) for key_id in ids]

    async def _upsert_many(self, writes: list[tuple[str, dict[str, Any]]], returning: bool) -> list[Any]:
        """`_upsert` for each (key, changes), as one command when there are several.

        Changes to one key are merged in order, so the last write of a field
        wins, as if the calls had run in turn. With `returning`, each key's
        document is read back after the write (`update_data` wants the data).
        A result is None, the document, or the exception that key alone failed with.
        """
        if len(writes) == 1:
            key_id, changes = writes[0]
            return [await self._upsert(key_id, changes, returning)]
        merged: dict[str, dict[str, Any]] = {}
        for key_id, changes in writes:
            merged.setdefault(key_id, {}).update(changes)
        now = datetime.now(UTC)
        ids = list(merged)
        operations = [
            UpdateOne({"_id": key_id}, {"$set": {**merged[key_id], "updated_at": now}}, upsert=True) for key_id in ids
        ]
        results: dict[str, Any] = {}
        try:
            await self.collection.bulk_write(operations, ordered=False)
        except BulkWriteError as error:
            if error.details.get("writeConcernErrors"):
                raise
            # Two upserts racing to insert one key, or data that is not a document: each retried alone.
            for write_error in error.details["writeErrors"]:
                key_id = ids[write_error["index"]]
                try:
                    results[key_id] = await self._upsert(key_id, merged[key_id], returning)
                except Exception as retry_error:
                    results[key_id] = retry_error
        unread = [key_id for key_id in ids if key_id not in results]
        if returning and unread:
            results.update(zip(unread, await self._find(unread, "data"), strict=True))
        return [results.get(key_id) for key_id, _ in writes]

    async def _upsert(
        self,
        key_id: str,
        changes: dict[str, Any],
        returning: bool = False,
    ) -> Any:
        update = {"$set": {**changes, "updated_at": datetime.now(UTC)}}
        for attempt in range(2):
            try:
                if not returning:
                    await self.collection.update_one({"_id": key_id}, update, upsert=True)
                    return None
                return await self.collection.find_one_and_update(
                    {"_id": key_id},
                    update,
                    # An exclusion is cheaper for the server than an inclusion.
                    projection=_ONLY_FIELDS,
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                # Two upserts raced to insert the key; the second one now updates.
                if attempt:
                    raise
        return None  # pragma: no cover

    async def _clear_field(self, key: StorageKey, field: Field) -> None:
        """Empty `state` or `data`; the document goes when the other one is empty too."""
        key_id = self._id(key)
        other: Field = "data" if field == "state" else "state"
        # `None` matches a missing field; `{"data": {}}` is misread as an operator by nx-27017.
        if self._emptied.pop(key_id, None) == other:
            deleted = await self.collection.delete_one({"_id": key_id, other: None})
            if deleted.deleted_count:
                return
        document = await self.collection.find_one_and_update(
            {"_id": key_id},
            {"$unset": {field: ""}, "$set": {"updated_at": datetime.now(UTC)}},
            projection=_ONLY_FIELDS,
            return_document=ReturnDocument.AFTER,
        )
        if document is None:
            return
        if document.get(other):
            self._emptied[key_id] = field
            if len(self._emptied) > _MAX_HINTS:
                self._emptied.popitem(last=False)
            return
        # The filter re-checks both fields, so a write that lands in between keeps the document.
        await self.collection.delete_one({"_id": key_id, "state": None, "data": None})


def _data_of(document: Mapping[str, Any] | None) -> dict[str, Any]:
    if document is None:
        return {}
    data = document.get("data") or {}
    if not isinstance(data, Mapping):
        msg = f"stored FSM data is a {type(data).__name__}, not a document"
        raise CorruptDataError(msg)
    return dict(unescape_value(data))
