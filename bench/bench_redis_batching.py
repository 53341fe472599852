"""Throughput of the redis provider at concurrency 1, 16 and 256, as ratios against 1.

Each operation is one request's worth of provider work: a read followed by a
release of one changed key, on one of ``--sessions`` sessions, through the
manager's actor (so batching is what is measured). All levels run in the same
process against the same server, and results are printed as ratios against
concurrency 1 measured in this run, plus the round trips per operation the
provider counted. Nothing is asserted.

    python3 bench/bench_redis_batching.py [--port 6379] [--ops 3000] [--sessions 512]

Keys go under a random ``gsbench:<hex>:`` prefix and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time

import redis.asyncio as aioredis

from gosession_tornado import SessionManager
from gosession_tornado.provider import Changes, Read, Release
from gosession_tornado.providers.redis import RedisProvider

LEVELS = (1, 16, 256)


async def run_level(m: SessionManager, sids: list[str], concurrency: int, ops: int) -> tuple[float, float]:
    """Run *ops* read+release operations with *concurrency* workers; (ops/s, round trips/op)."""
    actor = m._actor
    assert actor is not None and isinstance(actor.provider, RedisProvider)
    provider = actor.provider
    remaining = ops
    counter = 0

    async def worker() -> None:
        nonlocal remaining, counter
        while remaining > 0:
            remaining -= 1
            counter += 1
            sid = sids[counter % len(sids)]
            await m._ask(Read(sid))
            await m._ask(Release(sid, Changes(set={"n": counter}), 600))

    trips0 = provider.round_trips
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return ops / elapsed, (provider.round_trips - trips0) / ops


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--ops", type=int, default=3000, help="operations per level (read + release)")
    parser.add_argument("--sessions", type=int, default=512)
    args = parser.parse_args()

    prefix = f"gsbench:{secrets.token_hex(4)}:"
    m = SessionManager(
        {
            "provider": "redis",
            "cookie_name": "sid",
            "provider_config": f"127.0.0.1:{args.port},16,",
            "key_prefix": prefix,
        }
    )
    admin = aioredis.Redis(host="127.0.0.1", port=args.port)
    try:
        async with m:
            sids = [m.new_sid() for _ in range(args.sessions)]
            await asyncio.gather(
                *(m._ask(Release(s, Changes(set={"n": 0}, create=True), 600)) for s in sids)
            )
            await run_level(m, sids, 16, min(500, args.ops))  # warm up connections and scripts
            results = {c: await run_level(m, sids, c, args.ops) for c in LEVELS}
    finally:
        keys = [k async for k in admin.scan_iter(match=prefix + "*", count=1000)]
        for i in range(0, len(keys), 500):
            await admin.delete(*keys[i : i + 500])
        await admin.aclose()

    base = results[1][0]
    print(f"redis provider, read+release per op, {args.ops} ops per level, {args.sessions} sessions")
    print(f"{'concurrency':>11}  {'ops/s':>9}  {'vs c=1':>7}  {'round trips/op':>14}")
    for c in LEVELS:
        rate, trips = results[c]
        print(f"{c:>11}  {rate:>9.0f}  {rate / base:>6.2f}x  {trips:>14.3f}")


if __name__ == "__main__":
    asyncio.run(main())
