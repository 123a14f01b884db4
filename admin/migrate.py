"""`python main.py migrate --to URL [--from URL]`: copy conversations and answers to another database.

It copies every FSM record (state, data, and when it was last touched) and
every completed response (and the forms the bot described), between any two of SQLite, PostgreSQL, MariaDB
/ MySQL and MongoDB. What the target already holds is compared first:
the same record is skipped (so a second run copies nothing), and a
different one is a conflict: nothing is written unless `--overwrite`.

Both tables are read a page at a time (storage.records.PAGE_SIZE): a first
pass only compares each page with the target, a second compares it again and
writes what is missing, each page in one batch. Memory stays the same
whatever the number of records.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy.engine import make_url
from tqdm import tqdm

from admin.errors import CommandError, opened
from admin.forms import plural
from config import StorageKind, StorageSettings, to_async_database_url
from storage import CompletedResponse, Records
from storage.sql.in_use import in_use

SHOWN_CONFLICTS = 5
# Stored times differ in precision (MySQL keeps whole seconds, MongoDB milliseconds).
SAME_TIME_SECONDS = 1.0


def settings_for(url: str, base: StorageSettings, option: str) -> StorageSettings:
    """`base` pointed at the database `url` (given as `option`) names: `mongodb://host/db` or any SQL URL."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme in ("mongodb", "mongodb+srv"):
        database = parts.path.strip("/") or base.mongo_db
        return base.model_copy(update={"storage": StorageKind.MONGO, "mongo_url": url, "mongo_db": database})
    try:
        database_url = to_async_database_url(url)
    except ValueError as error:
        # The message quotes no URL: it may hold a password.
        raise CommandError(str(error).replace("DATABASE_URL", option, 1)) from None
    return base.model_copy(update={"storage": StorageKind.SQLALCHEMY, "database_url": database_url})


def describe(settings: StorageSettings) -> str:
    """Where the settings point, without user or password."""
    if settings.storage is StorageKind.MONGO:
        parts = urlsplit(settings.mongo_url)
        hosts = parts.netloc.rpartition("@")[2]  # may list several: host1:27017,host2:27017
        return f"{parts.scheme}://{hosts}/{settings.mongo_db}"
    return make_url(settings.database_url).render_as_string(hide_password=True)


@dataclass
class Plan:
    """What copying would do, counted page by page: new records, ones already there, and conflicts."""

    new_records: int = 0
    same_records: int = 0
    conflicting_records: int = 0
    new_responses: int = 0
    same_responses: int = 0
    conflicting_responses: int = 0
    shown_conflicts: list[str] = field(default_factory=list)  # the first few, to name them

    @property
    def conflicts(self) -> int:
        return self.conflicting_records + self.conflicting_responses

    def conflict(self, name: str) -> None:
        if len(self.shown_conflicts) < SHOWN_CONFLICTS:
            self.shown_conflicts.append(name)


@dataclass
class Page:
    """One page of the source, sorted against the target."""

    new: list[Any] = field(default_factory=list)
    same: int = 0
    conflicting: list[Any] = field(default_factory=list)


async def record_pages(source: Records, target: Records) -> AsyncIterator[Page]:
    """The source's FSM records a page at a time, each page compared with what the target holds."""
    async for records in source.fsm.record_pages():
        present = await target.fsm.records_for([record.key for record in records])
        page = Page()
        for record in records:
            there = present.get(record.key)
            if there is None:
                page.new.append(record)
            elif there.state == record.state and same_json(there.data, record.data):
                page.same += 1
            else:
                page.conflicting.append(record)
        yield page


async def response_pages(source: Records, target: Records) -> AsyncIterator[Page]:
    """The source's completed responses a page at a time, each page compared with what the target holds."""
    async for responses in source.responses.pages():
        kept = await target.responses.by_ids([response.response_id for response in responses])
        page = Page()
        for response in responses:
            existing = kept.get(response.response_id)
            if existing is None:
                page.new.append(response)
            elif same_response(existing, response):
                page.same += 1
            else:
                page.conflicting.append(response)
        yield page


async def plan(source: Records, target: Records) -> Plan:
    """The first pass: compare only, page by page, writing nothing."""
    result = Plan()
    async for page in record_pages(source, target):
        result.new_records += len(page.new)
        result.same_records += page.same
        result.conflicting_records += len(page.conflicting)
        for record in page.conflicting:
            result.conflict(record.key)
    async for page in response_pages(source, target):
        result.new_responses += len(page.new)
        result.same_responses += page.same
        result.conflicting_responses += len(page.conflicting)
        for response in page.conflicting:
            result.conflict(f"response {response.response_id}")
    return result


def same_json(one: object, other: object) -> bool:
    """Equal as stored JSON: `True` is not 1 and 30 is not 30.0, as `==` would have it."""
    return orjson.dumps(one, option=orjson.OPT_SORT_KEYS) == orjson.dumps(other, option=orjson.OPT_SORT_KEYS)


def same_response(one: CompletedResponse, other: CompletedResponse) -> bool:
    return (
        (one.kind, one.user_id, one.chat_id) == (other.kind, other.user_id, other.chat_id)
        and same_json(one.answers, other.answers)
        and abs((one.completed_at - other.completed_at).total_seconds()) <= SAME_TIME_SECONDS
    )


async def copy(planned: Plan, source: Records, target: Records, overwrite: bool) -> Plan:
    """The second pass: compare each page again and write what is missing (with `overwrite`, what
    differs too), each page in one batch. What it found, counted as it wrote."""
    copied = Plan()
    total = planned.new_records + planned.new_responses
    if overwrite:
        total += planned.conflicts
    # tqdm draws on a terminal only (disable=None), so output sent to a file stays clean.
    with tqdm(total=total, unit="record", desc="Copying", file=sys.stderr, disable=None) as progress:
        async for page in record_pages(source, target):
            written = page.new + (page.conflicting if overwrite else [])
            await target.fsm.put_records(written)
            copied.new_records += len(page.new)
            copied.same_records += page.same
            copied.conflicting_records += len(page.conflicting)
            progress.update(len(written))
        async for page in response_pages(source, target):
            await target.responses.save_many(page.new)
            for response in page.conflicting if overwrite else []:
                await target.responses.replace(response)
            copied.new_responses += len(page.new)
            copied.same_responses += page.same
            copied.conflicting_responses += len(page.conflicting)
            progress.update(len(page.new) + (len(page.conflicting) if overwrite else 0))
    # What the forms are, for `stats` and `export` on the target before a bot starts there (which
    # describes its own at start-up); a target a bot already described keeps its own description.
    if not await target.responses.forms():
        await target.responses.describe_forms(await source.responses.forms())
    return copied


def conflicts_message(target_name: str, planned: Plan) -> str:
    shown = ", ".join(planned.shown_conflicts)
    more = (
        f" and {planned.conflicts - len(planned.shown_conflicts)} more" if planned.conflicts > SHOWN_CONFLICTS else ""
    )
    return (
        f"{target_name} already holds different data for {plural(planned.conflicts, 'key')} ({shown}{more}): "
        f"nothing was copied; --overwrite replaces {'it' if planned.conflicts == 1 else 'them'} with the source's"
    )


async def migrate(settings: StorageSettings, to: str, source_url: str | None, overwrite: bool) -> int:
    source_settings = settings_for(source_url, settings, "--from") if source_url else settings
    target_settings = settings_for(to, settings, "--to")
    source_name, target_name = describe(source_settings), describe(target_settings)
    if source_name == target_name:
        raise CommandError(f"--to names the source itself ({source_name}): give another database")
    for sqlite_file in (source_settings.sqlite_path, target_settings.sqlite_path):
        if sqlite_file is not None and in_use(sqlite_file):
            raise CommandError(f"a bot is running on {sqlite_file}: stop it first, then migrate")
    async with (
        opened(source_settings, f"the source {source_name}") as source,
        opened(target_settings, f"the target {target_name}", reading=False) as target,
    ):
        planned = await plan(source, target)
        if planned.conflicts and not overwrite:
            raise CommandError(conflicts_message(target_name, planned))
        copied = await copy(planned, source, target, overwrite)
    print(f"Copied from {source_name} to {target_name}:")
    print(counts("conversations", copied.new_records, copied.same_records, copied.conflicting_records, overwrite))
    print(counts("answers", copied.new_responses, copied.same_responses, copied.conflicting_responses, overwrite))
    return 0


def counts(what: str, copied: int, there_already: int, conflicting: int, overwrite: bool) -> str:
    replaced = f", {conflicting} replaced" if overwrite and conflicting else ""
    return f"  {what:<14} {copied:>6} copied, {there_already} there already{replaced}"
