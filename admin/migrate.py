"""`python main.py migrate --to URL [--from URL]`: copy conversations and answers to another database.

It copies every FSM record (state, data, and when it was last touched) and
every completed response, between any two of SQLite, PostgreSQL, MariaDB
/ MySQL and MongoDB. What the target already holds is compared first:
the same record is skipped (so a second run copies nothing), and a
different one is a conflict: nothing is written unless `--overwrite`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy.engine import make_url
from tqdm import tqdm

from admin.errors import CommandError, opened
from config import StorageKind, StorageSettings, to_async_database_url
from storage import CompletedResponse, FsmRecord, Storages
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
    """What copying would do: new records to write, ones already there, and conflicts."""

    records: list[FsmRecord] = field(default_factory=list)
    same_records: int = 0
    conflicting_records: list[FsmRecord] = field(default_factory=list)
    responses: list[CompletedResponse] = field(default_factory=list)
    same_responses: int = 0
    conflicting_responses: list[CompletedResponse] = field(default_factory=list)

    @property
    def conflicts(self) -> list[str]:
        return [record.key for record in self.conflicting_records] + [
            f"response {response.response_id}" for response in self.conflicting_responses
        ]


async def plan(source: Storages, target: Storages) -> Plan:
    result = Plan()
    present = {record.key: record for record in await target.fsm.records()}
    for record in await source.fsm.records():
        there = present.get(record.key)
        if there is None:
            result.records.append(record)
        elif there.state == record.state and same_json(there.data, record.data):
            result.same_records += 1
        else:
            result.conflicting_records.append(record)
    kept = {response.response_id: response for response in await target.responses.completed()}
    for response in await source.responses.completed():
        existing = kept.get(response.response_id)
        if existing is None:
            result.responses.append(response)
        elif same_response(existing, response):
            result.same_responses += 1
        else:
            result.conflicting_responses.append(response)
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


async def copy(plan: Plan, target: Storages, overwrite: bool) -> int:
    """Write what `plan` found missing (and with `overwrite`, what conflicts); how many responses were new."""
    records = plan.records + (plan.conflicting_records if overwrite else [])
    replaced = plan.conflicting_responses if overwrite else []
    total = len(records) + len(plan.responses) + len(replaced)
    saved = 0
    # tqdm draws on a terminal only (disable=None), so output sent to a file stays clean.
    with tqdm(total=total, unit="record", desc="Copying", file=sys.stderr, disable=None) as progress:
        for record in records:
            await target.fsm.put_record(record)
            progress.update()
        for response in plan.responses:
            saved += await target.responses.save(response)  # False: another writer saved it meanwhile
            progress.update()
        for response in replaced:
            await target.responses.replace(response)
            progress.update()
    return saved


def conflicts_message(target_name: str, conflicts: list[str]) -> str:
    shown = ", ".join(conflicts[:SHOWN_CONFLICTS])
    more = f" and {len(conflicts) - SHOWN_CONFLICTS} more" if len(conflicts) > SHOWN_CONFLICTS else ""
    return (
        f"{target_name} already holds different data for {len(conflicts)} key(s) ({shown}{more}): "
        "nothing was copied; --overwrite replaces them with the source's"
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
            raise CommandError(conflicts_message(target_name, planned.conflicts))
        saved = await copy(planned, target, overwrite)
    there_already = planned.same_responses + len(planned.responses) - saved
    print(f"Copied from {source_name} to {target_name}:")
    print(counts("conversations", len(planned.records), planned.same_records, planned.conflicting_records, overwrite))
    print(counts("answers", saved, there_already, planned.conflicting_responses, overwrite))
    return 0


def counts(what: str, copied: int, there_already: int, conflicting: list[Any], overwrite: bool) -> str:
    replaced = f", {len(conflicting)} replaced" if overwrite and conflicting else ""
    return f"  {what:<14} {copied:>6} copied, {there_already} there already{replaced}"
