"""aiomcache against emcache: microseconds per memcached operation, in this process.

The measurement behind the ``memcache`` provider's choice of client
(``docs/providers/memcache.rst``). It starts its own ``memcached`` on a free
127.0.0.1 port (``-U 0 -m 64``, stopped by PID at the end), stores one
session-sized value (a ~200-byte msgpack envelope) and times, for each client:

* one operation at a time (µs per op): ``get``, ``set``, ``gets``, a
  ``gets`` + ``cas`` pair, ``touch``, and ``gat`` (get-and-touch, which
  aiomcache does not have);
* the provider's batch path (µs per key): one multi-key ``gets`` of 64 keys,
  the same as ``gat`` of 64 keys (emcache only), and 64 ``cas`` writes in
  flight at once over an 8-connection pool;
* 64 concurrent single ``get`` calls (µs per op);

and then the provider itself, through a manager's actor (so what is measured
is the batch path: one ``gat``/``gets`` of every key in a batch, then the
``cas`` writes in flight together): a read plus a release of one changed key
per operation, on 512 sessions, at concurrency 1, 16 and 256, with the
memcached commands sent per operation.

Each figure is the median of ``--rounds`` rounds of ``--ops`` operations;
both clients run interleaved in every round so that a busy machine hurts
both alike. Nothing is asserted.

    python3 bench/bench_memcache_clients.py [--ops 4000] [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

BATCH = 64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POOL = 8


def client_missing() -> str | None:
    """Why the comparison cannot run here (a client not installed), or ``None``."""
    import importlib.util

    for name in ("aiomcache", "emcache"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed (pip install aiomcache emcache)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_memcached() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # memcached refuses to run as root without -u
    proc = subprocess.Popen(
        ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", *user],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("memcached did not start")


VALUE = msgpack.packb({"data": {"user": "ann", "cart": list(range(20)), "theme": "dark",
                                "visits": 12, "csrf": "x" * 64}, "lifetime": 3600})


async def timed(n: int, op: Callable[[int], Awaitable[Any]]) -> float:
    """µs per call of ``op(i)`` over *n* sequential calls."""
    start = time.perf_counter()
    for i in range(n):
        await op(i)
    return (time.perf_counter() - start) / n * 1e6


class AiomcacheBench:
    name = "aiomcache"

    def __init__(self, port: int) -> None:
        import aiomcache

        self.c = aiomcache.Client("127.0.0.1", port, pool_size=POOL)

    async def setup(self, keys: list[bytes]) -> None:
        for k in keys:
            await self.c.set(k, VALUE, exptime=3600)

    async def close(self) -> None:
        await self.c.close()

    async def round(self, n: int, keys: list[bytes]) -> dict[str, float]:
        c = self.c
        k = keys[0]
        out: dict[str, float] = {}
        out["get"] = await timed(n, lambda i: c.get(k))
        out["set"] = await timed(n, lambda i: c.set(k, VALUE, exptime=3600))
        out["gets"] = await timed(n, lambda i: c.gets(k))

        async def gets_cas(i: int) -> None:
            _, token = await c.gets(k)
            assert token is not None
            await c.cas(k, VALUE, token, exptime=3600)

        out["gets+cas"] = await timed(n, gets_cas)
        out["touch"] = await timed(n, lambda i: c.touch(k, 3600))
        out["gat"] = float("nan")
        batches = max(1, n // BATCH)
        out[f"multi gets {BATCH} /key"] = await timed(batches, lambda i: c.multi_get(*keys)) / BATCH
        out[f"multi gat {BATCH} /key"] = float("nan")

        async def cas_many(i: int) -> None:
            tokens = [await c.gets(key) for key in keys[:1]]  # one token is enough to time cas
            del tokens
            await asyncio.gather(*(c.cas(key, VALUE, 1, exptime=3600) for key in keys))

        out[f"{BATCH} cas in flight /key"] = await timed(batches, cas_many) / BATCH
        out["64 concurrent get /op"] = await timed(
            batches, lambda i: asyncio.gather(*(c.get(key) for key in keys))
        ) / BATCH
        return out


class EmcacheBench:
    name = "emcache"

    def __init__(self, port: int) -> None:
        self.port = port
        self.c: Any = None

    async def open(self) -> None:
        import emcache

        self.c = await emcache.create_client(
            [emcache.MemcachedHostAddress("127.0.0.1", self.port)],
            timeout=2.0, max_connections=POOL, min_connections=1,
        )

    async def setup(self, keys: list[bytes]) -> None:
        await self.open()
        for k in keys:
            await self.c.set(k, VALUE, exptime=3600)

    async def close(self) -> None:
        await self.c.close()

    async def round(self, n: int, keys: list[bytes]) -> dict[str, float]:
        import emcache

        c = self.c
        k = keys[0]
        out: dict[str, float] = {}
        out["get"] = await timed(n, lambda i: c.get(k))
        out["set"] = await timed(n, lambda i: c.set(k, VALUE, exptime=3600))
        out["gets"] = await timed(n, lambda i: c.gets(k))

        async def gets_cas(i: int) -> None:
            item = await c.gets(k)
            await c.cas(k, VALUE, item.cas, exptime=3600)

        out["gets+cas"] = await timed(n, gets_cas)
        out["touch"] = await timed(n, lambda i: c.touch(k, 3600))
        out["gat"] = await timed(n, lambda i: c.gat(3600, k))
        batches = max(1, n // BATCH)
        out[f"multi gets {BATCH} /key"] = await timed(batches, lambda i: c.gets_many(keys)) / BATCH
        out[f"multi gat {BATCH} /key"] = await timed(batches, lambda i: c.gats_many(3600, keys)) / BATCH

        async def cas_one(key: bytes) -> None:
            try:
                await c.cas(key, VALUE, 1, exptime=3600)
            except emcache.StorageCommandError:
                pass  # EXISTS: a stale token, the round trip is what is timed

        out[f"{BATCH} cas in flight /key"] = await timed(
            batches, lambda i: asyncio.gather(*(cas_one(key) for key in keys))
        ) / BATCH
        out["64 concurrent get /op"] = await timed(
            batches, lambda i: asyncio.gather(*(c.get(key) for key in keys))
        ) / BATCH
        return out


async def provider_levels(port: int, ops: int, seconds: float) -> None:
    """Read + release per operation through the memcache provider at concurrency 1, 16 and 256."""
    sys.path.insert(0, ROOT)
    from _common import Store, _noop, create_sessions, print_level_table, run_level

    from gosession_tornado import SessionManager

    config = {"provider": "memcache", "cookie_name": "sid", "provider_config": f"127.0.0.1:{port}",
              "max_lifetime": 600, "gc_lifetime": 600}
    store = Store("memcache", config, _noop, counter_name="commands")
    async with SessionManager(config) as m:
        sids = await create_sessions(m, 512)
        await run_level(m, store, sids, 16, ops, seconds)  # warm up
        results = [await run_level(m, store, sids, c, ops, seconds) for c in (1, 16, 256)]
    print(f"memcache provider, read+release per op, at most {ops} ops per level, 512 sessions")
    print_level_table(store, results)


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--ops", type=int, default=None, help="operations per figure per round (4000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (5); the median is printed")
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    args = parser.parse_args()
    n = args.ops or (200 if args.quick else 4000)
    rounds = args.rounds or (1 if args.quick else 5)
    if shutil.which("memcached") is None:
        print("memcached not installed: skipped")
        return 0
    missing = client_missing()
    proc, port = start_memcached()
    try:
        if missing:
            print(f"client comparison skipped: {missing}")
            await provider_levels(port, 120 if args.quick else 3000, 0.5 if args.quick else 3.0)
            return 0
        benches: list[Any] = [AiomcacheBench(port), EmcacheBench(port)]
        keys = [b"gsbench:%064x" % i for i in range(BATCH)]
        for b in benches:
            await b.setup(keys)
            await b.round(max(50, n // 20), keys)  # warm up
        results: dict[str, list[dict[str, float]]] = {b.name: [] for b in benches}
        for _ in range(rounds):
            for b in benches:
                results[b.name].append(await b.round(n, keys))
        for b in benches:
            await b.close()
        provider_task = provider_levels(port, 120 if args.quick else 3000, 0.5 if args.quick else 3.0)
        print_comparison(results, n, rounds)
        print()
        await provider_task
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


def print_comparison(results: dict[str, list[dict[str, float]]], n: int, rounds: int) -> None:

    names = list(results["aiomcache"][0])
    print(f"memcached on 127.0.0.1, {n} ops x {rounds} rounds, median µs (lower is better)")
    print(f"{'operation':<26}{'aiomcache':>12}{'emcache':>12}{'ratio':>9}")
    for name in names:
        a = statistics.median(r[name] for r in results["aiomcache"])
        e = statistics.median(r[name] for r in results["emcache"])
        ratio = f"{a / e:8.2f}x" if a == a and e == e else f"{'-':>9}"
        fa = f"{a:12.1f}" if a == a else f"{'n/a':>12}"
        print(f"{name:<26}{fa}{e:12.1f}{ratio}")
    print("ratio = aiomcache / emcache (above 1: emcache is faster)")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
