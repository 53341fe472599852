"""The provider contract suite: one set of behaviour tests run against every provider.

A provider joins by adding ``tests/factories/factory_<name>.py`` (see
``tests/conftest.py``). Server-side semantics (records, regenerate, GC, active
count, concurrency) run for every provider that keeps server state; the HTTP
round-trip tests run for all of them, the cookie provider included.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import tornado.escape
import tornado.web

from gosession_tornado import SessionMixin
from gosession_tornado.provider import GC as GC_MESSAGE
from gosession_tornado.provider import All, Changes, Destroy, Exist, Read, Regenerate, Release

from .conftest import FACTORIES, ManagerFactory, open_factory
from .support import ask, create, update

SERVER_SIDE = sorted(n for n, m in FACTORIES.items() if not getattr(m, "CLIENT_SIDE", False))
PERSISTENT = sorted(n for n in SERVER_SIDE if getattr(FACTORIES[n], "PERSISTENT", True))


def counts(provider: str) -> bool:
    """False for a store that cannot count its sessions (its factory sets ``COUNTS = False``).

    memcached is one: it has no command that lists or counts keys, so
    ``get_active_sessions()`` raises ``CannotCountError``. The contract tests
    check the count only where the store can give one.
    """
    module = FACTORIES.get(provider)
    return module is None or bool(getattr(module, "COUNTS", True))


@pytest.fixture(params=SERVER_SIDE)
async def server_factory(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[ManagerFactory]:
    """A factory for each provider that keeps sessions on the server."""
    async with open_factory(request.param, tmp_path) as factory:
        yield factory


# ---------------------------------------------------------------- records


async def test_unknown_sid_reads_none_and_is_not_created(server_factory: ManagerFactory) -> None:
    m = await server_factory()
    sid = m.new_sid()
    assert await ask(m, Read(sid)) is None
    assert await ask(m, Exist(sid)) is False
    # reading did not create a record
    assert await ask(m, Exist(sid)) is False
    if counts(server_factory.name):
        assert await m.get_active_sessions() == 0


async def test_release_creates_and_read_returns_data(server_factory: ManagerFactory) -> None:
    m = await server_factory()
    sid = m.new_sid()
    await ask(m, Release(sid, create(user="ann", n=1), 3600))
    assert await ask(m, Read(sid)) == {"user": "ann", "n": 1}
    assert await ask(m, Exist(sid)) is True


async def test_empty_new_session_is_stored(server_factory: ManagerFactory) -> None:
    m = await server_factory()
    sid = m.new_sid()
    await ask(m, Release(sid, create(), 3600))
    assert await ask(m, Read(sid)) == {}
    assert await ask(m, Exist(sid)) is True


async def test_release_does_not_resurrect_a_destroyed_session(server_factory: ManagerFactory) -> None:
    m = await server_factory()
    sid = m.new_sid()
    await ask(m, Release(sid, create(a=1), 3600))
    await ask(m, Destroy(sid))
    await ask(m, Release(sid, update(b=2), 3600))
    assert await ask(m, Read(sid)) is None
    assert await ask(m, Exist(sid)) is False


async def test_delta_release_keeps_other_keys(server_factory: ManagerFactory) -> None:
    m = await server_factory()
    sid = m.new_sid()
    await ask(m, Release(sid, create(a=1, b=2, c=3), 3600))
    # two "requests" that both started from {a, b, c}: each sends only its change
    await ask(m, Release(sid, update(a=10), 3600))
    await ask(m, Release(sid, update(deleted=("b",)), 3600))
    await ask(m, Release(sid, update(d=4), 3600))
    assert await ask(m, Read(sid)) == {"a": 10, "c": 3, "d": 4}


async def test_flush_clears_then_sets(server_factory: ManagerFactory) -> None:
    m = await server_factory()
    sid = m.new_sid()
    await ask(m, Release(sid, create(a=1, b=2), 3600))
    await ask(m, Release(sid, update(flushed=True, z=26), 3600))
    assert await ask(m, Read(sid)) == {"z": 26}


async def test_values_round_trip_through_the_store(server_factory: ManagerFactory) -> None:
    m = await server_factory()
    sid = m.new_sid()
    values: dict[Any, Any] = {
        "when": datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2024, 5, 6),
        "tags": {"a", "b"},
        "pair": (1, (2, "x")),
        "blob": b"\x00\xffbinary",
        "price": decimal.Decimal("10.05"),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        42: 43,
        "nested": {"list": [1, 2.5, None, True], 7: "seven"},
        "unicode": "żółw 🐢",
    }
    await ask(m, Release(sid, Changes(set=values, create=True), 3600))
    assert await ask(m, Read(sid)) == values


async def test_regenerate_moves_data_and_old_sid_stops_working(server_factory: ManagerFactory) -> None:
    m = await server_factory()
    old, new = m.new_sid(), m.new_sid()
    await ask(m, Release(old, create(user="ann"), 3600))
    moved = await ask(m, Regenerate(old, new))
    assert moved == {"user": "ann"}
    assert await ask(m, Read(new)) == {"user": "ann"}
    assert await ask(m, Read(old)) is None
    assert await ask(m, Exist(old)) is False
    # a late release on the old sid does not bring it back
    await ask(m, Release(old, update(x=1), 3600))
    assert await ask(m, Exist(old)) is False


async def test_regenerate_unknown_old_sid_gives_empty_record(server_factory: ManagerFactory) -> None:
    m = await server_factory()
    old, new = m.new_sid(), m.new_sid()
    assert await ask(m, Regenerate(old, new)) == {}
    assert await ask(m, Exist(new)) is True
    assert await ask(m, Read(new)) == {}


async def test_destroy_removes_and_missing_is_not_an_error(server_factory: ManagerFactory) -> None:
    m = await server_factory()
    sid = m.new_sid()
    await ask(m, Release(sid, create(a=1), 3600))
    await ask(m, Destroy(sid))
    assert await ask(m, Read(sid)) is None
    await ask(m, Destroy(sid))
    await ask(m, Destroy(m.new_sid()))


async def test_active_count(server_factory: ManagerFactory) -> None:
    if not counts(server_factory.name):
        pytest.skip(f"{server_factory.name} cannot count its sessions (its factory says COUNTS = False)")
    m = await server_factory()
    sids = [m.new_sid() for _ in range(5)]
    for sid in sids:
        await ask(m, Release(sid, create(v=sid), 3600))
    assert await ask(m, All()) == 5
    await ask(m, Destroy(sids[0]))
    assert await m.get_active_sessions() == 4


async def test_expired_session_is_never_served_even_before_gc(server_factory: ManagerFactory) -> None:
    m = await server_factory(max_lifetime=1, gc_lifetime=3600)
    sid = m.new_sid()
    await ask(m, Release(sid, create(a=1), 1))
    assert await ask(m, Read(sid)) == {"a": 1}
    await asyncio.sleep(2.2)
    assert await ask(m, Read(sid)) is None
    assert await ask(m, Exist(sid)) is False


async def test_gc_removes_expired_and_keeps_live(server_factory: ManagerFactory) -> None:
    m = await server_factory(max_lifetime=1, gc_lifetime=3600)
    short, long_ = m.new_sid(), m.new_sid()
    await ask(m, Release(short, create(a=1), 1))
    await ask(m, Release(long_, create(b=2), 3600))  # per-session lifetime
    await asyncio.sleep(2.2)
    await ask(m, GC_MESSAGE())
    if counts(server_factory.name):
        assert await ask(m, All()) == 1
    assert await ask(m, Read(long_)) == {"b": 2}
    assert await ask(m, Read(short)) is None


async def test_read_refreshes_idle_expiry(server_factory: ManagerFactory) -> None:
    m = await server_factory(max_lifetime=4, gc_lifetime=3600)
    sid = m.new_sid()
    await ask(m, Release(sid, create(a=1), 4))
    await asyncio.sleep(2.0)
    assert await ask(m, Read(sid)) == {"a": 1}  # touches it: lives until >= t+6
    await asyncio.sleep(2.5)  # t = 4.5: expired had the read not refreshed it
    assert await ask(m, Read(sid)) == {"a": 1}


async def test_per_session_expiry_in_release(server_factory: ManagerFactory) -> None:
    m = await server_factory(max_lifetime=3600)
    sid = m.new_sid()
    await ask(m, Release(sid, create(a=1), 1))
    await asyncio.sleep(2.2)
    assert await ask(m, Read(sid)) is None


async def test_concurrent_releases_on_one_session_lose_nothing(server_factory: ManagerFactory) -> None:
    m = await server_factory()
    sid = m.new_sid()
    await ask(m, Release(sid, create(), 3600))
    await asyncio.gather(*(ask(m, Release(sid, update(**{f"k{i}": i}), 3600)) for i in range(50)))
    data = await ask(m, Read(sid))
    assert data == {f"k{i}": i for i in range(50)}


async def test_concurrent_reads_all_answered(server_factory: ManagerFactory) -> None:
    m = await server_factory()
    sids = [m.new_sid() for _ in range(20)]
    for i, sid in enumerate(sids):
        await ask(m, Release(sid, create(i=i), 3600))
    results = await asyncio.gather(*(ask(m, Read(sid)) for sid in sids * 5))
    assert results == [{"i": i} for i in range(20)] * 5


@pytest.fixture(params=PERSISTENT)
async def persistent_factory(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[ManagerFactory]:
    """A factory for each provider whose sessions outlive the process (not memory)."""
    async with open_factory(request.param, tmp_path) as factory:
        yield factory


async def test_data_survives_reopening_the_manager(persistent_factory: ManagerFactory) -> None:
    server_factory = persistent_factory
    m = await server_factory()
    sid = m.new_sid()
    await ask(m, Release(sid, create(user="ann"), 3600))
    await m.close()
    m2 = await server_factory()
    assert await ask(m2, Read(sid)) == {"user": "ann"}


async def test_manager_close_fails_later_calls(server_factory: ManagerFactory) -> None:
    from gosession_tornado import ProviderClosedError

    m = await server_factory()
    await m.close()
    with pytest.raises(ProviderClosedError):
        await m.get_active_sessions()


# ---------------------------------------------------------------- HTTP, every provider


class Counter(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        n = self.session.get("n", 0) + 1
        self.session["n"] = n
        self.write({"n": n, "sid": self.session.session_id, "new": self.session.is_new})


class SetKey(SessionMixin, tornado.web.RequestHandler):
    async def get(self, key: str) -> None:
        self.session[key] = True
        self.write("ok")


class Dump(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.write({"keys": sorted(str(k) for k in self.session)})


class Logout(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        await self.session_destroy()
        self.write("bye")


class Login(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        await self.session_regenerate_id()
        self.session["user"] = "ann"
        self.write({"sid": self.session.session_id})


def handlers() -> list[Any]:
    return [("/", Counter), (r"/set/(\w+)", SetKey), ("/dump", Dump), ("/logout", Logout), ("/login", Login)]


async def test_http_counter_across_requests(manager_factory: ManagerFactory, serve: Any) -> None:
    m = await manager_factory()
    client = await serve(handlers(), session_manager=m)
    first = await client.fetch("/")
    assert first.code == 200
    body = tornado.escape.json_decode(first.body)
    assert body["n"] == 1 and body["new"] is True
    for expected in range(2, 6):
        resp = await client.fetch("/")
        body = tornado.escape.json_decode(resp.body)
        assert body["n"] == expected
        assert body["new"] is False


@pytest.mark.parametrize(
    "cookie",
    ["garbage", "x" * 10_000, "../../etc/passwd", "żółw", "0" * 32, "a" * 31, "A" * 32, "%00%2e%2e"],
)
async def test_http_bad_cookie_gives_fresh_session(
    manager_factory: ManagerFactory, serve: Any, cookie: str
) -> None:
    m = await manager_factory()
    client = await serve(handlers(), session_manager=m)
    # non-ASCII goes on the wire as raw UTF-8 bytes
    raw = f"{m.config.cookie_name}={cookie}".encode().decode("latin-1")
    resp = await client.fetch("/", headers={"Cookie": raw}, use_jar=False)
    assert resp.code == 200
    body = tornado.escape.json_decode(resp.body)
    assert body["n"] == 1 and body["new"] is True
    assert body["sid"] != cookie


async def test_http_logout_then_old_cookie_is_dead(manager_factory: ManagerFactory, serve: Any) -> None:
    m = await manager_factory()
    client = await serve(handlers(), session_manager=m)
    await client.fetch("/")
    await client.fetch("/")
    old_cookie = dict(client.cookies)
    resp = await client.fetch("/logout")
    assert resp.code == 200
    expired = [h for h in resp.headers.get_list("Set-Cookie") if h.startswith(f"{m.config.cookie_name}=")]
    assert expired and "Max-Age=0" in expired[-1]
    if manager_factory.client_side:
        return  # a cookie store cannot revoke a copied cookie (documented)
    header = "; ".join(f"{k}={v}" for k, v in old_cookie.items())
    resp = await client.fetch("/", headers={"Cookie": header}, use_jar=False)
    assert tornado.escape.json_decode(resp.body)["n"] == 1


async def test_http_login_regenerates_sid(manager_factory: ManagerFactory, serve: Any) -> None:
    m = await manager_factory()
    client = await serve(handlers(), session_manager=m)
    first = tornado.escape.json_decode((await client.fetch("/")).body)
    login = tornado.escape.json_decode((await client.fetch("/login")).body)
    assert login["sid"] != first["sid"]
    after = tornado.escape.json_decode((await client.fetch("/")).body)
    assert after["sid"] == login["sid"]
    assert after["n"] == 2  # data moved with the session


async def test_http_concurrent_requests_on_one_session_lose_no_key(
    server_factory: ManagerFactory, serve: Any
) -> None:
    m = await server_factory()
    client = await serve(handlers(), session_manager=m)
    await client.fetch("/")
    results = await asyncio.gather(*(client.fetch(f"/set/k{i}") for i in range(50)))
    assert all(r.code == 200 for r in results)
    keys = tornado.escape.json_decode((await client.fetch("/dump")).body)["keys"]
    assert {f"k{i}" for i in range(50)} <= set(keys)


async def test_http_read_after_write_back_to_back(manager_factory: ManagerFactory, serve: Any) -> None:
    m = await manager_factory()
    client = await serve(handlers(), session_manager=m)
    for expected in range(1, 31):
        resp = await client.fetch("/")
        assert tornado.escape.json_decode(resp.body)["n"] == expected



# ---------------------------------------------------------------- the request lifecycle (issue 9)


class Peek(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.write({"x": self.session.get("x"), "new": self.session.is_new})


class Untouched(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.set_header("Vary", "Accept-Encoding")
        self.write("no session here")


class RegenerateOnly(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        await self.session_regenerate_id()
        self.write({"sid": self.session.session_id})


class Fails(SessionMixin, tornado.web.RequestHandler):
    """Changes the session, then fails in the way ``?how=`` names."""

    async def get(self) -> None:
        if self.get_argument("regenerate", ""):
            await self.session_regenerate_id()
        self.session["half"] = "applied"
        how = self.get_argument("how")
        if how == "raise":
            raise RuntimeError("the handler crashed half-way")
        if how == "send_error":
            self.send_error(503)
        elif how == "status":
            self.set_status(500)
            self.write("failed")


class Deep(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        depth = int(self.get_argument("depth"))
        value: list[Any] = []
        for _ in range(depth - 1):
            value = [value]
        try:
            self.session["deep"] = value
        except TypeError as exc:
            self.write({"refused": "'deep'" in str(exc)})
            return
        self.write({"refused": False})


class ReadDeep(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        value = self.session.get("deep")
        depth = 0
        while isinstance(value, list):
            depth += 1
            value = value[0] if value else None
        self.write({"depth": depth})


def lifecycle_handlers() -> list[Any]:
    return [
        *handlers(),
        ("/peek", Peek), ("/untouched", Untouched), ("/regenerate", RegenerateOnly), ("/fails", Fails),
        ("/deep", Deep), ("/read-deep", ReadDeep),
    ]


def session_cookies(resp: Any, m: Any) -> list[str]:
    return [h for h in resp.headers.get_list("Set-Cookie") if h.startswith(f"{m.config.cookie_name}=")]


def vary(resp: Any) -> list[str]:
    return [t.strip() for h in resp.headers.get_list("Vary") for t in h.split(",")]


async def stored_sessions(m: Any) -> int | None:
    """Active sessions, or ``None`` for a store that cannot count (cookie, memcache)."""
    return None if m.client_side or not counts(m.config.provider) else await m.get_active_sessions()


async def test_http_read_only_cookieless_requests_store_nothing_and_set_no_cookie(
    manager_factory: ManagerFactory, serve: Any
) -> None:
    m = await manager_factory()
    client = await serve(lifecycle_handlers(), session_manager=m)
    for _ in range(20):
        resp = await client.fetch("/peek", use_jar=False)
        assert resp.code == 200
        assert tornado.escape.json_decode(resp.body) == {"x": None, "new": True}
        assert session_cookies(resp, m) == []
    assert await stored_sessions(m) in (0, None)
    assert "release" not in m.stats()["calls"] and "encode_cookie" not in m.stats()["calls"]
    # the first write stores it and sends the cookie
    first = await client.fetch("/set/x")
    assert session_cookies(first, m)
    assert tornado.escape.json_decode((await client.fetch("/peek")).body) == {"x": True, "new": False}
    assert await stored_sessions(m) in (1, None)


async def test_http_regenerate_and_destroy_of_a_never_saved_session_touch_no_store(
    manager_factory: ManagerFactory, serve: Any
) -> None:
    m = await manager_factory()
    client = await serve(lifecycle_handlers(), session_manager=m)
    regenerated = await client.fetch("/regenerate", use_jar=False)
    assert regenerated.code == 200 and session_cookies(regenerated, m) == []
    bye = await client.fetch("/logout", use_jar=False)
    assert bye.code == 200 and session_cookies(bye, m) == []  # no cookie to expire
    calls = m.stats()["calls"]
    assert "regenerate" not in calls and "destroy" not in calls and "release" not in calls
    assert await stored_sessions(m) in (0, None)


@pytest.mark.parametrize("how", ["raise", "send_error", "status"])
async def test_http_a_5xx_response_saves_nothing(
    manager_factory: ManagerFactory, serve: Any, how: str
) -> None:
    m = await manager_factory()
    client = await serve(lifecycle_handlers(), session_manager=m)
    # a new session: not stored, no cookie
    resp = await client.fetch(f"/fails?how={how}", use_jar=False)
    assert resp.code >= 500
    assert session_cookies(resp, m) == []
    assert await stored_sessions(m) in (0, None)
    # an existing session: the half-applied change is not saved, its cookie not re-sent
    await client.fetch("/set/kept")
    before = dict(client.cookies)
    resp = await client.fetch(f"/fails?how={how}")
    assert resp.code >= 500
    assert session_cookies(resp, m) == []
    assert client.cookies == before
    keys = tornado.escape.json_decode((await client.fetch("/dump")).body)["keys"]
    assert keys == ["kept"]


async def test_http_a_regenerate_before_a_5xx_stays_done(manager_factory: ManagerFactory, serve: Any) -> None:
    m = await manager_factory()
    client = await serve(lifecycle_handlers(), session_manager=m)
    await client.fetch("/set/kept")
    old = dict(client.cookies)
    resp = await client.fetch("/fails?how=raise&regenerate=1")
    assert resp.code == 500
    if m.client_side:
        assert session_cookies(resp, m) == []  # nothing stored anywhere: the old cookie stays valid
    else:  # the store moved the data already: the browser gets the new id, the old one is dead
        assert session_cookies(resp, m)
        assert client.cookies != old
        old_header = "; ".join(f"{k}={v}" for k, v in old.items())
        dead = await client.fetch("/dump", headers={"Cookie": old_header}, use_jar=False)
        assert tornado.escape.json_decode(dead.body)["keys"] == []
    assert tornado.escape.json_decode((await client.fetch("/dump")).body)["keys"] == ["kept"]


async def test_http_vary_cookie_when_the_response_used_the_session(
    manager_factory: ManagerFactory, serve: Any
) -> None:
    m = await manager_factory()
    client = await serve(lifecycle_handlers(), session_manager=m)
    assert vary(await client.fetch("/untouched")) == ["Accept-Encoding"]  # loaded, never touched
    assert "Cookie" in vary(await client.fetch("/peek"))  # read only
    assert "Cookie" in vary(await client.fetch("/set/a"))  # written
    assert "Cookie" in vary(await client.fetch("/peek"))
    assert vary(await client.fetch("/untouched")) == ["Accept-Encoding"]
    assert "Cookie" in vary(await client.fetch("/logout"))


async def test_http_values_nest_alike_on_every_provider(manager_factory: ManagerFactory, serve: Any) -> None:
    m = await manager_factory()
    client = await serve(lifecycle_handlers(), session_manager=m)
    resp = await client.fetch("/deep?depth=600")
    if m.client_side and resp.code == 500:
        pytest.fail(f"the cookie provider failed the save: {resp.body!r}")
    assert resp.code == 200 and tornado.escape.json_decode(resp.body) == {"refused": False}
    assert tornado.escape.json_decode((await client.fetch("/read-deep")).body) == {"depth": 600}
    refused = await client.fetch("/deep?depth=1001")
    assert tornado.escape.json_decode(refused.body) == {"refused": True}  # at set(), naming the key


# ---------------------------------------------------------------- parity (issue 10)


class Incr(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.write({"n": self.session.incr("n", int(self.get_argument("by", "1")))})


class Expire(SessionMixin, tornado.web.RequestHandler):
    """``?in=<seconds>`` (a timedelta), ``?at=<unix time>`` (a datetime) or ``?none=1``."""

    async def get(self) -> None:
        s = self.session
        s["user"] = "ann"
        if self.get_argument("in", ""):
            s.set_expiry(datetime.timedelta(seconds=float(self.get_argument("in"))))
        elif self.get_argument("at", ""):
            when = datetime.datetime.fromtimestamp(float(self.get_argument("at")), datetime.timezone.utc)
            s.set_expiry(when)
        elif self.get_argument("none", ""):
            s.set_expiry(None)
        self.write({
            "age": s.get_expiry_age(),
            "date": s.get_expiry_date().timestamp(),
            "browser_close": s.get_expire_at_browser_close(),
        })


def parity_handlers() -> list[Any]:
    return [*lifecycle_handlers(), ("/incr", Incr), ("/expire", Expire)]


async def test_http_concurrent_increments_of_one_key_lose_none(
    manager_factory: ManagerFactory, serve: Any
) -> None:
    m = await manager_factory()
    client = await serve(parity_handlers(), session_manager=m)
    assert tornado.escape.json_decode((await client.fetch("/incr")).body) == {"n": 1}
    if manager_factory.client_side:
        # the whole session travels in the cookie: an increment is local to its request
        assert tornado.escape.json_decode((await client.fetch("/incr?by=5")).body) == {"n": 6}
        return
    results = await asyncio.gather(*(client.fetch("/incr") for _ in range(64)))
    assert all(r.code == 200 for r in results)
    seen = sorted(tornado.escape.json_decode(r.body)["n"] for r in results)
    assert seen[-1] <= 65 and seen[0] >= 2  # each saw its own increment on some state
    assert tornado.escape.json_decode((await client.fetch("/incr?by=0")).body) == {"n": 65}


async def test_http_set_expiry_with_a_timedelta_ends_the_session_however_used(
    manager_factory: ManagerFactory, serve: Any
) -> None:
    m = await manager_factory()
    client = await serve(parity_handlers(), session_manager=m)
    body = tornado.escape.json_decode((await client.fetch("/expire?in=2")).body)
    assert 0 <= body["age"] <= 2 and body["browser_close"] is False
    cookie = session_cookies(await client.fetch("/set/again"), m)
    assert cookie and "Max-Age=" in cookie[-1]  # the cookie ends then too
    max_age = int(cookie[-1].split("Max-Age=")[1].split(";")[0])
    assert 1 <= max_age <= 2
    for _ in range(4):  # used all the time, it still ends on time
        await asyncio.sleep(0.6)
        await client.fetch("/peek")
    keys = tornado.escape.json_decode((await client.fetch("/dump")).body)["keys"]
    assert keys == []  # a fresh session: the old one ended


async def test_http_set_expiry_with_a_datetime_and_back_to_the_default(
    manager_factory: ManagerFactory, serve: Any
) -> None:
    m = await manager_factory()
    client = await serve(parity_handlers(), session_manager=m)
    at = time.time() + 3600
    body = tornado.escape.json_decode((await client.fetch(f"/expire?at={at}")).body)
    assert abs(body["date"] - at) < 2 and 3590 <= body["age"] <= 3600
    body = tornado.escape.json_decode((await client.fetch("/expire?none=1")).body)
    assert body["age"] == m.config.max_lifetime
    assert body["browser_close"] is (m.config.cookie_lifetime == 0)
    past = tornado.escape.json_decode((await client.fetch(f"/expire?at={time.time() - 5}")).body)
    assert past["age"] == 0
    assert tornado.escape.json_decode((await client.fetch("/dump")).body)["keys"] == []  # destroyed


async def test_hashed_session_ids_keep_no_id_in_the_store(server_factory: ManagerFactory, serve: Any) -> None:
    m = await server_factory(hash_session_ids=True)
    client = await serve(parity_handlers(), session_manager=m)
    await client.fetch("/set/a")
    sid = client.cookies[m.config.cookie_name]
    digest = hashlib.sha256(sid.encode()).hexdigest()
    assert await ask(m, Exist(sid)) is False  # the store never saw the id...
    assert await ask(m, Exist(digest)) is True  # ...only its hash
    assert await m.read(sid) == {"a": True}  # admin calls take the real id
    assert await stored_sessions(m) in (1, None)
    login = tornado.escape.json_decode((await client.fetch("/login")).body)  # regenerate
    assert await ask(m, Exist(digest)) is False
    assert await ask(m, Exist(hashlib.sha256(login["sid"].encode()).hexdigest())) is True
    assert tornado.escape.json_decode((await client.fetch("/dump")).body)["keys"] == ["a", "user"]
    await client.fetch("/logout")
    assert await stored_sessions(m) in (0, None)
    assert await ask(m, Exist(hashlib.sha256(login["sid"].encode()).hexdigest())) is False
