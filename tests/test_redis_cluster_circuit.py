"""redis_cluster: one hung master must not take the others down (the per-node circuit, issue 11).

A node that does not answer within ``node_deadline`` (0.3 x ``provider_timeout``)
or refuses connections has its circuit opened: the calls for its slots fail at
once with ``ProviderUnavailableError`` while a background probe (a ``PING`` on
a connection of its own, every 0.25 s doubling to ``circuit_cap``) waits for it;
the first answered probe closes the circuit. Sessions on the other masters are
answered as before, in the same batches.

The in-process tests run a private 3-master cluster (no replicas,
``cluster-require-full-coverage no``), stopped by PID. The load test
(``test_one_hung_master_under_load``) measures the issue's target with the
reliability app in two server processes and 64 clients on 300 sessions, and
prints its figures; ``GOSESSION_RELIABILITY_RESULTS=DIR`` writes them as a
``fault-cluster-hung-master-redis_cluster.json`` result for the report.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gosession_tornado import ProviderUnavailableError, SessionManager
from gosession_tornado.provider import Release
from gosession_tornado.providers.redis.cluster import NodeCircuit, RedisClusterProvider

from .factories.factory_redis_cluster import Cluster
from .support import ask, create, fail_or_skip
from .support import provider_of as provider_as

TIMEOUT = 2.0


def require_cluster_binaries() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        fail_or_skip("redis-server/redis-cli not installed: cannot run a Redis Cluster")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A private cluster for this module (nodes are stopped and killed here), stopped by PID."""
    require_cluster_binaries()
    own = Cluster(tmp_path_factory.mktemp("circuit"), node_timeout_ms=1000)
    own.start()
    try:
        yield own
    finally:
        own.stop()


def manager(nodes: str, prefix: str, **overrides: Any) -> SessionManager:
    cfg: dict[str, Any] = {
        "provider": "redis_cluster", "cookie_name": "sid", "provider_config": nodes,
        "key_prefix": prefix, "provider_timeout": TIMEOUT,
    }
    cfg.update(overrides)
    return SessionManager(cfg)


def provider_of(m: SessionManager) -> RedisClusterProvider:
    return provider_as(m, RedisClusterProvider)


def sid_on(m: SessionManager, port: int) -> str:
    provider = provider_of(m)
    assert provider._cluster is not None
    while True:
        sid = m.new_sid()
        node = provider._cluster.get_node_from_key(provider.key(sid))
        if node is not None and int(node.port) == port:
            return sid


async def timed(coro: Any) -> tuple[float, Any]:
    """(seconds, outcome or exception) of awaiting *coro*, bounded so that a hang fails the test."""
    started = time.monotonic()
    try:
        outcome = await asyncio.wait_for(coro, TIMEOUT + 3)
    except ProviderUnavailableError as exc:
        outcome = exc
    return time.monotonic() - started, outcome


async def test_a_hung_master_fails_fast_and_the_others_are_served(cluster: Cluster) -> None:
    m = manager(cluster.nodes, "gscirc:hung:")
    await m.start()
    victim, *survivors = cluster.ports
    pid = cluster.procs[victim].pid
    try:
        provider = provider_of(m)
        assert provider.node_deadline == pytest.approx(0.3 * TIMEOUT)
        dead = sid_on(m, victim)
        live = [sid_on(m, p) for p in survivors]
        for sid in (dead, *live):
            await ask(m, Release(sid, create(user="ann"), 600))
        os.kill(pid, signal.SIGSTOP)
        try:
            # The first batch that touches the hung node waits for it at most node_deadline;
            # the live sessions of the same batch are answered with it.
            started = time.monotonic()
            outcomes = await asyncio.wait_for(
                asyncio.gather(m.read(dead), *(m.read(s) for s in live), return_exceptions=True),
                TIMEOUT + 3,
            )
            first = time.monotonic() - started
            assert isinstance(outcomes[0], ProviderUnavailableError), outcomes
            assert str(victim) in str(outcomes[0])
            assert outcomes[1:] == [{"user": "ann"}] * len(live)
            assert first <= provider.node_deadline + 0.5, first
            assert f"127.0.0.1:{victim}" in provider.open_circuits
            # From now on its sessions fail at once; the others are served as usual.
            fast = []
            for _ in range(20):
                took, outcome = await timed(m.read(dead))
                assert isinstance(outcome, ProviderUnavailableError), outcome
                assert "fail at once" in str(outcome)
                fast.append(took)
                took, outcome = await timed(m.read(live[0]))
                assert outcome == {"user": "ann"}, outcome
            print(f"\nhung node: first batch {first * 1000:.0f} ms (node_deadline "
                  f"{provider.node_deadline * 1000:.0f} ms), then 503s in max {max(fast) * 1000:.1f} ms")
            # (one outlier allowed: this machine is shared; the provider itself does no I/O here)
            assert sorted(fast)[-2] < 0.1 and max(fast) < 0.5, fast
            assert provider.fast_failures >= 20 and provider.circuit_trips == 1
            # A write to a live session, and a regenerate between live nodes, work meanwhile.
            await ask(m, Release(live[1], create(more=1), 600))
            assert await m.read(live[1]) == {"user": "ann", "more": 1}
            # Nothing piles up: the actor is idle between calls.
            assert m._actor is not None and m._actor.mailbox_depth() == 0
            await asyncio.sleep(0.6)  # a probe is pending on the hung node now
        finally:
            os.kill(pid, signal.SIGCONT)
            resumed = time.monotonic()
        # The pending probe's PING is answered at once: the circuit closes well within 1 s.
        while True:
            took, outcome = await timed(m.read(dead))
            if outcome == {"user": "ann"}:
                break
            assert isinstance(outcome, ProviderUnavailableError)
            assert time.monotonic() - resumed < 1.0, "not served again within 1 s of SIGCONT"
            await asyncio.sleep(0.01)
        recovery = time.monotonic() - resumed
        print(f"served again {recovery * 1000:.0f} ms after SIGCONT")
        assert provider.open_circuits == {}
        assert await m.read(live[0]) == {"user": "ann"}
        assert await m.read(live[1]) == {"user": "ann", "more": 1}
    finally:
        os.kill(pid, signal.SIGCONT)
        await m.close()


async def test_a_refused_node_trips_at_once_and_is_probed_until_it_is_back(cluster: Cluster) -> None:
    m = manager(cluster.nodes, "gscirc:down:")
    await m.start()
    victim = cluster.ports[2]
    try:
        provider = provider_of(m)
        provider.circuit_first, provider.circuit_cap = 0.05, 0.4
        dead = sid_on(m, victim)
        await ask(m, Release(dead, create(user="ann"), 600))
        await asyncio.to_thread(cluster.kill, victim)
        took, outcome = await timed(m.read(dead))
        assert isinstance(outcome, ProviderUnavailableError)
        assert took < 0.5, took  # refused: no waiting for a deadline
        name = f"127.0.0.1:{victim}"
        periods = []
        for _ in range(12):
            await asyncio.sleep(0.1)
            state = provider.open_circuits.get(name)
            assert state is not None
            periods.append(state["period_s"])
        assert periods == sorted(periods) and periods[-1] == 0.4, periods
        assert provider.open_circuits[name]["probes"] >= 3
        await asyncio.to_thread(cluster.restart, victim)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + provider.circuit_cap + 1
        while name in provider.open_circuits:
            assert loop.time() < deadline, "the circuit did not close after the node came back"
            await asyncio.sleep(0.02)
        # No persistence: the session is gone, and the node works for new ones.
        assert await m.read(dead) is None
        fresh = sid_on(m, victim)
        await ask(m, Release(fresh, create(back=True), 600))
        assert await m.read(fresh) == {"back": True}
    finally:
        await m.close()


async def test_probe_periods_double_up_to_the_cap_and_close_stops_the_probes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The probe loop alone, on a provider with a stand-in client: no server needed.
    provider = RedisClusterProvider()
    provider.circuit_first, provider.circuit_cap = 0.02, 0.08
    times: list[float] = []
    answer_after = 5

    async def probe(node: Any) -> bool:
        times.append(time.monotonic())
        return len(times) >= answer_after

    class Node:
        name = "127.0.0.1:1"
        host, port = "127.0.0.1", 1

        async def disconnect(self) -> None:
            pass

    class Manager:
        nodes_cache = {"127.0.0.1:1": Node()}
        startup_nodes: dict[str, Any] = {}

        async def initialize(self, **kwargs: Any) -> None:
            pass

    class Client:
        nodes_manager = Manager()

        async def aclose(self) -> None:
            pass

    monkeypatch.setattr(provider, "_probe", probe)
    provider._cluster = Client()  # type: ignore[assignment]
    started = time.monotonic()
    provider._trip(Node(), ConnectionError("refused"))  # type: ignore[arg-type]
    circuit = provider._circuits["127.0.0.1:1"]
    assert isinstance(circuit, NodeCircuit)
    assert circuit.probe is not None
    await asyncio.wait_for(circuit.probe, 2)
    assert provider._circuits == {} and provider.circuit_trips == 1
    gaps = [b - a for a, b in zip([started, *times], times)]
    # 0.02, then 0.04, 0.08, 0.08, 0.08 (the cap), each at least its period
    assert [round(g, 2) >= p for g, p in zip(gaps, [0.02, 0.04, 0.08, 0.08, 0.08])] == [True] * 5, gaps
    assert all(g < p + 0.15 for g, p in zip(gaps, [0.02, 0.04, 0.08, 0.08, 0.08])), gaps

    # close() cancels a probe loop that is still waiting
    times.clear()
    answer_after = 10**6
    provider._trip(Node(), ConnectionError("refused"))  # type: ignore[arg-type]
    probe_task = provider._circuits["127.0.0.1:1"].probe
    assert probe_task is not None
    await asyncio.sleep(0.05)
    await provider.session_close()
    assert probe_task.done() and provider._circuits == {}


# ---------------------------------------------------------------- under load


@pytest.mark.slow
async def test_one_hung_master_under_load(tmp_path: pathlib.Path) -> None:
    """The issue's target: 3 masters, one SIGSTOPped under 64 clients on 300 sessions."""
    require_cluster_binaries()
    from reliability.cluster_faults import hung_master_result, measure_hung_master
    from reliability.stress import write_result

    fig = await measure_hung_master(
        tmp_path, clients=64, sessions=300, processes=2, provider_timeout=TIMEOUT,
        warmup=1.0, baseline=3.0, hung=5.0, after=2.5,
    )
    result = hung_master_result(fig)
    print("\n" + result["fault"]["notes"])
    print(f"app CPU {fig['app_cpu_pct']} %, statuses {fig['statuses']}")
    out = os.environ.get("GOSESSION_RELIABILITY_RESULTS")
    if out:
        write_result(result, pathlib.Path(out))
    hung, after = fig["hung"], fig["after"]
    no_fault_p99 = fig["no_fault_healthy_latency_ms"]["p99"]
    # Sessions on the healthy masters: >= 95 % served (target), p99 within 2x the no-fault p99
    # (+ 50 ms of slack for this shared 2-core machine; the old behaviour took seconds).
    assert hung["healthy_requests"] >= 1000, fig
    assert hung["healthy_ok_pct"] >= 95.0, fig
    assert hung["healthy_latency_ms"]["p99"] <= 2 * no_fault_p99 + 50, fig
    # The hung master's sessions: 503 (nothing else) once the circuit is open, within 100 ms
    # (target) or at least no slower than the requests that are served: on this shared machine
    # the server's own queue can hold any answer longer (the provider fails them at once: see
    # test_a_hung_master_fails_fast_and_the_others_are_served).
    assert hung["circuit_open_s"] is not None and hung["circuit_open_s"] <= TIMEOUT, fig
    assert hung["hung_node_after_open_non_503"] == 0, fig
    open_lat = hung["hung_node_after_open_latency_ms"]
    assert open_lat["p99"] <= max(100, hung["healthy_latency_ms"]["p99"] + 10), fig
    # Recovery: the hung master's sessions are served again within 1 s of SIGCONT.
    assert after["first_ok_s"] is not None and after["first_ok_s"] <= 1.0, fig
    assert after["last_failure_s"] is None or after["last_failure_s"] <= 1.0, fig
    # No hang: every request was answered within provider_timeout (+ queueing).
    assert fig["max_latency_s"] <= TIMEOUT + 1, fig
    assert set(fig["statuses"]) <= {"200", "503"}, fig
