"""A real bot process in webhook mode: its settings, a free port, and waiting until it answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import ClientSession

from tests.support.mongo_server import free_port

SECRET = "test-secret_0123456789"
PATH = "/telegram/updates"

__all__ = ["PATH", "SECRET", "free_port", "until_healthy", "webhook_environment"]


def webhook_environment(port: int, database: Path | None = None) -> dict[str, str]:
    """The settings of a webhook replica on 127.0.0.1:`port` (on the SQLite file `database`, if given)."""
    environment = {
        "WEBHOOK_URL": f"http://127.0.0.1:{port}{PATH}",
        "WEBHOOK_SECRET": SECRET,
        "WEB_SERVER_HOST": "127.0.0.1",
        "WEB_SERVER_PORT": str(port),
    }
    if database is not None:
        environment["DATABASE_URL"] = f"sqlite+aiosqlite:///{database}"
    return environment


async def until_healthy(base: str) -> None:
    async with ClientSession() as session, asyncio.timeout(30):
        while True:
            try:
                async with session.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            await asyncio.sleep(0.05)
