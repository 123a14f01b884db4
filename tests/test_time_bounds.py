"""A database that stops answering mid-query: every storage call gives up after its time bound."""

from __future__ import annotations

import os

import pytest

from storage import StorageUnavailableError
from tests.conftest import MONGO_BACKENDS, Backend, storage_key
from tests.tcp_proxy import proxied


@pytest.mark.parametrize("name", ["postgresql", *MONGO_BACKENDS])
async def test_a_stalled_call_gives_up(request: pytest.FixtureRequest, name: str) -> None:
    if name in MONGO_BACKENDS:
        url, port, options = request.getfixturevalue("mongo_url"), 27017, {}
    else:
        url = os.environ.get("POSTGRES_TEST_URL", "")
        if not url:
            pytest.skip("POSTGRES_TEST_URL is not set")
        port, options = 5432, {"pool_pre_ping": False}
    async with proxied(url, port) as (proxy, through_proxy):
        storage = await Backend(name, through_proxy, "time_bound").open(timeout=1, **options)
        try:
            await storage.set_state(storage_key(), "s")
            proxy.stall()
            with pytest.raises(StorageUnavailableError, match="did not finish within 1 s"):
                await storage.get_state(storage_key())
        finally:
            proxy.up()
            await storage.close()
    await Backend(name, url, "time_bound").drop()
