"""`python -m tests.support.lock_holder BACKEND URL PLACE`: a replica that takes user 4's lock and hangs.

The test kills it with -9 while it holds the lock, as a replica can die.
"""

from __future__ import annotations

import asyncio
import sys

from aiogram.fsm.storage.base import BaseEventIsolation

from storage.mongo.client import create_client
from storage.mongo.isolation import MongoEventIsolation
from storage.sql.isolation import SQLEventIsolation
from tests.support.backends import MONGO_BACKENDS, Backend, storage_key


async def hold(backend: Backend) -> None:
    isolation: BaseEventIsolation
    if backend.is_mongo:
        isolation = MongoEventIsolation(create_client(backend.url, backend.driver)[backend.place])
    else:
        isolation = SQLEventIsolation.from_url(backend.url)
    async with isolation.lock(storage_key(4)):
        print("locked", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    name, url, place = sys.argv[1:4]
    assert name in (*MONGO_BACKENDS, "postgresql", "mysql")
    asyncio.run(hold(Backend(name, url, place)))
