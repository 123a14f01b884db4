"""Completed forms (of every kind) in MongoDB, beside the FSM collection."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import BulkWriteError, DuplicateKeyError

from storage.errors import DEFAULT_TIMEOUT_SECONDS, database_call
from storage.mongo.client import MONGO_OUTAGES
from storage.mongo.keys import escape_key, escape_value, unescape_value
from storage.records import PAGE_SIZE, QUESTIONNAIRE_KIND, CompletedResponse, FormInfo, TextTally, as_utc

_DUPLICATE_KEY = 11000
COMPLETION_ORDER = [("completed_at", 1), ("_id", 1)]


class MongoResponseStore:
    """Completed forms (of every kind) in a `questionnaire_responses` collection, one document per response_id."""

    def __init__(
        self,
        database: Any,
        collection_name: str = "questionnaire_responses",
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        forms_collection_name: str = "bot_forms",
    ) -> None:
        self.collection = database[collection_name]
        self.forms_collection = database[forms_collection_name]
        self.timeout = timeout

    # --- the forms, as the bot describes them at its start ---------------------

    @database_call(MONGO_OUTAGES)
    async def describe_forms(self, forms: Sequence[FormInfo]) -> None:
        wanted = {form.kind: form.as_json() for form in forms}
        kept = {document["_id"]: document.get("description") async for document in self.forms_collection.find()}
        if kept == wanted:  # a restart of the same bot: one read
            return
        # Each kind written in place, never deleted first: a `stats` meanwhile never finds a form missing.
        for kind, description in wanted.items():
            if kept.get(kind) != description:
                # `$set`, not replace_one: nx-27017 inserts an upsert's replacement under a new id (docs/nx-27017.md).
                change = {"$set": {"description": description}}
                try:
                    await self.forms_collection.update_one({"_id": kind}, change, upsert=True)
                except DuplicateKeyError:  # another start inserted it at the same moment: now it updates
                    await self.forms_collection.update_one({"_id": kind}, change, upsert=True)
        if gone := set(kept) - set(wanted):
            await self.forms_collection.delete_many({"_id": {"$in": sorted(gone)}})

    @database_call(MONGO_OUTAGES)
    async def forms(self) -> list[FormInfo]:
        found = self.forms_collection.find().sort("_id", 1)
        return [FormInfo.from_json(document["description"]) async for document in found]

    @database_call(MONGO_OUTAGES)
    async def save(self, response: CompletedResponse) -> bool:
        try:
            await self.collection.insert_one(_document(response))
        except DuplicateKeyError:
            return False
        return True

    @database_call(MONGO_OUTAGES)
    async def replace(self, response: CompletedResponse) -> None:
        # Replaced in place, or inserted if missing; never deleted first, so never missing meanwhile.
        replaced = await self.collection.replace_one({"_id": response.response_id}, _document(response))
        if not replaced.matched_count:
            await self.collection.insert_one(_document(response))

    @database_call(MONGO_OUTAGES)
    async def for_user(self, user_id: int) -> list[CompletedResponse]:
        return await self._find({"user_id": user_id})

    @database_call(MONGO_OUTAGES)
    async def completed(self, since: datetime | None = None) -> list[CompletedResponse]:
        return await self._find({} if since is None else {"completed_at": {"$gte": since.astimezone(UTC)}})

    async def _find(self, query: dict[str, Any]) -> list[CompletedResponse]:
        cursor = self.collection.find(query).sort(COMPLETION_ORDER)
        return [_response(document) async for document in cursor]

    @database_call(MONGO_OUTAGES)
    async def ensure_indexes(self) -> None:
        """Export and migrate read in completion order; /forget finds a user's responses."""
        # On completed_at alone: nx-27017 fails every insert once an index names `_id` (docs/nx-27017.md).
        await self.collection.create_index("completed_at")
        await self.collection.create_index("user_id")

    async def pages(
        self, since: datetime | None = None, kind: str | None = None, size: int = PAGE_SIZE
    ) -> AsyncIterator[list[CompletedResponse]]:
        """One cursor, read `size` documents per batch from the server (by the completed_at index)."""
        query: dict[str, Any] = {} if since is None else {"completed_at": {"$gte": since.astimezone(UTC)}}
        if kind is not None:
            query.update(_of_kind(kind))
        cursor = self.collection.find(query, batch_size=size).sort(COMPLETION_ORDER)
        page: list[CompletedResponse] = []
        async for document in cursor:
            page.append(_response(document))
            if len(page) == size:
                yield page
                page = []
        if page:
            yield page

    @database_call(MONGO_OUTAGES)
    async def by_ids(self, response_ids: Sequence[str]) -> dict[str, CompletedResponse]:
        if not response_ids:
            return {}
        found = self.collection.find({"_id": {"$in": list(response_ids)}})
        return {str(document["_id"]): _response(document) async for document in found}

    @database_call(MONGO_OUTAGES)
    async def save_many(self, responses: Sequence[CompletedResponse]) -> None:
        if not responses:
            return
        try:
            await self.collection.insert_many([_document(response) for response in responses], ordered=False)
        except BulkWriteError as error:  # those kept already stay as they were; any other error is one
            if any(failed.get("code") != _DUPLICATE_KEY for failed in error.details.get("writeErrors", [])):
                raise

    # --- stats: counted by the server (aggregation pipelines) ----------------

    @database_call(MONGO_OUTAGES)
    async def count_kinds(self) -> dict[str, int]:
        grouped = await _aggregate(self.collection, [{"$group": {"_id": "$kind", "n": {"$sum": 1}}}])
        counts: dict[str, int] = {}
        async for group in grouped:
            kind = group["_id"] or QUESTIONNAIRE_KIND
            counts[kind] = counts.get(kind, 0) + int(group["n"])
        return counts

    @database_call(MONGO_OUTAGES)
    async def text_answers(self, kind: str, key: str, top: int) -> TextTally:
        field = f"answers.{escape_key(key)}"
        texts = {**_of_kind(kind), field: {"$type": "string"}}
        total = await self.collection.count_documents(texts)
        pipeline: list[Mapping[str, Any]] = [
            {"$match": texts},
            {
                "$group": {
                    "_id": {"$trim": {"input": f"${field}"}},
                    "n": {"$sum": 1},
                    "first": {"$min": "$completed_at"},
                }
            },
            # Ties in the order first given, as Counter.most_common has them.
            {"$sort": {"n": -1, "first": 1, "_id": 1}},
            {"$limit": top},
        ]
        grouped = await _aggregate(self.collection, pipeline)
        return TextTally([(str(group["_id"]), int(group["n"])) async for group in grouped], total)

    @database_call(MONGO_OUTAGES)
    async def whole_numbers(self, kind: str, key: str) -> list[tuple[int, int]]:
        field = f"answers.{escape_key(key)}"
        whole = {**_of_kind(kind), "$or": [{field: {"$type": "int"}}, {field: {"$type": "long"}}]}
        grouped = await _aggregate(
            self.collection, [{"$match": whole}, {"$group": {"_id": f"${field}", "n": {"$sum": 1}}}]
        )
        # nx-27017 matches any number by "int" (docs/nx-27017.md): a fraction is left out here.
        counted = [(group["_id"], int(group["n"])) async for group in grouped]
        return sorted((int(value), n) for value, n in counted if isinstance(value, int) and not isinstance(value, bool))

    @database_call(MONGO_OUTAGES)
    async def delete_for_user(self, user_id: int, only: Collection[str] | None = None) -> int:
        mine: dict[str, Any] = {"user_id": user_id}
        if only is not None:
            mine["_id"] = {"$in": list(only)}
        result = await self.collection.delete_many(mine)
        return int(result.deleted_count)


async def _aggregate(collection: Any, pipeline: list[Mapping[str, Any]]) -> Any:
    """The pipeline's cursor: PyMongo's async client gives it awaited, motor at once."""
    cursor = collection.aggregate(pipeline)
    return await cursor if inspect.isawaitable(cursor) else cursor


def _of_kind(kind: str) -> dict[str, Any]:
    # Documents saved before there were several forms have no kind: the questionnaire's.
    return {"kind": {"$in": [kind, None]}} if kind == QUESTIONNAIRE_KIND else {"kind": kind}


def _response(document: Mapping[str, Any]) -> CompletedResponse:
    return CompletedResponse(
        response_id=str(document["_id"]),
        user_id=document["user_id"],
        chat_id=document["chat_id"],
        answers=unescape_value(document["answers"]),
        completed_at=as_utc(document["completed_at"]),
        kind=document.get("kind", QUESTIONNAIRE_KIND),
    )


def _document(response: CompletedResponse) -> dict[str, Any]:
    return {
        # The response's own id as _id: saving it twice keeps one.
        "_id": response.response_id,
        "kind": response.kind,
        "user_id": response.user_id,
        "chat_id": response.chat_id,
        "answers": escape_value(response.answers),
        "completed_at": response.completed_at.astimezone(UTC),
    }
