"""Raw HTTP/1.1 clients: an asyncio keep-alive connection and byte-exact blocking requests.

Written out instead of using Tornado's client for two reasons: the stress
run needs keep-alive connections (Tornado's simple client opens one
connection per request, which would cost more CPU than the server under
test on a 2-core machine), and the fuzz must send header bytes no
well-behaved client would (CR, LF, NUL, non-ASCII), then look at the
response's header *lines* as they came off the wire.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from typing import Any

__all__ = ["Connection", "HTTPProtocolError", "Response", "build_request", "parse_head", "raw_request"]

#: Largest response head or body either client accepts (a 100 kB session value fits).
MAX_BYTES = 8 * 1024 * 1024


class HTTPProtocolError(Exception):
    """The server's bytes are not an HTTP/1.1 response this client understands."""


@dataclasses.dataclass
class Response:
    """One response: status, header lines in wire order, body, and the raw head bytes."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes = b""
    #: ``time.monotonic()`` when the request's first byte was about to be written.
    sent_at: float = 0.0
    #: ``time.monotonic()`` when the whole response had been read.
    received_at: float = 0.0

    def get_all(self, name: str) -> list[str]:
        """Every value of header *name* (case-insensitive), in order."""
        lower = name.lower()
        return [v for k, v in self.headers if k.lower() == lower]

    def header(self, name: str) -> str | None:
        """The last value of header *name*, or ``None``."""
        values = self.get_all(name)
        return values[-1] if values else None

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)

    @property
    def latency(self) -> float:
        """Seconds from sending to the complete response."""
        return self.received_at - self.sent_at


def parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    """``(status, reason, [(name, value), ...])`` of a response head (without the blank line).

    Header values are decoded as latin-1, so every byte survives for the checks.
    """
    lines = head.split(b"\r\n")
    status_line = lines[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HTTPProtocolError(f"bad status line {status_line[:80]!r}")
    reason = parts[2] if len(parts) == 3 else ""
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise HTTPProtocolError(f"bad header line {line[:80]!r}")
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return int(parts[1]), reason, headers


def build_request(
    method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes | None = None,
    *, host: str = "127.0.0.1", close: bool = False,
) -> bytes:
    """The bytes of one request. Header values are encoded latin-1 *as given* (no checks)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (body or b"")


def _body_length(headers: list[tuple[str, str]]) -> tuple[int | None, bool]:
    length: int | None = None
    chunked = False
    for name, value in headers:
        lname = name.lower()
        if lname == "content-length":
            length = int(value)
        elif lname == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    return length, chunked


class Connection:
    """One keep-alive HTTP/1.1 connection to ``host:port`` (asyncio), reopened after an error."""

    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        #: Connections opened so far (reconnects included).
        self.opened = 0

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=MAX_BYTES)
            self.opened += 1
        return self._reader, self._writer

    def close(self) -> None:
        """Drop the connection (the next request opens a new one)."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Send one request and read its response (within ``timeout`` seconds).

        On any error the connection is dropped and the error raised: the caller
        does not know whether the server acted on the request.
        """
        data = build_request(method, target, headers, body, host=self.host)
        try:
            return await asyncio.wait_for(self._exchange(data), self.timeout)
        except BaseException:
            self.close()
            raise

    async def _exchange(self, data: bytes) -> Response:
        reader, writer = await self._open()
        sent_at = time.monotonic()
        writer.write(data)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status, reason, headers = parse_head(head[:-4])
        length, chunked = _body_length(headers)
        if chunked:
            body = bytearray()
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                body += await reader.readexactly(size + 2)
                del body[-2:]
            payload = bytes(body)
        elif length is not None:
            payload = await reader.readexactly(length)
        else:
            payload = await reader.read(MAX_BYTES)
            self.close()
        if any(k.lower() == "connection" and v.lower() == "close" for k, v in headers):
            self.close()
        return Response(status, reason, headers, payload, head, sent_at, time.monotonic())


def raw_request(host: str, port: int, data: bytes, *, timeout: float = 10.0) -> Response | None:
    """Send *data* (a whole request, ideally with ``Connection: close``) on a new socket.

    Returns the first response, or ``None`` when the server closed the
    connection without answering (Tornado does so for some malformed requests).
    """
    sent_at = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks: list[bytes] = []
        total = 0
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_BYTES:
                raise HTTPProtocolError("response too large")
    raw = b"".join(chunks)
    if not raw:
        return None
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise HTTPProtocolError(f"response without the end of its head: {raw[:120]!r}")
    status, reason, headers = parse_head(head)
    length, chunked = _body_length(headers)
    body = rest
    if chunked:
        out = bytearray()
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            out += rest[:size]
            rest = rest[size + 2:]
        body = bytes(out)
    elif length is not None:
        body = rest[:length]
    return Response(status, reason, headers, body, head, sent_at, time.monotonic())
