"""Completed forms (of every kind) in MongoDB, beside the FSM collection."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from storage.errors import DEFAULT_TIMEOUT_SECONDS, database_call
from storage.interface import QUESTIONNAIRE_KIND, CompletedResponse, as_utc
from storage.mongo.client import MONGO_OUTAGES
from storage.mongo.keys import escape_value, unescape_value


class MongoResponseStore:
    """Completed forms (of every kind) in a `questionnaire_responses` collection, one document per response_id."""

    def __init__(
        self,
        database: Any,
        collection_name: str = "questionnaire_responses",
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.collection = database[collection_name]
        self.timeout = timeout

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
        cursor = self.collection.find(query).sort([("completed_at", 1), ("_id", 1)])
        return [
            CompletedResponse(
                response_id=str(document["_id"]),
                user_id=document["user_id"],
                chat_id=document["chat_id"],
                answers=unescape_value(document["answers"]),
                completed_at=as_utc(document["completed_at"]),
                # Documents saved before there were several forms are the questionnaire's.
                kind=document.get("kind", QUESTIONNAIRE_KIND),
            )
            async for document in cursor
        ]

    @database_call(MONGO_OUTAGES)
    async def delete_for_user(self, user_id: int) -> int:
        result = await self.collection.delete_many({"user_id": user_id})
        return int(result.deleted_count)


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
