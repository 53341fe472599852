"""The redis provider beyond the contract suite: config forms, storage layout, TTLs,
concurrency (HTTP and cross-process), batching proof, outage and recovery.

Tests that need the shared server call ``require_server(REDIS)``; stop/restart
tests run a private ``redis-server`` on a free port, stopped by its PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import tornado.escape
import tornado.httpclient
import tornado.web

from gosession_tornado import (
    ConfigError,
    ProviderUnavailableError,
    SessionManager,
    codec,
)
from gosession_tornado.provider import All, Changes, Destroy, Exist, Read, Regenerate, Release
from gosession_tornado.providers.redis.config import RedisConfig, parse_duration, parse_redis_config
from gosession_tornado.providers.redis.provider import META_FIELD, RedisProvider, may_repeat

from .conftest import REDIS, free_port, require_server, server_answers
from .factories.factory_redis import delete_prefix
from .redis_helpers import Counter, cookie_of
from .support import Dump, SetKey, ask, create, fail_or_skip
from .support import provider_of as provider_as

PORT = REDIS[2]


# ---------------------------------------------------------------- helpers


def provider_of(m: SessionManager) -> RedisProvider:
    return provider_as(m, RedisProvider)


class RedisServer:
    """A private redis-server subprocess (no persistence) on a free port."""

    def __init__(self, directory: pathlib.Path, *extra: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.directory), *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            if server_answers("127.0.0.1", self.port, timeout=0.2):
                return
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"private redis-server on port {self.port} did not start")

    async def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)

    def client(self) -> aioredis.Redis:
        return aioredis.Redis(host="127.0.0.1", port=self.port)


def require_redis_server_binary() -> None:
    if shutil.which("redis-server") is None:
        fail_or_skip("redis-server binary not found: install redis-server to run this test")


@pytest.fixture
async def private_redis(tmp_path: pathlib.Path) -> AsyncIterator[RedisServer]:
    require_redis_server_binary()
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def shared() -> AsyncIterator[tuple[str, aioredis.Redis]]:
    """A unique key prefix on the shared server and a raw client; keys deleted afterwards."""
    require_server(REDIS)
    prefix = f"gstest:{secrets.token_hex(4)}:"
    client = aioredis.Redis(host="127.0.0.1", port=PORT)
    try:
        yield prefix, client
    finally:
        await client.aclose()
        await delete_prefix(prefix)


def manager(prefix: str, port: int = PORT, **overrides: Any) -> SessionManager:
    cfg: dict[str, Any] = {
        "provider": "redis",
        "cookie_name": "sid",
        "provider_config": f"127.0.0.1:{port},16,",
        "key_prefix": prefix,
    }
    cfg.update(overrides)
    return SessionManager(cfg)


async def count_keys(client: aioredis.Redis, prefix: str) -> int:
    return len([k async for k in client.scan_iter(match=prefix + "*", count=1000)])


# ---------------------------------------------------------------- config forms


def test_comma_form_seed_defaults() -> None:
    cfg = parse_redis_config(",100,astaxie")
    assert (cfg.host, cfg.port, cfg.poolsize, cfg.password, cfg.db) == ("127.0.0.1", 6379, 100, "astaxie", 0)
    assert parse_redis_config("") == RedisConfig()
    assert parse_redis_config("127.0.0.1:6379,100,") == RedisConfig(poolsize=100)


def test_comma_form_every_position() -> None:
    cfg = parse_redis_config("10.0.0.5:6380,50,secret,3,30,1m,2")
    assert cfg == RedisConfig(
        host="10.0.0.5", port=6380, poolsize=50, password="secret", db=3,
        idle_timeout=30.0, idle_check_frequency=60.0, max_retries=2,
    )


@pytest.mark.parametrize(
    ("text", "host", "port", "path"),
    [
        (":6390", "127.0.0.1", 6390, None),
        ("redis.local", "redis.local", 6379, None),
        ("[::1]:6391", "::1", 6391, None),
        ("/run/redis.sock", "127.0.0.1", 6379, "/run/redis.sock"),
    ],
)
def test_comma_form_addresses(text: str, host: str, port: int, path: str | None) -> None:
    cfg = parse_redis_config(f"{text},5")
    assert (cfg.host, cfg.port, cfg.unix_socket_path, cfg.poolsize) == (host, port, path, 5)


def test_zero_or_empty_poolsize_means_beego_default() -> None:
    assert parse_redis_config("h,0").poolsize == 100
    assert parse_redis_config("h,,pw").poolsize == 100


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("h:port,10", "addr"),
        ("h:70000", "addr"),
        ("h,abc", "poolsize"),
        ("h,-1", "poolsize"),
        ("h,10,pw,x", "dbnum"),
        ("h,10,pw,-2", "dbnum"),
        ("h,10,pw,0,soon", "idle_timeout"),
        ("h,10,pw,0,30,1x", "idle_check_frequency"),
        ("h,10,pw,0,30,60,many", "max_retries"),
        ("h,1,2,3,4,5,6,7", "provider_config"),
    ],
)
def test_comma_form_errors_name_the_item(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_redis_config(text)
    assert info.value.key == key
    assert key in str(info.value)


def test_password_with_comma_hint() -> None:
    with pytest.raises(ConfigError, match="password containing ','"):
        parse_redis_config("h,10,pa,ss")


def test_beego_v2_json_form() -> None:
    text = json.dumps(
        {
            "save_path": "127.0.0.1:6380", "poolsize": 20, "password": "astaxie", "db_num": 2,
            "idle_timeout": "30s", "idle_check_frequency": "1m30s", "max_retries": 3,
        }
    )
    assert parse_redis_config(text) == RedisConfig(
        port=6380, poolsize=20, password="astaxie", db=2,
        idle_timeout=30.0, idle_check_frequency=90.0, max_retries=3,
    )


def test_beego_cache_and_camelcase_spellings() -> None:
    cfg = parse_redis_config('{"conn": ":6381", "dbNum": "1", "password": "x", "maxRetries": 1}')
    assert (cfg.host, cfg.port, cfg.db, cfg.password, cfg.max_retries) == ("127.0.0.1", 6381, 1, "x", 1)
    cfg = parse_redis_config({"addr": "h:1", "poolSize": 7, "idleTimeout": 2.5, "keyPrefix": "app:"})
    assert (cfg.host, cfg.port, cfg.poolsize, cfg.idle_timeout, cfg.key_prefix) == ("h", 1, 7, 2.5, "app:")


def test_dict_form_with_host_and_port() -> None:
    cfg = parse_redis_config({"host": "cache", "port": 6390, "ssl": True, "username": "u", "db": 4})
    assert (cfg.host, cfg.port, cfg.ssl, cfg.username, cfg.db) == ("cache", 6390, True, "u", 4)


def test_url_forms() -> None:
    cfg = parse_redis_config("redis://user:p%40ss@cache.local:6390/2?poolsize=7&key_prefix=app:")
    assert cfg == RedisConfig(
        host="cache.local", port=6390, username="user", password="p@ss", db=2, poolsize=7, key_prefix="app:"
    )
    assert parse_redis_config("rediss://h").ssl is True
    cfg = parse_redis_config("unix:///tmp/r.sock?db=3")
    assert (cfg.unix_socket_path, cfg.db) == ("/tmp/r.sock", 3)
    assert parse_redis_config({"url": "redis://h:1/0", "poolsize": 3}).poolsize == 3


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ("http://h:6379", "url"),
        ("redis://h/notadb", "db"),
        ("redis://h:1?poolsize=many", "poolsize"),
        ({"addr": "h", "conn": "g"}, "conn"),
        ({"db": True}, "db"),
        ({"ssl": "maybe"}, "ssl"),
        ({"key_prefix": 5}, "key_prefix"),
        ({"idle_timeout": -1}, "idle_timeout"),
        (["h"], "provider_config"),
        ("{not json", "provider_config"),
        ("[1, 2]", "addr"),
    ],
)
def test_bad_configs_raise_config_error_naming_the_item(config: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_redis_config(config)
    assert info.value.key == key


def test_unknown_key_warns() -> None:
    with pytest.warns(UserWarning, match="frobnicate"):
        cfg = parse_redis_config({"addr": "h", "frobnicate": 1})
    assert cfg.host == "h"


def test_go_durations() -> None:
    assert parse_duration("1h2m3.5s", "x") == 3723.5
    assert parse_duration("250ms", "x") == 0.25
    assert parse_duration(0, "x") is None
    with pytest.raises(ConfigError):
        parse_duration("5 parsecs", "x")


async def test_manager_accepts_every_form_end_to_end(shared: tuple[str, aioredis.Redis]) -> None:
    prefix, client = shared
    forms: list[Any] = [
        f"127.0.0.1:{PORT},4,",
        f'{{"save_path": "127.0.0.1:{PORT}", "poolsize": 4, "db_num": 0, "idle_timeout": "30s"}}',
        {"addr": f"127.0.0.1:{PORT}", "poolsize": 4},
        f"redis://127.0.0.1:{PORT}/0?poolsize=4",
    ]
    for i, form in enumerate(forms):
        m = manager(prefix, provider_config=form)
        async with m:
            sid = m.new_sid()
            await ask(m, Release(sid, create(form=i), 60))
            assert await m.read(sid) == {"form": i}
    assert await count_keys(client, prefix) == len(forms)


async def test_provider_key_prefix_overrides_the_manager(shared: tuple[str, aioredis.Redis]) -> None:
    prefix, client = shared
    m = manager("ignored:", provider_config={"addr": f"127.0.0.1:{PORT}", "key_prefix": prefix + "p:"})
    async with m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(a=1), 60))
        assert await client.exists(f"{prefix}p:{sid}") == 1
        assert await count_keys(client, "ignored:") == 0


async def test_bad_db_and_password_are_config_errors(tmp_path: pathlib.Path) -> None:
    require_redis_server_binary()
    server = RedisServer(tmp_path, "--requirepass", "right-password", "--databases", "4")
    await server.start()
    try:
        base = f"127.0.0.1:{server.port},4"
        with pytest.raises(ConfigError) as info:
            await manager("gsp:", provider_config=f"{base},wrong-password").start()
        assert info.value.key == "password"
        with pytest.raises(ConfigError) as info:
            await manager("gsp:", provider_config=f"{base},").start()  # none given
        assert info.value.key == "password"
        with pytest.raises(ConfigError) as info:
            await manager("gsp:", provider_config=f"{base},right-password,4").start()
        assert info.value.key == "dbnum"
        async with manager("gsp:", provider_config=f"{base},right-password,3") as m:
            sid = m.new_sid()
            await ask(m, Release(sid, create(a=1), 60))
            assert await m.read(sid) == {"a": 1}
    finally:
        await server.stop()


async def test_nothing_listening_is_unavailable_not_a_hang() -> None:
    port = free_port()
    m = manager("gstest:none:", port=port, provider_timeout=2)
    with pytest.raises(ProviderUnavailableError, match=f"127.0.0.1:{port}"):
        await m.start()
    with pytest.raises(ProviderUnavailableError):
        await m.read(m.new_sid())  # retries the start, fails again cleanly
    await m.close()


async def test_a_server_that_is_not_redis_is_unavailable_not_a_raw_redis_error() -> None:
    """Something else on the port (here a fake HTTP server): a SessionError, not InvalidResponse."""

    async def http_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http_like, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    m = manager("gstest:nr:", port=port, provider_timeout=2)
    try:
        with pytest.raises(ProviderUnavailableError, match="did not answer like a Redis server"):
            await m.start()
    finally:
        await m.close()
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------- layout and TTL


async def test_storage_layout_is_one_hash_with_encoded_fields(shared: tuple[str, aioredis.Redis]) -> None:
    prefix, client = shared
    async with manager(prefix, max_lifetime=300) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(user="ann", **{"n": 1}), 300))
        await ask(m, Release(sid, Changes(set={7: (1, 2)}), 300))
        raw = await client.hgetall(prefix + sid)
        assert raw == {
            codec.encode("user"): codec.encode("ann"),
            codec.encode("n"): codec.encode(1),
            codec.encode(7): codec.encode((1, 2)),
            META_FIELD: b"300",
        }
        assert 290 < await client.ttl(prefix + sid) <= 300
        assert await client.type(prefix + sid) == b"hash"


async def test_ttl_is_refreshed_by_read_to_the_stored_lifetime(shared: tuple[str, aioredis.Redis]) -> None:
    prefix, client = shared
    async with manager(prefix, max_lifetime=600) as m:
        sid, remember = m.new_sid(), m.new_sid()
        await ask(m, Release(sid, create(a=1), 600))
        await ask(m, Release(remember, create(a=2), 100))  # set_expiry(100)
        for key in (sid, remember):
            await client.expire(prefix + key, 5)  # as if idle for a while
        assert await client.ttl(prefix + sid) <= 5
        assert await ask(m, Exist(sid)) is True
        assert await client.ttl(prefix + sid) <= 5  # exist does not touch
        assert await m.read(sid) == {"a": 1}
        assert 590 < await client.ttl(prefix + sid) <= 600
        assert await m.read(remember) == {"a": 2}
        assert 90 < await client.ttl(prefix + remember) <= 100  # its own lifetime, not max_lifetime


async def test_expiry_only_release_updates_ttl_and_lifetime(shared: tuple[str, aioredis.Redis]) -> None:
    prefix, client = shared
    async with manager(prefix) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(a=1), 3600))
        await ask(m, Release(sid, Changes(), 42))
        assert await client.hget(prefix + sid, META_FIELD) == b"42"
        assert 35 < await client.ttl(prefix + sid) <= 42


async def test_regenerate_moves_the_hash_and_removes_the_old_key(shared: tuple[str, aioredis.Redis]) -> None:
    prefix, client = shared
    async with manager(prefix) as m:
        old, new = m.new_sid(), m.new_sid()
        await ask(m, Release(old, create(user="ann"), 120))
        assert await ask(m, Regenerate(old, new)) == {"user": "ann"}
        assert await client.exists(prefix + old) == 0
        assert await m.read(new) == {"user": "ann"}
        assert 110 < await client.ttl(prefix + new) <= 120  # the session's own lifetime moved along
        # a retried regenerate answers the same and never clobbers the target
        assert await ask(m, Regenerate(old, new)) == {"user": "ann"}


async def test_corrupt_record_reads_as_missing(shared: tuple[str, aioredis.Redis]) -> None:
    prefix, client = shared
    async with manager(prefix) as m:
        sid = m.new_sid()
        await client.hset(prefix + sid, mapping={b"\xc1": b"x", codec.encode("a"): b"\xc1\xc1"})
        assert await m.read(sid) is None


async def test_a_bad_message_fails_alone_in_its_batch(shared: tuple[str, aioredis.Redis]) -> None:
    prefix, _ = shared
    async with manager(prefix) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(a=1), 60))
        results = await asyncio.gather(
            ask(m, Read(sid)),
            ask(m, Release(sid, Changes(set={"bad": object()}), 60)),
            ask(m, Release(sid, Changes(set={"b": 2}), 60)),
            ask(m, Read(sid)),
            return_exceptions=True,
        )
        assert results[0] == {"a": 1}
        assert isinstance(results[1], TypeError)
        assert results[2] is None
        assert results[3] == {"a": 1, "b": 2}


async def test_a_whole_batch_is_one_script_call_and_a_failing_op_fails_alone(
    shared: tuple[str, aioredis.Redis],
) -> None:
    """Every kind of op in one EVALSHA, in order; a key of the wrong type fails only its ops."""
    prefix, client = shared
    async with manager(prefix) as m:
        provider = provider_of(m)
        good, bad, gone, new, other = (m.new_sid() for _ in range(5))
        await ask(m, Release(good, create(a=1), 60))
        await ask(m, Release(other, create(o=1), 60))
        await client.set(prefix + bad, b"not a hash")  # another program's key under the prefix
        rt0 = provider.round_trips
        results = await asyncio.gather(
            ask(m, Read(good)),
            ask(m, Read(bad)),
            ask(m, Release(bad, Changes(set={"x": 1}), 60)),
            ask(m, Release(good, Changes(set={"b": 2}, deleted=frozenset({"a"})), 60)),
            ask(m, Exist(good)),
            ask(m, Destroy(gone)),
            ask(m, Regenerate(good, new)),
            ask(m, Read(new)),
            ask(m, Exist(good)),
            ask(m, Regenerate(other, new)),  # the target is live now: refused, nothing moved
            ask(m, Release(gone, Changes(set={"late": 1}), 60)),  # missing, not create: dropped
            return_exceptions=True,
        )
        assert provider.round_trips - rt0 == 1
        assert results[0] == {"a": 1}
        for failed in (results[1], results[2]):
            assert isinstance(failed, ProviderUnavailableError)
            assert "WRONGTYPE" in str(failed)
        assert results[3:9] == [None, True, None, {"b": 2}, {"b": 2}, False]
        assert isinstance(results[9], ProviderUnavailableError)
        assert "already exists" in str(results[9])
        assert results[10] is None
        assert await m.read(other) == {"o": 1}
        assert await m.read(new) == {"b": 2}
        assert await client.exists(prefix + gone) == 0
        assert await client.get(prefix + bad) == b"not a hash"


async def test_active_count_scans_only_its_own_prefix(shared: tuple[str, aioredis.Redis]) -> None:
    prefix, client = shared
    glob_prefix = prefix + "a*[b]?:"
    await client.set(prefix + "aXbY:stray", 1)  # would match an unescaped glob
    async with manager(glob_prefix) as m:
        for _ in range(3):
            await ask(m, Release(m.new_sid(), create(), 60))
        assert await ask(m, All()) == 3


# ---------------------------------------------------------------- concurrency


async def test_50_concurrent_http_requests_on_one_session_lose_no_key(
    shared: tuple[str, aioredis.Redis], serve: Any
) -> None:
    prefix, client = shared
    m = manager(prefix)
    base = (await serve([(r"/set/(\w+)", SetKey), ("/dump", Dump)], session_manager=m)).base_url
    http = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=64)
    try:
        first = await http.fetch(base + "/set/start")
        cookie = cookie_of(first)
        results = await asyncio.gather(
            *(http.fetch(f"{base}/set/k{i}", headers={"Cookie": cookie}) for i in range(50))
        )
        assert {r.code for r in results} == {200}
        dump = tornado.escape.json_decode((await http.fetch(base + "/dump", headers={"Cookie": cookie})).body)
        assert set(dump["keys"]) == {"start"} | {f"k{i}" for i in range(50)}
        assert await count_keys(client, prefix) == 1
    finally:
        http.close()
        await m.close()


async def test_256_concurrent_clients_no_errors(shared: tuple[str, aioredis.Redis], serve: Any) -> None:
    prefix, client = shared
    m = manager(prefix)
    base = (await serve([("/", Counter)], session_manager=m)).base_url
    http = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=256)
    try:
        firsts = await asyncio.gather(*(http.fetch(base + "/", raise_error=False) for _ in range(256)))
        assert [r.code for r in firsts] == [200] * 256
        cookies = [cookie_of(r) for r in firsts]
        assert len(set(cookies)) == 256
        seconds = await asyncio.gather(
            *(http.fetch(base + "/", headers={"Cookie": c}, raise_error=False) for c in cookies)
        )
        assert [r.code for r in seconds] == [200] * 256
        assert [tornado.escape.json_decode(r.body)["n"] for r in seconds] == [2] * 256
        assert await m.get_active_sessions() == 256
        assert await count_keys(client, prefix) == 256
        assert provider_of(m).round_trips < 2 * 256  # batched: far fewer than one per call
    finally:
        http.close()
        await m.close()


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from gosession_tornado import Session, SessionManager

    async def main(prefix, port, sid, tag, n):
        m = SessionManager({"provider": "redis", "cookie_name": "sid",
                            "provider_config": f"127.0.0.1:{port},8,", "key_prefix": prefix})
        async with m:
            async def one(i):
                data = await m.read(sid)
                assert data is not None, "session vanished"
                s = Session(m, sid, data)
                s[f"{tag}{i}"] = i
                await s.release()
            for start in range(0, n, 10):
                await asyncio.gather(*(one(i) for i in range(start, start + 10)))

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])))
    """
)


async def test_cross_process_updates_lose_nothing(shared: tuple[str, aioredis.Redis]) -> None:
    prefix, _ = shared
    async with manager(prefix) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(), 600))
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", CHILD, prefix, str(PORT), sid, tag, "60",
                stderr=asyncio.subprocess.PIPE,
            )
            for tag in ("a", "b")
        ]
        outputs = [await p.communicate() for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [err.decode() for _, err in outputs]
        data = await m.read(sid)
        assert data == {f"{tag}{i}": i for tag in ("a", "b") for i in range(60)}


INCR_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from gosession_tornado import Session, SessionManager

    async def main(prefix, port, sid, n):
        m = SessionManager({"provider": "redis", "cookie_name": "sid",
                            "provider_config": f"127.0.0.1:{port},8,", "key_prefix": prefix})
        async with m:
            async def one():
                data = await m.read(sid)
                assert data is not None, "session vanished"
                s = Session(m, sid, data)
                s.incr("n", 2)
                s.incr("m", -1)
                await s.release()
            for _ in range(0, n, 10):
                await asyncio.gather(*(one() for _ in range(10)))

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
    """
)


async def test_cross_process_increments_lose_none(shared: tuple[str, aioredis.Redis]) -> None:
    prefix, _ = shared
    async with manager(prefix) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(n=1000, m=0), 600))
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", INCR_CHILD, prefix, str(PORT), sid, "60",
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(3)
        ]
        outputs = [await p.communicate() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], [err.decode() for _, err in outputs]
        assert await m.read(sid) == {"n": 1000 + 3 * 60 * 2, "m": -3 * 60}


def incr(**deltas: int) -> Changes:
    """A release delta that increments each key by its delta."""
    return Changes(increments={k: (codec.encode(k), d) for k, d in deltas.items()})


async def test_increments_add_to_what_redis_holds_and_anything_else_counts_as_0(
    shared: tuple[str, aioredis.Redis],
) -> None:
    prefix, client = shared
    async with manager(prefix) as m:
        sid = m.new_sid()
        big = 2**40
        await ask(m, Release(sid, create(i=5, neg=-40, big=big, f=2.0, s="7", b=True, lst=[1]), 60))
        await client.hset(prefix + sid, codec.encode("junk"), b"\xc1\xc1")  # not msgpack at all
        deltas = {"i": 1, "neg": -100, "big": 3, "f": 1, "s": 1, "b": 1, "lst": 1, "junk": 4, "new": -7}
        await ask(m, Release(sid, incr(**deltas), 60))
        raw = await client.hgetall(prefix + sid)
        got = {codec.decode(k): codec.decode(v) for k, v in raw.items() if k != META_FIELD}
        assert got == {
            "i": 6, "neg": -140, "big": big + 3, "f": 1, "s": 1, "b": 1, "lst": 1, "junk": 4, "new": -7,
        }
        # together with sets and deletes, in one release; a flush first makes every current 0
        await ask(m, Release(sid, Changes(set={"x": 1}, deleted=frozenset({"s"}),
                                          increments={"i": (codec.encode("i"), 10)}), 60))
        data = await m.read(sid)
        assert data is not None and (data["i"], data["x"], "s" in data) == (16, 1, False)
        await ask(m, Release(sid, Changes(flushed=True, increments={"i": (codec.encode("i"), 2)}), 60))
        assert await m.read(sid) == {"i": 2}
        # a destroyed session is not resurrected by a late increment
        await ask(m, Destroy(sid))
        await ask(m, Release(sid, incr(i=1), 60))
        assert await client.exists(prefix + sid) == 0


async def test_an_increment_beyond_2_53_fails_its_release_and_writes_nothing(
    shared: tuple[str, aioredis.Redis],
) -> None:
    prefix, _ = shared
    async with manager(prefix) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(n=2**53 - 2, k=1), 60))
        with pytest.raises(ProviderUnavailableError, match="2\\^53"):
            await ask(m, Release(sid, Changes(set={"k": 2}, increments={"n": (codec.encode("n"), 5)}), 60))
        assert await m.read(sid) == {"n": 2**53 - 2, "k": 1}  # the set of that release too
        with pytest.raises(TypeError, match="2\\*\\*53"):
            await ask(m, Release(sid, incr(k=2**60), 60))
        await ask(m, Release(sid, incr(n=1), 60))
        assert await m.read(sid) == {"n": 2**53 - 1, "k": 1}


async def test_data_survives_closing_and_reopening(shared: tuple[str, aioredis.Redis]) -> None:
    prefix, _ = shared
    m = manager(prefix)
    async with m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(user="ann", cart=[1, 2]), 600))
    async with manager(prefix) as again:
        assert await again.read(sid) == {"user": "ann", "cart": [1, 2]}


async def test_1000_sessions_destroyed_or_expired_leave_no_keys(shared: tuple[str, aioredis.Redis]) -> None:
    prefix, client = shared
    async with manager(prefix) as m:
        sids = [m.new_sid() for _ in range(1000)]
        destroyed, expiring = sids[:500], sids[500:]
        await asyncio.gather(*(ask(m, Release(s, create(i=i), 3600)) for i, s in enumerate(destroyed)))
        await asyncio.gather(*(ask(m, Release(s, create(i=i), 1)) for i, s in enumerate(expiring)))
        assert await m.get_active_sessions() == 1000
        await asyncio.gather(*(ask(m, Destroy(s)) for s in destroyed))
        await asyncio.sleep(2.2)
        await m.gc()  # a no-op for redis: the TTLs did the work
        assert await m.get_active_sessions() == 0
        assert await count_keys(client, prefix) == 0


# ---------------------------------------------------------------- batching proof


async def server_counters(client: aioredis.Redis) -> tuple[int, int, int]:
    """(read events the server processed, EVALSHA calls, HGETALL calls), from INFO."""
    stats = await client.info("stats")
    cmds = await client.info("commandstats")
    evalsha = cmds.get("cmdstat_evalsha", {}).get("calls", 0)
    hgetall = cmds.get("cmdstat_hgetall", {}).get("calls", 0)  # run by the script, one per read
    return int(stats["total_reads_processed"]), int(evalsha), int(hgetall)


async def test_200_concurrent_reads_take_far_fewer_round_trips(private_redis: RedisServer) -> None:
    """Counted twice: by the provider and, independently, by the server's read events."""
    admin = private_redis.client()
    async with manager("gsb:", port=private_redis.port) as m:
        sids = [m.new_sid() for _ in range(200)]
        await asyncio.gather(*(ask(m, Release(s, create(i=i), 600)) for i, s in enumerate(sids)))
        provider = provider_of(m)

        # Sequential baseline: one round trip (one EVALSHA) per read, seen by both counters.
        rt0 = provider.round_trips
        reads0, evals0, hgetalls0 = await server_counters(admin)
        for s in sids:
            await m.read(s)
        reads1, evals1, hgetalls1 = await server_counters(admin)
        seq_trips = provider.round_trips - rt0
        assert seq_trips == 200
        assert evals1 - evals0 == 200
        assert hgetalls1 - hgetalls0 == 200
        assert reads1 - reads0 - 1 >= 200  # -1: the INFO call itself

        # Concurrent: the same 200 reads, batched: one EVALSHA per batch.
        rt0 = provider.round_trips
        results = await asyncio.gather(*(m.read(s) for s in sids))
        reads2, evals2, hgetalls2 = await server_counters(admin)
        trips = provider.round_trips - rt0
        server_reads = reads2 - reads1 - 2  # -2: the INFO calls on the admin connection
        assert results == [{"i": i} for i in range(200)]
        assert hgetalls2 - hgetalls1 == 200  # every read really ran on the server
        assert 1 <= trips <= 10
        assert evals2 - evals1 == trips  # the whole batch in one script call
        assert trips <= server_reads <= 20  # the server agrees: a handful of reads, not 200
    await admin.aclose()


async def test_concurrent_releases_and_reads_share_pipelines(private_redis: RedisServer) -> None:
    async with manager("gsb:", port=private_redis.port) as m:
        provider = provider_of(m)
        sids = [m.new_sid() for _ in range(100)]
        rt0 = provider.round_trips
        await asyncio.gather(
            *(ask(m, Release(s, create(i=i), 600)) for i, s in enumerate(sids)),
            *(m.read(s) for s in sids),
        )
        assert provider.round_trips - rt0 <= 10
        assert await asyncio.gather(*(m.read(s) for s in sids)) == [{"i": i} for i in range(100)]
        assert m.stats()["largest_batch"] >= 100


# ---------------------------------------------------------------- outage and recovery


async def test_redis_stopped_mid_run_then_restarted(private_redis: RedisServer, serve: Any) -> None:
    m = manager("gso:", port=private_redis.port, provider_timeout=2)
    client = await serve([("/", Counter)], session_manager=m)
    try:
        assert tornado.escape.json_decode((await client.fetch("/")).body) == {"n": 1}
        assert tornado.escape.json_decode((await client.fetch("/")).body) == {"n": 2}
        sid = client.cookies["sid"]

        await private_redis.stop()
        resp = await client.fetch("/")
        assert resp.code == 503
        assert b"unavailable" in resp.body.lower()
        with pytest.raises(ProviderUnavailableError, match=str(private_redis.port)):
            await m.read(sid)
        with pytest.raises(ProviderUnavailableError):
            await m.get_active_sessions()

        await private_redis.start()  # same port; no persistence, so the old session is gone
        resp = await client.fetch("/")
        assert resp.code == 200
        assert tornado.escape.json_decode(resp.body) == {"n": 1}
        assert tornado.escape.json_decode((await client.fetch("/")).body) == {"n": 2}
        assert await m.get_active_sessions() == 1
    finally:
        await m.close()


async def test_forgotten_scripts_are_reloaded(private_redis: RedisServer) -> None:
    admin = private_redis.client()
    async with manager("gsf:", port=private_redis.port) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(a=1), 60))
        await admin.script_flush()
        assert await asyncio.gather(m.read(sid), ask(m, Release(sid, Changes(set={"b": 2}), 60))) == [
            {"a": 1},
            None,
        ]
        assert await m.read(sid) == {"a": 1, "b": 2}
    await admin.aclose()


async def test_hung_redis_times_out_then_recovers(private_redis: RedisServer) -> None:
    async with manager("gsh:", port=private_redis.port, provider_timeout=1) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(a=1), 60))
        assert private_redis.proc is not None
        pid = private_redis.proc.pid
        os.kill(pid, signal.SIGSTOP)  # accepts connections, answers nothing
        try:
            with pytest.raises(ProviderUnavailableError):
                await m.read(sid)  # the actor cancels the batch after provider_timeout
        finally:
            os.kill(pid, signal.SIGCONT)
        # The cancelled read's reply arrives now: on the connection the cancel closed, so it
        # is never taken for the next command's (an HGETALL array would make this exist True).
        assert await ask(m, Exist(m.new_sid())) is False
        assert await m.read(sid) == {"a": 1}
        assert await ask(m, Exist(sid)) is True


async def client_id(admin: aioredis.Redis, name: str) -> int | None:
    """The id of the connection named *name* (``CLIENT SETNAME``), or None."""
    for client in await admin.client_list():
        if client.get("name") == name:
            return int(client["id"])
    return None


async def test_connection_killed_mid_batch_fails_that_batch_and_the_next_works(
    private_redis: RedisServer,
) -> None:
    """CLIENT KILL while the batch's command waits in the server (paused): one clean failure."""
    admin = private_redis.client()
    config = {"addr": f"127.0.0.1:{private_redis.port}", "client_name": "gs-victim"}
    try:
        async with manager("gsk:", provider_config=config, provider_timeout=3) as m:
            sid = m.new_sid()
            await ask(m, Release(sid, create(a=1), 60))
            victim = await client_id(admin, "gs-victim")
            assert victim is not None
            await admin.execute_command("CLIENT PAUSE", 3000, "WRITE")  # holds EVALSHA, not CLIENT KILL
            try:
                pending = asyncio.ensure_future(m.read(sid))
                await asyncio.sleep(0.2)  # the batch is written and waits in the server
                assert not pending.done()
                assert await admin.client_kill_filter(_id=victim) == 1
                with pytest.raises(ProviderUnavailableError, match=str(private_redis.port)):
                    await pending
            finally:
                await admin.execute_command("CLIENT UNPAUSE")
            assert await m.read(sid) == {"a": 1}  # a new connection, no restart
            assert await ask(m, Exist(m.new_sid())) is False
            again = await client_id(admin, "gs-victim")
            assert again is not None and again != victim
    finally:
        await admin.aclose()


async def test_max_retries_resends_a_killed_batch_unless_it_holds_an_increment(
    private_redis: RedisServer,
) -> None:
    """A batch whose connection dies mid-flight may have run: re-sent only if that is harmless."""
    admin = private_redis.client()
    config = {"addr": f"127.0.0.1:{private_redis.port}", "client_name": "gs-retry", "max_retries": 1}

    async def kill_while_held(call: Any) -> Any:
        """Run *call* while the server holds writes; kill its connection; let go 0.2 s later."""
        victim = await client_id(admin, "gs-retry")
        await admin.execute_command("CLIENT PAUSE", 3000, "WRITE")
        try:
            pending = asyncio.ensure_future(call)
            await asyncio.sleep(0.2)
            assert not pending.done()
            assert await admin.client_kill_filter(_id=victim) == 1
            await asyncio.sleep(0.2)  # the retry (if any) is held by the pause too
        finally:
            await admin.execute_command("CLIENT UNPAUSE")
        return await asyncio.gather(pending, return_exceptions=True)

    try:
        async with manager("gsr:", provider_config=config, provider_timeout=3) as m:
            sid = m.new_sid()
            await ask(m, Release(sid, create(a=1, n=0), 60))
            (result,) = await kill_while_held(ask(m, Release(sid, Changes(set={"a": 2}), 60)))
            assert result is None  # re-sent on a new connection: no error
            assert await m.read(sid) == {"a": 2, "n": 0}
            (result,) = await kill_while_held(ask(m, Release(sid, incr(n=5), 60)))
            assert isinstance(result, ProviderUnavailableError)  # not re-sent: it might count twice
            assert await m.read(sid) == {"a": 2, "n": 0}  # (killed before it ran)
    finally:
        await admin.aclose()


def test_may_repeat_is_false_only_for_a_save_with_an_increment() -> None:
    provider = RedisProvider()
    ops = {
        "read": provider.build_op(Read("s" * 32)),
        "set": provider.build_op(Release("s" * 32, Changes(set={"a": 1}, deleted=frozenset({"b"})), 60)),
        "incr": provider.build_op(Release("s" * 32, incr(n=1), 60)),
        "regenerate": provider.build_op(Regenerate("s" * 32, "t" * 32)),
        "destroy": provider.build_op(Destroy("s" * 32)),
    }
    assert all(op is not None for op in ops.values())
    assert {name: may_repeat(op.args) for name, op in ops.items() if op} == {
        "read": True, "set": True, "incr": False, "regenerate": True, "destroy": True,
    }

    def batch(*names: str) -> tuple[Any, ...]:
        chosen = [ops[n] for n in names]
        keys = [k for op in chosen if op for k in op.keys]
        argv = [a for op in chosen if op for a in op.argv]
        return ("EVALSHA", ops["read"].args[1] if ops["read"] else "", len(keys), *keys, *argv)

    assert may_repeat(batch("read", "set", "regenerate", "destroy", "read")) is True
    assert may_repeat(batch("read", "set", "regenerate", "incr", "read")) is False
    assert may_repeat(("SCAN", 0, "MATCH", "x*")) is True
    assert may_repeat(("SCRIPT LOAD", "return 1")) is True


async def test_connection_closed_while_idle_is_replaced_without_a_failed_call(
    private_redis: RedisServer,
) -> None:
    """A connection the server dropped between batches (CLIENT KILL, idle timeout) fails nothing."""
    admin = private_redis.client()
    config = {"addr": f"127.0.0.1:{private_redis.port}", "client_name": "gs-idle"}
    try:
        async with manager("gsi:", provider_config=config) as m:
            sid = m.new_sid()
            await ask(m, Release(sid, create(a=1), 60))
            for _ in range(3):
                victim = await client_id(admin, "gs-idle")
                assert victim is not None
                assert await admin.client_kill_filter(_id=victim) == 1
                await asyncio.sleep(0.05)  # the close reaches this process
                assert await m.read(sid) == {"a": 1}
    finally:
        await admin.aclose()


async def test_a_server_demoted_under_the_connection_is_left_for_a_new_connection(
    private_redis: RedisServer,
) -> None:
    """READONLY (a failover made the server a replica; Redis keeps its clients): reconnect."""
    admin = private_redis.client()
    config = {"addr": f"127.0.0.1:{private_redis.port}", "client_name": "gs-demoted"}
    try:
        async with manager("gsd:", provider_config=config) as m:
            sid = m.new_sid()
            await ask(m, Release(sid, create(a=1), 60))
            before = await client_id(admin, "gs-demoted")
            await admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # nobody there
            with pytest.raises(ProviderUnavailableError, match="read only replica"):
                await m.read(sid)  # the read refreshes the TTL: a write
            for _ in range(50):  # dropped, not kept on the replica (the close may take a moment)
                if await client_id(admin, "gs-demoted") is None:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the connection to the demoted server was kept")
            await admin.execute_command("REPLICAOF", "NO", "ONE")
            assert await m.read(sid) == {"a": 1}
            after = await client_id(admin, "gs-demoted")
            assert after is not None and after != before
    finally:
        await admin.aclose()


async def test_a_request_at_concurrency_1_is_one_round_trip_per_call(private_redis: RedisServer) -> None:
    """A read and a release per request, one after the other: one EVALSHA and one round trip each.

    Nothing else goes to the server: no PING, no connection check, no second command.
    """
    admin = private_redis.client()
    try:
        async with manager("gsc:", port=private_redis.port) as m:
            provider = provider_of(m)
            sids = [m.new_sid() for _ in range(20)]
            for i, sid in enumerate(sids):
                await ask(m, Release(sid, create(n=i), 600))
            await admin.config_resetstat()
            rt0 = provider.round_trips
            for sid in sids:
                data = await m.read(sid)
                assert data is not None
                await ask(m, Release(sid, Changes(set={"n": data["n"] + 1}), 600))
            assert provider.round_trips - rt0 == 2 * len(sids)
            stats = await admin.info("commandstats")
            calls = {name: value["calls"] for name, value in stats.items()}
            calls.pop("cmdstat_config|resetstat", None)
            calls.pop("cmdstat_config", None)
            # The scripts' own commands (HGETALL, EXISTS, HSET ...) are counted too; of the
            # client's, only EVALSHA is there.
            assert calls["cmdstat_evalsha"] == 2 * len(sids)
            assert calls["cmdstat_exists"] == len(sids)  # the release script's own check
            assert not {"cmdstat_ping", "cmdstat_script|load", "cmdstat_client|setinfo"} & set(calls)
            assert await asyncio.gather(*(m.read(s) for s in sids)) == [{"n": i + 1} for i in range(20)]
    finally:
        await admin.aclose()
