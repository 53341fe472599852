"""Shared fixtures: real servers, a Tornado server per test, and the contract-suite factories.

Servers: :func:`require_server` (from ``tests/support.py``) checks that a
loopback server answers. When it does not, the test **fails** under
``CI=true`` and is skipped (with a loud reason) elsewhere; :func:`fail_or_skip`
does the same for any other missing prerequisite (a binary, a socket).

Contract suite: every module ``tests/factories/factory_<name>.py`` defines::

    CLIENT_SIDE: bool                 # True for the cookie provider
    SERVER: tuple[str, str, int] | None   # ("redis", "127.0.0.1", 6379) or None
    def config(tmp_path, unique) -> dict  # SessionManager config for this provider
    async def cleanup(unique) -> None     # optional: drop keys/tables the test made

and the ``manager_factory`` fixture is parametrized over all of them.
"""

from __future__ import annotations

import contextlib
import importlib
import pathlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any

import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
import tornado.web

from gosession_tornado import SessionManager
from reliability.model import parse_set_cookie

from .support import (  # re-exported: tests import them from here
    IN_CI,
    MYSQL,
    POSTGRESQL,
    REDIS,
    fail_or_skip,
    free_port,
    require_server,
    server_answers,
)

HERE = pathlib.Path(__file__).parent

__all__ = [
    "IN_CI", "MYSQL", "POSTGRESQL", "REDIS", "fail_or_skip", "free_port", "require_server",
    "server_answers",
]


# ---------------------------------------------------------------- HTTP


class Client:
    """A tiny HTTP client with a cookie jar, for talking to a test server."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.cookies: dict[str, str] = {}
        self.http = tornado.httpclient.AsyncHTTPClient(force_instance=True)

    async def fetch(
        self, path: str, *, method: str = "GET", body: str | bytes | None = None,
        headers: dict[str, str] | None = None, use_jar: bool = True, **kw: Any,
    ) -> tornado.httpclient.HTTPResponse:
        hdrs = dict(headers or {})
        if use_jar and self.cookies and "Cookie" not in hdrs:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if method in ("POST", "PUT") and body is None:
            body = b""
        resp = await self.http.fetch(
            self.base_url + path, method=method, body=body, headers=hdrs,
            raise_error=False, follow_redirects=False, **kw,
        )
        if use_jar:
            for header in resp.headers.get_list("Set-Cookie"):
                name, value, attrs = parse_set_cookie(header)
                if attrs.get("max-age") == "0" or value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
        return resp

    def close(self) -> None:
        self.http.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """``client = await serve(handlers, **settings)``: run an Application on 127.0.0.1."""
    servers: list[tornado.httpserver.HTTPServer] = []
    clients: list[Client] = []

    async def start(handlers: list[Any], **settings: Any) -> Client:
        app = tornado.web.Application(handlers, **settings)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        port = sockets[0].getsockname()[1]
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        servers.append(server)
        client = Client(f"http://127.0.0.1:{port}")
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()
    for server in servers:
        server.stop()
        await server.close_all_connections()


# ---------------------------------------------------------------- contract


def _factory_modules() -> dict[str, ModuleType]:
    mods: dict[str, ModuleType] = {}
    for path in sorted((HERE / "factories").glob("factory_*.py")):
        name = path.stem.removeprefix("factory_")
        mods[name] = importlib.import_module(f"tests.factories.{path.stem}")
    return mods


FACTORIES = _factory_modules()


class ManagerFactory:
    """Builds started managers for one provider and cleans up after the test."""

    def __init__(self, name: str, module: ModuleType, tmp_path: pathlib.Path) -> None:
        self.name = name
        self.module = module
        self.tmp_path = tmp_path
        self.unique = f"t{secrets.token_hex(4)}"
        self.client_side: bool = getattr(module, "CLIENT_SIDE", False)
        self.managers: list[SessionManager] = []

    def config(self, **overrides: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = dict(self.module.config(self.tmp_path, self.unique))
        cfg.update(overrides)
        return cfg

    async def __call__(self, **overrides: Any) -> SessionManager:
        manager = SessionManager(self.config(**overrides))
        await manager.start()
        self.managers.append(manager)
        return manager

    async def close(self) -> None:
        for manager in self.managers:
            await manager.close()
        cleanup = getattr(self.module, "cleanup", None)
        if cleanup is not None:
            await cleanup(self.unique)


@pytest.fixture(params=sorted(FACTORIES))
async def manager_factory(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> AsyncIterator[ManagerFactory]:
    """A :class:`ManagerFactory` for each provider in ``tests/factories``."""
    async with open_factory(request.param, tmp_path) as factory:
        yield factory


@contextlib.asynccontextmanager
async def open_factory(name: str, tmp_path: pathlib.Path) -> AsyncIterator[ManagerFactory]:
    """The factory of provider *name* (its server required), closed and cleaned up on exit."""
    module = FACTORIES[name]
    require_server(getattr(module, "SERVER", None))
    factory = ManagerFactory(name, module, tmp_path)
    try:
        yield factory
    finally:
        await factory.close()

