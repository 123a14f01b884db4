"""Completed forms (of every kind) in a SQL table beside the FSM table, written through the FSM storage's connection."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    CursorResult,
    DateTime,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    select,
    true,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from storage.errors import database_call
from storage.interface import QUESTIONNAIRE_KIND, CompletedResponse, as_utc
from storage.sql.engine import SQL_OUTAGES, ensure_table
from storage.sql.fsm import SQLAlchemyStorage

RESPONSE_ID_LENGTH = 64
KIND_LENGTH = 64


def responses_table(storage: SQLAlchemyStorage, table_name: str = "questionnaire_responses") -> Table:
    table = Table(
        table_name,
        storage.metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("response_id", String(RESPONSE_ID_LENGTH), nullable=True),
        # Which form: NULL in rows saved before there were several (the questionnaire's).
        Column("kind", String(KIND_LENGTH), nullable=True),
        Column("user_id", BigInteger, nullable=False, index=True),
        Column("chat_id", BigInteger, nullable=False),
        # JSON text, so changing the questions needs no migration.
        Column("answers", Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"), nullable=False),
        # Naive UTC: the one form every dialect stores alike (MySQL's DATETIME has no zone).
        Column("completed_at", DateTime(), nullable=False),
        extend_existing=True,
        mysql_charset="utf8mb4",
    )
    # Saving a response twice (a resend after a failure) keeps one.
    Index(f"uq_{table_name}_response_id", table.c.response_id, unique=True)
    return table


class SQLResponseStore:
    """Completed responses, in the same database and through the same connection as `storage`."""

    def __init__(self, storage: SQLAlchemyStorage, table_name: str = "questionnaire_responses") -> None:
        self.storage = storage
        self.table = responses_table(storage, table_name)
        self.timeout = storage.timeout

    @database_call(SQL_OUTAGES)
    async def create_table(self) -> None:
        # `response_id` and `kind` came in later versions: an older table gets the columns.
        await self.storage.run_on_connection(
            lambda connection: ensure_table(connection, self.table, added_later=("response_id", "kind"))
        )

    @database_call(SQL_OUTAGES)
    async def save(self, response: CompletedResponse) -> bool:
        statement = self.table.insert().values(self._row(response))
        try:
            await self.storage.run_on_connection(lambda connection: connection.execute(statement))
        except IntegrityError:  # the unique response_id: saved before
            return False
        return True

    @database_call(SQL_OUTAGES)
    async def replace(self, response: CompletedResponse) -> None:
        row = self._row(response)
        change = update(self.table).where(self.table.c.response_id == response.response_id).values(row)
        insert = self.table.insert().values(row)

        def replace(connection: Connection) -> None:
            # Updated in place, or inserted if missing; never deleted first, so never missing meanwhile.
            if not cast(CursorResult[Any], connection.execute(change)).rowcount:
                connection.execute(insert)

        await self.storage.run_on_connection(replace)

    def _row(self, response: CompletedResponse) -> dict[str, Any]:
        return {
            "response_id": response.response_id,
            "kind": response.kind,
            "user_id": response.user_id,
            "chat_id": response.chat_id,
            "answers": _as_text(self.storage.json_dumps(response.answers)),
            "completed_at": response.completed_at.astimezone(UTC).replace(tzinfo=None),
        }

    @database_call(SQL_OUTAGES)
    async def for_user(self, user_id: int) -> list[CompletedResponse]:
        return await self._select(self.table.c.user_id == user_id)

    @database_call(SQL_OUTAGES)
    async def completed(self, since: datetime | None = None) -> list[CompletedResponse]:
        if since is None:
            return await self._select(true())
        return await self._select(self.table.c.completed_at >= since.astimezone(UTC).replace(tzinfo=None))

    async def _select(self, where: ColumnElement[bool]) -> list[CompletedResponse]:
        c = self.table.c
        statement = select(self.table).where(where).order_by(c.completed_at, c.id)
        rows = await self.storage.run_on_connection(lambda connection: connection.execute(statement).all())
        return [
            CompletedResponse(
                response_id=row.response_id or str(row.id),
                user_id=row.user_id,
                chat_id=row.chat_id,
                answers=self.storage.json_loads(row.answers),
                completed_at=as_utc(row.completed_at),
                kind=row.kind or QUESTIONNAIRE_KIND,
            )
            for row in rows
        ]

    @database_call(SQL_OUTAGES)
    async def delete_for_user(self, user_id: int) -> int:
        statement = delete(self.table).where(self.table.c.user_id == user_id)
        result = await self.storage.run_on_connection(lambda connection: connection.execute(statement))
        return cast(CursorResult[Any], result).rowcount


def _as_text(dumped: str | bytes) -> str:
    return dumped.decode() if isinstance(dumped, bytes) else dumped
