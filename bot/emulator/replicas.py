"""Watch webhook replicas share one database: `make replicas` (`python -m bot.emulator.replicas`).

Starts the emulator on loopback, then N replicas of `python main.py` in
webhook mode on free ports, on the database your settings name (PostgreSQL,
MySQL/MariaDB or MongoDB: SQLite is one process's file). The emulator
delivers round-robin over the replicas, as a load balancer would, and prints
which replica took each message; you chat in this terminal as in the
sandbox. Kill a replica (its pid is printed) and the next message goes to
another one. Ctrl-C (or Ctrl-D) stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession

from bot.emulator.sandbox import HELP, SANDBOX_USER_ID, HandledUpdates, terminal_chat
from bot.emulator.server import EMULATOR_BOT_TOKEN, BotAPIEmulator, running_emulator
from config import Settings, SettingsError, StorageKind, load_settings

ROOT = Path(__file__).resolve().parents[2]
PATH = "/telegram/updates"
START_SECONDS = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def start_replica(env: dict[str, str], env_file: str, log: Path) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    with log.open("ab") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "main.py"),
            "--env-file",
            env_file,
            env=env | {"WEB_SERVER_HOST": "127.0.0.1", "WEB_SERVER_PORT": str(port)},
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    async with ClientSession() as session, asyncio.timeout(START_SECONDS):
        while True:
            if process.returncode is not None:
                msg = f"a replica exited with {process.returncode}; see {log}"
                raise RuntimeError(msg)
            with contextlib.suppress(ClientError):
                async with session.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        return process, base + PATH
            await asyncio.sleep(0.1)


async def run_replicas(settings: Settings, env_file: str, count: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="replicas-"))
    async with running_emulator(BotAPIEmulator()) as (emulator, api_url):
        env = {
            **os.environ,
            "BOT_TOKEN": EMULATOR_BOT_TOKEN,
            "TELEGRAM_API_URL": api_url,
            "WEBHOOK_URL": f"https://bot.example{PATH}",  # the load balancer's address, which this plays
            "WEBHOOK_SECRET": secrets.token_hex(16),
        }
        processes: list[asyncio.subprocess.Process] = []
        try:
            addresses = []
            for number in range(1, count + 1):
                process, address = await start_replica(env, env_file, folder / f"replica-{number}.log")
                processes.append(process)
                addresses.append(address)
                print(f"replica {number}: pid {process.pid}, {address}, log {folder / f'replica-{number}.log'}")
            emulator.webhook_targets = addresses
            handled = HandledUpdates()

            marking: set[asyncio.Task[None]] = set()

            async def mark_once_replied(update_id: int, before: int) -> None:
                """A replica answers once the update is committed; its replies follow from its outbox."""
                chat = emulator.chats[SANDBOX_USER_ID]
                for _ in range(50):  # up to 5 s for the first reply, then a moment for any after it
                    if len(chat.messages) > before:
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.3)
                handled.mark(update_id, len(chat.messages))

            def delivered_to(url: str, update: dict[str, Any], delivered: bool) -> None:
                print(
                    f"     [update {update['update_id']} -> replica {addresses.index(url) + 1}:"
                    f" {'handled' if delivered else 'failed, will be posted again'}]"
                )
                if delivered:
                    before = len(emulator.chats[SANDBOX_USER_ID].messages)
                    task = asyncio.create_task(mark_once_replied(update["update_id"], before))
                    marking.add(task)
                    task.add_done_callback(marking.discard)

            emulator.on_delivery = delivered_to
            print(HELP.format(user=SANDBOX_USER_ID, where=describe(settings)))
            stopping = asyncio.Event()
            await terminal_chat(emulator, stopping.set, sys.stdin, sys.stdout, handled)
        finally:
            for process in processes:
                if process.returncode is None:
                    process.terminate()
            await asyncio.gather(*(process.wait() for process in processes))


def describe(settings: Settings) -> str:
    if settings.storage is StorageKind.MONGO:
        return f"MongoDB database {settings.mongo_db!r}, shared by the replicas"
    return "the SQL database of DATABASE_URL, shared by the replicas"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--replicas", type=int, default=3, help="how many (default 3)")
    parser.add_argument("--env-file", default=".env", help="settings file to read (default: .env)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.env_file, bot_token=EMULATOR_BOT_TOKEN)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if settings.storage is StorageKind.SQLALCHEMY and settings.sqlite_path is not None:
        print(
            "error: replicas share one database, and a SQLite file belongs to one process: "
            "set DATABASE_URL to PostgreSQL or MySQL, or STORAGE=mongo",
            file=sys.stderr,
        )
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_replicas(settings, args.env_file, args.replicas))
    return 0


if __name__ == "__main__":
    sys.exit(main())
