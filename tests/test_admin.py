"""The owner's commands on every backend: export, stats, expiry (FSM_TTL) and migrate.

Export and stats are compared byte for byte with what a user of the command
would read. Expiry and migrate also run against the real bot process: a user
whose session expired is told to /start, and after a migration there and back
every user goes on at the question they had reached.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from aiogram.fsm.state import StatesGroup
from aiogram.fsm.storage.base import DefaultKeyBuilder, StorageKey

from admin.errors import CommandError
from admin.export import export, write
from admin.export import render as render_export
from admin.migrate import migrate, same_json
from admin.stats import count
from admin.stats import render as render_stats
from bot.emulator import BotAPIEmulator, running_emulator
from bot.expiry import ExpirySweeper, sweep
from config import StorageKind, StorageSettings
from states import Question, Questionnaire, Tally, describe_form, described_forms, form_kind, forms, questions
from states.form import short_text, whole_number
from storage import CompletedResponse, FormInfo, FsmRecord, MongoStorage, Storages
from storage.factory import COMMAND_TIMEOUT_SECONDS, open_records
from storage.interface import user_reader
from storage.mongo.records import MongoRecords
from storage.records import PAGE_SIZE, default_key_user
from tests.support.backends import ALL_BACKENDS, MONGO_BACKENDS, SQL_URL_VARIABLES, Backend, backend_params
from tests.support.bot_process import ROOT, BotProcess, bot_environment, drop_bot_tables, finish
from tests.support.questionnaire import asked, conversation, replies, saved, shows_summary, told_apart


class Signup(StatesGroup):
    """A form of the tests' own for the awkward answers below: it stays as it is whatever becomes of the questionnaire
    (whose export and stats tests/test_template.py checks, and the end of the migrate test here)."""

    handle = Question("Your handle?", read=short_text("handle"), label="Handle", sample="Ann")
    years = Question(
        "Years with us?", read=whole_number("years", 1, 120), label="Years", sample="30", tally=Tally.RANGE
    )
    shade = Question("Your shade?", read=short_text("shade"), label="Shade", sample="Blue", tally=Tally.COUNTS)


SIGNUP = form_kind(Signup)
AWKWARD = [
    CompletedResponse(
        "r1",
        11,
        -1001,
        {"handle": 'Ann, "Annie"', "years": 30, "shade": "Blue"},
        datetime(2026, 11, 1, 9, 30, tzinfo=UTC),
        SIGNUP,
    ),
    CompletedResponse(
        "r2",
        12,
        12,
        {"handle": "Bob\nsecond line", "years": 41, "shade": "🎉 <b>Red</b> & green"},
        datetime(2026, 11, 2, 10, 0, tzinfo=UTC),
        SIGNUP,
    ),
    CompletedResponse(
        "r3",
        13,
        13,
        {"handle": "=SUM(A1:A9)", "years": 18, "shade": "Zöë; ünïcode"},
        datetime(2026, 11, 3, 23, 59, 59, tzinfo=UTC),
        SIGNUP,
    ),
]
# Signup's own columns (a form of this file's, defined above, named unlike the questionnaire's questions,
# which may change freely).
EXPECTED_CSV = (
    "\ufeffuser_id,chat_id,kind,handle,years,shade,completed_at\r\n"
    '11,-1001,signup,"Ann, ""Annie""",30,Blue,2026-11-01T09:30:00Z\r\n'
    '12,12,signup,"Bob\nsecond line",41,🎉 <b>Red</b> & green,2026-11-02T10:00:00Z\r\n'
    "13,13,signup,'=SUM(A1:A9),18,Zöë; ünïcode,2026-11-03T23:59:59Z\r\n"
).encode()
EXPECTED_JSON = """[
  {
    "user_id": 12,
    "chat_id": 12,
    "kind": "signup",
    "handle": "Bob\\nsecond line",
    "years": 41,
    "shade": "🎉 <b>Red</b> & green",
    "completed_at": "2026-11-02T10:00:00Z"
  },
  {
    "user_id": 13,
    "chat_id": 13,
    "kind": "signup",
    "handle": "=SUM(A1:A9)",
    "years": 18,
    "shade": "Zöë; ünïcode",
    "completed_at": "2026-11-03T23:59:59Z"
  }
]
""".encode()
EXPECTED_JSONL = (
    '{"user_id": 11, "chat_id": -1001, "kind": "signup", '
    '"handle": "Ann, \\"Annie\\"", "years": 30, "shade": "Blue", '
    '"completed_at": "2026-11-01T09:30:00Z"}\n'
    '{"user_id": 12, "chat_id": 12, "kind": "signup", '
    '"handle": "Bob\\nsecond line", "years": 41, "shade": "🎉 <b>Red</b> & green", '
    '"completed_at": "2026-11-02T10:00:00Z"}\n'
    '{"user_id": 13, "chat_id": 13, "kind": "signup", '
    '"handle": "=SUM(A1:A9)", "years": 18, "shade": "Zöë; ünïcode", '
    '"completed_at": "2026-11-03T23:59:59Z"}\n'
).encode()
SHARED_SERVERS = ("postgresql", "mysql")


class Survey(StatesGroup):
    """A second form, as a bot might add one: a question of each tally, and one without."""

    mood = Question(
        "How do you feel?", read=short_text("mood"), label="Mood", sample="Fine", choices=("Fine", "Tired"),
        tally=Tally.COUNTS,
    )  # fmt: skip
    score = Question("From 1 to 10?", read=whole_number("score", 1, 10), label="Score", sample="7", tally=Tally.RANGE)
    visits = Question(
        "How many visits?", read=whole_number("visits", 0, 99), label="Visits", sample="2", tally=Tally.RANGE
    )
    remark = Question("Anything else?", read=short_text("remark"), label="Remark", sample="No")


def survey(response_id: str, user: int, when: datetime, **answers: object) -> CompletedResponse:
    """A completed Survey with these answers (saved in the reverse of the order they are asked)."""
    return CompletedResponse(response_id, user, user, dict(reversed(answers.items())), when, kind=form_kind(Survey))


SURVEYS = [
    survey("s1", 31, datetime(2026, 11, 1, 8, 0, tzinfo=UTC), mood="Fine", score=7, visits=2, remark="Great, thanks"),
    survey("s2", 32, datetime(2026, 11, 2, 8, 0, tzinfo=UTC), mood="Fine", score=9, remark="=cmd|' /C calc'!A0"),
    survey("s3", 33, datetime(2026, 11, 3, 8, 0, tzinfo=UTC), mood="Tired", score=4),
]
# A kind no form of the bot defines (a form since removed), with answers under the Survey's names.
RETIRED = CompletedResponse("x1", 41, 41, {"mood": "Tired", "score": 1}, datetime(2026, 11, 4, tzinfo=UTC), "retired")


def settings_of(backend: Backend) -> StorageSettings:
    """The settings the owner's commands read for `backend`."""
    if backend.is_mongo:
        return StorageSettings(
            storage=StorageKind.MONGO, mongo_url=backend.url, mongo_db=backend.place, mongo_driver=backend.driver,
            _env_file=None,
        )  # fmt: skip
    return StorageSettings(storage=StorageKind.SQLALCHEMY, database_url=backend.url, _env_file=None)


@pytest_asyncio.fixture
async def storages(backend: Backend) -> AsyncIterator[Storages]:
    if backend.name in SHARED_SERVERS:
        await drop_bot_tables(backend.url)
    opened = await backend.open_storages()
    yield opened
    await opened.close()
    if backend.name in SHARED_SERVERS:
        await drop_bot_tables(backend.url)


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
async def test_export_writes_awkward_answers_byte_for_byte(storages: Storages) -> None:
    for response in reversed(AWKWARD):  # saved out of order: the export is in completion order
        await storages.responses.save(response)
    everything = await storages.responses.completed()
    since_the_second = await storages.responses.completed(datetime(2026, 11, 2, tzinfo=UTC))

    signup = describe_form(Signup)
    assert render_export(everything, "csv", signup) == EXPECTED_CSV
    assert render_export(since_the_second, "json", signup) == EXPECTED_JSON
    assert render_export(everything, "jsonl", signup) == EXPECTED_JSONL


def test_a_spreadsheet_reads_the_csv_back_as_the_answers() -> None:
    text = render_export(AWKWARD, "csv", describe_form(Signup)).decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [row["handle"] for row in rows] == ['Ann, "Annie"', "Bob\nsecond line", "'=SUM(A1:A9)"]
    assert [row["shade"] for row in rows] == ["Blue", "🎉 <b>Red</b> & green", "Zöë; ünïcode"]
    assert json.loads(render_export(AWKWARD[1:], "json"))[0]["handle"] == "Bob\nsecond line"


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
async def test_stats_count_started_finished_abandoned_and_the_answers(storages: Storages) -> None:
    now = datetime.now(UTC)
    for response in AWKWARD:
        await storages.responses.save(response)
    await storages.responses.save(
        CompletedResponse(
            "r4", 14, 14, {"handle": "Dee", "years": 65, "shade": "Blue"}, now - timedelta(hours=1), SIGNUP
        )
    )
    # Counted by the database as Python counted them: True and 44.5 are not whole numbers, " Blue " is Blue.
    await storages.responses.save(CompletedResponse("r5", 15, 15, {"years": True, "shade": " Blue "}, now, SIGNUP))
    await storages.responses.save(CompletedResponse("r6", 16, 16, {"years": 44.5, "shade": 7}, now, SIGNUP))
    await storages.responses.save(CompletedResponse("r7", 17, 17, {"text": "Nice"}, now, kind="feedback"))
    await storages.fsm.put_record(FsmRecord("fsm:1:20:20", Signup.years.state, {"handle": "Eve"}, now))
    await storages.fsm.put_record(
        FsmRecord("fsm:1:21:21", Signup.shade.state, {"handle": "Fay", "years": 20}, now - timedelta(days=3))
    )
    await storages.fsm.put_record(FsmRecord("fsm:1:22:22", None, {"__applied_updates__": {"updates": [1]}}, now))

    stats = await count(storages, now, [describe_form(Signup)])

    assert render_stats(stats, timedelta(days=30)) == (
        "Signup forms\n"
        "  started           8\n"
        "  finished          6   75%\n"
        "  in progress       1  answered in the last 24 hours\n"
        "  abandoned         1  silent for longer; removed after 30 days (FSM_TTL)\n"
        "\n"
        "Years\n"
        "  18 to 65, median 35.5 (4 answers)\n"
        "\n"
        "Shade\n"
        "  Blue                      3   50%\n"
        "  🎉 <b>Red</b> & green      1   17%\n"
        "  Zöë; ünïcode              1   17%\n"
        "\n"
        "Other kinds, completed (no form of the bot defines them)\n"
        "  feedback                  1\n"
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
async def test_stats_tally_every_forms_answers_and_count_the_kinds_no_form_defines(storages: Storages) -> None:
    now = datetime.now(UTC)
    for response in [*SURVEYS, RETIRED, CompletedResponse("q1", 51, 51, {}, now)]:
        await storages.responses.save(response)
    await storages.fsm.put_record(FsmRecord("fsm:1:34:34", Survey.score.state, {Survey.mood.key: "Fine"}, now))
    await storages.fsm.put_record(FsmRecord("fsm:1:35:35", asked()[0].state, {}, now))

    shown = render_stats(
        await count(storages, now, list(map(describe_form, [Questionnaire, Survey]))), timedelta(days=30)
    )

    # Each form counts its own: the survey's responses and conversations are not the questionnaire's.
    assert shown.startswith(
        "Questionnaires\n"
        "  started           2\n"
        "  finished          1   50%\n"
        "  in progress       1  answered in the last 24 hours\n"
    )
    assert shown[shown.index("\nSurvey forms\n") :] == (
        "\n"
        "Survey forms\n"
        "  started           4\n"
        "  finished          3   75%\n"
        "  in progress       1  answered in the last 24 hours\n"
        "  abandoned         0  silent for longer; removed after 30 days (FSM_TTL)\n"
        "\n"
        "Mood\n"
        "  Fine                      2   67%\n"
        "  Tired                     1   33%\n"
        "\n"
        "Score\n"
        "  4 to 9, median 7 (3 answers)\n"
        "\n"
        "Visits\n"
        "  2 to 2, median 2 (1 answer)\n"
        "\n"
        "Other kinds, completed (no form of the bot defines them)\n"
        "  retired                   1\n"
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
async def test_export_writes_one_form_per_file_its_questions_as_columns(
    storages: Storages, backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answered = datetime(2026, 11, 5, tzinfo=UTC)
    for response in [*AWKWARD, *SURVEYS, RETIRED, CompletedResponse("q1", 51, 51, saved(), answered)]:
        await storages.responses.save(response)
    await storages.responses.describe_forms(described_forms())  # as the bot does at its start
    settings = settings_of(backend)

    assert await export(settings, "csv", None, tmp_path / "survey.csv", form_kind(Survey)) == 0
    keys = ",".join(question.key for question in questions(Survey))  # in the order they are asked
    assert (tmp_path / "survey.csv").read_bytes() == (
        f"\ufeffuser_id,chat_id,kind,{keys},completed_at\r\n"
        '31,31,survey,Fine,7,2,"Great, thanks",2026-11-01T08:00:00Z\r\n'
        "32,32,survey,Fine,9,,'=cmd|' /C calc'!A0,2026-11-02T08:00:00Z\r\n"
        "33,33,survey,Tired,4,,,2026-11-03T08:00:00Z\r\n"
    ).encode()
    assert capsys.readouterr().err == f"Exported 3 survey responses to {tmp_path / 'survey.csv'}\n"

    # Without --kind: the questionnaire's alone, its questions as columns, and a note naming the other kinds.
    assert await export(settings, "jsonl", None, tmp_path / "answers.jsonl") == 0
    [row] = map(json.loads, (tmp_path / "answers.jsonl").read_bytes().splitlines())
    assert row == {
        "user_id": 51,
        "chat_id": 51,
        "kind": "questionnaire",
        **saved(),
        "completed_at": "2026-11-05T00:00:00Z",
    }
    assert list(row) == ["user_id", "chat_id", "kind", *saved(), "completed_at"]
    assert capsys.readouterr().err == (
        f"Exported 1 questionnaire response to {tmp_path / 'answers.jsonl'}\n"
        "In the database but not in this export: 1 retired response, 3 signup responses, 3 survey responses; "
        "export each with --kind retired\n"
    )
    assert await export(settings, "jsonl", None, tmp_path / "signups.jsonl", SIGNUP) == 0
    assert (tmp_path / "signups.jsonl").read_bytes() == EXPECTED_JSONL
    assert capsys.readouterr().err.startswith(f"Exported 3 signup responses to {tmp_path / 'signups.jsonl'}\n")

    # A kind no form defines any more: its answers' names, sorted.
    assert await export(settings, "json", None, tmp_path / "retired.json", "retired") == 0
    assert json.loads((tmp_path / "retired.json").read_bytes()) == [
        {
            "user_id": 41,
            "chat_id": 41,
            "kind": "retired",
            "mood": "Tired",
            "score": 1,
            "completed_at": "2026-11-04T00:00:00Z",
        }
    ]
    assert list(json.loads((tmp_path / "retired.json").read_bytes())[0]) == [
        "user_id", "chat_id", "kind", "mood", "score", "completed_at"
    ]  # fmt: skip
    assert capsys.readouterr().err == f"Exported 1 retired response to {tmp_path / 'retired.json'}\n"

    with pytest.raises(ValueError, match=r"one form per export: these responses are of 2 kinds"):
        render_export([*AWKWARD, *SURVEYS], "csv")


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
async def test_expiry_removes_exactly_the_conversations_untouched_longer_than_the_ttl(storages: Storages) -> None:
    if isinstance(storages.fsm, MongoStorage):
        await storages.fsm.ensure_expiry_index(None)  # the sweep alone, not the server's TTL monitor
    now = datetime.now(UTC)
    ages_in_days = {"fsm:1:1:1": 31, "fsm:1:2:2": 29, "fsm:1:3:3": 45, "fsm:1:4:4": 0, "fsm:1:5:5": 30.5}
    for key, days in ages_in_days.items():
        await storages.fsm.put_record(FsmRecord(key, Signup.years.state, {"handle": key}, now - timedelta(days=days)))
    ttl = timedelta(days=30)

    assert await sweep(storages.fsm, ttl, limit=2) == 2  # bounded: the oldest first
    assert {record.key for record in await storages.fsm.records()} == {"fsm:1:2:2", "fsm:1:4:4", "fsm:1:5:5"}
    assert await sweep(storages.fsm, ttl) == 1
    assert await sweep(storages.fsm, ttl) == 0

    kept = await storages.fsm.records()
    assert [(record.key, record.state, record.data) for record in kept] == [
        ("fsm:1:2:2", Signup.years.state, {"handle": "fsm:1:2:2"}),
        ("fsm:1:4:4", Signup.years.state, {"handle": "fsm:1:4:4"}),
    ]


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
async def test_a_sweep_goes_on_while_batches_come_back_full_up_to_its_bound(storages: Storages) -> None:
    if isinstance(storages.fsm, MongoStorage):
        await storages.fsm.ensure_expiry_index(None)  # the sweep alone, not the server's TTL monitor
    old = datetime.now(UTC) - timedelta(days=40)
    await storages.fsm.put_records([FsmRecord(f"fsm:{n}:{n}", Signup.years.state, {}, old) for n in range(1, 8)])
    ttl = timedelta(days=30)

    assert await sweep(storages.fsm, ttl, limit=2, batches=2) == 4  # full batches, then the bound
    assert await sweep(storages.fsm, ttl, limit=2, batches=10) == 3  # 2, then 1: no more waiting
    assert await storages.fsm.records() == []


@pytest.mark.parametrize("backend", backend_params(*MONGO_BACKENDS), indirect=True)
async def test_on_mongo_the_server_expires_sessions_too_with_a_ttl_index(storages: Storages) -> None:
    fsm = storages.fsm
    assert isinstance(fsm, MongoStorage)

    async def ttl_indexes() -> list[int | None]:
        indexes = await fsm.collection.index_information()
        return [index.get("expireAfterSeconds") for index in indexes.values() if index["key"] == [("updated_at", 1)]]

    assert await ttl_indexes() == [30 * 86400]  # the factory's, for FSM_TTL's default
    await fsm.ensure_expiry_index(timedelta(hours=12))
    assert await ttl_indexes() == [12 * 3600]
    await fsm.ensure_expiry_index(None)
    assert await ttl_indexes() == []


async def test_migrate_reports_a_conflict_and_changes_nothing_unless_overwrite(tmp_path: Path) -> None:
    source = StorageSettings(database_url=f"sqlite:///{tmp_path / 'a.db'}", _env_file=None)
    target_url = f"sqlite:///{tmp_path / 'b.db'}"
    target = StorageSettings(database_url=target_url, _env_file=None)
    now = datetime.now(UTC)
    for settings, name in ((source, "Ann"), (target, "Bob")):
        opened = await Backend("sqlite", settings.database_url, "").open_storages()
        await opened.fsm.put_record(FsmRecord("fsm:1:1:1", Signup.years.state, {"handle": name}, now))
        await opened.fsm.put_record(FsmRecord(f"fsm:1:{name}:2", Signup.years.state, {"handle": name}, now))
        await opened.close()

    with pytest.raises(CommandError, match=r"different data for 1 key \(fsm:1:1:1\): nothing was copied"):
        await migrate(source, target_url, None, overwrite=False)
    assert [(r.key, r.data) for r in await records_of(target)] == [
        ("fsm:1:1:1", {"handle": "Bob"}),
        ("fsm:1:Bob:2", {"handle": "Bob"}),
    ]

    assert await migrate(source, target_url, None, overwrite=True) == 0
    assert [(r.key, r.data) for r in await records_of(target)] == [
        ("fsm:1:1:1", {"handle": "Ann"}),
        ("fsm:1:Ann:2", {"handle": "Ann"}),
        ("fsm:1:Bob:2", {"handle": "Bob"}),
    ]


async def test_migrate_pages_through_both_tables_and_a_conflict_on_the_last_page_stops_every_write(
    tmp_path: Path,
) -> None:
    """More than two pages (storage.records.PAGE_SIZE) of each: compared page by page before any write."""
    source = StorageSettings(database_url=f"sqlite:///{tmp_path / 'a.db'}", _env_file=None)
    target_url = f"sqlite:///{tmp_path / 'b.db'}"
    target = StorageSettings(database_url=target_url, _env_file=None)
    now = datetime.now(UTC)
    many = 2 * PAGE_SIZE + 7
    opened = await Backend("sqlite", source.database_url, "").open_storages()
    await opened.fsm.put_records(
        [FsmRecord(f"fsm:{n}:{n}", Signup.years.state, {"handle": f"U{n}"}, now, n) for n in range(many)]
    )
    await opened.responses.save_many(
        [CompletedResponse(f"r{n:05}", n, n, {"handle": f"U{n}"}, now + timedelta(seconds=n)) for n in range(many)]
    )
    await opened.close()

    assert await migrate(source, target_url, None, overwrite=False) == 0
    copied = await Backend("sqlite", target.database_url, "").open_storages()
    try:
        assert [(r.key, r.data, r.user_id) for r in await copied.fsm.records()] == sorted(
            (f"fsm:{n}:{n}", {"handle": f"U{n}"}, n) for n in range(many)
        )
        assert [r.response_id for r in await copied.responses.completed()] == [f"r{n:05}" for n in range(many)]
        # The last key in the source's order, changed in the target: a conflict on the last page.
        await copied.fsm.put_record(FsmRecord("fsm:999:999", Signup.years.state, {"handle": "other"}, now))
    finally:
        await copied.close()
    opened = await Backend("sqlite", source.database_url, "").open_storages()
    await opened.fsm.put_record(FsmRecord("fsm:0:0:new", Signup.years.state, {"handle": "new"}, now))  # first page
    await opened.close()

    with pytest.raises(CommandError, match=r"different data for 1 key \(fsm:999:999\)"):
        await migrate(source, target_url, None, overwrite=False)
    assert "fsm:0:0:new" not in {r.key for r in await records_of(target)}  # nothing was written


async def records_of(settings: StorageSettings) -> list[FsmRecord]:
    opened = await Backend("sqlite", settings.database_url, "").open_storages()
    try:
        return await opened.fsm.records()
    finally:
        await opened.close()


async def run_main(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """`python main.py ARGS` with only `env` as settings: exit code, stdout, stderr."""
    clean = {k: v for k, v in os.environ.items() if k not in {"STORAGE", "DATABASE_URL", "MONGO_URL", "MONGO_DB"}}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "main.py"), "--env-file", os.devnull, *args,
        cwd=cwd, env={**clean, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await finish(process, 120)
    assert process.returncode is not None
    return process.returncode, stdout, stderr


def target_for(name: str, mongo_url: str | None, tmp_path: Path) -> tuple[Backend, str]:
    """The target backend and the URL `migrate --to` takes for it."""
    if name in MONGO_BACKENDS:
        assert mongo_url is not None
        place = f"migrate_{tmp_path.name[-8:].replace('-', '_')}"
        return Backend(name, mongo_url, place), f"{mongo_url.rstrip('/')}/{place}"
    url = os.environ[SQL_URL_VARIABLES[name]]  # set, or backend_params skipped the case
    return Backend(name, url, ""), url


# An empty POSTGRES_TEST_URL leaves PostgreSQL out, as everywhere else.
@pytest.mark.parametrize("target_name", backend_params("postgresql", "mongo-pymongo"))
async def test_migrate_there_and_back_mid_questionnaire_and_the_bot_goes_on(
    target_name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    mongo_url = request.getfixturevalue("mongo_url") if target_name in MONGO_BACKENDS else None
    target, target_url = target_for(target_name, mongo_url, tmp_path)
    if not target.is_mongo:
        await drop_bot_tables(target.url)
    first = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'first' / 'bot.db'}"}
    back = f"sqlite:///{tmp_path / 'back' / 'bot.db'}"
    names = {user: told_apart(name) for user, name in ((1, "Ann"), (2, "Bob"), (3, "Cid"), (4, "Dee"))}
    said = {user: conversation(**answers) for user, answers in names.items()}
    expected = {user: replies(**answers) for user, answers in names.items()}
    # Users 1, 2 and 3 have answered 0, 1 and 2 questions (the last one's at most); user 4 all of them.
    sent = {user: min(answered, len(asked()) - 1) + 1 for user, answered in ((1, 0), (2, 1), (3, 2))}
    sent[4] = len(said[4])

    async def goes_on(bot: BotProcess, user: int, messages: int | None = None) -> None:
        """`user` sends the next `messages` of their conversation (None: the rest), each answered as expected."""
        until = len(said[user]) if messages is None else sent[user] + messages
        for text, reply in zip(said[user][sent[user] : until], expected[user][sent[user] : until], strict=True):
            assert await bot.say(user, text) == [reply]
        sent[user] = max(sent[user], min(until, len(said[user])))

    async with running_emulator(BotAPIEmulator()) as (emulator, api_url):
        async with BotProcess(emulator, api_url, tmp_path / "first.log", first) as bot:
            await bot.start()
            for user, count in sent.items():
                await bot.say(user, *said[user][:count], replies=count)
            code, _, errors = await run_main("migrate", "--to", target_url, env=first, cwd=tmp_path)
            assert (code, errors.strip()) == (
                2,
                f"error: a bot is running on {tmp_path / 'first' / 'bot.db'}: stop it first, then migrate",
            )
            await bot.stop()

        code, shown, errors = await run_main("migrate", "--to", target_url, env=first, cwd=tmp_path)
        assert code == 0, errors
        assert "conversations       4 copied, 0 there already" in shown  # user 4's record of applied updates too
        assert "answers             1 copied, 0 there already" in shown
        code, shown, _ = await run_main("migrate", "--to", target_url, env=first, cwd=tmp_path)
        assert code == 0
        assert "conversations       0 copied, 4 there already" in shown
        assert "answers             0 copied, 1 there already" in shown

        async with BotProcess(emulator, api_url, tmp_path / "target.log", bot_environment(target, tmp_path)) as bot:
            await bot.start()
            await goes_on(bot, 1, 1)
            await goes_on(bot, 2, 1)
            await goes_on(bot, 3)
            await bot.stop()
        finished_there = [user for user in (1, 2, 3) if sent[user] == len(said[user])]

        code, shown, errors = await run_main("migrate", "--from", target_url, "--to", back, env=first, cwd=tmp_path)
        assert code == 0, errors
        assert f"answers             {1 + len(finished_there)} copied" in shown  # and user 4's

        async with BotProcess(emulator, api_url, tmp_path / "back.log", {"DATABASE_URL": back}) as bot:
            await bot.start()
            await goes_on(bot, 1, 1)
            await goes_on(bot, 2)
            await goes_on(bot, 1)
            await bot.stop()

    assert all(shows_summary(expected[user][-1], **names[user]) for user in (1, 2, 3))  # each got their summary
    code, exported, _ = await run_main("export", "--format", "jsonl", env={"DATABASE_URL": back}, cwd=tmp_path)
    assert code == 0
    rows = sorted(map(json.loads, exported.splitlines()), key=lambda row: row["user_id"])
    assert [{key: row[key] for key in saved()} for row in rows] == [saved(**names[user]) for user in (1, 2, 3, 4)]
    if target.is_mongo:
        await target.drop()
    else:
        await drop_bot_tables(target.url)


async def test_an_expired_session_is_removed_by_the_running_bot_and_its_user_told_to_start(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'data' / 'bot.db'}", "FSM_TTL": "2s"}
    async with (
        running_emulator(BotAPIEmulator()) as (emulator, api_url),
        BotProcess(emulator, api_url, tmp_path / "bot.log", env) as bot,
    ):
        await bot.start()
        *first, last = conversation()
        assert await bot.say(1, *first) == replies()[: len(first)]  # at the last question
        for _ in range(100):  # the sweep runs every second with a TTL this short
            if "Removed 1 conversation(s) untouched for more than 0:00:02 (FSM_TTL)" in bot.output():
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"no expiry logged:\n{bot.output()[-2000:]}")
        assert await bot.say(1, last) == ["Send /start to fill in the questionnaire, or /help to learn more."]
        await bot.stop()


async def test_the_commands_answer_bad_input_in_one_line_with_exit_code_2(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"}
    for args, expected in [
        (
            ("stats",),
            f"error: there is no database at {tmp_path / 'bot.db'}: the bot makes it when it starts; "
            "check DATABASE_URL",
        ),
        (("export", "--format", "xml"), "error: argument --format: invalid choice: 'xml'"),
        (("export", "--since", "yesterday"), "error: argument --since: not a date: 'yesterday'"),
        (("migrate", "--to", "nonsense"), "error: --to is not a database URL"),
        (("migrate", "--to", "postgresql+psycopg2://bot:s3cret@db/bot"), "error: --to uses the synchronous driver"),
        (("migrate", "--to", "postgresql://bot:s3cret@127.0.0.1:1/none"), "error: cannot reach the target"),
        (("export", "--output", str(tmp_path / "no" / "such" / "folder.csv")), "error: [Errno 2] No such file"),
    ]:
        code, shown, errors = await run_main(*args, env=env, cwd=tmp_path)
        assert (code, shown) == (2, ""), errors
        assert errors.startswith(expected), errors
        assert errors.count("\n") == 1, errors
        assert "s3cret" not in errors
        if args == ("stats",):
            assert not (tmp_path / "bot.db").exists()  # reported, not created empty
            # From here on the database exists, as the bot's start leaves it.
            await (await Backend("sqlite", env["DATABASE_URL"], "").open_storages()).close()


async def test_a_sweep_that_fails_does_not_end_expiry(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[timedelta] = []

    class FailsOnce:
        async def expire(self, ttl: timedelta, limit: int) -> int:
            calls.append(ttl)
            if len(calls) == 1:
                raise RuntimeError("a bug in a sweep")
            return 0

    sweeper = ExpirySweeper(FailsOnce(), timedelta(seconds=4))  # type: ignore[arg-type]  # a sweep each second
    await sweeper.start()
    await asyncio.sleep(1.5)
    await sweeper.stop()  # and no error comes out of it

    assert len(calls) == 2
    assert "Expiry failed this time; it runs again later" in caplog.text


def test_an_exported_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    output = tmp_path / "answers.csv"
    write(b"name\r\nAnn\r\n", output)
    assert output.read_bytes() == b"name\r\nAnn\r\n"
    assert output.stat().st_mode & 0o777 == 0o600

    # Over a file that was readable by others: emptied, and readable by its owner only.
    output.chmod(0o644)
    write(b"name\r\n", output)
    assert output.read_bytes() == b"name\r\n"
    assert output.stat().st_mode & 0o777 == 0o600


async def test_export_names_the_known_kinds_for_an_unknown_one_and_overwrites_a_file_as_private(
    tmp_path: Path,
) -> None:
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"}
    opened = await Backend("sqlite", env["DATABASE_URL"], "").open_storages()
    await opened.responses.save(CompletedResponse("q1", 1, 1, saved(), datetime(2026, 11, 1, tzinfo=UTC)))
    await opened.responses.save(RETIRED)
    # As the bot describes its own forms at its start (none a test defines).
    bot_forms = [form for form in forms() if form.__module__.partition(".")[0] in ("handlers", "states")]
    await opened.responses.describe_forms(list(map(describe_form, bot_forms)))
    await opened.close()

    code, shown, errors = await run_main("export", "--kind", "nope", "--output", "nope.csv", env=env, cwd=tmp_path)
    assert (code, shown) == (2, "")
    # The bot's own forms, as described, and "retired", which the database holds.
    known = ", ".join(sorted({form_kind(form) for form in bot_forms} | {"retired"}))
    assert errors == f"error: no form has the kind 'nope': --kind takes one of {known}\n"
    assert not (tmp_path / "nope.csv").exists()

    output = tmp_path / "answers.csv"
    output.write_text("an older export\n")
    output.chmod(0o644)
    code, shown, errors = await run_main("export", "--output", str(output), env=env, cwd=tmp_path)
    assert (code, shown) == (0, ""), errors
    assert errors == (
        f"Exported 1 questionnaire response to {output}\n"
        "In the database but not in this export: 1 retired response; export each with --kind retired\n"
    )
    assert output.stat().st_mode & 0o777 == 0o600
    [row] = csv.DictReader(io.StringIO(output.read_text(encoding="utf-8-sig"), newline=""))
    assert {key: row[key] for key in saved()} == {key: str(value) for key, value in saved().items()}

    code, shown, errors = await run_main("stats", env=env, cwd=tmp_path)
    assert code == 0, errors
    assert shown.endswith(
        "\n\nOther kinds, completed (no form of the bot defines them)\n  retired                   1\n"
    )


def test_migrate_tells_a_true_from_a_one_and_30_from_30_0() -> None:
    """Stored JSON that differs is a conflict, even where Python's == calls the values equal."""
    assert not same_json({"agreed": True}, {"agreed": 1})
    assert not same_json({"age": 30}, {"age": 30.0})
    assert same_json({"name": "Ann", "age": 30}, {"age": 30, "name": "Ann"})


def imported_aiogram(errors: str) -> list[str]:
    """The aiogram modules a `python -X importtime` process imported, from what it wrote to stderr."""
    names = (line.rpartition("|")[2].strip() for line in errors.splitlines() if line.startswith("import time:"))
    return [name for name in names if name.partition(".")[0] == "aiogram"]


def without_import_times(errors: str) -> str:
    return "".join(line for line in errors.splitlines(keepends=True) if not line.startswith("import time:"))


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
async def test_the_owners_commands_import_no_aiogram_and_read_the_forms_the_bot_described(
    storages: Storages, backend: Backend, tmp_path: Path
) -> None:
    """stats, export and migrate start in well under a second and a fraction of the bot's memory: they
    never import aiogram (nor the bot's handlers), and know the forms from what the bot wrote at its start."""
    env = {"DATABASE_URL": backend.url} if not backend.is_mongo else {
        "STORAGE": "mongo", "MONGO_URL": backend.url, "MONGO_DB": backend.place, "MONGO_DRIVER": backend.driver,
    }  # fmt: skip
    python = ("-X", "importtime", str(ROOT / "main.py"))

    async def command(*args: str) -> tuple[int, str, str]:
        clean = {k: v for k, v in os.environ.items() if k not in {"STORAGE", "DATABASE_URL", "MONGO_URL", "MONGO_DB"}}
        process = await asyncio.create_subprocess_exec(
            sys.executable, *python, "--env-file", os.devnull, *args,
            cwd=tmp_path, env={**clean, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        shown, errors = await finish(process, 120)
        assert not imported_aiogram(errors), f"{args[0]} imported {imported_aiogram(errors)[:5]}"
        assert process.returncode is not None
        return process.returncode, shown, without_import_times(errors)

    # Before the bot has described its forms: the answers are counted by kind, and stats says why.
    await storages.responses.save(CompletedResponse("q1", 1, 1, saved(), datetime(2026, 11, 1, tzinfo=UTC)))
    code, shown, errors = await command("stats")
    assert (code, errors) == (0, "")
    assert shown == (
        "No forms described in this database yet: the bot describes them when it starts.\n\n"
        "Other kinds, completed (no form of the bot defines them)\n  questionnaire             1\n"
    )

    # Described as the bot describes them at its start: each form's section, its questions' columns in order.
    await storages.responses.describe_forms(described_forms())
    code, shown, errors = await command("stats")
    assert (code, errors) == (0, "")
    assert shown.startswith("Questionnaires\n  started           1\n  finished          1  100%\n")
    code, shown, errors = await command("export", "--format", "jsonl")
    assert (code, errors) == (0, "")
    assert list(json.loads(shown)) == ["user_id", "chat_id", "kind", *(q.key for q in asked()), "completed_at"]

    # migrate copies the description with the answers: stats on the copy reads as on the source.
    target = f"sqlite+aiosqlite:///{tmp_path / 'copy.db'}"
    code, shown, errors = await command("migrate", "--to", target)
    assert (code, errors) == (0, ""), shown
    copied = await Backend("sqlite", target, "").open_storages()
    try:
        assert await copied.responses.forms() == await storages.responses.forms()
    finally:
        await copied.close()


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
async def test_the_forms_described_are_the_last_starts_whole_in_the_order_of_their_kinds(
    storages: Storages,
) -> None:
    signup, survey = describe_form(Signup), describe_form(Survey)
    assert await storages.responses.forms() == []
    await storages.responses.describe_forms([survey, signup])
    assert await storages.responses.forms() == [signup, survey]  # by kind
    await storages.responses.describe_forms([signup, survey])
    assert await storages.responses.forms() == [signup, survey]

    # A release that changed a form and removed another: the description is the new one's alone.
    changed = FormInfo(signup.kind, signup.states[:2], signup.questions[:1])
    await storages.responses.describe_forms([changed])
    assert await storages.responses.forms() == [changed]


@pytest.mark.parametrize(
    "key",
    [
        StorageKey(bot_id=5, chat_id=77, user_id=77),
        StorageKey(bot_id=5, chat_id=-1001234567890, user_id=42),
        StorageKey(bot_id=5, chat_id=-100123, user_id=42, thread_id=7),
    ],
)
def test_the_owners_commands_read_a_default_keys_user_as_the_bots_key_builder_does(key: StorageKey) -> None:
    """migrate copies a record an older version wrote without a user id with its user, read from the
    key without aiogram: the same user aiogram's default key builder put there."""
    built = DefaultKeyBuilder().build(key)
    reader = user_reader(DefaultKeyBuilder())
    assert reader is not None
    assert default_key_user(built) == reader(built) == key.user_id
    assert default_key_user(DefaultKeyBuilder(with_bot_id=True).build(key) + ":x") is None  # another layout


def export_into_head(url: str) -> tuple[int, str]:
    """`python main.py export | head -c 100`: the exit code and what export wrote to stderr."""
    clean = {k: v for k, v in os.environ.items() if k not in {"STORAGE", "DATABASE_URL", "MONGO_URL", "MONGO_DB"}}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "--env-file", os.devnull, "export"],
        env={**clean, "DATABASE_URL": url}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.read(100).startswith("\ufeffuser_id,".encode())
        process.stdout.close()  # as `head` does once it has its lines
        errors = process.stderr.read().decode()
        return process.wait(60), errors
    finally:
        process.kill()
        process.wait()


async def test_export_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    """`python main.py export | head` is normal use: no error line when `head` has what it wanted."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    opened = await Backend("sqlite", url, "").open_storages()
    answered = datetime(2026, 11, 1, tzinfo=UTC)
    many = [CompletedResponse(f"r{n}", n, n, saved(), answered + timedelta(seconds=n)) for n in range(3000)]
    await opened.responses.save_many(many)  # well over a pipe's 64 KiB of CSV
    await opened.close()
    code, errors = await asyncio.to_thread(export_into_head, url)
    assert (code, errors) == (1, "")


@pytest.mark.parametrize("backend", ALL_BACKENDS, indirect=True)
async def test_starts_describing_other_forms_at_once_never_leave_a_reader_without_a_form(
    storages: Storages, backend: Backend
) -> None:
    """Replicas of two releases starting together (a deploy) each write their forms; a `stats` reading
    meanwhile always finds every kind both define, and the last writer's description stays whole."""
    old, new = [describe_form(Signup), describe_form(Survey)], [describe_form(Survey)]
    new[0] = FormInfo(new[0].kind, new[0].states, new[0].questions[:1])
    new.append(describe_form(Signup))
    await storages.responses.describe_forms(old)
    starts = [await backend.open_storages() for _ in range(4)]
    seen: list[set[str]] = []

    async def read_meanwhile() -> None:
        for _ in range(30):
            seen.append({form.kind for form in await storages.responses.forms()})

    try:
        await asyncio.gather(
            read_meanwhile(), *(start.responses.describe_forms(old if n % 2 else new) for n, start in enumerate(starts))
        )
    finally:
        for start in starts:
            await start.close()
    assert all(kinds == {"signup", "survey"} for kinds in seen), seen
    assert sorted(await storages.responses.forms(), key=lambda form: form.kind) in (
        sorted(old, key=lambda form: form.kind),
        sorted(new, key=lambda form: form.kind),
    )


@pytest.mark.parametrize("backend", backend_params(*MONGO_BACKENDS), indirect=True)
async def test_the_commands_mongo_client_waits_as_long_as_a_command_may_take(
    storages: Storages, backend: Backend
) -> None:
    """A count over a large collection takes longer than the bot's 10 s socket bound; on a server busy
    with it (nx-27017), the driver's heartbeat answered late must not cancel it (bench-scale failed so
    at 100,000 conversations)."""
    records = await open_records(settings_of(backend))
    try:
        assert isinstance(records.fsm, MongoRecords)
        pool = records.fsm.client.options.pool_options
        assert pool.socket_timeout == pool.connect_timeout == COMMAND_TIMEOUT_SECONDS
    finally:
        await records.close()
