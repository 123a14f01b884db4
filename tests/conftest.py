"""Fixtures: real databases, and the real Dispatcher driven with a mocked Bot API session.

The helpers live in tests/support/. A configured server that does not answer
fails the tests; nothing is skipped for being down. Each session works in
databases of its own on the SQL servers (tests/support/databases.py), and no
process a test started outlives the session.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiogram.fsm.storage.base import BaseStorage

from tests.support.backends import FLOW_BACKENDS, MONGO_BACKENDS, Backend, make_backend, release_routers
from tests.support.chat import ChatHarness
from tests.support.databases import OwnDatabase, own_databases
from tests.support.mongo_server import WireProtocolServer, configured_url, wait_until_answering

# The longest files first: `make test`'s two workers take files in this order (pytest-xdist's
# --dist loadfile --no-loadscope-reorder; its default puts the files with the most tests first),
# so the long ones overlap the rest instead of ending the run alone.
LONGEST_FIRST = (
    "test_questions_change.py",
    "test_storm.py",
    "test_image.py",
    "test_standby.py",
    "test_telegram_faults.py",
    "test_replicas.py",
    "test_outbox.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order


def live_children() -> dict[int, str]:
    """This process's children that still run (zombies left out), by pid: their command lines."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone meanwhile
        state, parent = stat.rpartition(")")[2].split()[:2]
        if int(parent) == os.getpid() and state != "Z":
            children[int(entry.name)] = command
    return children


@pytest.fixture(scope="session", autouse=True)
def _no_process_outlives_the_session() -> Iterator[None]:
    """Each test stops what it starts (tests/support/bot_process.py); one that did not is killed here and named."""
    before = set(live_children()) if Path("/proc/self/stat").exists() else None
    yield
    if before is None:
        return  # no /proc to look in
    leftovers = {pid: command for pid, command in live_children().items() if pid not in before}
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    assert not leftovers, f"processes the tests started were still running at the end (killed now): {leftovers}"


@pytest.fixture(scope="session", autouse=True)
def session_databases(_no_process_outlives_the_session: None) -> Iterator[list[OwnDatabase]]:
    """A new database on each configured SQL server for this session only, dropped at its end."""
    with own_databases() as created:
        yield created


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = configured_url()
    if url is not None:
        wait_until_answering(url, 10)  # configured but down: every Mongo test errors
        yield url
        return
    with WireProtocolServer(tmp_path_factory.mktemp("mongo")) as server:
        yield server.url


@pytest.fixture
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Parametrize it indirectly with ALL_BACKENDS, SQL_BACKENDS or FLOW_BACKENDS."""
    name = request.param
    url = request.getfixturevalue("mongo_url") if name in MONGO_BACKENDS else None
    chosen = make_backend(name, tmp_path, url)
    yield chosen
    await chosen.drop()


@pytest.fixture
async def storage(backend: Backend) -> AsyncIterator[BaseStorage]:
    opened = await backend.open()
    yield opened
    await opened.close()


@pytest.fixture(autouse=True)
def _fresh_routers() -> Iterator[None]:
    yield
    release_routers()


@pytest.fixture(autouse=True)
def _handlers_keep_the_idiom(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A handler that sent its reply before its changes were saved (bot/guards.py) fails the test it ran in."""
    yield
    slips = [record.getMessage() for record in caplog.get_records("call") if record.name == "bot.guards"]
    assert not slips, f"a handler broke the reply idiom: {slips}"


@pytest.fixture(params=FLOW_BACKENDS)
async def chat(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ChatHarness]:
    name = request.param
    url = request.getfixturevalue("mongo_url") if name in MONGO_BACKENDS else None
    backend = make_backend(name, tmp_path, url)
    harness = ChatHarness(backend, await backend.open_storages())
    await harness.describe_forms()
    yield harness
    await harness.close()
    await backend.drop()
