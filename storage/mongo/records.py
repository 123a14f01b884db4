"""MongoRecords: the FSM collection as whole records by key, for the owner's commands and expiry. No aiogram.

`MongoStorage` (storage/mongo/fsm.py) is this class with aiogram's storage
API on top. One document per storage key: `{_id: key, state, data, version,
updated_at, user_id}`, present only while the key has a state or data; an
empty `state` or `data` is left out of the document rather than stored as
null or {}. Data keys are stored percent-escaped (storage/mongo/keys.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from pymongo import DeleteOne, UpdateOne
from pymongo.errors import OperationFailure

from storage.errors import DEFAULT_TIMEOUT_SECONDS, CorruptDataError, database_call
from storage.mongo.client import MONGO_OUTAGES, Driver, close_client, create_client
from storage.mongo.keys import escape_value, unescape_value
from storage.records import FsmRecord, FsmRecords, as_utc, default_key_user, new_version

_INDEX_NOT_FOUND = 27


class MongoRecords(FsmRecords):
    """The FSM collection, read and written as whole records.

    `client` is a PyMongo `AsyncMongoClient` or a motor `AsyncIOMotorClient`;
    `from_url(url)` creates (and on close() closes) one itself.
    """

    def __init__(
        self,
        client: Any,
        db_name: str = "aiogram_fsm",
        collection_name: str = "states_and_data",
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.client = client
        # Each call gives up after this many seconds, so a stuck server never freezes a user.
        self.timeout = timeout
        self.database = client[db_name]
        self.collection = self.database[collection_name]
        # Reads the user from a key an older version wrote without one: the default layout's here,
        # the key builder's own on the aiogram side.
        self._user_of: Callable[[str], int | None] | None = default_key_user
        self._owns_client = False

    @classmethod
    def from_url(
        cls,
        url: str,
        driver: Driver = "pymongo",
        *,
        db_name: str = "aiogram_fsm",
        collection_name: str = "states_and_data",
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        **client_kwargs: Any,
    ) -> Self:
        storage = cls(create_client(url, driver, **client_kwargs), db_name, collection_name, timeout)
        storage._owns_client = True
        return storage

    @database_call(MONGO_OUTAGES)
    async def ping(self) -> None:
        """Raise StorageUnavailableError unless the server answers (within serverSelectionTimeoutMS)."""
        await self.database.command("ping")

    async def close(self) -> None:
        if self._owns_client:
            await close_client(self.client)

    # --- whole records: the owner's commands (export, stats, migrate) and expiry ---

    @database_call(MONGO_OUTAGES)
    async def records(self, after: str | None = None, limit: int | None = None) -> list[FsmRecord]:
        found = self.collection.find({} if after is None else {"_id": {"$gt": after}}).sort("_id", 1)
        if limit is not None:
            found = found.limit(limit)
        return [self._record(document) async for document in found]

    @database_call(MONGO_OUTAGES)
    async def records_for(self, keys: Sequence[str]) -> dict[str, FsmRecord]:
        if not keys:
            return {}
        found = self.collection.find({"_id": {"$in": list(keys)}})
        return {document["_id"]: self._record(document) async for document in found}

    def _record(self, document: Mapping[str, Any]) -> FsmRecord:
        user = document.get("user_id")
        if user is None and self._user_of is not None:
            user = self._user_of(document["_id"])
        return FsmRecord(document["_id"], state_of(document), data_of(document), time_of(document), user)

    @database_call(MONGO_OUTAGES)
    async def put_records(self, records: Sequence[FsmRecord]) -> None:
        writes: list[UpdateOne | DeleteOne] = []
        for record in records:
            user = record.user_id
            if user is None and self._user_of is not None:
                user = self._user_of(record.key)
            if record.state is None and not record.data:
                writes.append(DeleteOne({"_id": record.key}))
            else:
                change = replacing(user, record.state, record.data, record.updated_at)
                writes.append(UpdateOne({"_id": record.key}, change, upsert=True))
        if writes:
            await self.collection.bulk_write(writes)  # one command for the batch

    @database_call(MONGO_OUTAGES)
    async def count_states(self, states: Collection[str], active_since: datetime) -> tuple[int, int]:
        in_states = {"state": {"$in": list(states)}}
        total = await self.collection.count_documents(in_states)
        active = await self.collection.count_documents({**in_states, "updated_at": {"$gte": active_since}})
        return active, total - active

    @database_call(MONGO_OUTAGES)
    async def expire(self, ttl: timedelta, limit: int) -> int:
        # By this machine's clock, which wrote every `updated_at` (the TTL index's monitor
        # uses the server's; see ensure_expiry_index).
        cutoff = datetime.now(UTC) - ttl
        old = self.collection.find({"updated_at": {"$lt": cutoff}}, {"_id": 1}).sort("updated_at", 1).limit(limit)
        keys = [document["_id"] async for document in old]
        if not keys:
            return 0
        result = await self.collection.delete_many({"_id": {"$in": keys}, "updated_at": {"$lt": cutoff}})
        return int(result.deleted_count)

    @database_call(MONGO_OUTAGES)
    async def ensure_expiry_index(self, ttl: timedelta | None) -> None:
        """A TTL index on `updated_at`: the server itself removes keys untouched for `ttl` (None: never).

        Replicas starting together may all run this: the TTL is changed in place
        (collMod), never by dropping and creating the index again.
        """
        wanted = None if ttl is None else int(ttl.total_seconds())
        existing = await self._expiry_index()
        if existing is not None and existing[1] == wanted:
            return
        if existing is None:
            if wanted is not None:
                await self.collection.create_index("updated_at", expireAfterSeconds=wanted)
            return
        name = existing[0]
        if wanted is None:
            try:
                await self.collection.drop_index(name)
            except OperationFailure as error:
                if error.code != _INDEX_NOT_FOUND:  # another replica dropped it first
                    raise
            return
        index = {"name": name, "expireAfterSeconds": wanted}
        await self.database.command("collMod", self.collection.name, index=index)
        if await self._expiry_index() != (name, wanted):
            # nx-27017 answers collMod with ok and changes nothing (docs/nx-27017.md:
            # differs); its create_index replaces the index instead.
            await self.collection.create_index("updated_at", expireAfterSeconds=wanted)

    async def _expiry_index(self) -> tuple[str, int | None] | None:
        """The name and TTL of the index on `updated_at`, found by its key (nx-27017 names it its own way)."""
        for name, index in (await self.collection.index_information()).items():
            if [tuple(part) for part in index["key"]] == [("updated_at", 1)]:
                return name, index.get("expireAfterSeconds")
        return None


def fields_of(user: int | None, state: str | None, data: Mapping[str, Any], updated_at: datetime) -> dict[str, Any]:
    """A document's fields for `state` and `data` (the empty ones left out), with a new version."""
    present = {"state": state, "data": escape_value(dict(data)) if data else None, "user_id": user}
    kept = {name: value for name, value in present.items() if value is not None}
    return {**kept, "version": new_version(), "updated_at": updated_at}


def replacing(user: int | None, state: str | None, data: Mapping[str, Any], updated_at: datetime) -> dict[str, Any]:
    """The update that gives a document exactly `state` and `data`."""
    update: dict[str, Any] = {"$set": fields_of(user, state, data, updated_at)}
    if absent := {name: "" for name in ("state", "data") if name not in update["$set"]}:
        update["$unset"] = absent
    return update


def time_of(document: Mapping[str, Any]) -> datetime:
    moment = document["updated_at"]
    if isinstance(moment, str):
        # nx-27017, the tests' server, keeps a date given to `$set` on an existing document
        # as text ("2026-11-30 05:02:04.992000"); MongoDB keeps a date. docs/nx-27017.md.
        moment = datetime.fromisoformat(moment)
    return as_utc(moment)


def state_of(document: Mapping[str, Any] | None) -> str | None:
    state = None if document is None else document.get("state")
    if state is not None and not isinstance(state, str):
        msg = f"stored FSM state is a {type(state).__name__}, not a string"
        raise CorruptDataError(msg)
    return state


def data_of(document: Mapping[str, Any] | None) -> dict[str, Any]:
    if document is None:
        return {}
    data = document.get("data") or {}
    if not isinstance(data, Mapping):
        msg = f"stored FSM data is a {type(data).__name__}, not a document"
        raise CorruptDataError(msg)
    return dict(unescape_value(data))
