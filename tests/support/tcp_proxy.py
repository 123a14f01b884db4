"""A loopback TCP proxy the tests can cut, to take a database away from the bot and bring it back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

from tests.support.mongo_server import free_port


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target.

    `down()` drops every connection and refuses new ones; `hang()` drops them and
    accepts new ones that never answer; `stall()` keeps the connections open but
    stops passing bytes on, like a server stuck mid-query; `up()` forwards again;
    `restart()` drops every connection and serves new ones at once.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.mode = "up"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        self._drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def up(self) -> None:
        self.mode = "up"

    def down(self) -> None:
        self.mode = "down"
        self._drop_connections()

    def restart(self) -> None:
        """Like a server restart between two calls: every open connection drops, new ones are served."""
        self.mode = "up"
        self._drop_connections()

    def stall(self) -> None:
        self.mode = "stall"

    def hang(self) -> None:
        self.mode = "hang"
        self._drop_connections()

    def _drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            client_writer.transport.abort()
            return
        self._writers.add(client_writer)
        if self.mode == "hang":
            await client_reader.read()  # swallow everything until the client gives up
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.add(server_writer)
        await asyncio.gather(
            self._pipe(client_reader, server_writer),
            self._pipe(server_reader, client_writer),
            return_exceptions=True,
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                if self.mode != "stall":
                    writer.write(chunk)
                    await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()


@contextlib.asynccontextmanager
async def proxied(url: str, default_port: int) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A started proxy to the server `url` names, and `url` rewritten to go through it."""
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or default_port)
    await proxy.start()
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    try:
        yield proxy, urlunsplit(parts._replace(netloc=netloc))
    finally:
        await proxy.close()
