"""MongoStorage: aiogram FSM state and data in MongoDB, through PyMongo's async client or motor.

One document per storage key: `{_id: key, state, data, version, updated_at}`, present
only while the key has a state or data; an empty `state` or `data` is left
out of the document rather than stored as null or {}. Every call is one
command, plus a conditional delete when a write leaves the key empty.
`update_data` is one atomic `findAndModify` with `$set` on `data.<key>`.
Every write sets a new random `version`; `swap_state_and_data` writes only
while it is still the one read (a document older than versions reads as 0).

Data keys are user data, not field paths: `.`, `$`, `%` and NUL in keys (at
any depth) are stored percent-escaped, so `{"a.b": 1}` reads back as
`{"a.b": 1}`, never as `{"a": {"b": 1}}`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Self

from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import DefaultKeyBuilder, KeyBuilder, StateType, StorageKey
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError, OperationFailure

from storage.errors import DEFAULT_TIMEOUT_SECONDS, CorruptDataError, database_call
from storage.interface import DueOutbox, FsmStorage, Versioned, user_key_pattern, user_reader
from storage.mongo.client import MONGO_OUTAGES, Driver, create_client
from storage.mongo.keys import escape_key, escape_value
from storage.mongo.records import MongoRecords, data_of, fields_of, replacing, state_of
from storage.records import ALL_DONE, new_version

_ONLY_FIELDS = {"_id": 0, "updated_at": 0}
_PATH_NOT_VIABLE = 28  # MongoDB's code for "$set: {data.k}" where data is not a document
Field = Literal["state", "data"]


class MongoStorage(MongoRecords, FsmStorage):
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
        super().__init__(client, db_name, collection_name, timeout)
        self.key_builder = key_builder or DefaultKeyBuilder()
        self._user_of = user_reader(self.key_builder)

    @classmethod
    def from_url(
        cls,
        url: str,
        driver: Driver = "pymongo",
        *,
        key_builder: KeyBuilder | None = None,
        db_name: str = "aiogram_fsm",
        collection_name: str = "states_and_data",
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        **client_kwargs: Any,
    ) -> Self:
        storage = cls(create_client(url, driver, **client_kwargs), key_builder, db_name, collection_name, timeout)
        storage._owns_client = True
        return storage

    # --- BaseStorage -------------------------------------------------------

    @database_call(MONGO_OUTAGES)
    async def get_state(self, key: StorageKey) -> str | None:
        return state_of(await self.collection.find_one({"_id": self._id(key)}, {"state": 1}))

    @database_call(MONGO_OUTAGES)
    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        value = state.state if isinstance(state, State) else state
        if value is None:
            await self._clear_field(self._id(key), key.user_id, "state")
        else:
            await self._upsert(self._id(key), key.user_id, {"state": value})

    @database_call(MONGO_OUTAGES)
    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        return data_of(await self.collection.find_one({"_id": self._id(key)}, {"data": 1}))

    @database_call(MONGO_OUTAGES)
    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        if not isinstance(data, dict):
            msg = f"Data must be a dict or dict-like object, got {type(data).__name__}"
            raise DataNotDictLikeError(msg)
        if data:
            await self._upsert(self._id(key), key.user_id, {"data": escape_value(data)})
        else:
            await self._clear_field(self._id(key), key.user_id, "data")

    @database_call(MONGO_OUTAGES)
    async def update_data(self, key: StorageKey, data: Mapping[str, Any]) -> dict[str, Any]:
        if not data:
            return await self.get_data(key)
        changes = {f"data.{escape_key(str(name))}": escape_value(value) for name, value in data.items()}
        try:
            document = await self._upsert(self._id(key), key.user_id, changes, returning=True)
        except OperationFailure as error:
            if error.code == _PATH_NOT_VIABLE:
                msg = "stored FSM data is not a document, so it cannot be updated"
                raise CorruptDataError(msg) from None
            raise
        return data_of(document)

    @database_call(MONGO_OUTAGES)
    async def get_state_and_data(self, key: StorageKey) -> tuple[str | None, dict[str, Any]]:
        document = await self.collection.find_one({"_id": self._id(key)}, _ONLY_FIELDS)
        return state_of(document), data_of(document)

    @database_call(MONGO_OUTAGES)
    async def set_state_and_data(self, key: StorageKey, state: StateType, data: Mapping[str, Any]) -> None:
        value = state.state if isinstance(state, State) else state
        await self._replace(self._id(key), key.user_id, value, data, datetime.now(UTC))

    @database_call(MONGO_OUTAGES)
    async def get_versioned(self, key: StorageKey) -> Versioned:
        document = await self.collection.find_one({"_id": self._id(key)}, _ONLY_FIELDS)
        if document is None:
            return Versioned(None, {}, None)
        version = int(document.get("version") or 0)
        sent = int(document.get("outbox_sent") or 0) if document.get("outbox_queued") else ALL_DONE
        try:
            return Versioned(state_of(document), data_of(document), version, sent)
        except CorruptDataError as error:
            return Versioned(state_of(document), error, version, sent)

    @database_call(MONGO_OUTAGES)
    async def swap_state_and_data(
        self, key: StorageKey, expected: int | None, state: StateType, data: Mapping[str, Any]
    ) -> bool:
        value = state.state if isinstance(state, State) else state
        key_id = self._id(key)
        # `None` matches a document written before versions existed (no field).
        fence = {"_id": key_id, "version": expected or None}
        if value is None and not data:
            if expected is None:
                return await self.collection.find_one({"_id": key_id}, {"_id": 1}) is None
            return bool((await self.collection.delete_one(fence)).deleted_count)
        if expected is None:
            try:
                document = {"_id": key_id, **fields_of(key.user_id, value, data, datetime.now(UTC))}
                await self.collection.insert_one(document)
            except DuplicateKeyError:  # another writer made the document since it was read as absent
                return False
            return True
        result = await self.collection.update_one(fence, replacing(key.user_id, value, data, datetime.now(UTC)))
        return bool(result.matched_count)

    @database_call(MONGO_OUTAGES)
    async def swap_with_outbox(
        self,
        key: StorageKey,
        expected: int | None,
        state: StateType,
        data: Mapping[str, Any],
        queued: int,
        sent: int = 0,
    ) -> bool:
        """As on SQL; `sent` is the last entry done as read (due is set from it, not from the document:
        marking only ever raises it, so at worst a key is found due with nothing left, and cleared)."""
        value = state.state if isinstance(state, State) else state
        key_id = self._id(key)
        fields = fields_of(key.user_id, value, data, datetime.now(UTC)) | {"outbox_queued": queued}
        # A number, not a date: nx-27017 keeps a date given to $set as text (docs/nx-27017.md).
        due = {"outbox_due": time.time()} if queued > sent else {}
        if expected is None:
            try:
                await self.collection.insert_one({"_id": key_id, **fields, **due, "outbox_sent": 0})
            except DuplicateKeyError:  # another writer made the document since it was read as absent
                return False
            return True
        update: dict[str, Any] = {"$set": fields | due}
        absent = {name: "" for name in ("state", "data") if name not in fields}
        if not due:
            absent["outbox_due"] = ""
        if absent:
            update["$unset"] = absent
        # `None` matches a document written before versions existed (no field; read as version 0).
        result = await self.collection.update_one({"_id": key_id, "version": expected or None}, update)
        return bool(result.matched_count)

    @database_call(MONGO_OUTAGES)
    async def mark_sent(self, marks: Sequence[tuple[StorageKey, int]]) -> None:
        if not marks:
            return
        writes: list[Any] = []
        now = time.time()
        for key, done in marks:
            key_id = self._id(key)
            # `$max`: marks only ever raise it (a document an older version wrote has none: set). Of the
            # two, the one whose filter matches runs: nothing left, not due; entries still wait, their
            # due time renewed (the process carrying them out is alive).
            raised = {"$max": {"outbox_sent": done}}
            writes.append(
                UpdateOne({"_id": key_id, "outbox_queued": {"$lte": done}}, raised | {"$unset": {"outbox_due": ""}})
            )
            writes.append(
                UpdateOne({"_id": key_id, "outbox_queued": {"$gt": done}}, raised | {"$set": {"outbox_due": now}})
            )
        await self.collection.bulk_write(writes, ordered=True)

    @database_call(MONGO_OUTAGES)
    async def postpone_outbox(self, key: StorageKey, until: datetime) -> None:
        await self.collection.update_one(
            # Only a key that is due (a number, since the epoch): `$gt`, not `$ne: None`, which nx-27017
            # lets match a missing field (docs/nx-27017.md).
            {"_id": self._id(key), "outbox_due": {"$gt": 0}},
            {"$set": {"outbox_due": until.timestamp()}},
        )

    @database_call(MONGO_OUTAGES)
    async def due_outboxes(self, before: datetime, limit: int) -> list[DueOutbox]:
        cursor = (
            self.collection.find({"outbox_due": {"$lte": before.timestamp()}}, {"data": 1, "outbox_sent": 1})
            .sort("outbox_due", 1)
            .limit(limit)
        )
        found = []
        async for document in cursor:
            try:
                found.append(DueOutbox(data_of(document), int(document.get("outbox_sent") or 0)))
            except CorruptDataError:
                continue  # nothing can be delivered from data that cannot be read
        return found

    @database_call(MONGO_OUTAGES)
    async def delete_user(self, user_id: int, keep: StorageKey | None = None) -> int:
        """Delete the user's sessions in every chat (for /forget), found by the index on `user_id`."""
        mine: dict[str, Any] = {"user_id": user_id}
        if keep is not None:
            mine["_id"] = {"$ne": self._id(keep)}
        deleted = (await self.collection.delete_many(mine)).deleted_count
        if self._user_of is not None:
            # Documents an older version wrote without a user (a replica not yet upgraded): the
            # few without one, by the same index, then by their key.
            start, end = user_key_pattern(self.key_builder, user_id)
            pattern = f"^{re.escape(start)}.*{re.escape(end)}$"
            unfilled = {"user_id": None, "_id": {"$regex": pattern, "$options": "s"}}
            deleted += (await self.collection.delete_many(unfilled)).deleted_count
        return int(deleted)

    @database_call(MONGO_OUTAGES)
    async def ensure_indexes(self) -> None:
        """The index /forget finds a user's documents by (created once; creating it again changes nothing)."""
        await self.collection.create_index("user_id")
        await self.collection.create_index("outbox_due")  # the outbox's sweep (bot/outbox.py)

    @database_call(MONGO_OUTAGES)
    async def fill_user_ids(self, after: str | None, limit: int) -> str | None:
        user_of = self._user_of
        if user_of is None:
            return None
        unfilled: dict[str, Any] = {"user_id": None}
        if after is not None:
            unfilled["_id"] = {"$gt": after}
        found = self.collection.find(unfilled, {"_id": 1}).sort("_id", 1).limit(limit)
        keys = [document["_id"] async for document in found]
        writes = [
            UpdateOne({"_id": key, "user_id": None}, {"$set": {"user_id": user}})
            for key in keys
            if (user := user_of(key)) is not None
        ]
        if writes:
            await self.collection.bulk_write(writes)
        return keys[-1] if keys else None

    # --- commands ----------------------------------------------------------

    def _id(self, key: StorageKey) -> str:
        return self.key_builder.build(key)

    async def _replace(
        self, key_id: str, user: int | None, state: str | None, data: Mapping[str, Any], updated_at: datetime
    ) -> None:
        """Replace state and data in one command; the document goes when both are empty."""
        if state is None and not data:
            await self.collection.delete_one({"_id": key_id})
            return
        await self.collection.update_one({"_id": key_id}, replacing(user, state, data, updated_at), upsert=True)

    async def _upsert(self, key_id: str, user: int, changes: dict[str, Any], returning: bool = False) -> Any:
        """`$set` the changes on the key's document, creating it if needed; with `returning`, the document after."""
        stamp = {"version": new_version(), "updated_at": datetime.now(UTC), "user_id": user}
        update = {"$set": {**changes, **stamp}}
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

    async def _clear_field(self, key_id: str, user: int, field: Field) -> None:
        """Empty `state` or `data`; the document goes when the other one is empty too.

        The field is removed first and the document read back in the same
        command, so of two concurrent clears the second sees both fields empty.
        """
        other: Field = "data" if field == "state" else "state"
        document = await self.collection.find_one_and_update(
            {"_id": key_id},
            {
                "$unset": {field: ""},
                "$set": {"version": new_version(), "updated_at": datetime.now(UTC), "user_id": user},
            },
            projection=_ONLY_FIELDS,
            return_document=ReturnDocument.AFTER,
        )
        if document is None or document.get(other):
            return
        # The filter re-checks both fields, so a write that lands in between keeps the document.
        # (`None` matches a missing field; `{"data": {}}` is misread as an operator by nx-27017.)
        await self.collection.delete_one({"_id": key_id, "state": None, "data": None})
