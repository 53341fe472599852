"""Helpers shared by the SQL provider tests (test_provider_mysql, test_provider_postgresql)
and their contract-suite factories: messages, managers, per-test tables, a TCP proxy
for outages, request handlers and the cross-process child script.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import tornado.web

from gosession_tornado import SessionManager, SessionMixin


def table_name(unique: str) -> str:
    """The session table of the test identified by *unique*."""
    return f"session_{unique}"


def sql_manager(provider: str, provider_config: str, *, timeout: float) -> SessionManager:
    """A manager of *provider* with cookie ``sid`` and *timeout* as ``provider_timeout`` (s)."""
    return SessionManager(
        {
            "provider": provider,
            "cookie_name": "sid",
            "provider_timeout": timeout,
            "provider_config": provider_config,
        }
    )


@contextlib.asynccontextmanager
async def fresh_table(
    server: tuple[str, str, int], drop_table: Callable[[str], Awaitable[None]]
) -> AsyncIterator[str]:
    """A fresh table name ``session_t<hex>`` on *server* (required); dropped afterwards."""
    from .conftest import require_server  # not at import: conftest imports the factories, they import us

    require_server(server)
    name = f"session_t{secrets.token_hex(5)}"
    try:
        yield name
    finally:
        await drop_table(name)


class Proxy:
    """A TCP forwarder on 127.0.0.1:*port* to the test server; stop() resets every connection.

    With ``hang=True`` it accepts connections and never answers (a hung server).
    Subclasses may override :meth:`_upstream` (client -> server) to look at the traffic.
    """

    def __init__(self, port: int, *, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self.hang = False
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        try:
            if self.hang:
                await reader.read()  # until reset by stop()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self.writers.add(up_writer)
            await asyncio.gather(self._upstream(reader, up_writer), self._pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            writer.close()

    async def _upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward client -> server."""
        await self._pipe(reader, writer)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for w in list(self.writers):
            sock = w.get_extra_info("socket")
            if sock is not None:  # RST, like a crashed server, not a polite FIN
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        self.writers.clear()
        tasks, self.tasks = list(self.tasks), set()
        await asyncio.gather(*tasks, return_exceptions=True)


class Value(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        if self.get_argument("set", None) is not None:
            self.session["v"] = self.get_argument("set")
        self.write({"v": self.session.get("v")})


_CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from gosession_tornado import Session, SessionManager

    async def main(config, sid, tag, n, start_at):
        async with SessionManager({"provider": "PROVIDER", "provider_config": config}) as m:
            await asyncio.sleep(max(0.0, start_at - time.time()))  # all children write at once
            for i in range(n):  # read-modify-write, one request at a time, as a handler would
                data = await m.read(sid)
                assert data is not None, "session vanished"
                s = Session(m, sid, data)
                s[f"{tag}{i}"] = len(data)
                await s.release()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
    """
)


def child_script(provider: str) -> str:
    """A ``python -c`` script: argv config sid tag n start_at; *n* read-modify-writes of one session."""
    return _CHILD.replace("PROVIDER", provider)
