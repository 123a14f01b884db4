"""Fixtures: real databases, and the real Dispatcher driven with a mocked Bot API session.

The helpers live in tests/support/. A configured server that does not answer
fails the tests; nothing is skipped for being down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiogram.fsm.storage.base import BaseStorage

from tests.support.backends import FLOW_BACKENDS, MONGO_BACKENDS, Backend, make_backend, release_routers
from tests.support.chat import ChatHarness
from tests.support.mongo_server import WireProtocolServer, configured_url, wait_until_answering


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = configured_url()
    if url is not None:
        wait_until_answering(url, 10)  # configured but down: every Mongo test errors
        yield url
        return
    server = WireProtocolServer(tmp_path_factory.mktemp("mongo"))
    server.start()
    yield server.url
    server.stop()


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
    yield harness
    await harness.close()
    await backend.drop()
