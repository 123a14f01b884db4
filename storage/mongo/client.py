"""The async Mongo client: PyMongo's own (the default) or motor's, and what an outage raises through either."""

from __future__ import annotations

import inspect
from typing import Any, Literal

from pymongo.errors import ConnectionFailure, ExecutionTimeout, WTimeoutError

Driver = Literal["pymongo", "motor"]
SERVER_SELECTION_TIMEOUT_MS = 5_000
CONNECT_TIMEOUT_MS = 5_000  # the drivers wait 20 s by default
# A server that stops answering mid-command frees the connection after this
# long. The storage's own time bound answers the user sooner; this frees the
# socket (and, with motor, the thread that waits on it).
SOCKET_TIMEOUT_MS = 10_000
# What a server that is down, restarting or unreachable raises through PyMongo (and motor).
MONGO_OUTAGES: tuple[type[BaseException], ...] = (ConnectionFailure, ExecutionTimeout, WTimeoutError)


def create_client(url: str, driver: Driver = "pymongo", **client_kwargs: Any) -> Any:
    """An async client for `url`: PyMongo's own (the default) or motor's."""
    client_kwargs.setdefault("serverSelectionTimeoutMS", SERVER_SELECTION_TIMEOUT_MS)
    client_kwargs.setdefault("connectTimeoutMS", CONNECT_TIMEOUT_MS)
    client_kwargs.setdefault("socketTimeoutMS", SOCKET_TIMEOUT_MS)
    client_kwargs.setdefault("tz_aware", True)
    if driver == "motor":
        # Imported only when chosen: motor is deprecated and optional.
        from motor.motor_asyncio import AsyncIOMotorClient

        return AsyncIOMotorClient(url, **client_kwargs)
    from pymongo import AsyncMongoClient

    return AsyncMongoClient(url, **client_kwargs)


async def close_client(client: Any) -> None:
    # PyMongo's async close() is a coroutine; motor's is a plain method.
    result = client.close()
    if inspect.isawaitable(result):
        await result
