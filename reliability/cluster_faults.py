"""Redis Cluster with one hung master, and Redis Sentinel during a failover: measured under load.

Two measurements, each on private servers on free loopback ports (the test
suite's :class:`~reliability.private_servers.PrivateRedisCluster` and
:class:`~tests.factories.factory_redis_sentinel.Topology`, stopped by PID):

:func:`measure_hung_master`
    Three masters, no replicas, ``cluster-require-full-coverage no``; the
    reliability app (:mod:`reliability.app`) in ``processes`` server
    processes on the ``redis_cluster`` provider; ``clients`` keep-alive
    clients on ``sessions`` sessions (a read or a write of a random session
    each, as fast as the answers come). Phases: warm-up, *baseline* (no
    fault), *hung* (one master ``SIGSTOP``-ped), *after* (``SIGCONT``).
    Every request is classified by the master its session lives on, so the
    figures separate the sessions on the healthy masters (they must keep
    working, nearly as fast) from those on the hung one (they must get a 503
    at once once the node's circuit is open).
:func:`measure_sentinel_failover`
    A master, one replica and one sentinel (``down-after-milliseconds
    1000``); the app on the ``redis_sentinel`` provider under load; the
    master ``SIGKILL``-ed. The *error window* is the time from the kill to
    the first request after which every request succeeds again; the run also
    reports when the sentinel named the new master, and reads every session
    written before the kill (replication is asynchronous: a write acknowledged
    by the old master in its last moment may not have reached the replica).

Both return a JSON-able dict (see :func:`hung_master_result` /
:func:`failover_result` for the report's ``fault-*.json`` shape). Command line::

    python -m reliability.cluster_faults hung-master [--seconds 6] [--write]
    python -m reliability.cluster_faults sentinel-failover [--write]

``--write`` puts the result into ``reliability/results`` for
:mod:`reliability.report`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from typing import Any

from .httpclient import Connection
from .model import latency_summary
from .private_servers import PrivateRedisCluster
from .stress import RESULTS, ServerProcess, write_result

__all__ = [
    "Sample", "failover_result", "hung_master_result", "measure_hung_master", "measure_sentinel_failover",
]


@dataclasses.dataclass(frozen=True)
class Sample:
    """One request: when it was sent and answered (``time.monotonic``), its status, its session's node."""

    sent: float
    received: float
    status: int  # 0: no answer (transport error or client timeout)
    node: int  # port of the master the session lives on (0: unknown)

    @property
    def latency(self) -> float:
        return self.received - self.sent


def _pct(values: Iterable[float]) -> dict[str, float]:
    return latency_summary(sorted(values))


def _cookie(set_cookies: list[str], name: str) -> str | None:
    for header in set_cookies:
        first = header.split(";", 1)[0]
        key, _, value = first.partition("=")
        if key.strip() == name and value:
            return value
    return None


class _Load:
    """Clients sending a read or a write of a random session, recording every answer."""

    def __init__(self, ports: list[int], sessions: list[tuple[str, int]], cookie: str,
                 timeout: float, seed: int | None = None, track_writes: bool = False) -> None:
        self.ports = ports
        self.sessions = sessions
        self.cookie = cookie
        self.timeout = timeout
        self.samples: list[Sample] = []
        self.stop = asyncio.Event()
        self.rng = random.Random(seed)
        #: With *track_writes*, each client writes its own key ``w<client>`` (values ``<n>``,
        #: increasing) and (sid, key) -> [(n, status)] records every write, in order.
        self.track_writes = track_writes
        self.writes: dict[tuple[str, str], list[tuple[int, int]]] = {}

    async def client(self, index: int) -> None:
        conns = [Connection("127.0.0.1", p, timeout=self.timeout) for p in self.ports]
        rng = random.Random(self.rng.random())
        n = 0
        try:
            while not self.stop.is_set():
                sid, node = rng.choice(self.sessions)
                n += 1
                key = f"w{index}" if self.track_writes else f"k{index % 4}"
                value = str(n) if self.track_writes else f"c{index}n{n}"
                target = "/op/read" if n % 2 else f"/op/set?k={key}&v={value}"
                conn = rng.choice(conns)
                sent = time.monotonic()
                try:
                    resp = await conn.request("GET", target, [("Cookie", f"{self.cookie}={sid}")])
                    status = resp.status
                except Exception:
                    status = 0
                self.samples.append(Sample(sent, time.monotonic(), status, node))
                if self.track_writes and not n % 2:
                    self.writes.setdefault((sid, key), []).append((n, status))
        finally:
            for conn in conns:
                conn.close()


async def _create_sessions(port: int, count: int, cookie: str) -> list[str]:
    """*count* sessions made through the app (a write without a cookie each); their ids."""
    conn = Connection("127.0.0.1", port, timeout=30)
    sids: list[str] = []
    try:
        for i in range(count):
            resp = await conn.request("GET", f"/op/set?k=k0&v=init{i}")
            sid = _cookie(resp.get_all("Set-Cookie"), cookie)
            if resp.status != 200 or sid is None:
                raise RuntimeError(f"creating a session failed: {resp.status} {resp.body[:200]!r}")
            sids.append(sid)
    finally:
        conn.close()
    return sids


def _slot_owner(ports: list[int]) -> dict[int, int]:
    """slot -> port of its master, from ``CLUSTER SLOTS`` of the first node that answers."""
    import redis

    for port in ports:
        client: Any = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        try:
            ranges: Any = client.execute_command("CLUSTER SLOTS")
        except (redis.RedisError, OSError):
            continue
        finally:
            client.close()
        owner: dict[int, int] = {}
        if isinstance(ranges, dict):  # redis-py may parse it into {(start, end): {...}}
            for (start, end), info in ranges.items():
                primary = info["primary"]
                for slot in range(int(start), int(end) + 1):
                    owner[slot] = int(primary[1])
        else:
            for item in ranges:
                for slot in range(int(item[0]), int(item[1]) + 1):
                    owner[slot] = int(item[2][1])
        return owner
    raise RuntimeError(f"no cluster node on {ports} answered CLUSTER SLOTS")


async def _start_servers(
    config: dict[str, Any], processes: int, workdir: pathlib.Path
) -> list[ServerProcess]:
    spec = {"config": config, "imports": []}
    servers = [ServerProcess(i, spec, workdir) for i in range(processes)]
    try:
        await asyncio.gather(*(s.start() for s in servers))
    except BaseException:
        await asyncio.gather(*(s.stop() for s in servers))
        raise
    return servers


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes *pids* have used so far (Linux ``/proc``)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _versions() -> dict[str, str]:
    import platform

    import redis
    import tornado

    import gosession_tornado

    return {"gosession_tornado": gosession_tornado.__version__, "tornado": tornado.version,
            "python": platform.python_version(), "redis-py": redis.__version__}


# ---------------------------------------------------------------- one hung master


async def measure_hung_master(
    workdir: pathlib.Path, *, clients: int = 64, sessions: int = 300, processes: int = 2,
    provider_timeout: float = 2.0, warmup: float = 1.0, baseline: float = 4.0, hung: float = 6.0,
    after: float = 3.0, seed: int | None = None, only_healthy: bool = False,
) -> dict[str, Any]:
    """One run (see the module docstring); the measured figures, as a dict.

    *only_healthy*: the clients use only the sessions on the masters that are
    not stopped (to tell the provider's effect on them from the cost of
    answering the hung master's sessions with 503s).

    :raises RuntimeError: if the cluster or the servers cannot start.
    """
    cluster = PrivateRedisCluster(workdir, node_timeout_ms=1000)
    cluster.start()
    servers: list[ServerProcess] = []
    victim_pid = 0
    try:
        prefix = "gsrel:hung:"
        config = {
            "provider": "redis_cluster", "cookie_name": "sid", "provider_config": cluster.nodes,
            "key_prefix": prefix, "provider_timeout": provider_timeout,
        }
        servers = await _start_servers(config, processes, workdir)
        from redis.crc import key_slot

        sids = await _create_sessions(servers[0].port, sessions, "sid")
        owner = _slot_owner(cluster.ports)
        placed = [(sid, owner[key_slot(f"{prefix}{{{sid}}}".encode())]) for sid in sids]
        victim = cluster.ports[0]
        victim_pid = cluster.procs[victim].pid
        used = [(sid, node) for sid, node in placed if node != victim] if only_healthy else placed
        load = _Load([s.port for s in servers], used, "sid", timeout=max(20.0, 4 * provider_timeout),
                     seed=seed)
        tasks = [asyncio.ensure_future(load.client(i)) for i in range(clients)]
        app_pids = [s.pid for s in servers]
        cpu: list[float] = []
        try:
            t0 = time.monotonic()
            await asyncio.sleep(warmup)
            t_base = time.monotonic()
            cpu.append(_cpu_seconds(app_pids))
            own = [time.process_time()]
            await asyncio.sleep(baseline)
            t_stop = time.monotonic()
            cpu.append(_cpu_seconds(app_pids))
            own.append(time.process_time())
            os.kill(victim_pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(hung)
            finally:
                t_cont = time.monotonic()
                os.kill(victim_pid, signal.SIGCONT)
            cpu.append(_cpu_seconds(app_pids))
            own.append(time.process_time())
            await asyncio.sleep(after)
            t_end = time.monotonic()
        finally:
            load.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        fig = _hung_figures(load.samples, victim=victim, t0=t0, t_base=t_base, t_stop=t_stop,
                            t_cont=t_cont, t_end=t_end, clients=clients, sessions=sessions,
                            processes=processes, provider_timeout=provider_timeout,
                            placed=placed)
        fig["app_cpu_pct"] = {
            "baseline": round(100 * (cpu[1] - cpu[0]) / (t_stop - t_base), 1),
            "hung": round(100 * (cpu[2] - cpu[1]) / (t_cont - t_stop), 1),
        }
        fig["client_cpu_pct"] = {
            "baseline": round(100 * (own[1] - own[0]) / (t_stop - t_base), 1),
            "hung": round(100 * (own[2] - own[1]) / (t_cont - t_stop), 1),
        }
        return fig
    finally:
        if victim_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim_pid, signal.SIGCONT)
        await asyncio.gather(*(s.stop() for s in servers))
        cluster.stop()


def _hung_figures(samples: list[Sample], *, victim: int, t0: float, t_base: float, t_stop: float,
                  t_cont: float, t_end: float, clients: int, sessions: int, processes: int,
                  provider_timeout: float, placed: list[tuple[str, int]]) -> dict[str, Any]:
    def window(lo: float, hi: float, healthy: bool | None) -> list[Sample]:
        return [s for s in samples if lo <= s.sent < hi
                and (healthy is None or (s.node != victim) == healthy)]

    # The baseline: requests answered before the SIGSTOP (those still in flight then are not).
    base = [s for s in window(t_base, t_stop, True) if s.received < t_stop]
    base_all = [s for s in window(t_base, t_stop, None) if s.received < t_stop]
    hung_ok = window(t_stop, t_cont, True)
    hung_bad = window(t_stop, t_cont, False)
    after_bad = [s for s in samples if s.sent >= t_cont and s.node == victim]

    def ok_share(xs: list[Sample]) -> float:
        return round(100.0 * sum(1 for s in xs if s.status == 200) / len(xs), 2) if xs else 0.0

    def rate(xs: list[Sample], seconds: float) -> float:
        return round(sum(1 for s in xs if s.status == 200) / seconds, 1) if seconds > 0 else 0.0

    # The hung node's requests: when did they start failing fast (the circuit opened)?
    bad_503 = [s for s in hung_bad if s.status == 503]
    first_503 = min((s.received for s in bad_503), default=None)
    # "once the circuit is open": from the first 503 that came back fast on.
    fast = [s for s in bad_503 if s.latency <= 0.1]
    opened = min((s.received for s in fast), default=None)
    after_open = [s for s in hung_bad if opened is not None and s.sent >= opened]
    # Recovery: the first 200 for the victim's sessions after SIGCONT, and the last non-200.
    first_ok_after = min((s.received for s in after_bad if s.status == 200), default=None)
    last_fail_after = max((s.received for s in after_bad if s.status != 200), default=None)
    # No fault: the baseline and the after phase from 0.5 s after the SIGCONT on.
    calm = base + [s for s in samples if s.sent >= t_cont + 0.5 and s.node != victim]
    statuses: dict[str, int] = {}
    for s in samples:
        key = str(s.status) if s.status else "no answer"
        statuses[key] = statuses.get(key, 0) + 1
    per_node = {str(p): sum(1 for _, n in placed if n == p) for p in sorted({n for _, n in placed})}
    return {
        "clients": clients, "sessions": sessions, "processes": processes,
        "provider_timeout": provider_timeout, "victim": victim, "sessions_per_master": per_node,
        "phases_s": {"baseline": round(t_stop - t_base, 2), "hung": round(t_cont - t_stop, 2),
                     "after": round(t_end - t_cont, 2)},
        "requests": len(samples), "statuses": statuses,
        "baseline": {
            "requests": len(base_all), "healthy_requests": len(base), "ok_pct": ok_share(base_all),
            "healthy_rps": rate(base, t_stop - t_base), "healthy_latency_ms": _pct(s.latency for s in base),
        },
        "hung": {
            "healthy_requests": len(hung_ok), "healthy_ok_pct": ok_share(hung_ok),
            "healthy_rps": rate(hung_ok, t_cont - t_stop),
            "healthy_latency_ms": _pct(s.latency for s in hung_ok if s.status == 200),
            "healthy_all_latency_ms": _pct(s.latency for s in hung_ok),
            "hung_node_requests": len(hung_bad),
            "hung_node_statuses": {str(k): sum(1 for s in hung_bad if s.status == k)
                                   for k in sorted({s.status for s in hung_bad})},
            "first_503_s": round(first_503 - t_stop, 3) if first_503 is not None else None,
            "circuit_open_s": round(opened - t_stop, 3) if opened is not None else None,
            "hung_node_after_open_latency_ms": _pct(s.latency for s in after_open),
            "hung_node_after_open_non_503": sum(1 for s in after_open if s.status != 503),
        },
        "after": {
            "first_ok_s": round(first_ok_after - t_cont, 3) if first_ok_after is not None else None,
            "last_failure_s": round(last_fail_after - t_cont, 3) if last_fail_after is not None else None,
            "hung_node_ok_pct": ok_share(after_bad),
            "healthy_latency_ms": _pct(s.latency for s in samples if s.sent >= t_cont and s.node != victim),
        },
        "no_fault_healthy_latency_ms": _pct(s.latency for s in calm),
        "max_latency_s": round(max((s.latency for s in samples), default=0.0), 3),
    }


def hung_master_result(fig: dict[str, Any]) -> dict[str, Any]:
    """*fig* (from :func:`measure_hung_master`) as a ``fault`` result for :mod:`reliability.report`."""
    base, hung, after = fig["baseline"], fig["hung"], fig["after"]
    p99_base = fig["no_fault_healthy_latency_ms"]["p99"]
    p99_hung = hung["healthy_latency_ms"]["p99"]
    open_lat = hung["hung_node_after_open_latency_ms"]
    recovered = after["last_failure_s"] if after["last_failure_s"] is not None else after["first_ok_s"]
    notes = (
        f"redis_cluster, one of 3 masters SIGSTOPped for {fig['phases_s']['hung']} s "
        f"({fig['clients']} clients, {fig['sessions']} sessions, {fig['processes']} processes, "
        f"provider_timeout {fig['provider_timeout']:g} s): sessions on the healthy masters "
        f"{hung['healthy_ok_pct']} % answered 200 (target >= 95 %), {hung['healthy_rps']} req/s against "
        f"{base['healthy_rps']} before, p99 {p99_hung} ms against {p99_base} ms without the fault "
        f"(x{p99_hung / p99_base if p99_base else 0:.2f}, target <= 2x); the hung master's sessions "
        f"got 503 in p50 {open_lat['p50']} / p99 "
        f"{open_lat['p99']} / max {open_lat['max']} ms once its circuit was open "
        f"({hung['circuit_open_s']} s after the SIGSTOP; target <= 100 ms); after SIGCONT the "
        f"first 200 came {after['first_ok_s']} s and the last failure {after['last_failure_s']} s "
        "later (target <= 1 s)."
    )
    survived = (
        hung["healthy_ok_pct"] >= 95.0 and open_lat["p99"] <= 100.0 and recovered is not None
        and recovered <= 1.0
    )
    return {
        "kind": "fault", "provider": "redis_cluster",
        "where": "a private 3-master cluster (no replicas, cluster-require-full-coverage no)",
        "processes": fig["processes"], "clients": fig["clients"], "sessions": fig["sessions"],
        "requests": fig["requests"], "statuses": fig["statuses"], "violations": {},
        "latency_ms": hung["healthy_latency_ms"],
        "fault": {
            "name": "cluster-hung-master",
            "fault": "one master of three SIGSTOPped under load, then SIGCONT",
            "injected": 1, "outage_s": fig["phases_s"]["hung"],
            "status_503": fig["statuses"].get("503", 0),
            "first_503_s": hung["first_503_s"], "recovery_s": recovered,
            "survived": survived, "notes": notes, "figures": fig,
        },
        "versions": _versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
    }


# ---------------------------------------------------------------- sentinel failover


async def measure_sentinel_failover(
    workdir: pathlib.Path, *, clients: int = 32, sessions: int = 100, processes: int = 2,
    provider_timeout: float = 2.0, baseline: float = 2.0, limit: float = 30.0, after: float = 2.0,
    seed: int | None = None,
) -> dict[str, Any]:
    """Kill the master under load; measure the error window (see the module docstring)."""
    from tests.factories.factory_redis_sentinel import MASTER_NAME, Topology

    topology = Topology(workdir, sentinels=1)
    topology.start()
    servers: list[ServerProcess] = []
    try:
        config = {
            "provider": "redis_sentinel", "cookie_name": "sid",
            "provider_config": f"{topology.sentinel_addrs},16,,0,{MASTER_NAME}",
            "key_prefix": "gsrel:failover:", "provider_timeout": provider_timeout,
        }
        servers = await _start_servers(config, processes, workdir)
        sids = await _create_sessions(servers[0].port, sessions, "sid")
        load = _Load([s.port for s in servers], [(sid, 0) for sid in sids], "sid",
                     timeout=max(20.0, 4 * provider_timeout), seed=seed, track_writes=True)
        tasks = [asyncio.ensure_future(load.client(i)) for i in range(clients)]
        promoted_at: float | None = None
        try:
            await asyncio.sleep(baseline)
            t_kill = time.monotonic()
            await asyncio.to_thread(topology.kill_master)
            deadline = t_kill + limit
            while time.monotonic() < deadline:
                try:
                    addr = await asyncio.to_thread(topology.master_by_sentinel)
                except Exception:
                    addr = None
                if addr is not None and addr[1] != topology.master_port:
                    promoted_at = time.monotonic()
                    break
                await asyncio.sleep(0.05)
            # until every request succeeds again (or the limit), then a little more
            while time.monotonic() < deadline:
                recent = [s for s in load.samples[-clients:] if s.sent > t_kill]
                if len(recent) >= clients and all(s.status == 200 for s in recent):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(after)
            t_end = time.monotonic()
        finally:
            load.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Every session must still be there (replicated before the kill) and readable; each
        # client key must hold its last acknowledged value or a later one.
        conn = Connection("127.0.0.1", servers[0].port, timeout=30)
        missing = lost = acked_before = 0
        try:
            for sid in sids:
                resp = await conn.request("GET", "/op/read", [("Cookie", f"sid={sid}")])
                body = resp.json() if resp.status == 200 else {}
                data = body.get("data", {})
                if resp.status != 200 or body.get("new") or "k0" not in data:
                    missing += 1
                for (wsid, key), history in load.writes.items():
                    if wsid != sid:
                        continue
                    acked = [n for n, status in history if status == 200]
                    if not acked:
                        continue
                    acked_before += 1
                    stored = data.get(key)
                    if stored is None or int(stored) < acked[-1]:
                        lost += 1
        finally:
            conn.close()
    finally:
        await asyncio.gather(*(s.stop() for s in servers))
        topology.stop()
    samples = load.samples
    failures = [s for s in samples if s.sent >= t_kill and s.status != 200]
    first_fail = min((s.received for s in failures), default=None)
    last_fail = max((s.received for s in failures), default=None)
    statuses: dict[str, int] = {}
    for s in samples:
        key = str(s.status) if s.status else "no answer"
        statuses[key] = statuses.get(key, 0) + 1
    during = [s for s in failures]
    return {
        "clients": clients, "sessions": sessions, "processes": processes,
        "provider_timeout": provider_timeout, "down_after_ms": 1000,
        "requests": len(samples), "statuses": statuses,
        "promoted_s": round(promoted_at - t_kill, 3) if promoted_at is not None else None,
        "first_failure_s": round(first_fail - t_kill, 3) if first_fail is not None else None,
        "error_window_s": round(last_fail - t_kill, 3) if last_fail is not None else 0.0,
        "failed_requests": len(failures),
        "failure_statuses": {str(k): sum(1 for s in during if s.status == k)
                             for k in sorted({s.status for s in during})},
        "failure_latency_ms": _pct(s.latency for s in failures),
        "after_latency_ms": _pct(s.latency for s in samples
                                 if last_fail is not None and s.sent > last_fail),
        "sessions_missing_after": missing,
        "keys_checked_after": acked_before,
        "acknowledged_writes_lost": lost,
        "max_latency_s": round(max((s.latency for s in samples), default=0.0), 3),
        "run_s": round(t_end - t_kill, 2),
    }


def failover_result(fig: dict[str, Any]) -> dict[str, Any]:
    """*fig* (from :func:`measure_sentinel_failover`) as a ``fault`` result for the report."""
    lat = fig["failure_latency_ms"]
    notes = (
        f"redis_sentinel, master SIGKILLed under load ({fig['clients']} clients, {fig['processes']} "
        f"processes, provider_timeout {fig['provider_timeout']:g} s, down-after-milliseconds "
        f"{fig['down_after_ms']}): the sentinel named the replica {fig['promoted_s']} s after the kill; "
        f"requests failed (503) from {fig['first_failure_s']} s to {fig['error_window_s']} s after it "
        f"(the error window; {fig['failed_requests']} requests, answered in p50 {lat['p50']} / max "
        f"{lat['max']} ms); every session written before the kill was read back afterwards "
        f"({fig['sessions_missing_after']} missing); of {fig['keys_checked_after']} keys, "
        f"{fig['acknowledged_writes_lost']} had lost their last acknowledged write (Redis replicates "
        "asynchronously: a write the old master acknowledged just before the kill may never reach the "
        "replica)."
    )
    return {
        "kind": "fault", "provider": "redis_sentinel",
        "where": "a private master, replica and sentinel",
        "processes": fig["processes"], "clients": fig["clients"], "sessions": fig["sessions"],
        "requests": fig["requests"], "statuses": fig["statuses"], "violations": {},
        "latency_ms": fig["after_latency_ms"],
        "fault": {
            "name": "sentinel-failover", "fault": "master SIGKILLed under load, replica promoted",
            "injected": 1, "outage_s": fig["error_window_s"],
            "status_503": fig["statuses"].get("503", 0), "first_503_s": fig["first_failure_s"],
            "recovery_s": (round(fig["error_window_s"] - fig["promoted_s"], 3)
                           if fig["promoted_s"] is not None else None),
            "survived": fig["sessions_missing_after"] == 0 and fig["failure_statuses"].keys() <= {"503"},
            "notes": notes, "figures": fig,
        },
        "versions": _versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
    }


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``python -m reliability.cluster_faults``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m reliability.cluster_faults", description=__doc__)
    parser.add_argument("what", choices=["hung-master", "sentinel-failover"])
    parser.add_argument("--seconds", type=float, default=6.0, help="hung-master: how long the node hangs")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--provider-timeout", type=float, default=2.0)
    parser.add_argument("--write", action="store_true", help="write the result to reliability/results")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="gosession-cluster-faults-"))
    try:
        if args.what == "hung-master":
            fig = asyncio.run(measure_hung_master(
                tmp, clients=args.clients or 64, hung=args.seconds, provider_timeout=args.provider_timeout))
            result = hung_master_result(fig)
        else:
            fig = asyncio.run(measure_sentinel_failover(
                tmp, clients=args.clients or 32, provider_timeout=args.provider_timeout))
            result = failover_result(fig)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(fig, indent=1))
    print(result["fault"]["notes"])
    if args.write:
        print(f"-> {write_result(result, args.out)}")
    return 0 if result["fault"]["survived"] else 1


if __name__ == "__main__":
    sys.exit(main())
