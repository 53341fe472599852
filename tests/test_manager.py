"""SessionManager: ids, lifecycle, session_start/regenerate/destroy, GC and stats."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import tornado.httputil
import tornado.web

from gosession_tornado import ProviderClosedError, SessionManager
from gosession_tornado import manager as manager_module
from gosession_tornado.providers.memory import _HEAD, MemoryProvider
from tests.support import make_handler

HEX32 = re.compile(r"[0-9a-f]{32}")


def set_cookies(handler: tornado.web.RequestHandler) -> list[str]:
    return handler._headers.get_list("Set-Cookie")


def cookie_sid(handler: tornado.web.RequestHandler, name: str = "sid") -> str | None:
    for header in set_cookies(handler):
        if header.startswith(f"{name}="):
            return header.split(";", 1)[0].split("=", 1)[1]
    return None


@pytest.fixture
async def m() -> AsyncIterator[SessionManager]:
    async with SessionManager("memory", cookie_name="sid", max_lifetime=600) as manager:
        yield manager


def records(manager: SessionManager) -> dict[str, Any]:
    """The memory provider's internal dict (no GC side effect, unlike session_all)."""
    assert manager._actor is not None
    provider = manager._actor.provider
    assert isinstance(provider, MemoryProvider)
    return provider._records


async def new_stored(manager: SessionManager, **data: Any) -> str:
    h = make_handler()
    s = await manager.session_start(h)
    s.update(data)
    await s.release(h)
    # The memory provider's release is queued, not awaited (every later call is
    # queued behind it); one turn of the loop lets the actor apply it for records().
    await asyncio.sleep(0)
    return s.session_id


# ---------------------------------------------------------------- ids


def test_sid_shape() -> None:
    m = SessionManager("memory")
    sid = m.new_sid()
    assert HEX32.fullmatch(sid), sid
    assert m.valid_sid(sid)


def test_sid_prefix_and_length() -> None:
    m = SessionManager("memory", session_id_prefix="app-", session_id_length=20)
    sid = m.new_sid()
    assert re.fullmatch(r"app-[0-9a-f]{40}", sid), sid
    assert m.valid_sid(sid)
    assert not m.valid_sid(sid[4:])  # prefix missing


def test_sids_come_from_the_csprng(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int | None] = []
    real = secrets.token_hex

    def token_hex(n: int | None = None) -> str:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(manager_module.secrets, "token_hex", token_hex)
    SessionManager("memory").new_sid()
    SessionManager("memory", session_id_length=32).new_sid()
    assert calls == [16, 32]


def test_sids_are_distinct() -> None:
    m = SessionManager("memory")
    sids = {m.new_sid() for _ in range(5000)}
    assert len(sids) == 5000


@pytest.mark.parametrize(
    "bad",
    ["", "a" * 31, "a" * 33, "A" * 32, "g" * 32, "a" * 31 + "\n", "../../etc/passwd",
     "a" * 31 + "é", " " + "a" * 31, "a" * 8192, None, 123, b"a" * 32],
)
def test_valid_sid_refuses_malformed(bad: Any) -> None:
    assert not SessionManager("memory").valid_sid(bad)


# ---------------------------------------------------------------- lifecycle


async def test_start_and_close() -> None:
    m = SessionManager("memory")
    assert not m.started
    await m.start()
    assert m.started
    assert m._gc_callback is not None and m._gc_callback.is_running()
    await m.start()  # idempotent
    await m.close()
    assert not m.started
    assert m.closed
    assert m._gc_callback is None
    with pytest.raises(ProviderClosedError):
        await m.get_active_sessions()
    with pytest.raises(ProviderClosedError):
        await m.session_start(make_handler())
    await m.close()  # twice is fine


async def test_concurrent_starts_make_one_actor() -> None:
    m = SessionManager("memory")
    await asyncio.gather(*(m.start() for _ in range(5)))
    actor = m._actor
    await m.start()
    assert m._actor is actor
    await m.close()


async def test_start_again_after_close() -> None:
    m = SessionManager("memory")
    await m.start()
    sid = await new_stored(m, a=1)
    await m.close()
    await m.start()
    assert m.started
    assert await m.read(sid) is None  # memory does not survive its provider
    await m.close()


async def test_async_with() -> None:
    async with SessionManager("memory") as m:
        assert m.started
        sid = await new_stored(m, a=1)
        assert await m.read(sid) == {"a": 1}
    assert m.closed
    with pytest.raises(ProviderClosedError):
        await m.read(sid)


async def test_first_use_starts_the_manager() -> None:
    m = SessionManager("memory")
    try:
        s = await m.session_start(make_handler())
        assert m.started
        assert s.is_new
    finally:
        await m.close()


# ---------------------------------------------------------------- session_start


async def test_no_cookie_gives_a_new_session_whose_cookie_comes_with_its_first_change(
    m: SessionManager,
) -> None:
    h = make_handler()
    s = await m.session_start(h)
    assert s.is_new
    assert HEX32.fullmatch(s.session_id)
    assert cookie_sid(h) is None  # nothing stored, no cookie, until the request changes it
    assert await m.session_start(h) is s  # same object within a request
    s["x"] = 1
    assert s.is_new  # until it is saved
    await s.release(h)
    assert not s.is_new
    assert cookie_sid(h) == s.session_id
    assert await m.read(s.session_id) == {"x": 1}


async def test_eager_new_sessions_store_and_set_a_cookie_at_once() -> None:
    async with SessionManager("memory", cookie_name="sid", eager_new_sessions=True) as m:
        h = make_handler()
        s = await m.session_start(h)
        assert cookie_sid(h) == s.session_id  # beego's behaviour: the cookie at start
        await s.release(h)
        assert await m.read(s.session_id) == {}
        assert await m.get_active_sessions() == 1


@pytest.mark.parametrize(
    "raw",
    ["garbage", "x" * 10_000, "../../etc", "..%2F..%2Fetc", "A" * 32, "0" * 31, "0" * 33,
     "0" * 32 + "/x", "0" * 32 + "\\"],
)
async def test_malformed_sids_are_never_adopted(m: SessionManager, raw: str) -> None:
    h = make_handler(f"sid={raw}")
    s = await m.session_start(h)
    assert s.is_new
    assert s.session_id != raw
    assert HEX32.fullmatch(s.session_id)
    assert cookie_sid(h) is None  # a new session gets its cookie when first changed
    assert "read" not in m.stats()["calls"]  # malformed ids never reach the provider


async def test_unknown_sid_is_not_adopted(m: SessionManager) -> None:
    unknown = secrets.token_hex(16)
    h = make_handler(f"sid={unknown}")
    s = await m.session_start(h)
    assert s.is_new
    assert s.session_id != unknown
    s["x"] = 1
    await s.release(h)
    assert cookie_sid(h) == s.session_id
    assert await m.read(unknown) is None  # nothing was created under the client's id


async def test_known_sid_is_loaded_without_a_new_cookie(m: SessionManager) -> None:
    sid = await new_stored(m, user="ann")
    h = make_handler(f"other=1; sid={sid}")
    s = await m.session_start(h)
    assert not s.is_new
    assert s.session_id == sid
    assert s["user"] == "ann"
    assert cookie_sid(h) is None


async def test_a_cookie_header_that_does_not_parse_gives_a_new_session(m: SessionManager) -> None:
    h = make_handler('sid="unterminated; \x00\x01; ===')
    s = await m.session_start(h)
    assert s.is_new


# ---------------------------------------------------------------- regenerate / destroy


async def test_regenerate_keeps_data_and_old_sid_stops_working(m: SessionManager) -> None:
    old = await new_stored(m, user="ann", cart=[1, 2])
    h = make_handler(f"sid={old}")
    s = await m.session_start(h)
    same = await m.session_regenerate_id(h)
    assert same is s
    new = s.session_id
    assert new != old
    assert HEX32.fullmatch(new)
    assert dict(s) == {"user": "ann", "cart": [1, 2]}
    assert cookie_sid(h) == new
    await s.release(h)
    assert await m.read(old) is None
    assert await m.read(new) == {"user": "ann", "cart": [1, 2]}
    h2 = make_handler(f"sid={old}")
    s2 = await m.session_start(h2)
    assert s2.is_new
    assert s2.session_id not in (old, new)
    assert len(s2) == 0


async def test_regenerate_of_a_new_session(m: SessionManager) -> None:
    h = make_handler()
    s = await m.session_start(h)
    first = s.session_id
    await m.session_regenerate_id(h)
    s["x"] = 1
    await s.release(h)
    assert s.session_id != first
    assert cookie_sid(h) == s.session_id
    assert await m.read(s.session_id) == {"x": 1}
    assert await m.read(first) is None


async def test_regenerate_without_a_started_session_starts_one(m: SessionManager) -> None:
    old = await new_stored(m, a=1)
    h = make_handler(f"sid={old}")
    s = await m.session_regenerate_id(h)
    assert s.session_id != old
    assert s["a"] == 1
    assert await m.read(old) is None


async def test_destroy_removes_the_record_and_expires_the_cookie(m: SessionManager) -> None:
    sid = await new_stored(m, a=1)
    h = make_handler(f"sid={sid}")
    s = await m.session_start(h)
    await m.session_destroy(h)
    assert s.destroyed
    assert await m.read(sid) is None
    (header,) = [c for c in set_cookies(h) if c.startswith("sid=")]
    assert "Max-Age=0" in header
    assert header.startswith("sid=;")
    assert await m.get_active_sessions() == 0


async def test_destroy_without_session_start(m: SessionManager) -> None:
    sid = await new_stored(m, a=1)
    h = make_handler(f"sid={sid}")
    await m.session_destroy(h)
    assert await m.read(sid) is None
    assert any("Max-Age=0" in c for c in set_cookies(h))


async def test_destroyed_session_is_not_saved_by_release(m: SessionManager) -> None:
    sid = await new_stored(m, a=1)
    h = make_handler(f"sid={sid}")
    s = await m.session_start(h)
    s["b"] = 2
    await m.session_destroy(h)
    await s.release(h)
    assert await m.read(sid) is None


# ---------------------------------------------------------------- counting and GC


async def test_get_active_sessions(m: SessionManager) -> None:
    assert await m.get_active_sessions() == 0
    sids = [await new_stored(m, i=i) for i in range(3)]
    assert await m.get_active_sessions() == 3
    assert await m.GetActiveSession() == 3
    h = make_handler(f"sid={sids[0]}")
    await m.session_start(h)
    await m.session_destroy(h)
    assert await m.get_active_sessions() == 2


async def test_unmodified_new_session_is_neither_stored_nor_given_a_cookie(m: SessionManager) -> None:
    for _ in range(5):
        h = make_handler()
        s = await m.session_start(h)
        assert s.get("x") is None  # read-only
        await s.release(h)
        assert cookie_sid(h) is None
    assert await m.get_active_sessions() == 0


async def test_expired_session_is_never_served_even_before_gc() -> None:
    async with SessionManager("memory", cookie_name="sid", max_lifetime=1) as m:
        sid = await new_stored(m, a=1)
        await asyncio.sleep(1.2)
        h = make_handler(f"sid={sid}")
        s = await m.session_start(h)
        assert s.is_new
        assert s.session_id != sid


async def test_gc_removes_idle_sessions() -> None:
    async with SessionManager("memory", cookie_name="sid", max_lifetime=1) as m:
        for i in range(3):
            await new_stored(m, i=i)
        assert len(records(m)) == 3
        await asyncio.sleep(1.2)
        assert len(records(m)) == 3  # idle, but only GC removes them
        await m.gc()
        assert len(records(m)) == 0
        assert await m.get_active_sessions() == 0


async def test_gc_keeps_sessions_in_use() -> None:
    async with SessionManager("memory", cookie_name="sid", max_lifetime=2) as m:
        sid = await new_stored(m, a=1)
        idle = await new_stored(m, b=1)
        for _ in range(3):
            await asyncio.sleep(0.8)
            assert await m.read(sid) == {"a": 1}  # a read refreshes the last access
        await m.gc()
        assert sid in records(m)
        assert idle not in records(m)


async def test_a_read_refreshes_the_deadline_once_per_refresh_step(m: SessionManager) -> None:
    # max_lifetime 600: refresh_step 10 s. A read that would move the deadline by less
    # leaves the record as it is (no rewrite); one that moves it further rewrites it.
    from gosession_tornado.provider import refresh_step
    from gosession_tornado.providers.memory import _deadline

    assert refresh_step(600) == 10 and refresh_step(30) == 1
    sid = await new_stored(m, a=1)
    stored = records(m)[sid]
    assert await m.read(sid) == {"a": 1}
    assert records(m)[sid] is stored  # moved by well under 10 s: not rewritten
    provider = m._actor.provider  # type: ignore[union-attr]
    records(m)[sid] = _HEAD.pack(_deadline(stored) - 11, 600) + stored[_HEAD.size :]  # 11 s older
    assert await m.read(sid) == {"a": 1}
    refreshed = _deadline(records(m)[sid])
    assert refreshed >= _deadline(stored) - 0.5  # back to (about) now + 600 s
    assert sid in provider._buckets[int(refreshed)]  # and re-indexed under its new second


async def test_periodic_callback_drives_gc() -> None:
    async with SessionManager("memory", cookie_name="sid", gc_lifetime=1, max_lifetime=1) as m:
        await new_stored(m, a=1)
        assert len(records(m)) == 1
        for _ in range(80):  # gc() is never called here; only the PeriodicCallback runs GC
            if not records(m):
                break
            await asyncio.sleep(0.1)
        assert len(records(m)) == 0
        assert m.stats()["calls"]["gc"]["calls"] >= 1


async def test_close_stops_the_gc_callback() -> None:
    m = SessionManager("memory", gc_lifetime=1)
    await m.start()
    callback = m._gc_callback
    assert callback is not None
    await m.close()
    assert not callback.is_running()


# ---------------------------------------------------------------- stats


async def test_stats_is_a_dict_at_once(m: SessionManager) -> None:
    sid = await new_stored(m, a=1)
    await m.read(sid)
    stats = m.stats()
    assert isinstance(stats, dict)
    assert stats["provider"] == "memory"
    assert stats["started"] is True
    assert stats["mailbox_depth"] == 0
    assert stats["batches"] >= 2
    assert stats["largest_batch"] >= 1
    assert stats["active_sessions"] is None  # not counted yet
    read = stats["calls"]["read"]
    assert read["calls"] == 1
    assert read["errors"] == 0
    assert read["mean_latency_ms"] >= 0
    assert read["max_latency_ms"] >= read["mean_latency_ms"]
    assert stats["calls"]["release"]["calls"] == 1


async def test_awaiting_stats_counts_active_sessions(m: SessionManager) -> None:
    for i in range(4):
        await new_stored(m, i=i)
    stats = await m.stats()
    assert stats["active_sessions"] == 4
    assert m.stats()["active_sessions"] == 4  # the last count is remembered


async def test_stats_count_errors() -> None:
    async with SessionManager("memory", provider_timeout=0.2) as m:
        assert m._actor is not None
        provider = m._actor.provider

        async def broken(sid: str) -> None:
            raise RuntimeError("disk on fire")

        provider.session_read = broken  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            await m.read(secrets.token_hex(16))
        calls = m.stats()["calls"]["read"]
        assert (calls["calls"], calls["errors"]) == (1, 1)


async def test_stats_of_a_closed_manager() -> None:
    m = SessionManager("memory")
    stats = m.stats()
    assert stats["started"] is False
    assert stats["calls"] == {}
    await m.start()
    await m.close()
    awaited = await m.stats()
    assert "closed" in awaited["active_sessions_error"]


def test_repr() -> None:
    assert "memory" in repr(SessionManager("memory", cookie_name="sid"))


async def test_awaiting_stats_does_not_start_a_stopped_manager() -> None:
    m = SessionManager("memory", "gosessionid", 3600, "")
    stats = await m.stats()
    assert stats["started"] is False
    assert stats["active_sessions"] is None
    assert stats["active_sessions_error"] == "session manager is not started"
    assert not m.started


async def test_destroy_by_id_without_a_request(m: SessionManager) -> None:
    sid = await new_stored(m, a=1)
    assert await m.destroy(sid) is True
    assert await m.read(sid) is None
    assert await m.destroy(sid) is False  # already gone
    assert await m.destroy("not-a-session-id") is False
