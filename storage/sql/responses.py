"""Completed forms (of every kind) in a SQL table beside the FSM table, written through the FSM storage's connection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    CursorResult,
    DateTime,
    Executable,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy import (
    cast as sql_cast,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from storage.errors import database_call
from storage.records import KIND_LENGTH, PAGE_SIZE, QUESTIONNAIRE_KIND, CompletedResponse, FormInfo, TextTally, as_utc
from storage.sql.engine import SQL_OUTAGES
from storage.sql.records import SQLRecords
from storage.sql.schema import FORMS_SCHEMA, RESPONSES_SCHEMA, is_current, set_up

RESPONSE_ID_LENGTH = 64


def responses_table(storage: SQLRecords, table_name: str = "questionnaire_responses") -> Table:
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
    # Export and migrate read in completion order, a page at a time.
    Index(f"ix_{table_name}_completed_at", table.c.completed_at, table.c.id)
    return table


def forms_table(storage: SQLRecords, table_name: str = "bot_forms") -> Table:
    """The forms the bot described at its start (kind, states, questions as JSON), for the owner's commands."""
    return Table(
        table_name,
        storage.metadata,
        Column("kind", String(KIND_LENGTH), primary_key=True),
        Column("description", Text, nullable=False),
        extend_existing=True,
        mysql_charset="utf8mb4",
    )


class SQLResponseStore:
    """Completed responses, in the same database and through the same connection as `storage`."""

    def __init__(
        self, storage: SQLRecords, table_name: str = "questionnaire_responses", forms_table_name: str = "bot_forms"
    ) -> None:
        self.storage = storage
        self.table = responses_table(storage, table_name)
        self.forms_table = forms_table(storage, forms_table_name)
        self.timeout = storage.timeout

    @database_call(SQL_OUTAGES)
    async def create_table(self) -> None:
        """Create the responses and forms tables, or bring older ones up to date, once (storage/sql/schema.py)."""
        await set_up(self.storage, self.table, RESPONSES_SCHEMA)
        await set_up(self.storage, self.forms_table, FORMS_SCHEMA)

    @database_call(SQL_OUTAGES)
    async def is_set_up(self) -> bool:
        """Whether both tables are there, at this release's versions (reads only; SchemaError if newer)."""
        return await is_current(self.storage, self.table, RESPONSES_SCHEMA) and await is_current(
            self.storage, self.forms_table, FORMS_SCHEMA
        )

    # --- the forms, as the bot describes them at its start ---------------------

    @database_call(SQL_OUTAGES)
    async def describe_forms(self, forms: Sequence[FormInfo]) -> None:
        wanted = {form.kind: _as_text(self.storage.json_dumps(form.as_json())) for form in forms}
        t = self.forms_table

        def describe(connection: Connection) -> None:
            kept = {row.kind: row.description for row in connection.execute(select(t))}
            if kept == wanted:  # a restart of the same bot: one read
                return
            # Each kind written in place (an upsert), never deleted first: a `stats` reading meanwhile,
            # or another process starting at the same moment, never finds a form missing.
            for kind, description in wanted.items():
                if kept.get(kind) != description:
                    _upsert_form(connection, t, kind, description)
            if gone := set(kept) - set(wanted):
                connection.execute(delete(t).where(t.c.kind.in_(sorted(gone))))

        await self.storage.run_on_connection(describe)

    @database_call(SQL_OUTAGES)
    async def forms(self) -> list[FormInfo]:
        statement = select(self.forms_table).order_by(self.forms_table.c.kind)
        rows = await self.storage.run_on_connection(lambda connection: connection.execute(statement).all())
        return [FormInfo.from_json(self.storage.json_loads(row.description)) for row in rows]

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
            "completed_at": _naive_utc(response.completed_at),
        }

    @database_call(SQL_OUTAGES)
    async def for_user(self, user_id: int) -> list[CompletedResponse]:
        return await self._select(self.table.c.user_id == user_id)

    @database_call(SQL_OUTAGES)
    async def completed(self, since: datetime | None = None) -> list[CompletedResponse]:
        if since is None:
            return await self._select(true())
        return await self._select(self.table.c.completed_at >= _naive_utc(since))

    async def _select(self, where: ColumnElement[bool]) -> list[CompletedResponse]:
        c = self.table.c
        statement = select(self.table).where(where).order_by(c.completed_at, c.id)
        rows = await self.storage.run_on_connection(lambda connection: connection.execute(statement).all())
        return [self._response(row) for row in rows]

    def _response(self, row: Any) -> CompletedResponse:
        return CompletedResponse(
            response_id=row.response_id or str(row.id),
            user_id=row.user_id,
            chat_id=row.chat_id,
            answers=self.storage.json_loads(row.answers),
            completed_at=as_utc(row.completed_at),
            kind=row.kind or QUESTIONNAIRE_KIND,
        )

    async def pages(
        self, since: datetime | None = None, kind: str | None = None, size: int = PAGE_SIZE
    ) -> AsyncIterator[list[CompletedResponse]]:
        """In completion order, a page per call: each page starts after the last row of the one before
        (by the index on completed_at and id), so no page costs more than the first."""
        c = self.table.c
        where = true() if since is None else c.completed_at >= _naive_utc(since)
        if kind is not None:
            where = and_(where, self._of_kind(kind))
        last: tuple[datetime, int] | None = None
        while True:
            after = true() if last is None else tuple_(c.completed_at, c.id) > tuple_(*last)
            statement = select(self.table).where(where, after).order_by(c.completed_at, c.id).limit(size)
            rows = await self._read(statement)
            if not rows:
                return
            last = (rows[-1].completed_at, rows[-1].id)
            yield [self._response(row) for row in rows]

    @database_call(SQL_OUTAGES)
    async def _read(self, statement: Executable) -> list[Any]:
        return await self.storage.run_on_connection(lambda connection: list(connection.execute(statement).all()))

    @database_call(SQL_OUTAGES)
    async def by_ids(self, response_ids: Sequence[str]) -> dict[str, CompletedResponse]:
        if not response_ids:
            return {}
        statement = select(self.table).where(self.table.c.response_id.in_(list(response_ids)))
        rows = await self.storage.run_on_connection(lambda connection: connection.execute(statement).all())
        return {response.response_id: response for response in map(self._response, rows)}

    @database_call(SQL_OUTAGES)
    async def save_many(self, responses: Sequence[CompletedResponse]) -> None:
        rows = [self._row(response) for response in responses]
        if not rows:
            return

        def save(connection: Connection) -> None:
            statement = _insert_if_new(self.table, connection.dialect.name)
            if statement is not None:
                connection.execute(statement, rows)  # the driver's executemany: one batch
                return
            for row in rows:  # another dialect: one at a time, each kept once
                try:
                    with connection.begin_nested():
                        connection.execute(self.table.insert().values(row))
                except IntegrityError:
                    pass

        await self.storage.run_on_connection(save)

    # --- stats: counted by the database, whatever the table's size -------------

    def _of_kind(self, kind: str) -> ColumnElement[bool]:
        c = self.table.c
        return or_(c.kind == kind, c.kind.is_(None)) if kind == QUESTIONNAIRE_KIND else c.kind == kind

    @database_call(SQL_OUTAGES)
    async def count_kinds(self) -> dict[str, int]:
        kind = func.coalesce(self.table.c.kind, QUESTIONNAIRE_KIND)
        rows = await self._read(select(kind, func.count()).group_by(kind))
        return {str(name): int(number) for name, number in rows}

    @database_call(SQL_OUTAGES)
    async def text_answers(self, kind: str, key: str, top: int) -> TextTally:
        def count(connection: Connection) -> TextTally:
            answer = _Answer(self.table, connection.dialect.name, key)
            where = and_(self._of_kind(kind), answer.is_text)
            total = connection.execute(select(func.count()).where(where)).scalar_one()
            text = func.trim(answer.text)
            c = self.table.c
            commonest = (
                select(text, func.count())
                .where(where)
                .group_by(text)
                # Ties in the order first given, as Counter.most_common has them.
                .order_by(func.count().desc(), func.min(c.completed_at), func.min(c.id))
                .limit(top)
            )
            return TextTally([(str(value), int(number)) for value, number in connection.execute(commonest)], total)

        return await self.storage.run_on_connection(count)

    @database_call(SQL_OUTAGES)
    async def whole_numbers(self, kind: str, key: str) -> list[tuple[int, int]]:
        def count(connection: Connection) -> list[tuple[int, int]]:
            answer = _Answer(self.table, connection.dialect.name, key)
            grouped = (
                select(answer.text, func.count()).where(self._of_kind(kind), answer.is_whole).group_by(answer.text)
            )
            return sorted((int(value), int(number)) for value, number in connection.execute(grouped))

        return await self.storage.run_on_connection(count)

    @database_call(SQL_OUTAGES)
    async def delete_for_user(self, user_id: int, only: Collection[str] | None = None) -> int:
        statement = delete(self.table).where(self.table.c.user_id == user_id)
        if only is not None:
            if not only:
                return 0
            statement = statement.where(self.table.c.response_id.in_(list(only)))
        result = await self.storage.run_on_connection(lambda connection: connection.execute(statement))
        return cast(CursorResult[Any], result).rowcount


class _Answer:
    """One answer in the `answers` JSON text, as the dialect reads it: its JSON type and its text."""

    def __init__(self, table: Table, dialect: str, key: str) -> None:
        answers = table.c.answers
        path = '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if dialect == "postgresql":
            element = sql_cast(answers, postgresql.JSON)[key]
            json_type = func.json_typeof(element)
            self.text: ColumnElement[Any] = element.astext
            self.is_text = json_type == "string"
            # A JSON number written without a fraction or exponent: what Python reads as an int.
            self.is_whole = and_(json_type == "number", self.text.regexp_match("^-?[0-9]+$"))
        elif dialect in ("mysql", "mariadb"):
            element = func.json_extract(answers, path)
            json_type = func.json_type(element)
            self.text = func.json_unquote(element)
            self.is_text = json_type == "STRING"
            self.is_whole = json_type.in_(["INTEGER", "UNSIGNED INTEGER"])
        else:  # SQLite's JSON1 functions; other dialects with json_extract and json_type alike
            self.text = func.json_extract(answers, path)
            self.is_text = func.json_type(answers, path) == "text"
            self.is_whole = func.json_type(answers, path) == "integer"


def _insert_if_new(table: Table, dialect: str) -> Executable | None:
    """An INSERT that keeps what is already kept under the same response_id; None: no such statement."""
    if dialect in ("sqlite", "postgresql"):
        dialect_insert = sqlite.insert(table) if dialect == "sqlite" else postgresql.insert(table)
        return dialect_insert.on_conflict_do_nothing(index_elements=[table.c.response_id])
    if dialect in ("mysql", "mariadb"):
        statement = mysql.insert(table)
        return statement.on_duplicate_key_update(response_id=statement.inserted.response_id)
    return None


def _upsert_form(connection: Connection, table: Table, kind: str, description: str) -> None:
    """Write `kind`'s description, whether or not a row for it exists: one statement where the dialect has one."""
    dialect = connection.dialect.name
    values = {"kind": kind, "description": description}
    if dialect in ("sqlite", "postgresql"):
        statement = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table).values(values)
        connection.execute(statement.on_conflict_do_update(index_elements=[table.c.kind], set_=values))
    elif dialect in ("mysql", "mariadb"):
        connection.execute(mysql.insert(table).values(values).on_duplicate_key_update(description=description))
    elif not cast(
        CursorResult[Any], connection.execute(update(table).where(table.c.kind == kind).values(values))
    ).rowcount:
        connection.execute(table.insert().values(values))


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def _as_text(dumped: str | bytes) -> str:
    return dumped.decode() if isinstance(dumped, bytes) else dumped
