"""gorilla/sessions features, over HTTP, for every provider.

Flashes (read once), several named sessions per request (each with its own
cookie and provider), per-session lifetime ("remember me", gorilla's MaxAge),
and cookie attributes per manager and per session.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import tornado.escape
import tornado.web
from cryptography.fernet import Fernet

from gosession_tornado import ConfigError, Session, SessionManager, SessionMixin

from .conftest import ManagerFactory

KEY = Fernet.generate_key().decode("ascii")
SID = "0123456789abcdef" * 2


def set_cookies(resp: Any, name: str) -> list[str]:
    return [h for h in resp.headers.get_list("Set-Cookie") if h.startswith(f"{name}=")]


def attrs(header: str) -> dict[str, str]:
    """The attributes of a Set-Cookie header, names lowercased (flags map to "")."""
    out: dict[str, str] = {}
    for part in header.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        out[k.lower()] = v
    return out


async def fetch(client: Any, path: str, name: str) -> Any:
    """``client.fetch`` that also files *name*'s Set-Cookie in the jar by hand.

    The conftest jar parses with :mod:`http.cookies`, which (Python 3.11)
    drops a whole header that carries the ``Partitioned`` attribute.
    """
    resp = await client.fetch(path)
    headers = set_cookies(resp, name)
    if headers:
        value = headers[-1].split(";", 1)[0].split("=", 1)[1]
        if attrs(headers[-1]).get("max-age") == "0" or not value:
            client.cookies.pop(name, None)
        else:
            client.cookies[name] = value
    return resp


def body(resp: Any) -> Any:
    assert resp.code == 200, resp.body
    return tornado.escape.json_decode(resp.body)


# ---------------------------------------------------------------- handlers


class Flash(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        key = self.get_argument("key", "_flash")
        add = self.get_argument("add", None)
        if add is not None:
            self.session.add_flash(add, key=key)
            self.write({"added": add})
        else:
            self.write({"flashes": self.session.flashes(key=key)})


class Two(SessionMixin, tornado.web.RequestHandler):
    """The main session plus the one named "prefs"."""

    async def get(self) -> None:
        prefs = await self.get_session("prefs")
        if self.get_argument("user", None):
            self.session["user"] = self.get_argument("user")
        if self.get_argument("theme", None):
            prefs["theme"] = self.get_argument("theme")
        if self.get_argument("flush", ""):
            self.write("early|")
            await self.flush()
        self.write(f"{self.session.get('user')}|{prefs.get('theme')}")


class Remember(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        s = self.get_argument("s", None)
        if s is not None:
            self.session.set_expiry(int(s))
        self.session["user"] = "ann"
        self.write({"sid": self.session.session_id})


class Peek(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        s = self.session
        self.write({"user": s.get("user"), "new": s.is_new, "sid": s.session_id})


class Login(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        await self.session_regenerate_id()
        self.session["n"] = self.session.get("n", 0) + 1
        self.write({"sid": self.session.session_id})


class Options(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.session.set_cookie_options(**json.loads(self.get_argument("o")))
        self.session["user"] = "ann"
        self.write("ok")


class Logout(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        await self.session_destroy()
        self.write("bye")


class LazyLogout(SessionMixin, tornado.web.RequestHandler):
    """Destroys without having loaded the session in prepare()."""

    session_autoload = False

    async def get(self) -> None:
        await self.session_destroy()
        self.write("bye")


def handlers() -> list[Any]:
    return [
        ("/flash", Flash), ("/two", Two), ("/remember", Remember), ("/peek", Peek),
        ("/login", Login), ("/options", Options), ("/logout", Logout), ("/lazy-logout", LazyLogout),
    ]


def other_provider(factory: ManagerFactory, cookie_name: str) -> SessionManager:
    """A second manager on a *different* provider than the factory's."""
    if factory.client_side:
        return SessionManager("memory", cookie_name=cookie_name)
    return SessionManager("cookie", cookie_name=cookie_name, provider_config={"keys": [KEY]})


# ---------------------------------------------------------------- flashes


async def test_flashes_are_read_once_across_requests(manager_factory: ManagerFactory, serve: Any) -> None:
    m = await manager_factory()
    client = await serve(handlers(), session_manager=m)
    await client.fetch("/flash?add=saved")
    await client.fetch("/flash?add=again")
    await client.fetch("/flash?add=psst&key=private")
    assert body(await client.fetch("/flash")) == {"flashes": ["saved", "again"]}
    assert body(await client.fetch("/flash")) == {"flashes": []}
    assert body(await client.fetch("/flash?key=private")) == {"flashes": ["psst"]}
    assert body(await client.fetch("/flash?key=private")) == {"flashes": []}


# ---------------------------------------------------------------- several sessions per request


async def test_two_named_sessions_cookie_and_memory(serve: Any) -> None:
    main = SessionManager("cookie", cookie_name="sid", provider_config={"keys": [KEY]})
    prefs = SessionManager("memory", cookie_name="prefs")
    try:
        client = await serve(handlers(), session_managers={"main": main, "prefs": prefs})
        resp = await client.fetch("/two?user=ann&theme=dark")
        assert resp.body == b"ann|dark"
        assert set_cookies(resp, "sid") and set_cookies(resp, "prefs")
        assert body_text(await client.fetch("/two")) == "ann|dark"
        # a request that changes only "prefs" writes only what it must
        resp = await client.fetch("/two?theme=light")
        assert resp.body == b"ann|light"
        assert set_cookies(resp, "sid") == []
        assert body_text(await client.fetch("/two")) == "ann|light"
        prefs_sid = client.cookies["prefs"]
        assert await prefs.read(prefs_sid) == {"theme": "light"}  # kept on the server
    finally:
        await main.close()
        await prefs.close()


def body_text(resp: Any) -> str:
    assert resp.code == 200, resp.body
    return str(resp.body.decode())


@pytest.mark.parametrize("flush", [False, True])
async def test_every_modified_session_is_saved_before_the_response(
    manager_factory: ManagerFactory, serve: Any, flush: bool
) -> None:
    main = await manager_factory()
    prefs = other_provider(manager_factory, "prefs")
    try:
        client = await serve(handlers(), session_managers={"main": main, "prefs": prefs})
        resp = await client.fetch(f"/two?user=ann&theme=dark&flush={'1' if flush else ''}")
        assert resp.body == (b"early|ann|dark" if flush else b"ann|dark")
        assert set_cookies(resp, main.config.cookie_name) and set_cookies(resp, "prefs")
        # the next request, sent the moment the response arrived, sees both
        assert body_text(await client.fetch("/two")) == "ann|dark"
    finally:
        await prefs.close()


# ---------------------------------------------------------------- remember me


async def test_remember_me_sets_max_age_and_browser_session_has_none(
    manager_factory: ManagerFactory, serve: Any
) -> None:
    m = await manager_factory(cookie_lifetime=600)
    client = await serve(handlers(), session_manager=m)
    name = m.config.cookie_name
    a = attrs(set_cookies(await client.fetch("/remember?s=1209600"), name)[-1])
    assert a["max-age"] == "1209600" and "expires" in a
    a = attrs(set_cookies(await client.fetch("/remember?s=0"), name)[-1])
    assert "max-age" not in a and "expires" not in a  # a browser-session cookie
    # the choice is kept with the session: a later re-issue (login) still has no Max-Age,
    # although the manager's cookie_lifetime is 600
    a = attrs(set_cookies(await client.fetch("/login"), name)[-1])
    assert "max-age" not in a and "expires" not in a
    # a fresh visitor (whose first request writes, so that it gets a cookie) has the default
    other = await serve(handlers(), session_manager=m)
    assert attrs(set_cookies(await other.fetch("/flash?add=hi"), name)[-1])["max-age"] == "600"


async def test_remember_me_lifetime_on_the_server(manager_factory: ManagerFactory, serve: Any) -> None:
    short = await manager_factory(max_lifetime=3600)  # session shortened to 1 s
    long_ = await manager_factory(max_lifetime=1, gc_lifetime=3600)  # session lengthened to 1 h
    c_short = await serve(handlers(), session_manager=short)
    c_long = await serve(handlers(), session_manager=long_)
    short_sid = body(await c_short.fetch("/remember?s=1"))["sid"]
    await c_long.fetch("/remember?s=3600")
    # a later request that does not call set_expiry must keep the 1 h lifetime
    await c_long.fetch("/login")
    await asyncio.sleep(2.2)
    after_short = body(await c_short.fetch("/peek"))
    assert after_short["new"] is True and after_short["user"] is None
    after_long = body(await c_long.fetch("/peek"))
    assert after_long["new"] is False and after_long["user"] == "ann"
    if not manager_factory.client_side:
        assert await short.read(short_sid) is None  # the record itself expired


async def test_negative_expiry_deletes_cookie_and_record(manager_factory: ManagerFactory, serve: Any) -> None:
    m = await manager_factory()
    client = await serve(handlers(), session_manager=m)
    sid = body(await client.fetch("/remember"))["sid"]
    resp = await client.fetch("/remember?s=-1")
    assert attrs(set_cookies(resp, m.config.cookie_name)[-1])["max-age"] == "0"
    if not manager_factory.client_side:
        assert await m.read(sid) is None
    assert body(await client.fetch("/peek"))["new"] is True


# ---------------------------------------------------------------- cookie attributes

CUSTOM = {"path": "/app", "domain": "example.test", "secure": True, "http_only": False,
          "same_site": "Strict", "partitioned": True}


def assert_custom(a: dict[str, str]) -> None:
    assert a["path"] == "/app"
    assert a["domain"] == "example.test"
    assert "secure" in a and "partitioned" in a
    assert "httponly" not in a
    assert a["samesite"] == "Strict"


async def test_default_cookie_attributes(manager_factory: ManagerFactory, serve: Any) -> None:
    m = await manager_factory()
    client = await serve(handlers(), session_manager=m)
    a = attrs(set_cookies(await client.fetch("/remember"), m.config.cookie_name)[-1])
    assert a["path"] == "/" and "httponly" in a and a["samesite"] == "Lax"
    assert "secure" not in a and "domain" not in a and "partitioned" not in a


@pytest.mark.parametrize("logout", ["/logout", "/lazy-logout"])
async def test_per_manager_cookie_options(manager_factory: ManagerFactory, serve: Any, logout: str) -> None:
    m = await manager_factory(**CUSTOM)
    name = m.config.cookie_name
    client = await serve(handlers(), session_manager=m)
    assert_custom(attrs(set_cookies(await fetch(client, "/remember", name), name)[-1]))
    assert body(await fetch(client, "/peek", name))["user"] == "ann"
    expired = attrs(set_cookies(await fetch(client, logout, name), name)[-1])
    assert expired["max-age"] == "0"
    assert_custom(expired)
    assert name not in client.cookies


@pytest.mark.parametrize("logout", ["/logout", "/lazy-logout"])
async def test_per_session_cookie_options_are_kept_until_destroy(
    manager_factory: ManagerFactory, serve: Any, logout: str
) -> None:
    m = await manager_factory()
    client = await serve(handlers(), session_manager=m)
    name = m.config.cookie_name
    await fetch(client, "/peek", name)
    resp = await fetch(client, "/options?o=" + tornado.escape.url_escape(json.dumps(CUSTOM)), name)
    assert_custom(attrs(set_cookies(resp, name)[-1]))
    # a later request re-issues the cookie (remember me) with the same attributes
    a = attrs(set_cookies(await fetch(client, "/remember?s=600", name), name)[-1])
    assert_custom(a)
    assert a["max-age"] == "600"
    assert body(await fetch(client, "/peek", name))["user"] == "ann"
    # destroy expires it with the attributes it was set with
    expired = attrs(set_cookies(await fetch(client, logout, name), name)[-1])
    assert expired["max-age"] == "0"
    assert_custom(expired)
    # other visitors keep the manager's defaults
    other = await serve(handlers(), session_manager=m)
    assert attrs(set_cookies(await other.fetch("/flash?add=hi"), name)[-1])["path"] == "/"


def test_set_cookie_options_merges_and_validates() -> None:
    s = Session(None, SID, {})
    s.set_cookie_options(path="/app", same_site="strict")
    s.set_cookie_options(secure=True)
    assert s.cookie_options == {"path": "/app", "same_site": "Strict", "secure": True}
    assert s.modified
    for bad in ({"same_site": "bogus"}, {"path": "app"}, {"path": "/a;b"}, {"secure": "yes"},
                {"domain": "a b"}, {"partitioned": 1}):
        with pytest.raises(ConfigError):
            s.set_cookie_options(**bad)
    assert s.cookie_options["path"] == "/app"


# ---------------------------------------------------------------- cookies and flush()


class LateTouch(SessionMixin, tornado.web.RequestHandler):
    """Touches the main session before or after the first flush()."""

    async def get(self) -> None:
        late = bool(self.get_argument("late", ""))
        if not late:
            self.session["n"] = 1
        self.write("early|")
        await self.flush()
        if late:
            self.session["n"] = 2
        self.write("done")


@pytest.mark.parametrize("provider", ["memory", "cookie"])
async def test_no_lost_cookie_warning_when_the_cookie_went_out_with_the_flush(
    serve: Any, caplog: pytest.LogCaptureFixture, provider: str
) -> None:
    extra = {"provider_config": {"keys": [KEY]}} if provider == "cookie" else {}
    m = SessionManager(provider, cookie_name="sid", **extra)
    try:
        client = await serve([("/", LateTouch)], session_manager=m)
        with caplog.at_level("WARNING", logger="gosession_tornado"):
            resp = await client.fetch("/")
        assert resp.body == b"early|done" and set_cookies(resp, "sid")
        assert [r for r in caplog.records if "not sent" in r.getMessage()] == []
        # a cookie session changed after the flush: its cookie really is lost, said once
        if provider == "cookie":
            with caplog.at_level("WARNING", logger="gosession_tornado"):
                resp = await client.fetch("/?late=1")
            lost = [r.getMessage() for r in caplog.records if "not sent" in r.getMessage()]
            assert len(lost) == 1 and "sid" in lost[0]
            assert set_cookies(resp, "sid") == []
    finally:
        await m.close()


async def test_longest_expiry_works_and_a_longer_one_is_a_clear_error(
    manager_factory: ManagerFactory, serve: Any
) -> None:
    m = await manager_factory()
    client = await serve(handlers(), session_manager=m)
    name = m.config.cookie_name
    longest = 2**31 - 1
    resp = await fetch(client, f"/remember?s={longest}", name)
    assert resp.code == 200 and attrs(set_cookies(resp, name)[-1])["max-age"] == str(longest)
    assert body(await fetch(client, "/peek", name))["user"] == "ann"
    with pytest.raises(ValueError, match="at most"):
        Session(None, SID, {}).set_expiry(longest + 1)  # was: a hung request (Expires year 33715)
    with pytest.raises(ConfigError, match="cookie_lifetime"):
        SessionManager("memory", cookie_lifetime=longest + 1)
