"""``gosession_tornado.testing``: pre-made sessions and stored-data reads on every provider,
the ``AsyncHTTPTestCase`` mixin, and the "Testing your app" page's examples (executed).
"""

from __future__ import annotations

import datetime
import decimal
import json
import pathlib
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import tornado.httputil
import tornado.testing
import tornado.web
from tornado.escape import json_decode

from gosession_tornado import SessionManager, SessionMixin
from gosession_tornado.testing import (
    MadeSession,
    SessionTestMixin,
    make_session,
    make_session_cookie,
    read_session,
    session_cookie,
)

from .conftest import Client, ManagerFactory

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"


class Show(SessionMixin, tornado.web.RequestHandler):
    """``GET /show``: the session as the request sees it."""

    def get(self) -> None:
        self.write({
            "sid": self.session.session_id,
            "new": self.session.is_new,
            "data": {str(k): repr(v) for k, v in self.session.items()},
            "expiry_age": self.session.get_expiry_age(),
        })


class Bump(SessionMixin, tornado.web.RequestHandler):
    """``GET /bump``: ``n += 1``."""

    def get(self) -> None:
        self.session["n"] = self.session.get("n", 0) + 1
        self.write({"n": self.session["n"]})


class Logout(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        await self.session_destroy()


HANDLERS = [(r"/show", Show), (r"/bump", Bump), (r"/logout", Logout)]
Serve = Callable[..., Awaitable[Client]]


async def show(client: Client, cookie: str | None) -> dict[str, Any]:
    headers = {"Cookie": cookie} if cookie is not None else {}
    resp = await client.fetch("/show", headers=headers, use_jar=False)
    assert resp.code == 200
    data: dict[str, Any] = json.loads(resp.body)
    return data


# ---------------------------------------------------------------- every provider


async def test_made_session_is_what_the_next_request_sees(
    manager_factory: ManagerFactory, serve: Serve
) -> None:
    manager = await manager_factory()
    client = await serve(HANDLERS, session_manager=manager)
    values = {"user": "ann", "price": decimal.Decimal("9.50"), 3: ("t", b"\x00")}
    made = await make_session(manager, values)
    name = manager.config.cookie_name
    assert made.cookie.startswith(f"{name}=") and made.headers == {"Cookie": made.cookie}
    assert made.cookie_value == made.cookie[len(name) + 1:]
    seen = await show(client, made.cookie)
    assert seen["sid"] == made.session_id and seen["new"] is False
    assert seen["data"] == {str(k): repr(v) for k, v in values.items()}
    assert await read_session(manager, made) == values
    assert await read_session(manager, made.cookie) == values
    assert await read_session(manager, f"other=1; {made.cookie}; more=2") == values
    if not manager.client_side:
        assert await read_session(manager, made.session_id) == values
        assert await manager.read(made.session_id) == values

    # A request changes it; read_session sees the change (the cookie provider's is in the new cookie).
    resp = await client.fetch("/bump", headers=made.headers, use_jar=False)
    assert resp.code == 200
    if manager.client_side:
        reissued = session_cookie(manager, resp)
        assert reissued is not None and reissued != made.cookie
        assert (await read_session(manager, reissued) or {}).get("n") == 1
    else:
        assert (await read_session(manager, made) or {}).get("n") == 1


async def test_empty_session_is_stored_and_usable(manager_factory: ManagerFactory, serve: Serve) -> None:
    manager = await manager_factory()
    client = await serve(HANDLERS, session_manager=manager)
    made = await make_session(manager)
    assert await read_session(manager, made) == {}
    seen = await show(client, made.cookie)
    assert (seen["sid"], seen["new"], seen["data"]) == (made.session_id, False, {})
    cookie = await make_session_cookie(manager, {})
    assert (await show(client, cookie))["new"] is False


async def test_unknown_and_destroyed_sessions_read_as_none(
    manager_factory: ManagerFactory, serve: Serve
) -> None:
    manager = await manager_factory()
    client = await serve(HANDLERS, session_manager=manager)
    assert await read_session(manager, manager.new_sid()) is None
    assert await read_session(manager, "not a session") is None
    assert await read_session(manager, f"{manager.config.cookie_name}=") is None
    made = await make_session(manager, {"user": "ann"})
    resp = await client.fetch("/logout", headers=made.headers, use_jar=False)
    assert resp.code == 200
    assert session_cookie(manager, resp) is None, "a destroyed session's cookie is expired"
    assert any(h.startswith(f"{manager.config.cookie_name}=;") or "Max-Age=0" in h
               for h in resp.headers.get_list("Set-Cookie"))
    if not manager.client_side:  # a cookie session lives in the cookie: nothing to delete on the server
        assert await read_session(manager, made) is None


# ---------------------------------------------------------------- options


async def test_hashed_ids_expiry_and_prefix(tmp_path: pathlib.Path, serve: Serve) -> None:
    manager = SessionManager("file", {
        "provider_config": str(tmp_path), "hash_session_ids": True, "session_id_prefix": "app-",
    })
    try:
        client = await serve(HANDLERS, session_manager=manager)
        made = await make_session(manager, {"user": "ann"}, expiry=600)
        assert made.session_id.startswith("app-")
        assert made.cookie == f"gosessionid={made.session_id}"
        assert not list(tmp_path.rglob(made.session_id)), "the store keeps the id in the clear"
        assert await manager.read(made.session_id) == {"user": "ann"}
        assert (await show(client, made.cookie))["expiry_age"] == 600
        moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=90)
        cookie = await make_session_cookie(manager, expiry=moment)
        assert 85 <= (await show(client, cookie))["expiry_age"] <= 90
        with pytest.raises(ValueError, match="destroy the session"):
            await make_session(manager, {"a": 1}, expiry=-1)
        with pytest.raises(TypeError, match="'bad'"):
            await make_session(manager, {"bad": object()})
        with pytest.raises(TypeError, match="read_session"):
            await read_session(manager, 42)  # type: ignore[arg-type]
    finally:
        await manager.close()


async def test_without_set_cookie_the_cookie_still_carries_the_id(serve: Serve) -> None:
    manager = SessionManager("memory", cookie_name="sid", enable_set_cookie=False)
    try:
        client = await serve(HANDLERS, session_manager=manager)
        made = await make_session(manager, {"k": 1})
        assert made.cookie == f"sid={made.session_id}"
        assert (await show(client, made.cookie))["data"] == {"k": "1"}
    finally:
        await manager.close()


def test_session_cookie_reads_set_cookie_headers() -> None:
    manager = SessionManager("memory", cookie_name="sid")
    assert session_cookie(manager, ["sid=abc; Path=/; HttpOnly"]) == "sid=abc"
    assert session_cookie(manager, "sid=abc; Path=/") == "sid=abc"
    assert session_cookie(manager, ["sid=abc; Path=/", "sid=; Path=/; Max-Age=0"]) is None
    assert session_cookie(manager, ["other=1", "sidx=2"]) is None
    headers = tornado.httputil.HTTPHeaders()
    headers.add("Set-Cookie", "sid=1; Path=/")
    headers.add("Set-Cookie", "sid=2; Path=/")
    assert session_cookie(manager, headers) == "sid=2"


# ---------------------------------------------------------------- AsyncHTTPTestCase


class MixinTest(SessionTestMixin, tornado.testing.AsyncHTTPTestCase):
    """The mixin with two named managers; the managers are closed at tearDown."""

    def get_app(self) -> tornado.web.Application:
        self.main = SessionManager("memory", cookie_name="sid")
        self.prefs = SessionManager("memory", cookie_name="prefs")
        return tornado.web.Application(HANDLERS, session_managers={"main": self.main, "prefs": self.prefs})

    def tearDown(self) -> None:
        super().tearDown()
        assert self.main.closed and self.prefs.closed

    def test_make_read_and_follow_a_session(self) -> None:
        made = self.make_session({"n": 41})
        assert isinstance(made, MadeSession)
        assert self.get_session_manager("") is self.main
        resp = self.fetch("/bump", headers=made.headers)
        assert json_decode(resp.body) == {"n": 42}
        assert self.read_session(made.session_id) == {"n": 42}
        prefs = self.make_session_cookie({"theme": "dark"}, name="prefs")
        assert prefs.startswith("prefs=")
        assert self.read_session(prefs, name="prefs") == {"theme": "dark"}
        assert self.read_session(prefs) is None  # not a main-session cookie
        fresh = self.fetch("/bump")
        cookie = self.session_cookie(fresh)
        assert cookie is not None and self.read_session(cookie) == {"n": 1}
        with pytest.raises(KeyError, match="no session manager 'nope'"):
            self.get_session_manager("nope")


# ---------------------------------------------------------------- the docs page's examples


def test_docs_examples_pass_under_pytest() -> None:
    """docs/examples/testing_*.py run as a user would run them, in pytest-asyncio's strict mode too."""
    files = [str(EXAMPLES / "testing_asynchttp.py"), str(EXAMPLES / "testing_pytest.py")]
    for mode in ("auto", "strict"):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", f"asyncio_mode={mode}",
             *files],
            cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
        )
        assert proc.returncode == 0, f"{mode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
        assert "5 passed" in proc.stdout, proc.stdout


def test_docs_page_includes_the_examples() -> None:
    page = (ROOT / "docs" / "testing.rst").read_text(encoding="utf-8")
    for name in ("testing_app.py", "testing_asynchttp.py", "testing_pytest.py"):
        assert f"literalinclude:: examples/{name}" in page, name
    index = (ROOT / "docs" / "index.rst").read_text(encoding="utf-8")
    assert re.search(r"^ +testing$", index, re.M), "docs/index.rst's toctree lacks the testing page"
