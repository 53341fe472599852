"""The redis_cluster provider beyond the contract suite: config forms, hash-tagged keys spread
over the masters, CROSSSLOT-free regenerate, per-node batching, concurrency, a killed master
and its recovery.

The tests run private ``redis-server`` processes in cluster mode (see
``tests/factories/factory_redis_cluster.py``): the shared 3-master cluster of the
session, and a separate one for the test that kills a master. Without
``redis-server`` they fail under ``CI=true`` and are skipped loudly elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import secrets
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.asyncio.cluster as rcluster
import tornado.escape
import tornado.httpclient
import tornado.web
from redis.crc import key_slot

from gosession_tornado import ConfigError, ProviderUnavailableError, SessionManager, SessionMixin
from gosession_tornado.provider import All, Changes, Destroy, Exist, Read, Regenerate, Release
from gosession_tornado.providers.redis.cluster import RedisClusterProvider, parse_cluster_config
from gosession_tornado.providers.redis.config import DEFAULT_POOLSIZE
from gosession_tornado.providers.redis.provider import META_FIELD

from .conftest import REDIS, free_port, require_server
from .factories.factory_redis_cluster import Cluster, delete_prefix, shared_cluster
from .redis_helpers import Counter, cookie_of
from .support import Dump, SetKey, ask, create, fail_or_skip
from .support import provider_of as provider_as

# ---------------------------------------------------------------- helpers


def require_cluster_binaries() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        fail_or_skip("redis-server/redis-cli not installed: cannot run a Redis Cluster")


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[Cluster, str]]:
    """The shared cluster and a unique key prefix; the prefix's keys are deleted afterwards."""
    require_cluster_binaries()
    shared = shared_cluster()
    if shared is None:
        from .factories import factory_redis_cluster

        pytest.fail(f"the test Redis Cluster did not start: {factory_redis_cluster._shared_error}")
    prefix = f"gstest:{secrets.token_hex(4)}:"
    try:
        yield shared, prefix
    finally:
        await delete_prefix(prefix, shared.ports)


@pytest.fixture
def private_cluster(tmp_path: pathlib.Path) -> Iterator[Cluster]:
    """A cluster of its own (for killing a master), stopped by PID afterwards."""
    require_cluster_binaries()
    own = Cluster(tmp_path, node_timeout_ms=1000)
    own.start()
    try:
        yield own
    finally:
        own.stop()


def manager(nodes: str, prefix: str, **overrides: Any) -> SessionManager:
    cfg: dict[str, Any] = {
        "provider": "redis_cluster",
        "cookie_name": "sid",
        "provider_config": nodes,
        "key_prefix": prefix,
    }
    cfg.update(overrides)
    return SessionManager(cfg)


def provider_of(m: SessionManager) -> RedisClusterProvider:
    return provider_as(m, RedisClusterProvider)


def node_port(m: SessionManager, sid: str) -> int:
    """The port of the master that owns *sid*'s slot, by the client's slot map."""
    provider = provider_of(m)
    assert provider._cluster is not None
    node = provider._cluster.get_node_from_key(provider.key(sid))
    assert node is not None
    return int(node.port)


def sid_on(m: SessionManager, port: int) -> str:
    """A fresh sid whose session lives on the master at *port*."""
    while True:
        sid = m.new_sid()
        if node_port(m, sid) == port:
            return sid


async def keys_per_node(cluster: Cluster, prefix: str) -> dict[int, list[bytes]]:
    """Every key under *prefix* on each master, read with plain per-node clients."""
    pattern = prefix.replace("*", "\\*") + "*"
    out: dict[int, list[bytes]] = {}
    for port in cluster.ports:
        client = aioredis.Redis(host="127.0.0.1", port=port)
        try:
            out[port] = [k async for k in client.scan_iter(match=pattern, count=1000)]
        finally:
            await client.aclose()
    return out


async def node_counters(cluster: Cluster) -> tuple[int, int]:
    """(read events, EVALSHA calls) summed over the masters, from INFO."""
    reads = evals = 0
    for port in cluster.ports:
        client = aioredis.Redis(host="127.0.0.1", port=port)
        try:
            stats = await client.info("stats")
            cmds = await client.info("commandstats")
        finally:
            await client.aclose()
        reads += int(stats["total_reads_processed"])
        evals += int(cmds.get("cmdstat_evalsha", {}).get("calls", 0))
    return reads, evals


# ---------------------------------------------------------------- config forms


def test_beego_form_semicolon_nodes_then_positions() -> None:
    cfg = parse_cluster_config("127.0.0.1:7000;127.0.0.1:7001;cache:7002,50,secret,0,30s,,2")
    assert cfg.nodes == (("127.0.0.1", 7000), ("127.0.0.1", 7001), ("cache", 7002))
    assert cfg.options.poolsize == 50
    assert cfg.options.password == "secret"
    assert cfg.options.idle_timeout == 30
    assert cfg.options.max_retries == 2


def test_comma_list_of_nodes_optionally_followed_by_positions() -> None:
    cfg = parse_cluster_config("10.0.0.1:7000,10.0.0.2:7001,[::1]:7002")
    assert cfg.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002))
    assert cfg.options.poolsize == DEFAULT_POOLSIZE
    assert cfg.options.password is None
    cfg = parse_cluster_config("h1:7000,h2:7001,16,pw")
    assert cfg.nodes == (("h1", 7000), ("h2", 7001))
    assert (cfg.options.poolsize, cfg.options.password) == (16, "pw")
    assert cfg.location == "cluster h1:7000,h2:7001"


def test_seed_style_empty_addr_means_local_default() -> None:
    cfg = parse_cluster_config(",100,astaxie")
    assert cfg.nodes == (("127.0.0.1", 6379),)
    assert (cfg.options.poolsize, cfg.options.password) == (100, "astaxie")
    assert parse_cluster_config("").nodes == (("127.0.0.1", 6379),)
    assert parse_cluster_config(None).nodes == (("127.0.0.1", 6379),)


def test_url_per_node() -> None:
    cfg = parse_cluster_config("redis://:pw@h1:7000,redis://:pw@h2:7001?poolsize=5&key_prefix=app:")
    assert cfg.nodes == (("h1", 7000), ("h2", 7001))
    assert cfg.options.password == "pw"
    # options are shared: the second URL's query must match the first's
    with pytest.raises(ConfigError) as err:
        parse_cluster_config("redis://:pw@h1:7000,redis://:other@h2:7001")
    assert err.value.key == "url"
    cfg = parse_cluster_config("rediss://u:pw@h1:7000?poolsize=5,rediss://u:pw@h2:7001?poolsize=5")
    assert cfg.options.ssl and cfg.options.username == "u" and cfg.options.poolsize == 5


def test_dict_and_json_forms() -> None:
    cfg = parse_cluster_config({"startup_nodes": ["h1:7000", "h2:7001"], "password": "x", "poolsize": 5})
    assert cfg.nodes == (("h1", 7000), ("h2", 7001))
    assert (cfg.options.password, cfg.options.poolsize) == ("x", 5)
    assert parse_cluster_config({"save_path": "h1:7000;h2:7001"}).nodes == (("h1", 7000), ("h2", 7001))
    assert parse_cluster_config({"host": "h1", "port": 7005}).nodes == (("h1", 7005),)
    assert parse_cluster_config({"nodes": "h1,h2:7001", "port": "7000"}).nodes == (("h1", 7000), ("h2", 7001))
    beego_v2 = json.dumps({"save_path": "h1:7000;h2:7001", "poolsize": 10, "password": "p",
                           "idle_timeout": "1m", "max_retries": 1})
    cfg = parse_cluster_config(beego_v2)
    assert cfg.nodes == (("h1", 7000), ("h2", 7001))
    assert (cfg.options.poolsize, cfg.options.password, cfg.options.idle_timeout) == (10, "p", 60)
    cfg = parse_cluster_config({"url": "redis://:pw@h1:7000,redis://:pw@h2:7001", "poolsize": 3})
    assert cfg.nodes == (("h1", 7000), ("h2", 7001)) and cfg.options.poolsize == 3


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ("h1:99999", "addr"),
        ("h1:7000,h2:x", "poolsize"),
        ("h1:7000;/tmp/redis.sock", "addr"),
        ("/tmp/redis.sock", "addr"),
        ("h1:7000,10,,3", "dbnum"),
        ({"nodes": 5}, "nodes"),
        ({"nodes": ["h1:7000", 7001]}, "nodes"),
        ({"addr": "h1:7000", "db": 2}, "dbnum"),
        ({"url": "redis://h1:7000,http://h2:7001"}, "url"),
        ("redis://h1:7000/3", "dbnum"),
        ("{not json", "provider_config"),
        ("[1, 2]", "addr"),
        (42, "provider_config"),
    ],
)
def test_bad_configs_raise_config_error_naming_the_item(config: Any, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_cluster_config(config)
    assert err.value.key == key, str(err.value)


async def test_braces_in_key_prefix_are_refused() -> None:
    m = manager(f"127.0.0.1:{free_port()}", "app{1}:")
    with pytest.raises(ConfigError) as err:
        await m.start()
    assert err.value.key == "key_prefix"
    await m.close()


async def test_nothing_listening_is_unavailable_not_a_hang() -> None:
    m = manager(f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}", "gsx:", provider_timeout=2)
    with pytest.raises(ProviderUnavailableError, match="cluster"):
        await asyncio.wait_for(m.start(), 10)
    await m.close()


async def test_a_server_not_in_cluster_mode_is_a_config_error() -> None:
    require_server(REDIS)
    m = manager(f"127.0.0.1:{REDIS[2]}", "gsx:")
    with pytest.raises(ConfigError, match="not a Redis Cluster") as err:
        await m.start()
    assert err.value.key == "addr"
    await m.close()


# ---------------------------------------------------------------- keys and slots


async def test_keys_are_hash_tagged_by_sid_and_spread_over_every_master(
    cluster: tuple[Cluster, str],
) -> None:
    shared, prefix = cluster
    async with manager(shared.nodes, prefix) as m:
        provider = provider_of(m)
        sids = [m.new_sid() for _ in range(60)]
        for sid in sids:
            assert provider.key(sid) == f"{prefix}{{{sid}}}"
            assert key_slot(provider.key(sid).encode()) == key_slot(sid.encode())
        await asyncio.gather(*(ask(m, Release(s, create(i=i), 600)) for i, s in enumerate(sids)))
        placed = await keys_per_node(shared, prefix)
        # every master holds sessions, and each key is on the node the slot map says
        assert all(placed[p] for p in shared.ports), {p: len(k) for p, k in placed.items()}
        assert sum(len(k) for k in placed.values()) == 60
        for sid in sids:
            assert provider.key(sid).encode() in placed[node_port(m, sid)]
        # the raw layout is the redis provider's hash
        raw = aioredis.Redis(host="127.0.0.1", port=node_port(m, sids[0]))
        try:
            fields = await raw.hgetall(provider.key(sids[0]))
            assert fields[META_FIELD] == b"600"
            assert 0 < await raw.ttl(provider.key(sids[0])) <= 600
        finally:
            await raw.aclose()
        assert await m.get_active_sessions() == 60


async def test_active_count_covers_every_master_and_only_its_prefix(cluster: tuple[Cluster, str]) -> None:
    shared, prefix = cluster
    async with manager(shared.nodes, prefix) as m, manager(shared.nodes, prefix + "other:") as other:
        await asyncio.gather(*(ask(m, Release(m.new_sid(), create(), 60)) for _ in range(25)))
        await ask(other, Release(other.new_sid(), create(), 60))
        assert await ask(m, All()) == 25
        assert await ask(other, All()) == 1


# ---------------------------------------------------------------- regenerate across slots


async def test_regenerate_across_slots_and_nodes_never_fails_and_old_sid_stops(
    cluster: tuple[Cluster, str],
) -> None:
    shared, prefix = cluster
    async with manager(shared.nodes, prefix) as m:
        pairs: list[tuple[str, str]] = []
        # old and new on different nodes, and on different slots of the same node
        for old_port in shared.ports:
            for new_port in shared.ports:
                old, new = sid_on(m, old_port), sid_on(m, new_port)
                assert key_slot(old.encode()) != key_slot(new.encode())
                pairs.append((old, new))
        for i, (old, _) in enumerate(pairs):
            await ask(m, Release(old, create(user=f"u{i}", n=i, **{"7": [1, 2]}), 900))
        for i, (old, new) in enumerate(pairs):
            moved = await ask(m, Regenerate(old, new))
            assert moved == {"user": f"u{i}", "n": i, "7": [1, 2]}
            assert await m.read(old) is None
            assert await ask(m, Exist(old)) is False
            assert await m.read(new) == moved
            # a late save for the old id (a request that was still running) is dropped
            await ask(m, Release(old, Changes(set={"late": 1}), 900))
            assert await m.read(old) is None
        # only the moved sessions remain: no old keys, no hand-over keys
        placed = await keys_per_node(shared, prefix)
        remaining = sorted(k for keys in placed.values() for k in keys)
        provider = provider_of(m)
        assert remaining == sorted(provider.key(new).encode() for _, new in pairs)
        raw = aioredis.Redis(host="127.0.0.1", port=node_port(m, pairs[0][1]))
        try:
            assert 0 < await raw.ttl(provider.key(pairs[0][1])) <= 900  # the session's own lifetime
        finally:
            await raw.aclose()


async def test_regenerate_unknown_sid_and_a_repeat_of_the_same_move(cluster: tuple[Cluster, str]) -> None:
    shared, prefix = cluster
    async with manager(shared.nodes, prefix) as m:
        old, new = m.new_sid(), m.new_sid()
        assert await ask(m, Regenerate(old, new)) == {}
        assert await ask(m, Exist(new)) is True
        assert await ask(m, Exist(old)) is False
        # the same move sent again (a retry) answers the same and moves nothing else
        await ask(m, Release(new, Changes(set={"a": 1}), 60))
        assert await ask(m, Regenerate(old, new)) == {"a": 1}
        assert await m.get_active_sessions() == 1


async def test_regenerate_in_a_batch_keeps_message_order(cluster: tuple[Cluster, str]) -> None:
    shared, prefix = cluster
    async with manager(shared.nodes, prefix) as m:
        olds = [m.new_sid() for _ in range(10)]
        news = [m.new_sid() for _ in range(10)]
        calls: list[Any] = []
        for i, (old, new) in enumerate(zip(olds, news)):
            calls += [
                ask(m, Release(old, create(i=i), 60)),
                ask(m, Regenerate(old, new)),
                ask(m, Read(new)),
                ask(m, Read(old)),
            ]
        results = await asyncio.gather(*calls)
        for i in range(10):
            assert results[4 * i : 4 * i + 4] == [None, {"i": i}, {"i": i}, None]
        assert await m.get_active_sessions() == 10


# ---------------------------------------------------------------- batching


async def test_200_concurrent_reads_take_one_pipeline_per_master(cluster: tuple[Cluster, str]) -> None:
    """Counted twice: by the provider and, independently, by the servers' read events."""
    shared, prefix = cluster
    async with manager(shared.nodes, prefix) as m:
        sids = [m.new_sid() for _ in range(200)]
        await asyncio.gather(*(ask(m, Release(s, create(i=i), 600)) for i, s in enumerate(sids)))
        provider = provider_of(m)

        rt0 = provider.round_trips
        reads0, evals0 = await node_counters(shared)
        for s in sids[:60]:
            await m.read(s)
        reads1, evals1 = await node_counters(shared)
        assert provider.round_trips - rt0 == 60  # sequential: one node round trip per read
        assert evals1 - evals0 == 60
        assert reads1 - reads0 >= 60

        # what one node_counters() call itself costs in read events (connect + 2 INFO per node)
        reads_a, _ = await node_counters(shared)
        reads1, evals1 = await node_counters(shared)
        overhead = reads1 - reads_a

        rt0 = provider.round_trips
        batches0 = m.stats()["batches"]
        results = await asyncio.gather(*(m.read(s) for s in sids))
        reads2, evals2 = await node_counters(shared)
        trips = provider.round_trips - rt0
        batches = m.stats()["batches"] - batches0
        assert results == [{"i": i} for i in range(200)]
        assert evals2 - evals1 == 200  # every read really ran on a server
        assert trips <= len(shared.ports) * batches  # at most one pipeline per master per batch
        assert trips <= 30
        # the servers agree: a handful of read events (a pipeline may take a few socket reads), not 200
        assert reads2 - reads1 - overhead <= 3 * trips


async def test_concurrent_releases_and_reads_share_pipelines(cluster: tuple[Cluster, str]) -> None:
    shared, prefix = cluster
    async with manager(shared.nodes, prefix) as m:
        provider = provider_of(m)
        sids = [m.new_sid() for _ in range(100)]
        rt0 = provider.round_trips
        await asyncio.gather(
            *(ask(m, Release(s, create(i=i), 600)) for i, s in enumerate(sids)),
            *(m.read(s) for s in sids),
        )
        assert provider.round_trips - rt0 <= 30
        assert m.stats()["largest_batch"] >= 50
        assert await asyncio.gather(*(m.read(s) for s in sids)) == [{"i": i} for i in range(100)]


# ---------------------------------------------------------------- HTTP concurrency


class Login(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        await self.session_regenerate_id()
        self.session["user"] = "ann"
        self.write({"sid": self.session.session_id})


async def test_50_concurrent_http_requests_on_one_session_lose_no_key(
    cluster: tuple[Cluster, str], serve: Any
) -> None:
    shared, prefix = cluster
    m = manager(shared.nodes, prefix)
    app = [(r"/set/(\w+)", SetKey), ("/dump", Dump), ("/login", Login)]
    base = (await serve(app, session_manager=m)).base_url
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
        # login moves the 51 keys to a new sid (another slot); the old cookie is dead
        login = await http.fetch(base + "/login", headers={"Cookie": cookie})
        new_cookie = cookie_of(login)
        assert new_cookie != cookie

        async def dump_of(cookie: str) -> Any:
            resp = await http.fetch(base + "/dump", headers={"Cookie": cookie})
            return tornado.escape.json_decode(resp.body)

        after = await dump_of(new_cookie)
        assert set(after["keys"]) == {"start", "user"} | {f"k{i}" for i in range(50)}
        stale = await dump_of(cookie)
        assert stale["keys"] == [] and stale["sid"] not in (dump["sid"], after["sid"])
    finally:
        http.close()
        await m.close()


# ---------------------------------------------------------------- failure and recovery


async def test_forgotten_scripts_are_reloaded_on_every_master(cluster: tuple[Cluster, str]) -> None:
    shared, prefix = cluster
    async with manager(shared.nodes, prefix) as m:
        sids = [sid_on(m, port) for port in shared.ports]
        await asyncio.gather(*(ask(m, Release(s, create(a=1), 60)) for s in sids))
        for port in shared.ports:
            raw = aioredis.Redis(host="127.0.0.1", port=port)
            try:
                await raw.script_flush()
            finally:
                await raw.aclose()
        assert await asyncio.gather(*(m.read(s) for s in sids)) == [{"a": 1}] * 3
        await asyncio.gather(*(ask(m, Release(s, Changes(set={"b": 2}), 60)) for s in sids))
        assert await asyncio.gather(*(m.read(s) for s in sids)) == [{"a": 1, "b": 2}] * 3


async def test_killed_master_fails_only_its_sessions_then_recovers(
    private_cluster: Cluster, serve: Any
) -> None:
    timeout = 2
    m = manager(private_cluster.nodes, "gsk:", provider_timeout=timeout)
    client = await serve([("/", Counter)], session_manager=m)
    await m.start()
    try:
        victim, *survivors = private_cluster.ports
        dead_sid = sid_on(m, victim)
        live_sids = [sid_on(m, port) for port in survivors]
        for sid in (dead_sid, *live_sids):
            await ask(m, Release(sid, create(user="ann"), 600))
        # an HTTP client whose session lives on the victim
        http_sessions_left = 0  # those created on the survivors on the way
        while True:
            client.cookies.clear()
            assert (await client.fetch("/")).code == 200
            if node_port(m, client.cookies["sid"]) == victim:
                break
            http_sessions_left += 1

        private_cluster.kill(victim)

        async def bounded(coro: Any) -> Any:  # a hang fails the test instead of blocking it
            return await asyncio.wait_for(coro, timeout + 3)

        with pytest.raises(ProviderUnavailableError, match=str(victim)):
            await bounded(m.read(dead_sid))
        # in one batch: the dead node's message fails, the others are answered
        outcomes = await bounded(
            asyncio.gather(m.read(dead_sid), *(m.read(s) for s in live_sids), return_exceptions=True)
        )
        assert isinstance(outcomes[0], ProviderUnavailableError)
        assert outcomes[1:] == [{"user": "ann"}] * len(live_sids)
        resp = await bounded(client.fetch("/"))
        assert resp.code == 503
        assert b"unavailable" in resp.body.lower()
        with pytest.raises(ProviderUnavailableError):
            await bounded(m.get_active_sessions())

        # a regenerate towards the dead node fails and leaves the session under its old id
        target = sid_on(m, victim)
        with pytest.raises(ProviderUnavailableError):
            await bounded(ask(m, Regenerate(live_sids[0], target)))
        assert await m.read(live_sids[0]) == {"user": "ann"}
        # ... and one between live nodes still works
        moved_to = sid_on(m, survivors[1])
        assert await bounded(ask(m, Regenerate(live_sids[0], moved_to))) == {"user": "ann"}
        live_sids[0] = moved_to

        # once the survivors have marked the victim failed (1 s node timeout), they still
        # serve their own slots
        await asyncio.sleep(2.5)
        for sid in live_sids:
            await bounded(ask(m, Release(sid, Changes(set={"n": 1}), 600)))
            assert await bounded(m.read(sid)) == {"user": "ann", "n": 1}

        await asyncio.to_thread(private_cluster.restart, victim)
        # the same manager works again once the victim's circuit closes (a probe at most
        # circuit_cap seconds later): no persistence, so the victim's sessions are gone,
        # and its forgotten scripts are loaded again on the way
        assert await served_again(m, dead_sid, within=provider_of(m).circuit_cap + 1) is None
        fresh = sid_on(m, victim)
        await bounded(ask(m, Release(fresh, create(back=True), 600)))
        assert await bounded(m.read(fresh)) == {"back": True}
        resp = await bounded(client.fetch("/"))
        assert resp.code == 200
        assert tornado.escape.json_decode(resp.body) == {"n": 1}
        # the survivors' sessions, the fresh one and the HTTP client's new one
        assert await bounded(m.get_active_sessions()) == http_sessions_left + len(live_sids) + 2
        await ask(m, Destroy(fresh))
    finally:
        await m.close()


async def test_a_hung_master_fails_only_its_sessions_while_the_slot_map_is_refreshed(
    private_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A master that accepts connections but never answers (SIGSTOP). The slot-map refresh
    # after its failure must not ask it first and wait a socket timeout: that held the
    # whole batch past provider_timeout, so the other masters' sessions failed too.
    timeout = 4
    victim, *survivors = private_cluster.ports
    victim_name = f"127.0.0.1:{victim}"

    def hung_node_first(nodes: list[Any]) -> None:  # the worst order redis-py's shuffle can pick
        nodes.sort(key=lambda node: node.name != victim_name)

    monkeypatch.setattr(rcluster.random, "shuffle", hung_node_first)
    m = manager(private_cluster.nodes, "gsh:", provider_timeout=timeout)
    await m.start()
    try:
        dead_sid = sid_on(m, victim)
        live_sids = [sid_on(m, port) for port in survivors]
        for sid in (dead_sid, *live_sids):
            await ask(m, Release(sid, create(user="ann"), 600))
        pid = private_cluster.procs[victim].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(3):  # the first failure makes the map stale; then each batch refreshes it
                provider_of(m)._next_refresh = 0.0
                outcomes = await asyncio.wait_for(
                    asyncio.gather(m.read(dead_sid), *(m.read(s) for s in live_sids), return_exceptions=True),
                    timeout + 3,
                )
                assert isinstance(outcomes[0], ProviderUnavailableError)
                assert outcomes[1:] == [{"user": "ann"}] * len(live_sids)
        finally:
            os.kill(pid, signal.SIGCONT)
        # its circuit closes when the pending probe's PING is answered: well within a second
        assert await served_again(m, dead_sid, within=1.0) == {"user": "ann"}
    finally:
        await m.close()


async def served_again(m: SessionManager, sid: str, within: float) -> Any:
    """``m.read(sid)`` once it succeeds (the node's circuit has closed), polling for *within* seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await asyncio.wait_for(m.read(sid), within + 3)
        except ProviderUnavailableError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.02)
