"""Testing with pytest and pytest-asyncio (works in its ``strict`` and ``auto`` modes).

Run it with ``python -m pytest docs/examples/testing_pytest.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
from gosession_tornado import SessionManager
from gosession_tornado.testing import (
    make_session,
    make_session_cookie,
    read_session,
    session_cookie,
)

from testing_app import make_app


@pytest_asyncio.fixture
async def manager() -> AsyncIterator[SessionManager]:
    manager = SessionManager("memory", cookie_name="sid")
    yield manager
    await manager.close()


@pytest_asyncio.fixture
async def base_url(manager: SessionManager) -> AsyncIterator[str]:
    """The app served on a free port of 127.0.0.1, in the test's event loop."""
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(make_app(manager))
    server.add_sockets(sockets)
    yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    server.stop()
    await server.close_all_connections()


async def fetch(url: str, **kwargs: Any) -> tornado.httpclient.HTTPResponse:
    client = tornado.httpclient.AsyncHTTPClient()
    return await client.fetch(url, raise_error=False, **kwargs)


@pytest.mark.asyncio
async def test_logged_in_user_sees_the_profile(
    manager: SessionManager, base_url: str
) -> None:
    cookie = await make_session_cookie(manager, {"user": "ann"})
    response = await fetch(f"{base_url}/profile", headers={"Cookie": cookie})
    assert response.code == 200
    assert json.loads(response.body) == {"user": "ann", "views": 1}
    assert await read_session(manager, cookie) == {"user": "ann", "views": 1}


@pytest.mark.asyncio
async def test_logout_destroys_the_session(
    manager: SessionManager, base_url: str
) -> None:
    made = await make_session(manager, {"user": "ann"})
    response = await fetch(
        f"{base_url}/logout", method="POST", body=b"", headers=made.headers
    )
    assert response.code == 200
    assert session_cookie(manager, response) is None  # the cookie was expired
    assert await read_session(manager, made.session_id) is None
