"""Completed questionnaires: what the bot keeps after the last answer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, Table, Text, delete, insert, select
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.errors import DEFAULT_TIMEOUT_SECONDS, database_call
from storage.sql.engine import SQL_OUTAGES, create_table_if_missing


@dataclass(frozen=True)
class CompletedResponse:
    user_id: int
    chat_id: int
    answers: dict[str, Any]
    completed_at: datetime


class ResponseStore(Protocol):
    """Where handlers put finished questionnaires; they never see which database it is."""

    async def save(self, response: CompletedResponse) -> None: ...

    async def for_user(self, user_id: int) -> list[CompletedResponse]: ...

    async def delete_for_user(self, user_id: int) -> int: ...


def responses_table(metadata: MetaData, table_name: str = "questionnaire_responses") -> Table:
    return Table(
        table_name,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("user_id", BigInteger, nullable=False, index=True),
        Column("chat_id", BigInteger, nullable=False),
        # JSON text, so changing the questions needs no migration.
        Column("answers", Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False),
        # Naive UTC: the one form every dialect stores alike (MySQL's DATETIME has no zone).
        Column("completed_at", DateTime(), nullable=False),
        extend_existing=True,
    )


class SQLResponseStore:
    """Completed responses in a SQL table beside the FSM table."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        metadata: MetaData | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.timeout = timeout
        self.table = responses_table(metadata if metadata is not None else MetaData())

    @database_call(SQL_OUTAGES)
    async def create_table(self) -> None:
        await create_table_if_missing(self.sessionmaker, self.table)

    async def save(self, response: CompletedResponse) -> None:
        row = {
            "user_id": response.user_id,
            "chat_id": response.chat_id,
            "answers": json.dumps(response.answers, ensure_ascii=False),
            "completed_at": response.completed_at.astimezone(UTC).replace(tzinfo=None),
        }
        async with self.sessionmaker.begin() as session:
            await session.execute(insert(self.table).values(row))

    async def for_user(self, user_id: int) -> list[CompletedResponse]:
        statement = select(self.table).where(self.table.c.user_id == user_id).order_by(self.table.c.id)
        async with self.sessionmaker() as session:
            rows = (await session.execute(statement)).all()
        return [
            CompletedResponse(
                user_id=row.user_id,
                chat_id=row.chat_id,
                answers=json.loads(row.answers),
                completed_at=as_utc(row.completed_at),
            )
            for row in rows
        ]

    async def delete_for_user(self, user_id: int) -> int:
        async with self.sessionmaker.begin() as session:
            result = await session.execute(delete(self.table).where(self.table.c.user_id == user_id))
        return int(getattr(result, "rowcount", 0))


def as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
