"""Completed questionnaires in MongoDB, beside the FSM collection."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from storage.errors import DEFAULT_TIMEOUT_SECONDS, database_call
from storage.mongo.fsm import MONGO_OUTAGES
from storage.mongo.keys import escape_value, unescape_value
from storage.sql.responses import CompletedResponse, as_utc


class MongoResponseStore:
    """Completed responses in a `questionnaire_responses` collection beside the FSM one."""

    def __init__(
        self,
        database: Any,
        collection_name: str = "questionnaire_responses",
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.collection = database[collection_name]
        self.timeout = timeout

    @database_call(MONGO_OUTAGES)
    async def save(self, response: CompletedResponse) -> None:
        await self.collection.insert_one(
            {
                "user_id": response.user_id,
                "chat_id": response.chat_id,
                "answers": escape_value(response.answers),
                "completed_at": response.completed_at.astimezone(UTC),
            }
        )

    @database_call(MONGO_OUTAGES)
    async def for_user(self, user_id: int) -> list[CompletedResponse]:
        cursor = self.collection.find({"user_id": user_id}).sort("_id", 1)
        return [
            CompletedResponse(
                user_id=document["user_id"],
                chat_id=document["chat_id"],
                answers=unescape_value(document["answers"]),
                completed_at=as_utc(document["completed_at"]),
            )
            async for document in cursor
        ]

    @database_call(MONGO_OUTAGES)
    async def delete_for_user(self, user_id: int) -> int:
        result = await self.collection.delete_many({"user_id": user_id})
        return int(result.deleted_count)
