"""A database that stops answering mid-query: every storage call gives up after its time bound."""

from __future__ import annotations

import asyncio
import os

import pytest

from storage import StorageUnavailableError
from tests.support.backends import MONGO_BACKENDS, Backend, storage_key
from tests.support.tcp_proxy import proxied


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


@pytest.mark.parametrize("name", MONGO_BACKENDS)
async def test_calls_on_a_stalled_connection_give_up_and_the_storage_recovers(
    request: pytest.FixtureRequest, name: str
) -> None:
    async with proxied(request.getfixturevalue("mongo_url"), 27017) as (proxy, through_proxy):
        # Motor runs each command on a thread of its own, which a stalled socket holds until socketTimeoutMS.
        storage = await Backend(name, through_proxy, "time_bound_many").open(
            timeout=1, connectTimeoutMS=2000, socketTimeoutMS=1000
        )
        try:
            keys = [storage_key(user_id) for user_id in range(1, 6)]
            await storage.set_state(keys[0], "s")
            proxy.stall()
            outcomes = await asyncio.gather(*(storage.get_state(key) for key in keys), return_exceptions=True)
            assert all(isinstance(outcome, StorageUnavailableError) for outcome in outcomes), outcomes
            proxy.up()
            # The stalled connections never answer: the storage must get past them on its own.
            for _ in range(10):
                try:
                    states = await asyncio.gather(*(storage.get_state(key) for key in keys))
                except StorageUnavailableError:
                    continue
                assert states == ["s", None, None, None, None]
                break
            else:
                pytest.fail("the storage did not recover within 10 tries")
        finally:
            proxy.up()
            await storage.close()
    await Backend(name, request.getfixturevalue("mongo_url"), "time_bound_many").drop()
