"""Plain helpers shared by conftest, the factories and the tests (no fixtures here).

Kept out of ``conftest.py`` so that the contract-suite factories, which
conftest imports at collection time, can use them without a circular import.
"""

from __future__ import annotations

import os
import socket
from typing import Any, NoReturn, TypeVar

import pytest
import tornado.httputil
import tornado.web

from gosession_tornado import SessionManager, SessionMixin
from gosession_tornado.provider import Changes, Provider
from gosession_tornado.testing import _offline_handler

_P = TypeVar("_P", bound=Provider)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

REDIS = ("redis", "127.0.0.1", int(os.environ.get("GOSESSION_REDIS_PORT", "6379")))
MYSQL = ("mysql", "127.0.0.1", int(os.environ.get("GOSESSION_MYSQL_PORT", "3306")))
POSTGRESQL = ("postgresql", "127.0.0.1", int(os.environ.get("GOSESSION_PG_PORT", "5432")))


def fail_or_skip(msg: str) -> NoReturn:
    """Fail under ``CI=true`` (what a test needs must be there); elsewhere skip loudly.

    ``pytest -rs`` (the default here) lists every skip with its reason.
    """
    if IN_CI:
        pytest.fail(f"{msg} (CI=true: required; .ci/run and scripts/test.sh provide it)")
    pytest.skip(f"!!! SKIPPING: {msg} (under CI=true this fails)")


def require_provider(name: str) -> None:
    """Fail (CI) or skip loudly unless the built-in provider *name* can be imported."""
    from gosession_tornado import UnknownProviderError, lookup

    try:
        lookup(name)
    except UnknownProviderError as exc:
        fail_or_skip(f"provider {name!r} is not available: {exc}")


def server_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_server(server: tuple[str, str, int] | None) -> None:
    """Fail (CI) or skip loudly (elsewhere) unless *server* answers."""
    if server is None:
        return
    name, host, port = server
    if not server_answers(host, port):
        fail_or_skip(f"{name} server at {host}:{port} is not reachable")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_handler(cookie: str | None = None) -> tornado.web.RequestHandler:
    """A bare ``RequestHandler`` for a ``GET /`` (with *cookie*), to call the manager without a server."""
    return _offline_handler(cookie)


class DictStore(Provider):
    """The smallest complete provider: sessions in a dict (for tests of the machinery)."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, dict[Any, Any]] = {}

    async def session_init(self, max_lifetime: int, config: Any) -> None:
        pass

    async def session_read(self, sid: str) -> dict[Any, Any] | None:
        return self.data.get(sid)

    async def session_exist(self, sid: str) -> bool:
        return sid in self.data

    async def session_regenerate(self, old_sid: str, sid: str) -> dict[Any, Any]:
        self.data[sid] = self.data.pop(old_sid, {})
        return dict(self.data[sid])

    async def session_destroy(self, sid: str) -> None:
        self.data.pop(sid, None)

    async def session_all(self) -> int:
        return len(self.data)

    async def session_gc(self) -> None:
        pass

    async def session_release(self, sid: str, changes: Changes, expiry: int) -> None:
        if sid in self.data or changes.create:
            changes.apply(self.data.setdefault(sid, {}))


# ---------------------------------------------------------------- raw provider calls


def provider_of(m: SessionManager, cls: type[_P]) -> _P:
    """The started manager *m*'s provider, checked to be a *cls*."""
    actor = m._actor
    assert actor is not None
    assert isinstance(actor.provider, cls)
    return actor.provider


async def ask(m: SessionManager, message: Any) -> Any:
    """Send one raw provider message through *m*'s actor and return its result."""
    return await m._ask(message)


def create(**values: Any) -> Changes:
    """A release delta that creates the session with *values*."""
    return Changes(set=dict(values), create=True)


def update(deleted: tuple[Any, ...] = (), flushed: bool = False, **values: Any) -> Changes:
    """A release delta on an existing session: set *values*, delete *deleted*, flush first."""
    return Changes(set=dict(values), deleted=frozenset(deleted), flushed=flushed)


# ---------------------------------------------------------------- handlers


class SetKey(SessionMixin, tornado.web.RequestHandler):
    """``GET /set/<key>``: stores ``key = key``; answers the session id."""

    async def get(self, key: str) -> None:
        self.session[key] = key
        self.write({"sid": self.session.session_id})


class Dump(SessionMixin, tornado.web.RequestHandler):
    """``GET /dump``: the session's keys (sorted, as strings) and id."""

    async def get(self) -> None:
        self.write({"keys": sorted(str(k) for k in self.session), "sid": self.session.session_id})
