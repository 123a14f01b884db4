"""A database that stops answering mid-query: every storage call gives up after its time bound."""

from __future__ import annotations

import os

import pytest
from sqlalchemy.engine import make_url

from config import MongoDriver
from storage import MongoStorage, SQLAlchemyStorage, StorageUnavailableError
from tests.conftest import Backend, storage_key
from tests.tcp_proxy import TcpProxy


async def test_stalled_postgresql_call_gives_up() -> None:
    url = os.environ.get("POSTGRES_TEST_URL")
    if not url:
        pytest.skip("POSTGRES_TEST_URL is not set")
    target = make_url(url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    await proxy.start()
    proxied = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    storage = await SQLAlchemyStorage.from_url(proxied, table_name="fsm_time_bound", timeout=1, pool_pre_ping=False)
    try:
        await storage.set_state(storage_key(), "s")
        proxy.stall()
        with pytest.raises(StorageUnavailableError, match="did not finish within 1 s"):
            await storage.get_state(storage_key())
    finally:
        proxy.up()
        await storage.close()
        await proxy.close()
        await Backend("postgresql", url, "fsm_time_bound").drop()


@pytest.mark.parametrize("driver", ["pymongo", "motor"])
async def test_stalled_mongo_call_gives_up(mongo_url: str, driver: MongoDriver) -> None:
    target = make_url(mongo_url.replace("mongodb://", "mongodb+x://"))
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 27017)
    await proxy.start()
    storage = MongoStorage.from_url(f"mongodb://127.0.0.1:{proxy.port}", driver, db_name="time_bound", timeout=1)
    try:
        await storage.set_state(storage_key(), "s")
        proxy.stall()
        with pytest.raises(StorageUnavailableError, match="did not finish within 1 s"):
            await storage.get_state(storage_key())
    finally:
        proxy.up()
        await storage.close()
        await proxy.close()
        await Backend(f"mongo-{driver}", mongo_url, "time_bound").drop()
