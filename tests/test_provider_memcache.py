"""The memcache provider beyond the contract suite: config forms, storage layout, several
servers, cas under cross-process concurrency, expiry, batching, outage and recovery, eviction.

Every test runs against real ``memcached`` processes started on free loopback
ports and stopped by PID (``tests/memcache_helpers.py``), never a fake.
Without the binary the tests fail under ``CI=true`` and skip loudly elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import tornado.escape
import tornado.web

from gosession_tornado import (
    ConfigError,
    ProviderUnavailableError,
    Session,
    SessionError,
    SessionManager,
    SessionMixin,
    codec,
)
from gosession_tornado.provider import Changes, Destroy, Exist, Read, Regenerate, Release
from gosession_tornado.providers.memcache import (
    DEFAULT_CAS_RETRIES,
    MAX_EXPTIME,
    MAX_RELATIVE_EXPTIME,
    TOMBSTONE,
    CannotCountError,
    CasConflictError,
    MemcacheConfig,
    MemcacheProvider,
    MemcacheServer,
    _exptime,
    parse_memcache_config,
)

from .memcache_helpers import Memcached, require_memcached_binary
from .support import ask, create, provider_of, update

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def memcached() -> Iterator[Memcached]:
    """A private memcached of this test."""
    require_memcached_binary()
    server = Memcached().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def two_memcached() -> Iterator[tuple[Memcached, Memcached]]:
    require_memcached_binary()
    a, b = Memcached(), Memcached()
    try:
        yield a.start(), b.start()
    finally:
        a.stop()
        b.stop()


def manager(provider_config: Any, **kw: Any) -> SessionManager:
    config = {"provider": "memcache", "cookie_name": "sid", "provider_config": provider_config}
    return SessionManager({**config, **kw})


@pytest.fixture
async def m(memcached: Memcached) -> AsyncIterator[SessionManager]:
    async with manager(memcached.address, key_prefix="t:") as mgr:
        yield mgr


def mp(mgr: SessionManager) -> MemcacheProvider:
    return provider_of(mgr, MemcacheProvider)


def stored(server: Memcached, key: str) -> dict[str, Any] | None:
    """The decoded envelope stored under *key* on *server*, or None."""
    raw = server.get(key.encode())
    return None if raw is None else codec.decode(raw)  # type: ignore[no-any-return]


class Counter(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.session["n"] = self.session.get("n", 0) + 1
        self.write({"n": self.session["n"]})


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("config", "servers"),
    [
        (None, ["127.0.0.1:11211"]),
        ("", ["127.0.0.1:11211"]),
        ("127.0.0.1:11211", ["127.0.0.1:11211"]),  # beego's form
        ("10.0.0.1:11211;10.0.0.2:11212", ["10.0.0.1:11211", "10.0.0.2:11212"]),  # beego's several
        ("10.0.0.1:11211, 10.0.0.2", ["10.0.0.1:11211", "10.0.0.2:11211"]),
        ("cache", ["cache:11211"]),
        (":11300", ["127.0.0.1:11300"]),
        ("[::1]:11211", ["[::1]:11211"]),
        ("/run/memcached/memcached.sock", ["/run/memcached/memcached.sock"]),
        ("memcache://cache:11300", ["cache:11300"]),
        ("memcached://cache", ["cache:11211"]),
        ("memcache://a:1,b:2", ["a:1", "b:2"]),
        ("memcache://a:1;memcache://b:2", ["a:1", "b:2"]),
        ("unix:///tmp/mc.sock", ["/tmp/mc.sock"]),
        ({"servers": ["a:1", "b:2"]}, ["a:1", "b:2"]),
        ({"servers": "a:1;b:2"}, ["a:1", "b:2"]),
        ({"save_path": "a:1"}, ["a:1"]),
        ({"conn": "memcache://a:1"}, ["a:1"]),
        ('{"servers": ["a:1"], "key_prefix": "app:"}', ["a:1"]),
    ],
)
def test_config_forms(config: Any, servers: list[str]) -> None:
    assert [s.name for s in parse_memcache_config(config).servers] == servers


def test_config_options_in_every_form() -> None:
    want = MemcacheConfig(
        servers=(MemcacheServer("a", 1),), key_prefix="app:", max_connections=3, cas_retries=5
    )
    assert parse_memcache_config(
        {"servers": "a:1", "key_prefix": "app:", "max_connections": 3, "cas_retries": "5"}
    ) == want
    assert parse_memcache_config(
        '{"Servers": ["a:1"], "keyPrefix": "app:", "poolsize": 3, "cas-retries": 5}'
    ) == want
    assert parse_memcache_config("memcache://a:1?key_prefix=app:&max_connections=3&cas_retries=5") == want
    defaults = parse_memcache_config("a:1")
    got = (defaults.key_prefix, defaults.max_connections, defaults.cas_retries)
    assert got == (None, 8, DEFAULT_CAS_RETRIES)
    assert parse_memcache_config("/s.sock").servers[0] == MemcacheServer(path="/s.sock")


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ("a:0", "servers"),
        ("a:70000", "servers"),
        ("a:port", "servers"),
        ("a b:1", "servers"),
        ("::1", "servers"),
        ("[::1", "servers"),
        (";", "servers"),
        ("a:1;a:1", "servers"),
        ("redis://a:1", "servers"),
        ({"servers": []}, "servers"),
        ({"servers": [1]}, "servers"),
        ({"servers": 11211}, "servers"),
        ({"max_connections": 0}, "max_connections"),
        ({"poolsize": "x"}, "poolsize"),
        ({"cas_retries": -1}, "cas_retries"),
        ({"key_prefix": 3}, "key_prefix"),
        ({"servers": "a:1", "addr": "b:1"}, "addr"),
        ("memcache://a:1?servers=b:1", "servers"),
        ('{"servers": ', "provider_config"),
        ("[::1]x", "servers"),
        (42, "provider_config"),
    ],
)
def test_bad_config_raises_config_error_naming_the_key(config: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_memcache_config(config)
    assert info.value.key == key, info.value


def test_unknown_config_key_warns() -> None:
    with pytest.warns(UserWarning, match="unknown memcache provider_config key 'colour'"):
        assert parse_memcache_config({"servers": "a:1", "colour": "red"}).servers[0].name == "a:1"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"provider_config": "a:0"}, "servers"),
        ({"key_prefix": "has space:"}, "key_prefix"),
        ({"key_prefix": "ctl\x01:"}, "key_prefix"),
        ({"key_prefix": "x" * 91}, "key_prefix"),
        ({"provider_config": {"servers": "a:1", "key_prefix": ""}}, "key_prefix"),
    ],
)
def test_the_manager_refuses_a_bad_config_when_built(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        SessionManager({"provider": "memcache", "cookie_name": "sid", **overrides})
    assert info.value.key == key


def test_expiry_times_over_30_days_are_unix_times() -> None:
    assert _exptime(3600) == 3600
    assert _exptime(0) == 1  # 0 would mean "never expires" to memcached
    assert _exptime(MAX_RELATIVE_EXPTIME) == MAX_RELATIVE_EXPTIME
    assert abs(_exptime(40 * 86400) - (time.time() + 40 * 86400)) < 2
    assert _exptime(2**31 - 1) == MAX_EXPTIME == 2**31 - 1  # memcached's 32-bit Unix time: capped


# ---------------------------------------------------------------- layout and verbs


async def test_one_item_per_session_holding_the_msgpack_envelope(memcached: Memcached) -> None:
    async with manager(memcached.address, key_prefix="lay:") as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(user="ann", n=1), 600))
        assert stored(memcached, "lay:" + sid) == {"data": {"user": "ann", "n": 1}, "lifetime": 600}
    # provider_config's key_prefix wins over the manager's
    async with manager({"servers": memcached.address, "key_prefix": "own:"}, key_prefix="lay:") as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(a=1), 600))
        assert stored(memcached, "own:" + sid) == {"data": {"a": 1}, "lifetime": 600}
        assert memcached.get(("lay:" + sid).encode()) is None


async def test_regenerate_moves_the_item_and_the_old_key_is_gone(
    memcached: Memcached, m: SessionManager
) -> None:
    old, new = m.new_sid(), m.new_sid()
    await ask(m, Release(old, create(user="ann"), 900))
    assert await ask(m, Regenerate(old, new)) == {"user": "ann"}
    assert memcached.get(("t:" + old).encode()) is None  # deleted, not only retired
    assert stored(memcached, "t:" + new) == {"data": {"user": "ann"}, "lifetime": 900}
    # a live target is never overwritten
    other = m.new_sid()
    await ask(m, Release(other, create(x=1), 900))
    with pytest.raises(SessionError, match="already names a live session"):
        await ask(m, Regenerate(new, other))
    assert await ask(m, Read(other)) == {"x": 1}
    assert await ask(m, Read(new)) == {"user": "ann"}
    # a retried regenerate (old gone, new there) answers the moved data again
    assert await ask(m, Regenerate(old, new)) == {"user": "ann"}


async def test_regenerate_copies_an_update_that_lands_on_the_old_key_meanwhile(
    memcached: Memcached, m: SessionManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = mp(m)
    old, new = m.new_sid(), m.new_sid()
    await ask(m, Release(old, create(a=1), 900))
    real_command = provider._command
    sneaked = False

    async def command(server: Any, call: Any) -> Any:
        nonlocal sneaked
        result = await real_command(server, call)
        if not sneaked and memcached.get(("t:" + new).encode()) is not None:
            sneaked = True  # another process updates the old session between our add and our cas
            newer = codec.encode({"data": {"a": 1, "b": 2}, "lifetime": 900})
            memcached.set(("t:" + old).encode(), newer, 900)
        return result

    monkeypatch.setattr(provider, "_command", command)
    assert await ask(m, Regenerate(old, new)) == {"a": 1, "b": 2}
    assert sneaked
    assert await ask(m, Read(new)) == {"a": 1, "b": 2}
    assert await ask(m, Exist(old)) is False


async def test_a_retired_key_reads_as_missing_and_is_not_resurrected(
    memcached: Memcached, m: SessionManager
) -> None:
    sid = m.new_sid()
    memcached.set(("t:" + sid).encode(), TOMBSTONE, 60)
    assert await ask(m, Read(sid)) is None
    assert await ask(m, Exist(sid)) is False
    await ask(m, Release(sid, update(a=1), 600))  # may not create: dropped
    assert memcached.get(("t:" + sid).encode()) == TOMBSTONE
    await ask(m, Release(sid, create(a=1), 600))  # a new session may
    assert await ask(m, Read(sid)) == {"a": 1}


async def test_corrupt_item_reads_as_missing_with_a_warning(
    memcached: Memcached, m: SessionManager, caplog: pytest.LogCaptureFixture
) -> None:
    sid = m.new_sid()
    memcached.set(("t:" + sid).encode(), b"\x93not an envelope", 60)
    with caplog.at_level(logging.WARNING, logger="gosession_tornado.memcache"):
        assert await ask(m, Read(sid)) is None
    assert "undecodable" in caplog.text and sid not in caplog.text  # ids shortened in logs


async def test_a_bad_message_fails_alone_in_its_batch(m: SessionManager) -> None:
    good, bad = m.new_sid(), m.new_sid()
    results = await asyncio.gather(
        ask(m, Release(good, create(a=1), 600)),
        ask(m, Release(bad, Changes(set={"f": object()}, create=True), 600)),
        ask(m, Read(good)),
        return_exceptions=True,
    )
    assert results[0] is None and isinstance(results[1], TypeError) and results[2] == {"a": 1}
    assert await ask(m, Exist(bad)) is False


async def test_a_session_over_the_item_size_limit_is_refused_clearly(m: SessionManager) -> None:
    sid = m.new_sid()
    await ask(m, Release(sid, create(a=1), 600))
    with pytest.raises(SessionError, match="item size limit"):
        await ask(m, Release(sid, update(big=os.urandom(2 * 1024 * 1024)), 600))
    assert await ask(m, Read(sid)) == {"a": 1}  # nothing half-written, the session still works
    await ask(m, Release(sid, update(b=2), 600))
    assert await ask(m, Read(sid)) == {"a": 1, "b": 2}


async def test_memcached_cannot_count_and_stats_say_so(m: SessionManager) -> None:
    with pytest.raises(CannotCountError, match="memcached cannot count sessions") as info:
        await m.get_active_sessions()
    assert isinstance(info.value, SessionError)
    stats = await m.stats()
    assert stats["active_sessions"] is None
    assert "cannot count" in stats["active_sessions_error"]
    await m.gc()  # a no-op, never an error


async def test_an_unreachable_server_fails_start_and_start_can_be_retried(memcached: Memcached) -> None:
    port = memcached.port
    memcached.stop()
    m = manager(f"127.0.0.1:{port}", provider_timeout=2)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailableError, match=f"127.0.0.1:{port}"):
        await m.start()
    assert time.monotonic() - started < 2
    memcached.start()
    await m.start()
    try:
        sid = m.new_sid()
        await ask(m, Release(sid, create(a=1), 60))
        assert await m.read(sid) == {"a": 1}
    finally:
        await m.close()


async def test_a_server_that_is_not_memcached_is_unavailable(unused_tcp_port: int) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"-ERR not memcached\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", unused_tcp_port)
    try:
        with pytest.raises(ProviderUnavailableError, match="does not speak memcached"):
            await manager(f"127.0.0.1:{unused_tcp_port}").start()
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------- expiry


async def test_ttl_is_the_lifetime_and_reads_refresh_it(memcached: Memcached) -> None:
    async with manager(memcached.address, max_lifetime=3) as m:
        read, idle = m.new_sid(), m.new_sid()
        await ask(m, Release(read, create(a=1), 3))
        await ask(m, Release(idle, create(b=1), 3))
        await asyncio.sleep(2.0)
        assert await ask(m, Read(read)) == {"a": 1}  # gat: lives until >= t+4
        await asyncio.sleep(1.6)  # t = 3.6: the idle one is gone, the read one is not
        assert await ask(m, Exist(idle)) is False
        assert await ask(m, Read(read)) == {"a": 1}


async def test_a_read_keeps_a_sessions_own_lifetime_shorter_or_longer(memcached: Memcached) -> None:
    async with manager(memcached.address, max_lifetime=2) as m:
        short, long_ = m.new_sid(), m.new_sid()
        async with manager(memcached.address, max_lifetime=60) as m60:
            await ask(m60, Release(short, create(s=1), 2))  # set_expiry(2) under a 60 s default
            await asyncio.sleep(1.0)
            assert await ask(m60, Read(short)) == {"s": 1}  # gat 60, then touched back to 2
            await asyncio.sleep(2.3)
            assert await ask(m60, Read(short)) is None  # never late: gone 2 s after the read
        await ask(m, Release(long_, create(l=1), 60))  # "remember me" under a 2 s default
        assert await ask(m, Read(long_)) == {"l": 1}  # gat 2, then touched back to 60
        await asyncio.sleep(3.2)
        assert await ask(m, Read(long_)) == {"l": 1}


async def test_expiry_is_never_late(memcached: Memcached) -> None:
    async with manager(memcached.address, max_lifetime=2) as m:
        sids = [m.new_sid() for _ in range(5)]
        for sid in sids:
            await ask(m, Release(sid, create(a=1), 2))
        await asyncio.sleep(2.3)  # memcached counts whole seconds: gone within 2 s (plus a tick)
        assert [await ask(m, Read(sid)) for sid in sids] == [None] * 5


async def test_a_lifetime_over_30_days_is_kept(m: SessionManager) -> None:
    sid, longest = m.new_sid(), m.new_sid()
    await ask(m, Release(sid, create(a=1), 40 * 86400))  # sent as a Unix time, not as seconds
    assert await ask(m, Read(sid)) == {"a": 1}
    assert (await m.read(sid)) == {"a": 1}
    await ask(m, Release(longest, create(b=1), 2**31 - 1))  # past 2038: capped, not wrapped around
    assert await ask(m, Read(longest)) == {"b": 1}


async def test_eviction_under_memory_pressure_loses_the_oldest_sessions_quietly(serve: Any) -> None:
    """What the docs warn about: a full memcached evicts sessions; the user gets a fresh one."""
    require_memcached_binary()
    small = Memcached(2).start()  # 2 MiB of cache
    try:
        async with manager(small.address) as m:
            sids = [m.new_sid() for _ in range(400)]
            for sid in sids:
                await ask(m, Release(sid, create(blob=b"x" * 10_000), 3600))
            alive = [await ask(m, Read(sid)) is not None for sid in sids]
            assert not alive[0] and alive[-1]  # the oldest went first
            assert int(small.stats()["evictions"]) > 0
            client = await serve([("/", Counter)], session_manager=m)
            client.cookies["sid"] = sids[0]
            resp = await client.fetch("/")
            assert resp.code == 200 and tornado.escape.json_decode(resp.body) == {"n": 1}
    finally:
        small.stop()


# ---------------------------------------------------------------- several servers


async def test_each_session_lives_on_one_server_chosen_by_its_id(
    two_memcached: tuple[Memcached, Memcached]
) -> None:
    a, b = two_memcached
    async with manager(f"{a.address};{b.address}", key_prefix="many:") as m:
        sids = [m.new_sid() for _ in range(60)]
        for sid in sids:
            await ask(m, Release(sid, create(v=sid[:4]), 600))
        placed: dict[str, str] = {}
        for sid in sids:
            on_a = a.get(("many:" + sid).encode()) is not None
            on_b = b.get(("many:" + sid).encode()) is not None
            assert on_a != on_b, "a session lives on exactly one server"
            placed[sid] = a.address if on_a else b.address
            assert mp(m).server_for(sid).name == placed[sid]
        assert 10 < sum(1 for s in placed.values() if s == a.address) < 50  # both used
        assert [await ask(m, Read(sid)) for sid in sids] == [{"v": sid[:4]} for sid in sids]
    # another manager (another process), servers listed the other way round: same placement
    async with manager({"servers": [b.address, a.address]}, key_prefix="many:") as m2:
        assert all(mp(m2).server_for(sid).name == placed[sid] for sid in sids)
        assert [await ask(m2, Read(sid)) for sid in sids] == [{"v": sid[:4]} for sid in sids]


async def test_a_batch_is_one_multi_get_per_server(two_memcached: tuple[Memcached, Memcached]) -> None:
    a, b = two_memcached
    async with manager(f"{a.address};{b.address}") as m:
        life = m.config.max_lifetime
        sids = [m.new_sid() for _ in range(64)]
        await asyncio.gather(*(ask(m, Release(sid, create(i=i), life)) for i, sid in enumerate(sids)))
        provider = mp(m)
        before = provider.commands
        results = await asyncio.gather(*(ask(m, Read(sid)) for sid in sids))
        assert results == [{"i": i} for i in range(64)]
        assert provider.commands - before <= 4  # one gat per server per batch (the first may go alone)
        before = provider.commands
        await asyncio.gather(*(ask(m, Release(sid, update(j=1), life)) for sid in sids))
        # one gets per server per batch, then one cas per session
        assert provider.commands - before <= 64 + 4
        # a session with a lifetime of its own costs one touch more per read, in the same batch
        await ask(m, Release(sids[0], update(k=1), 600))
        before = provider.commands
        assert await ask(m, Read(sids[0])) == {"i": 0, "j": 1, "k": 1}
        assert provider.commands - before == 2


async def test_a_batch_keeps_order_per_session_and_merges_its_saves_into_one_cas(m: SessionManager) -> None:
    provider = mp(m)
    sid, life = m.new_sid(), m.config.max_lifetime  # the default lifetime: reads need no touch
    await ask(m, Release(sid, create(n=0), life))
    before = provider.commands
    results = await asyncio.gather(
        ask(m, Read(sid)),
        *(ask(m, Release(sid, update(**{f"k{i}": i}), life)) for i in range(50)),
        ask(m, Read(sid)),
        ask(m, Destroy(sid)),
        ask(m, Exist(sid)),
    )
    assert results[0] == {"n": 0}  # the read before the saves does not see them
    assert results[-3] == {"n": 0, **{f"k{i}": i for i in range(50)}}  # the read after them does
    assert results[-1] is False  # the destroy came before the exist
    # gat; gets + one cas for the 50 saves; gat; delete; gets
    assert provider.commands - before == 6


async def test_one_server_down_fails_only_its_sessions(two_memcached: tuple[Memcached, Memcached]) -> None:
    a, b = two_memcached
    async with manager(f"{a.address};{b.address}", provider_timeout=2) as m:
        sids = [m.new_sid() for _ in range(20)]
        for sid in sids:
            await ask(m, Release(sid, create(a=1), 600))
        on_a = [s for s in sids if mp(m).server_for(s).name == a.address]
        on_b = [s for s in sids if s not in on_a]
        assert on_a and on_b
        a.kill()
        results = await asyncio.gather(*(ask(m, Read(sid)) for sid in sids), return_exceptions=True)
        for sid, result in zip(sids, results):
            if sid in on_a:
                assert isinstance(result, ProviderUnavailableError) and a.address in str(result)
            else:
                assert result == {"a": 1}


# ---------------------------------------------------------------- concurrency


async def test_two_managers_concurrent_releases_of_different_keys_lose_nothing(memcached: Memcached) -> None:
    async with manager(memcached.address) as m1, manager(memcached.address) as m2:
        sid = m1.new_sid()
        await ask(m1, Release(sid, create(), 600))
        await asyncio.gather(
            *(ask(m1, Release(sid, update(**{f"a{i}": i}), 600)) for i in range(50)),
            *(ask(m2, Release(sid, update(**{f"b{i}": i}), 600)) for i in range(50)),
        )
        expected = {f"{t}{i}": i for t in "ab" for i in range(50)}
        assert await m1.read(sid) == expected
        assert await m2.read(sid) == expected


async def test_two_managers_concurrent_increments_lose_none(memcached: Memcached) -> None:
    async with manager(memcached.address) as m1, manager(memcached.address) as m2:
        sid = m1.new_sid()
        await ask(m1, Release(sid, create(n=0), 600))

        async def bump(mgr: SessionManager) -> None:
            data = await mgr.read(sid)
            assert data is not None
            s = Session(mgr, sid, data)
            s.incr("n")
            await s.release()

        # Whether the two managers' cas round trips overlap depends on scheduling: run
        # rounds until they did race at least once (each round must lose nothing).
        for rounds in range(1, 6):
            await asyncio.gather(*(bump(m1 if i % 2 else m2) for i in range(200)))
            assert await m1.read(sid) == {"n": 200 * rounds}
            if mp(m1).cas_conflicts + mp(m2).cas_conflicts > 0:
                break
        assert mp(m1).cas_conflicts + mp(m2).cas_conflicts > 0  # they did race


async def test_cas_retries_run_out_into_a_clear_error_and_nothing_is_written(
    memcached: Memcached, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with manager({"servers": memcached.address, "cas_retries": 2}, key_prefix="c:") as m:
        provider = mp(m)
        sid = m.new_sid()
        await ask(m, Release(sid, create(a=1), 600))
        real_fetch = provider._fetch
        meddling = 0

        async def fetch(server: Any, client: Any, keys: Any, touch: Any) -> Any:
            nonlocal meddling
            items = await real_fetch(server, client, keys, touch)
            if touch is None and meddling < 10:  # another process writes after every gets
                meddling += 1
                theirs = codec.encode({"data": {"a": meddling}, "lifetime": 600})
                memcached.set(("c:" + sid).encode(), theirs, 600)
            return items

        monkeypatch.setattr(provider, "_fetch", fetch)
        with pytest.raises(CasConflictError, match="gave up after 2 retries") as info:
            await ask(m, Release(sid, update(mine=1), 600))
        assert isinstance(info.value, ProviderUnavailableError)  # the mixin answers 503
        assert meddling == 3
        assert stored(memcached, "c:" + sid) == {"data": {"a": 3}, "lifetime": 600}
        meddling = 8  # two more conflicts, then it wins: the change merges into what is there
        await ask(m, Release(sid, update(mine=1), 600))
        assert stored(memcached, "c:" + sid) == {"data": {"a": 10, "mine": 1}, "lifetime": 600}


async def test_two_creators_of_one_new_session_do_not_overwrite_each_other(memcached: Memcached) -> None:
    async with manager(memcached.address) as m1, manager(memcached.address) as m2:
        sid = m1.new_sid()
        await asyncio.gather(ask(m1, Release(sid, create(a=1), 600)), ask(m2, Release(sid, create(b=2), 600)))
        assert await m1.read(sid) == {"a": 1, "b": 2}


INCR_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, sys.argv[4])
    from gosession_tornado import Session, SessionManager

    async def main(address, sid, n):
        m = SessionManager({"provider": "memcache", "cookie_name": "sid", "provider_config": address})
        async with m:
            async def one(i):
                data = await m.read(sid)
                assert data is not None, "session vanished"
                s = Session(m, sid, data)
                s.incr("n", 2)
                s[f"k{sys.argv[5]}-{i}"] = i
                await s.release()
            for base in range(0, n, 10):
                await asyncio.gather(*(one(base + j) for j in range(10)))

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    """
)


async def test_cross_process_increments_and_keys_lose_none(memcached: Memcached) -> None:
    async with manager(memcached.address) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(n=1000), 600))
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", INCR_CHILD, memcached.address, sid, "60", ROOT, tag,
                stderr=asyncio.subprocess.PIPE,
            )
            for tag in ("a", "b", "c")
        ]
        outputs = [await p.communicate() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [err.decode()[-2000:] for _, err in outputs]
        data = await m.read(sid)
        assert data is not None
        assert data.pop("n") == 1000 + 3 * 60 * 2
        assert data == {f"k{t}-{i}": i for t in "abc" for i in range(60)}


# ---------------------------------------------------------------- failures


async def test_server_killed_gives_503_within_the_timeout_then_recovers(
    memcached: Memcached, serve: Any
) -> None:
    m = manager(memcached.address, provider_timeout=2)
    client = await serve([("/", Counter)], session_manager=m)
    try:
        assert tornado.escape.json_decode((await client.fetch("/")).body) == {"n": 1}
        assert tornado.escape.json_decode((await client.fetch("/")).body) == {"n": 2}
        sid = client.cookies["sid"]

        memcached.kill()  # SIGKILL: connections reset, nothing kept
        started = time.monotonic()
        resp = await client.fetch("/")
        assert resp.code == 503 and b"unavailable" in resp.body.lower()
        assert time.monotonic() - started < 2.0  # within provider_timeout
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError, match=str(memcached.port)):
            await m.read(sid)
        assert time.monotonic() - started < 0.5  # known down: fails fast on the check

        memcached.start()  # same port; memcached kept nothing, so the user starts afresh
        resp = await client.fetch("/")
        assert resp.code == 200 and tornado.escape.json_decode(resp.body) == {"n": 1}
        assert tornado.escape.json_decode((await client.fetch("/")).body) == {"n": 2}
    finally:
        await m.close()


async def test_hung_server_times_out_then_recovers(memcached: Memcached) -> None:
    async with manager(memcached.address, provider_timeout=1) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(a=1), 60))
        os.kill(memcached.pid, signal.SIGSTOP)  # accepts connections, answers nothing
        try:
            started = time.monotonic()
            with pytest.raises(ProviderUnavailableError):
                await m.read(sid)
            assert time.monotonic() - started < 1.2
        finally:
            os.kill(memcached.pid, signal.SIGCONT)
        assert await ask(m, Exist(m.new_sid())) is False  # no late reply is taken for this one
        assert await m.read(sid) == {"a": 1}
        await ask(m, Release(sid, update(b=2), 60))
        assert await m.read(sid) == {"a": 1, "b": 2}


async def test_destroy_of_a_missing_session_is_fine_and_close_fails_later_calls(m: SessionManager) -> None:
    await ask(m, Destroy(m.new_sid()))
    await m.close()
    with pytest.raises(ProviderUnavailableError):
        await m.read(m.new_sid())


def test_docs_page_names_the_measured_choice() -> None:
    text = pathlib.Path(ROOT, "docs", "providers", "memcache.rst").read_text(encoding="utf-8")
    for needle in ("emcache", "aiomcache", "bench/bench_memcache_clients.py", "gets", "cas", "Eviction"):
        assert needle in text, needle
    assert "memcache" in pathlib.Path(ROOT, "docs", "providers", "index.rst").read_text(encoding="utf-8")
