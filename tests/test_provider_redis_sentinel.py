"""The redis_sentinel provider beyond the contract suite: config forms, data on the master,
sentinel fallback, concurrency, and a real failover (master SIGKILLed, replica promoted).

Every server here is private: :class:`~tests.factories.factory_redis_sentinel.Topology`
starts a master, a replica and sentinels on free loopback ports and stops them by PID.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import tornado.escape
import tornado.httpclient
import tornado.web

from gosession_tornado import ConfigError, ProviderUnavailableError, SessionManager, SessionMixin
from gosession_tornado.provider import Read, Release
from gosession_tornado.providers.redis.provider import RedisProvider
from gosession_tornado.providers.redis.sentinel import (
    RedisSentinelProvider,
    SentinelConfig,
    parse_sentinel_config,
)
from gosession_tornado.registry import lookup

from .conftest import free_port
from .factories.factory_redis import delete_prefix
from .factories.factory_redis_sentinel import MASTER_NAME, Topology, shared_topology
from .redis_helpers import Counter
from .support import ask, create
from .support import provider_of as provider_as

# ---------------------------------------------------------------- helpers


def provider_of(m: SessionManager) -> RedisSentinelProvider:
    return provider_as(m, RedisSentinelProvider)


@pytest.fixture(scope="module")
def topology() -> Topology:
    """The shared master + replica + sentinel (never failed over)."""
    return shared_topology()


@pytest.fixture
async def prefix(topology: Topology) -> AsyncIterator[str]:
    key_prefix = f"gstest:{secrets.token_hex(4)}:"
    try:
        yield key_prefix
    finally:
        await delete_prefix(key_prefix, port=topology.master_port)


def manager(topology: Topology, prefix: str, **overrides: Any) -> SessionManager:
    cfg: dict[str, Any] = {
        "provider": "redis_sentinel",
        "cookie_name": "sid",
        "provider_config": f"{topology.sentinel_addrs},8,,0,{MASTER_NAME}",
        "key_prefix": prefix,
    }
    cfg.update(overrides)
    return SessionManager(cfg)


# ---------------------------------------------------------------- config forms


def test_registry_maps_the_name_to_a_redis_provider_subclass() -> None:
    cls = lookup("redis_sentinel")
    assert cls is RedisSentinelProvider
    assert issubclass(cls, RedisProvider)


def test_beego_comma_form_and_defaults() -> None:
    cfg = parse_sentinel_config("127.0.0.1:26379;127.0.0.2:26380,100,1qaz2wsx,0,mymaster")
    assert cfg.sentinels == (("127.0.0.1", 26379), ("127.0.0.2", 26380))
    assert (cfg.poolsize, cfg.password, cfg.db, cfg.master_name) == (100, "1qaz2wsx", 0, "mymaster")
    assert parse_sentinel_config("") == SentinelConfig()
    assert SentinelConfig().sentinels == (("127.0.0.1", 26379),)
    assert SentinelConfig().master_name == "mymaster"
    # a missing port is Sentinel's 26379; an empty master name is beego's "mymaster"
    cfg = parse_sentinel_config("s1;s2:1,,,,")
    assert cfg.sentinels == (("s1", 26379), ("s2", 1))
    assert cfg.master_name == "mymaster"


def test_comma_form_every_position() -> None:
    cfg = parse_sentinel_config("h:1,50,secret,3,svc,30,1m,2")
    assert cfg == SentinelConfig(
        sentinels=(("h", 1),), poolsize=50, password="secret", db=3, master_name="svc",
        idle_timeout=30.0, idle_check_frequency=60.0, max_retries=2,
    )


def test_beego_v2_json_form() -> None:
    text = json.dumps({
        "save_path": "10.0.0.1:26379;10.0.0.2", "poolsize": 20, "password": "pw", "db_num": 2,
        "master_name": "sessions", "idle_timeout": "30s", "idle_check_frequency": "1m", "max_retries": 1,
    })
    assert parse_sentinel_config(text) == SentinelConfig(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26379)), poolsize=20, password="pw", db=2,
        master_name="sessions", idle_timeout=30.0, idle_check_frequency=60.0, max_retries=1,
    )


def test_dict_form_with_a_sentinel_list_and_sentinel_credentials() -> None:
    cfg = parse_sentinel_config({
        "sentinels": ["a:1", ("b", 2), "[::1]"], "masterName": "m", "sentinel_password": "sp",
        "sentinel_username": "su", "key_prefix": "app:", "dbNum": "4", "username": "u",
    })
    assert cfg.sentinels == (("a", 1), ("b", 2), ("::1", 26379))
    assert (cfg.master_name, cfg.sentinel_password, cfg.sentinel_username) == ("m", "sp", "su")
    assert (cfg.key_prefix, cfg.db, cfg.username) == ("app:", 4, "u")


def test_url_forms() -> None:
    cfg = parse_sentinel_config("redis+sentinel://u:p%40ss@h1:1,h2/svc/3?poolsize=7&key_prefix=x:")
    assert cfg == SentinelConfig(
        sentinels=(("h1", 1), ("h2", 26379)), username="u", password="p@ss", master_name="svc", db=3,
        poolsize=7, key_prefix="x:",
    )
    assert parse_sentinel_config("rediss+sentinel://h").ssl is True
    assert parse_sentinel_config("redis+sentinel://h").master_name == "mymaster"
    # a dict's keys apply on top of its url
    cfg = parse_sentinel_config({"url": "redis+sentinel://h/svc/1", "master_name": "other", "db": 2})
    assert (cfg.master_name, cfg.db, cfg.sentinels) == ("other", 2, (("h", 26379),))


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ("h,abc", "poolsize"),
        ("h,10,pw,x", "dbnum"),
        ("h,10,pw,0,bad name", "master_name"),
        ("h,10,pw,0,m,soon", "idle_timeout"),
        ("h,10,pw,0,m,1,2,many", "max_retries"),
        ("h,1,2,3,4,5,6,7,8", "provider_config"),
        ("h:99999", "addr"),
        ("/run/sentinel.sock", "addr"),
        ({"sentinels": 5}, "sentinels"),
        ({"sentinels": [("h", "port")]}, "sentinels"),
        ({"addr": "h", "sentinels": "g"}, "sentinels"),
        ({"port": 26379}, "port"),
        ({"sentinel_password": 5}, "sentinel_password"),
        ({"db": True}, "db"),
        ("redis://h:6379", "url"),
        ("redis+sentinel://h/m/0/extra", "url"),
        ("redis+sentinel://h/m/notadb", "db"),
        ({"url": 5}, "url"),
        ("{not json", "provider_config"),
        (["h"], "provider_config"),
    ],
)
def test_bad_configs_raise_config_error_naming_the_item(config: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_sentinel_config(config)
    assert info.value.key == key


def test_unknown_key_warns() -> None:
    with pytest.warns(UserWarning, match="frobnicate"):
        cfg = parse_sentinel_config({"sentinels": "h", "frobnicate": 1})
    assert cfg.sentinels == (("h", 26379),)


async def test_bad_config_is_a_config_error_at_start() -> None:
    m = SessionManager({"provider": "redis_sentinel", "provider_config": "h,10,pw,nope"})
    with pytest.raises(ConfigError, match="dbnum"):
        await m.start()
    await m.close()


# ---------------------------------------------------------------- against the topology


async def test_every_form_works_end_to_end(topology: Topology, prefix: str) -> None:
    s = topology.sentinel_ports[0]
    forms: list[Any] = [
        f"127.0.0.1:{s},4,,0,{MASTER_NAME}",
        f"127.0.0.1:{s}",  # master name defaults to beego's "mymaster"
        json.dumps({"save_path": f"127.0.0.1:{s}", "poolsize": 4, "db_num": 0, "master_name": MASTER_NAME}),
        {"sentinels": [("127.0.0.1", s)], "master_name": MASTER_NAME, "poolsize": 4},
        f"redis+sentinel://127.0.0.1:{s}/{MASTER_NAME}/0?poolsize=4",
    ]
    for i, form in enumerate(forms):
        async with manager(topology, prefix, provider_config=form) as m:
            sid = m.new_sid()
            await ask(m, Release(sid, create(form=i), 60))
            assert await m.read(sid) == {"form": i}
    assert await topology_count(topology, prefix) == len(forms)


async def topology_count(topology: Topology, prefix: str) -> int:
    keys = await asyncio.to_thread(topology.ask, topology.master_port, "KEYS", prefix + "*")
    return len(keys)


async def test_data_goes_to_the_master_and_replicates(topology: Topology, prefix: str) -> None:
    async with manager(topology, prefix, max_lifetime=300) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(user="ann"), 300))
        assert provider_of(m).master_address() == ("127.0.0.1", topology.master_port)
        key = prefix + sid
        assert await asyncio.to_thread(topology.ask, topology.master_port, "EXISTS", key) == 1
        assert 290 < await asyncio.to_thread(topology.ask, topology.master_port, "TTL", key) <= 300
        assert await asyncio.to_thread(topology.ask, topology.master_port, "WAIT", 1, 5000) == 1
        # the replica holds it only by replication: it refuses writes of its own
        assert await asyncio.to_thread(topology.ask, topology.replica_port, "EXISTS", key) == 1
        role = await asyncio.to_thread(topology.ask, topology.replica_port, "ROLE")
        assert role[0] == b"slave"
        assert await m.get_active_sessions() == 1


async def test_a_dead_sentinel_listed_first_is_skipped(topology: Topology, prefix: str) -> None:
    dead = free_port()
    config = f"127.0.0.1:{dead};{topology.sentinel_addrs},4"
    async with manager(topology, prefix, provider_config=config, provider_timeout=2) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(a=1), 60))
        assert await m.read(sid) == {"a": 1}


async def test_unknown_master_name_is_a_config_error(topology: Topology, prefix: str) -> None:
    m = manager(topology, prefix, provider_config=f"{topology.sentinel_addrs},4,,0,nosuchmaster")
    with pytest.raises(ConfigError) as info:
        await m.start()
    assert info.value.key == "master_name"
    assert "nosuchmaster" in str(info.value)
    await m.close()


async def test_the_masters_address_given_as_a_sentinel_is_a_config_error(
    topology: Topology, prefix: str
) -> None:
    # Was ProviderUnavailableError ("unknown command 'SENTINEL'"): a retry can never succeed.
    m = manager(topology, prefix, provider_config=f"127.0.0.1:{topology.master_port},4,,0,{MASTER_NAME}")
    with pytest.raises(ConfigError, match="not a Redis Sentinel") as info:
        await m.start()
    assert info.value.key == "sentinels"
    await m.close()


async def test_no_sentinel_listening_is_unavailable_not_a_hang() -> None:
    port = free_port()
    m = SessionManager({
        "provider": "redis_sentinel", "provider_config": f"127.0.0.1:{port}", "provider_timeout": 2,
    })
    try:
        with pytest.raises(ProviderUnavailableError, match=f"127.0.0.1:{port}"):
            await asyncio.wait_for(m.start(), 10)  # the guard only catches a hang
        with pytest.raises(ProviderUnavailableError):
            await asyncio.wait_for(m.read(m.new_sid()), 10)
    finally:
        await m.close()


async def test_concurrent_calls_are_batched(topology: Topology, prefix: str) -> None:
    async with manager(topology, prefix) as m:
        provider = provider_of(m)
        sids = [m.new_sid() for _ in range(100)]
        trips = provider.round_trips
        await asyncio.gather(*(ask(m, Release(s, create(i=i), 60)) for i, s in enumerate(sids)))
        assert await asyncio.gather(*(ask(m, Read(s)) for s in sids)) == [{"i": i} for i in range(100)]
        assert provider.round_trips - trips <= 20  # 200 calls, a handful of pipelines


class SetKey(SessionMixin, tornado.web.RequestHandler):
    async def get(self, key: str) -> None:
        self.session[key] = key


class Dump(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.write({"keys": sorted(str(k) for k in self.session)})


class Peek(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        self.write({"n": self.session.get("n")})


async def test_50_concurrent_http_requests_on_one_session_lose_no_key(
    topology: Topology, prefix: str, serve: Any
) -> None:
    m = manager(topology, prefix)
    client = await serve([(r"/set/(\w+)", SetKey), ("/dump", Dump)], session_manager=m)
    http = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=64)
    try:
        assert (await client.fetch("/set/start")).code == 200
        cookie = f"sid={client.cookies['sid']}"
        results = await asyncio.gather(
            *(http.fetch(f"{client.base_url}/set/k{i}", headers={"Cookie": cookie}) for i in range(50))
        )
        assert {r.code for r in results} == {200}
        dump = tornado.escape.json_decode((await client.fetch("/dump")).body)
        assert set(dump["keys"]) == {"start"} | {f"k{i}" for i in range(50)}
        assert await topology_count(topology, prefix) == 1
    finally:
        http.close()
        await m.close()


# ---------------------------------------------------------------- failover


@pytest.fixture
def own_topology(tmp_path: pathlib.Path) -> Iterator[Topology]:
    """A private master + replica + three sentinels, for a test that kills the master."""
    topology = Topology(tmp_path, sentinels=3).start()
    try:
        yield topology
    finally:
        topology.stop()


async def test_failover_same_manager_recovers_with_the_data(own_topology: Topology, serve: Any) -> None:
    topo = own_topology
    timeout = 2
    m = SessionManager({
        "provider": "redis_sentinel", "cookie_name": "sid", "key_prefix": "gsf:",
        "provider_config": f"{topo.sentinel_addrs},8,,0,{MASTER_NAME}", "provider_timeout": timeout,
    })
    client = await serve([("/", Counter), ("/peek", Peek)], session_manager=m)
    guard = {"request_timeout": timeout + 5}  # a hang shows up as HTTP 599
    try:
        assert tornado.escape.json_decode((await client.fetch("/", **guard)).body) == {"n": 1}
        assert tornado.escape.json_decode((await client.fetch("/", **guard)).body) == {"n": 2}
        sid = client.cookies["sid"]
        old_master, replica = topo.master_port, topo.replica_port
        assert provider_of(m).master_address() == ("127.0.0.1", old_master)
        # written before the failover and acknowledged by the replica
        assert await asyncio.to_thread(topo.ask, old_master, "WAIT", 1, 5000) == 1

        topo.kill_master()
        first = await client.fetch("/peek", **guard)
        assert first.code == 503  # the old master is gone and not yet replaced
        with pytest.raises(ProviderUnavailableError):
            await asyncio.wait_for(m.read(sid), timeout + 5)

        # Until Sentinel promotes the replica, every call answers (503 or 200) in bounded time.
        codes: list[int] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while await asyncio.to_thread(topo.master_by_sentinel) != ("127.0.0.1", replica):
            assert loop.time() < deadline, f"sentinel did not promote the replica; codes {codes}"
            codes.append((await client.fetch("/peek", **guard)).code)
            await asyncio.sleep(0.2)
        assert set(codes) <= {200, 503}, codes

        # The SAME manager (no restart) now talks to the promoted replica, data intact.
        for _ in range(50):
            resp = await client.fetch("/", **guard)
            if resp.code == 200:
                break
            assert resp.code == 503
            await asyncio.sleep(0.2)
        assert resp.code == 200
        assert tornado.escape.json_decode(resp.body) == {"n": 3}
        assert client.cookies["sid"] == sid
        assert await m.read(sid) == {"n": 3}
        assert provider_of(m).master_address() == ("127.0.0.1", replica)
        raw = await asyncio.to_thread(topo.ask, replica, "HGETALL", "gsf:" + sid)
        assert len(raw) == 2  # "n" and the lifetime field, on the new master
        assert await m.get_active_sessions() == 1
    finally:
        await m.close()
