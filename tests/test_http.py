"""HTTP through SessionMixin: cookies, bad cookies, destroy/regenerate, modes, 503s, concurrency."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import tornado.web

from gosession_tornado import (
    Changes,
    Provider,
    ProviderUnavailableError,
    SessionManager,
    SessionMixin,
    register,
    unregister,
)
from gosession_tornado.providers.memory import MemoryProvider
from gosession_tornado.web import managers_for
from tests.conftest import Client

Serve = Callable[..., Awaitable[Client]]
HEX32 = re.compile(r"[0-9a-f]{32}")


# ---------------------------------------------------------------- handlers


class Counter(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        n = self.session.get("n", 0) + 1
        self.session["n"] = n
        self.write(str(n))


class Peek(SessionMixin, tornado.web.RequestHandler):
    """Shows the session as JSON without changing it."""

    async def get(self) -> None:
        self.write(json.dumps({"sid": self.session.session_id, "new": self.session.is_new,
                               "data": {str(k): v for k, v in self.session.items()}}))


class Put(SessionMixin, tornado.web.RequestHandler):
    """``/put?k=..&v=..``: sets one key, after yielding so concurrent requests overlap."""

    async def get(self) -> None:
        key = self.get_argument("k")
        value = self.get_argument("v", "1")
        await asyncio.sleep(0.01)
        self.session[key] = value
        self.write("ok")


class Destroy(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        await self.session_destroy()
        self.write("bye")


class Login(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.session["user"] = "ann"
        await self.session_regenerate_id()
        self.write(self.session.session_id)


class Remember(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.session.set_expiry(86400)
        self.write("ok")


class Streamer(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.session["streamed"] = True
        self.write("first;")
        await self.flush()
        self.write("second")


class OwnPrepare(SessionMixin, tornado.web.RequestHandler):
    async def prepare(self) -> None:
        self.before = True
        await super().prepare()
        self.seen = self.session.get("n", 0)

    async def get(self) -> None:
        assert self.before
        self.session["n"] = self.seen + 1
        self.write(str(self.session["n"]))


def routes() -> list[Any]:
    return [
        (r"/", Counter), (r"/peek", Peek), (r"/put", Put), (r"/destroy", Destroy),
        (r"/login", Login), (r"/remember", Remember), (r"/stream", Streamer), (r"/own", OwnPrepare),
    ]


# ---------------------------------------------------------------- helpers


@pytest.fixture
async def managers() -> AsyncIterator[Callable[..., SessionManager]]:
    """``mk(**config)``: a memory SessionManager (cookie ``sid``) closed after the test."""
    made: list[SessionManager] = []

    def mk(provider: str = "memory", **config: Any) -> SessionManager:
        config.setdefault("cookie_name", "sid")
        m = SessionManager(provider, **config)
        made.append(m)
        return m

    yield mk
    for m in made:
        await m.close()


def set_cookies(resp: Any, name: str = "sid") -> list[str]:
    return [h for h in resp.headers.get_list("Set-Cookie") if h.startswith(f"{name}=")]


def attrs(header: str) -> dict[str, str | bool]:
    """Attributes of one Set-Cookie header; names lower-cased, flags as True."""
    out: dict[str, str | bool] = {}
    for part in header.split(";")[1:]:
        part = part.strip()
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip().lower()] = v.strip()
        elif part:
            out[part.lower()] = True
    return out


def value(header: str) -> str:
    return header.split(";", 1)[0].split("=", 1)[1]


def records(m: SessionManager) -> dict[str, Any]:
    assert m._actor is not None
    provider = m._actor.provider
    assert isinstance(provider, MemoryProvider)
    return provider._records


# ---------------------------------------------------------------- cookie attributes


async def test_default_cookie_attributes(serve: Serve, managers: Callable[..., SessionManager]) -> None:
    client = await serve(routes(), session_manager=managers())
    resp = await client.fetch("/")
    assert resp.code == 200
    (header,) = set_cookies(resp)
    assert HEX32.fullmatch(value(header))
    a = attrs(header)
    assert a["path"] == "/"
    assert a["httponly"] is True
    assert a["samesite"] == "Lax"
    assert "secure" not in a
    assert "domain" not in a
    assert "max-age" not in a  # cookie_lifetime 0: a browser-session cookie
    assert "expires" not in a


async def test_secure_and_domain_when_configured(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    client = await serve(routes(), session_manager=managers(secure=True, domain="example.test",
                                                            same_site="Strict"))
    (header,) = set_cookies(await client.fetch("/"))
    a = attrs(header)
    assert a["secure"] is True
    assert a["domain"] == "example.test"
    assert a["samesite"] == "Strict"
    assert a["path"] == "/"


async def test_set_secure_after_construction(serve: Serve, managers: Callable[..., SessionManager]) -> None:
    m = managers()
    m.set_secure(True)
    client = await serve(routes(), session_manager=m)
    (header,) = set_cookies(await client.fetch("/"))
    assert attrs(header)["secure"] is True


async def test_http_only_can_be_disabled_beego_style(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    m = managers(**{"disableHTTPOnly": True})
    client = await serve(routes(), session_manager=m)
    (header,) = set_cookies(await client.fetch("/"))
    assert "httponly" not in attrs(header)


async def test_max_age_and_expires_when_cookie_lifetime_set(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    client = await serve(routes(), session_manager=managers(cookie_lifetime=3600))
    (header,) = set_cookies(await client.fetch("/"))
    a = attrs(header)
    assert a["max-age"] == "3600"
    expires = email.utils.parsedate_to_datetime(str(a["expires"]))
    assert expires.timestamp() > time.time() + 3000


async def test_set_expiry_gives_max_age(serve: Serve, managers: Callable[..., SessionManager]) -> None:
    client = await serve(routes(), session_manager=managers())
    await client.fetch("/")
    resp = await client.fetch("/remember")
    (header,) = set_cookies(resp)
    assert attrs(header)["max-age"] == "86400"
    assert value(header) == client.cookies["sid"]


async def test_no_set_cookie_when_disabled(serve: Serve, managers: Callable[..., SessionManager]) -> None:
    client = await serve(routes(), session_manager=managers(enable_set_cookie=False))
    resp = await client.fetch("/")
    assert resp.code == 200
    assert resp.headers.get_list("Set-Cookie") == []


# ---------------------------------------------------------------- counter and bad cookies


async def test_counter_across_requests(serve: Serve, managers: Callable[..., SessionManager]) -> None:
    client = await serve(routes(), session_manager=managers())
    first = await client.fetch("/")
    assert first.body == b"1"
    assert len(set_cookies(first)) == 1
    for expected in (b"2", b"3"):
        resp = await client.fetch("/")
        assert resp.body == expected
        assert set_cookies(resp) == []  # the cookie is only sent when it changes


@pytest.mark.parametrize(
    "cookie",
    [
        "sid=garbage",
        "sid=" + "x" * 10_240,
        "sid=../../etc",
        "sid=../../etc/passwd%00",
        "sid=caf\xe9\xff",  # non-ASCII (latin-1 on the wire)
        "sid=" + "0" * 32,  # valid-looking but unknown
        "sid=" + secrets.token_hex(16),
        "sid=" + secrets.token_hex(16).upper(),
        'sid="unterminated',
        "sid",
        ";;;=;",
    ],
    ids=["garbage", "10kB", "dotdot", "nul", "non-ascii", "zeros", "unknown", "upper", "quote",
         "no-value", "semicolons"],
)
async def test_bad_cookies_give_a_new_sid_and_200(
    serve: Serve, managers: Callable[..., SessionManager], cookie: str
) -> None:
    m = managers()
    client = await serve(routes(), session_manager=m)
    resp = await client.fetch("/", headers={"Cookie": cookie}, use_jar=False)
    assert resp.code == 200, resp.body
    assert resp.body == b"1"
    (header,) = set_cookies(resp)
    sid = value(header)
    assert HEX32.fullmatch(sid)
    assert sid not in cookie
    assert await m.read(sid) == {"n": 1}
    assert await m.get_active_sessions() == 1  # nothing stored under the client's value


# ---------------------------------------------------------------- destroy / regenerate


async def test_destroy_removes_the_record_and_expires_the_cookie(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    m = managers(secure=True, domain="example.test", cookie_lifetime=600)
    client = await serve(routes(), session_manager=m)
    resp = await client.fetch("/")
    (set_header,) = set_cookies(resp)
    sid = value(set_header)
    assert await m.read(sid) == {"n": 1}

    resp = await client.fetch("/destroy")
    assert resp.code == 200
    (header,) = set_cookies(resp)
    assert value(header) == ""
    a = attrs(header)
    assert a["max-age"] == "0"
    assert email.utils.parsedate_to_datetime(str(a["expires"])).timestamp() < time.time()
    # Same Path, Domain, Secure, HttpOnly and SameSite as when it was set.
    same = {k: v for k, v in attrs(set_header).items() if k not in ("max-age", "expires")}
    assert {k: v for k, v in a.items() if k not in ("max-age", "expires")} == same
    assert await m.read(sid) is None
    assert "sid" not in client.cookies

    resp = await client.fetch("/", headers={"Cookie": f"sid={sid}"}, use_jar=False)
    assert resp.body == b"1"
    assert value(set_cookies(resp)[0]) != sid


async def test_regenerate_issues_a_new_sid_and_the_old_stops_working(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    m = managers()
    client = await serve(routes(), session_manager=m)
    await client.fetch("/")
    old = client.cookies["sid"]
    resp = await client.fetch("/login")
    (header,) = set_cookies(resp)
    new = value(header)
    assert new != old
    assert HEX32.fullmatch(new)
    assert resp.body.decode() == new
    assert attrs(header)["path"] == "/"
    assert await m.read(old) is None
    assert await m.read(new) == {"n": 1, "user": "ann"}

    stale = await client.fetch("/peek", headers={"Cookie": f"sid={old}"}, use_jar=False)
    body = json.loads(stale.body)
    assert body["new"] is True
    assert body["data"] == {}
    assert body["sid"] not in (old, new)

    resp = await client.fetch("/")  # the jar holds the new sid
    assert resp.body == b"2"


# ---------------------------------------------------------------- header and query modes


async def test_header_mode(serve: Serve, managers: Callable[..., SessionManager]) -> None:
    m = managers(enable_sid_in_http_header=True, session_name_in_http_header="X-Session",
                 enable_set_cookie=False)
    client = await serve(routes(), session_manager=m)
    resp = await client.fetch("/", use_jar=False)
    assert resp.headers.get_list("Set-Cookie") == []
    sid = resp.headers["X-Session"]
    assert HEX32.fullmatch(sid)
    resp = await client.fetch("/", headers={"X-Session": sid}, use_jar=False)
    assert resp.body == b"2"
    assert resp.headers["X-Session"] == sid
    resp = await client.fetch("/", headers={"X-Session": "garbage"}, use_jar=False)
    assert resp.body == b"1"
    assert resp.headers["X-Session"] != sid


async def test_header_mode_destroy_does_not_send_the_dead_sid_back(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    m = managers(enable_sid_in_http_header=True, session_name_in_http_header="X-Session",
                 enable_set_cookie=False)
    client = await serve(routes(), session_manager=m)
    sid = (await client.fetch("/", use_jar=False)).headers["X-Session"]
    resp = await client.fetch("/destroy", headers={"X-Session": sid}, use_jar=False)
    assert resp.code == 200
    assert "X-Session" not in resp.headers  # beego deletes the response header on destroy
    assert await m.read(sid) is None


async def test_query_mode(serve: Serve, managers: Callable[..., SessionManager]) -> None:
    m = managers(enable_sid_in_url_query=True)
    client = await serve(routes(), session_manager=m)
    resp = await client.fetch("/", use_jar=False)
    sid = value(set_cookies(resp)[0])
    resp = await client.fetch(f"/?sid={sid}", use_jar=False)
    assert resp.body == b"2"
    resp = await client.fetch(f"/?sid={sid}", use_jar=False)
    assert resp.body == b"3"


async def test_query_sid_ignored_unless_enabled(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    client = await serve(routes(), session_manager=managers())
    sid = value(set_cookies(await client.fetch("/", use_jar=False))[0])
    resp = await client.fetch(f"/?sid={sid}", use_jar=False)
    assert resp.body == b"1"


# ---------------------------------------------------------------- read-after-write


async def test_back_to_back_read_after_write(serve: Serve, managers: Callable[..., SessionManager]) -> None:
    client = await serve(routes(), session_manager=managers())
    for i in range(1, 51):
        resp = await client.fetch("/")
        assert resp.body == str(i).encode()
        resp = await client.fetch(f"/put?k=last&v={i}")
        assert resp.code == 200
        peek = json.loads((await client.fetch("/peek")).body)
        assert peek["data"]["last"] == str(i)


# ---------------------------------------------------------------- 503


class DownProvider(MemoryProvider):
    """Memory store whose server is "down" while the class flag says so."""

    down = True

    async def session_read(self, sid: str) -> dict[Any, Any] | None:
        if type(self).down:
            raise ProviderUnavailableError("test store is down")
        return await super().session_read(sid)

    async def session_release(self, sid: str, changes: Changes, expiry: int) -> None:
        if type(self).down:
            raise ProviderUnavailableError("test store is down")
        await super().session_release(sid, changes, expiry)


class HangingProvider(MemoryProvider):
    """Memory store whose reads and writes never answer while the flag is set."""

    hang = True

    async def session_read(self, sid: str) -> dict[Any, Any] | None:
        if type(self).hang:
            await asyncio.Event().wait()
        return await super().session_read(sid)

    async def session_release(self, sid: str, changes: Changes, expiry: int) -> None:
        if type(self).hang:
            await asyncio.Event().wait()
        await super().session_release(sid, changes, expiry)


@pytest.fixture
def provider_name() -> Iterator[Callable[[type[Provider]], str]]:
    names: list[str] = []

    def reg(cls: type[Provider]) -> str:
        name = f"{cls.__name__}_{secrets.token_hex(4)}"
        register(name, cls)
        names.append(name)
        return name

    yield reg
    for name in names:
        unregister(name)


async def test_503_when_the_provider_is_down_and_recovery_without_restart(
    serve: Serve, managers: Callable[..., SessionManager],
    provider_name: Callable[[type[Provider]], str],
) -> None:
    cls = type("Down", (DownProvider,), {"down": False})
    client = await serve(routes(), session_manager=managers(provider_name(cls)))
    assert (await client.fetch("/")).body == b"1"

    cls.down = True
    resp = await client.fetch("/")  # with a known sid: the read fails
    assert resp.code == 503
    assert b"unavailable" in resp.body.lower()
    assert resp.headers.get_list("Set-Cookie") == []
    resp = await client.fetch("/", use_jar=False)  # a new session: the release fails
    assert resp.code == 503
    assert b"unavailable" in resp.body.lower()

    cls.down = False
    resp = await client.fetch("/")
    assert resp.code == 200
    assert resp.body == b"2"  # nothing saved was lost


async def test_503_within_provider_timeout_when_the_provider_hangs(
    serve: Serve, managers: Callable[..., SessionManager], provider_name: Callable[[type[Provider]], str]
) -> None:
    cls = type("Hang", (HangingProvider,), {"hang": False})
    client = await serve(routes(), session_manager=managers(provider_name(cls), provider_timeout=0.3))
    assert (await client.fetch("/")).body == b"1"
    cls.hang = True
    resp = await client.fetch("/", request_timeout=20)
    assert resp.code == 503
    assert b"unavailable" in resp.body.lower()
    resp = await client.fetch("/", use_jar=False, request_timeout=20)
    assert resp.code == 503
    cls.hang = False
    resp = await client.fetch("/")
    assert resp.code == 200
    assert resp.body == b"2"


# ---------------------------------------------------------------- GC


async def test_gc_removes_idle_sessions(serve: Serve, managers: Callable[..., SessionManager]) -> None:
    m = managers(gc_lifetime=1, max_lifetime=1)
    client = await serve(routes(), session_manager=m)
    await client.fetch("/")
    old = client.cookies["sid"]
    assert len(records(m)) == 1
    for _ in range(80):  # the PeriodicCallback removes it; nothing here calls gc()
        if not records(m):
            break
        await asyncio.sleep(0.1)
    assert records(m) == {}
    resp = await client.fetch("/")
    assert resp.body == b"1"
    assert client.cookies["sid"] != old


# ---------------------------------------------------------------- concurrency


async def test_concurrent_requests_on_one_session_keep_every_key(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    client = await serve(routes(), session_manager=managers())
    await client.fetch("/")
    responses = await asyncio.gather(*(client.fetch(f"/put?k=k{i}&v={i}") for i in range(50)))
    assert all(r.code == 200 for r in responses)
    data = json.loads((await client.fetch("/peek")).body)["data"]
    assert data == {"n": 1, **{f"k{i}": str(i) for i in range(50)}}


# ---------------------------------------------------------------- application settings


def spying(handler: type[tornado.web.RequestHandler], apps: list[Any]) -> type[tornado.web.RequestHandler]:
    """A subclass of *handler* that records the Application it runs in."""

    def prepare(self: Any) -> Any:
        apps.append(self.application)
        return handler.prepare(self)

    return type(handler.__name__, (handler,), {"prepare": prepare})


async def close_app_managers(apps: list[Any]) -> None:
    for app in {id(a): a for a in apps}.values():
        for m in managers_for(app).values():
            await m.close()


async def test_setting_session_manager(serve: Serve, managers: Callable[..., SessionManager]) -> None:
    m = managers(cookie_name="main")
    client = await serve([(r"/", Counter)], session_manager=m)
    assert (await client.fetch("/")).body == b"1"
    assert (await client.fetch("/")).body == b"2"
    assert await m.read(client.cookies["main"]) == {"n": 2}


async def test_setting_session_dict(serve: Serve) -> None:
    apps: list[Any] = []
    client = await serve([(r"/", spying(Counter, apps))],
                         session={"provider": "memory", "cookie_name": "dsid"})
    try:
        resp = await client.fetch("/")
        assert resp.body == b"1"
        assert set_cookies(resp, "dsid")
        assert (await client.fetch("/")).body == b"2"
        (m,) = {id(v): v for v in managers_for(apps[0]).values()}.values()
        assert m.config.cookie_name == "dsid"
    finally:
        await close_app_managers(apps)


class TwoSessions(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        prefs = await self.get_session("prefs")
        self.session["n"] = self.session.get("n", 0) + 1
        prefs["theme"] = prefs.get("theme", "dark") + "!"
        self.write(f"{self.session['n']} {prefs['theme']}")


async def test_setting_session_managers(serve: Serve, managers: Callable[..., SessionManager]) -> None:
    apps: list[Any] = []
    main = managers(cookie_name="msid")
    client = await serve(
        [(r"/", spying(TwoSessions, apps))],
        session_managers={"main": main, "prefs": {"provider": "memory", "cookie_name": "psid"}},
    )
    try:
        resp = await client.fetch("/")
        assert resp.body == b"1 dark!"
        assert set_cookies(resp, "msid") and set_cookies(resp, "psid")
        assert client.cookies["msid"] != client.cookies["psid"]
        resp = await client.fetch("/")
        assert resp.body == b"2 dark!!"
        assert await main.read(client.cookies["msid"]) == {"n": 2}
        prefs = managers_for(apps[0])["prefs"]
        assert await prefs.read(client.cookies["psid"]) == {"theme": "dark!!"}
    finally:
        await close_app_managers(apps)


async def test_no_manager_configured_is_a_500_not_a_hang(serve: Serve) -> None:
    client = await serve([(r"/", Counter)])
    resp = await client.fetch("/")
    assert resp.code == 500


# ---------------------------------------------------------------- handler hooks


async def test_handler_overriding_prepare_and_calling_super(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    client = await serve(routes(), session_manager=managers())
    assert (await client.fetch("/own")).body == b"1"
    assert (await client.fetch("/own")).body == b"2"
    assert (await client.fetch("/")).body == b"3"


async def test_streaming_flush_before_finish_carries_the_cookie(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    m = managers()
    client = await serve(routes(), session_manager=m)
    resp = await client.fetch("/stream")
    assert resp.code == 200
    assert resp.body == b"first;second"
    (header,) = set_cookies(resp)
    sid = value(header)
    assert await m.read(sid) == {"streamed": True}
    peek = json.loads((await client.fetch("/peek")).body)
    assert peek["sid"] == sid
    assert peek["data"] == {"streamed": True}


class DestroyThenFlash(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        await self.session_destroy()
        self.session.add_flash("logged out")
        self.write("ok")


class Flashes(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.write(json.dumps(self.session.flashes()))


async def test_destroy_then_flash_gives_a_fresh_session_carrying_the_flash(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    m = managers()
    client = await serve([(r"/", Counter), (r"/logout", DestroyThenFlash), (r"/flashes", Flashes)],
                         session_manager=m)
    await client.fetch("/")
    old = client.cookies["sid"]
    resp = await client.fetch("/logout")
    (header,) = set_cookies(resp)  # one cookie: the fresh session's, not the expiring one
    new = value(header)
    assert HEX32.fullmatch(new)
    assert new != old
    assert "max-age" not in attrs(header)
    assert await m.read(old) is None
    assert json.loads((await client.fetch("/flashes")).body) == ["logged out"]
    assert json.loads((await client.fetch("/flashes")).body) == []


async def test_destroy_without_later_writes_stores_nothing(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    m = managers()
    client = await serve(routes(), session_manager=m)
    await client.fetch("/")
    await client.fetch("/destroy")
    assert await m.get_active_sessions() == 0


class LoginRedirect(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.session["user"] = "ann"
        await self.session_regenerate_id()
        self.redirect("/peek")


async def test_data_set_before_a_redirect_is_seen_by_the_redirected_request(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    client = await serve([(r"/login", LoginRedirect), (r"/peek", Peek)], session_manager=managers())
    for _ in range(10):
        resp = await client.fetch("/login")
        assert resp.code == 302
        assert set_cookies(resp)
        peek = json.loads((await client.fetch(resp.headers["Location"])).body)
        assert peek["data"] == {"user": "ann"}
        assert peek["sid"] == client.cookies["sid"]


class Crash(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.session["before_crash"] = True
        raise RuntimeError("handler bug")


async def test_a_handler_exception_is_a_plain_500(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    client = await serve([(r"/crash", Crash), (r"/", Counter)], session_manager=managers())
    resp = await client.fetch("/crash")
    assert resp.code == 500
    assert (await client.fetch("/")).code == 200  # the server and the manager keep working


class ExplicitFinish(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.session["n"] = self.session.get("n", 0) + 1
        await self.finish(str(self.session["n"]))


async def test_explicit_awaited_finish(serve: Serve, managers: Callable[..., SessionManager]) -> None:
    client = await serve([(r"/", ExplicitFinish)], session_manager=managers())
    for i in range(1, 4):
        resp = await client.fetch("/")
        assert resp.body == str(i).encode()


# ---------------------------------------------------------------- finish() semantics (audit)


class GuardInPrepare(SessionMixin, tornado.web.RequestHandler):
    """Redirects anonymous visitors in prepare(); get() must then never run."""

    ran: list[str] = []

    async def prepare(self) -> None:
        await super().prepare()
        if not self.session.get("user"):
            self.session["next"] = self.request.uri  # where to go after the login
            self.redirect("/login")

    async def get(self) -> None:
        GuardInPrepare.ran.append("get")
        self.write("secret")


async def test_finish_in_prepare_skips_the_handler_method(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    GuardInPrepare.ran = []
    client = await serve([(r"/guarded", GuardInPrepare)], session_manager=managers())
    resp = await client.fetch("/guarded")  # a new session written in prepare(): its save delays the finish
    assert resp.code == 302
    assert resp.body == b""
    assert GuardInPrepare.ran == []
    assert set_cookies(resp)


class WriteAfterRedirect(SessionMixin, tornado.web.RequestHandler):
    errors: list[str] = []

    async def get(self) -> None:
        self.session["x"] = 1
        self.redirect("/elsewhere")
        try:
            self.write("more")
        except RuntimeError as exc:
            WriteAfterRedirect.errors.append(str(exc))


async def test_write_after_finish_raises_as_in_tornado(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    WriteAfterRedirect.errors = []
    client = await serve([(r"/w", WriteAfterRedirect)], session_manager=managers())
    resp = await client.fetch("/w")
    assert resp.code == 302
    assert resp.body == b""
    assert WriteAfterRedirect.errors == ["Cannot write() after finish()"]


class BodyWith204(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.session["x"] = 1
        self.set_status(204)
        self.write("a body Tornado refuses to send")


async def test_a_response_tornado_refuses_at_finish_is_a_500_not_a_hang(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    client = await serve([(r"/204", BodyWith204), (r"/", Counter)], session_manager=managers())
    resp = await client.fetch("/204", request_timeout=20)
    assert resp.code == 500
    assert (await client.fetch("/")).code == 200


class BuggyReleaseProvider(MemoryProvider):
    async def session_release(self, sid: str, changes: Changes, expiry: int) -> None:
        if "boom" in changes.set:
            raise ValueError("a bug in a user's provider")
        await super().session_release(sid, changes, expiry)


async def test_a_provider_bug_during_the_save_is_a_500_not_a_hang(
    serve: Serve, managers: Callable[..., SessionManager], provider_name: Callable[[type[Provider]], str]
) -> None:
    client = await serve(routes(), session_manager=managers(provider_name(BuggyReleaseProvider)))
    resp = await client.fetch("/put?k=boom", request_timeout=20)
    assert resp.code == 500
    assert resp.body == b"500 Session Error\n"  # the details are in the server's log only
    assert (await client.fetch("/put?k=fine")).code == 200


class FailsOnLateKey(MemoryProvider):
    async def session_release(self, sid: str, changes: Changes, expiry: int) -> None:
        if "late" in changes.set:
            raise ProviderUnavailableError("test store is down")
        await super().session_release(sid, changes, expiry)


class LateChange(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.write("head;")
        await self.flush()
        self.session["late"] = 1
        self.write("middle;")
        self.finish("tail")


class FailedSaveBeforeAnyFlush(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.session["late"] = 1
        self.finish("not for the client")


async def test_a_failed_save_after_a_flush_keeps_the_finish_chunk(
    serve: Serve, managers: Callable[..., SessionManager], provider_name: Callable[[type[Provider]], str]
) -> None:
    client = await serve([(r"/late", LateChange), (r"/early", FailedSaveBeforeAnyFlush)],
                         session_manager=managers(provider_name(FailsOnLateKey)))
    resp = await client.fetch("/late")
    assert resp.code == 200  # the headers were out: the failure can only be logged
    assert resp.body == b"head;middle;tail"  # not a body cut short of finish()'s chunk
    resp = await client.fetch("/early")
    assert resp.code == 503
    assert b"not for the client" not in resp.body


# ---------------------------------------------------------------- issue 9: leaks, Vary, mixin order


def _leaky(sid: str) -> ProviderUnavailableError:
    return ProviderUnavailableError(f"redis at 10.1.2.3:6379 is down; /var/lib/sessions/{sid[:2]}/{sid}")


class LeakyDownProvider(MemoryProvider):
    """Fails like a real store would: the message names the server and the session's file."""

    async def session_read(self, sid: str) -> dict[Any, Any] | None:
        raise _leaky(sid)

    async def session_release(self, sid: str, changes: Changes, expiry: int) -> None:
        raise _leaky(sid)


@pytest.mark.parametrize("stored", [False, True])
async def test_a_failing_store_answers_without_internals_and_logs_no_full_session_id(
    serve: Serve, managers: Callable[..., SessionManager], provider_name: Callable[[type[Provider]], str],
    caplog: pytest.LogCaptureFixture, stored: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    sid = secrets.token_hex(16)
    client = await serve(routes(), session_manager=managers(provider_name(LeakyDownProvider)))
    # stored: a read with a well-formed id fails; not stored: the first save of a new session fails
    resp = await client.fetch("/put?k=a&v=1", headers={"Cookie": f"sid={sid}"} if stored else None,
                              use_jar=False)
    assert resp.code == 503
    for secret in (b"10.1.2.3", b"6379", b"/var/lib", b"redis"):
        assert secret not in resp.body
    assert sid.encode() not in resp.body
    assert "10.1.2.3" in caplog.text  # the details are in the log...
    for record in caplog.records:  # ...but no full session id, in any line
        assert not re.search(r"[0-9a-f]{20}", record.getMessage()), record.getMessage()
    if stored:
        assert sid[:8] + "…" in caplog.text


async def test_serve_traceback_shows_the_details_as_tornado_does(
    serve: Serve, managers: Callable[..., SessionManager], provider_name: Callable[[type[Provider]], str]
) -> None:
    client = await serve(routes(), session_manager=managers(provider_name(LeakyDownProvider)),
                         serve_traceback=True)
    resp = await client.fetch("/put?k=a&v=1", use_jar=False)
    assert resp.code == 503
    assert b"10.1.2.3" in resp.body


async def test_vary_names_the_sid_header_in_header_mode(
    serve: Serve, managers: Callable[..., SessionManager]
) -> None:
    m = managers(enable_sid_in_http_header=True, session_name_in_http_header="X-Session")
    client = await serve(routes(), session_manager=m)
    resp = await client.fetch("/put?k=a&v=1", use_jar=False)
    assert resp.code == 200
    tokens = [t.strip() for h in resp.headers.get_list("Vary") for t in h.split(",")]
    assert sorted(tokens) == ["Cookie", "X-Session"]
    sid = resp.headers["X-Session"]
    again = await client.fetch("/peek", headers={"X-Session": sid}, use_jar=False)
    assert "X-Session" in again.headers["Vary"]


def test_a_handler_with_requesthandler_before_the_mixin_is_refused_at_class_definition() -> None:
    with pytest.raises(TypeError, match="put SessionMixin before RequestHandler"):

        class Backwards(tornado.web.RequestHandler, SessionMixin):  # pycket's documented order
            def get(self) -> None:
                self.write("never")

    class Base(tornado.web.RequestHandler):
        pass

    with pytest.raises(TypeError, match="SessionMixin before RequestHandler"):

        class Indirect(Base, SessionMixin):
            pass

    class Fine(SessionMixin, Base):  # mixin first, any RequestHandler subclass after it
        pass

    assert Fine.__mro__.index(SessionMixin) < Fine.__mro__.index(tornado.web.RequestHandler)
