"""A MongoDB server for the tests: MONGO_TEST_URL if set, else nx-27017 on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from pymongo import MongoClient
from pymongo.errors import PyMongoError

START_SECONDS = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_answering(url: str, seconds: float) -> None:
    """Raise unless a server at `url` answers ping within `seconds`."""
    client: MongoClient[dict[str, object]] = MongoClient(url, serverSelectionTimeoutMS=int(seconds * 1000))
    try:
        client.admin.command("ping")
    finally:
        client.close()


class WireProtocolServer:
    """nx-27017 (MongoDB's wire protocol, data in one SQLite file) as a child process.

    `with WireProtocolServer(folder) as server:` starts it and stops it on the way out;
    a start that fails stops what it started.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"mongodb://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        with (self.folder / "nx-27017.out").open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nx_27017.nx_27017",
                    "--db",
                    str(self.folder / "mongo.db"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-file",
                    str(self.folder / "nx-27017.log"),
                    "--pid-file",
                    str(self.folder / "nx-27017.pid"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                wait_until_answering(self.url, 1)
                return
            except PyMongoError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    output = (self.folder / "nx-27017.out").read_text(errors="replace")
                    msg = f"nx-27017 did not start on port {self.port}:\n{output}"
                    raise RuntimeError(msg) from None

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 10 s, then reaped; nothing if it is not running."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def configured_url() -> str | None:
    return os.environ.get("MONGO_TEST_URL") or None
