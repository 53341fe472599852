"""Throughput of the redis provider at concurrency 1, 16 and 256, as ratios against 1.

Each operation is one request's worth of provider work: a read followed by a
release of one changed key, on one of ``--sessions`` sessions, through the
manager's actor (so batching is what is measured). All levels run in the same
process against the same server, and results are printed as ratios against
concurrency 1 measured in this run, plus the round trips per operation the
provider counted. Nothing is asserted. ``bench_batching.py`` runs the same
measurement for every network provider; this script is its redis-only form.

    python3 bench/bench_redis_batching.py [--port 6379] [--ops 3000] [--sessions 512] [--quick]

Keys go under a random ``gsbench:<hex>:`` prefix and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from _common import LEVELS, create_sessions, open_store, print_level_table, run_level

from gosession_tornado import SessionManager


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--ops", type=int, default=None, help="operations per level (default 3000)")
    parser.add_argument("--seconds", type=float, default=None, help="most seconds per level (default 3)")
    parser.add_argument("--sessions", type=int, default=None, help="stored sessions (default 512)")
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run, for the tests)")
    args = parser.parse_args()
    args.ops = args.ops or (120 if args.quick else 3000)
    args.seconds = args.seconds or (0.5 if args.quick else 3.0)
    args.sessions = args.sessions or (64 if args.quick else 512)
    args.redis_port = args.port

    store = open_store("redis", args)
    if isinstance(store, str):
        print(f"redis: skipped ({store})")
        return 0
    try:
        async with SessionManager(store.config) as m:
            sids = await create_sessions(m, args.sessions)
            await run_level(m, store, sids, 16, min(500, args.ops), args.seconds)  # warm up
            results = [await run_level(m, store, sids, c, args.ops, args.seconds) for c in LEVELS]
    finally:
        await store.cleanup()

    print(f"redis provider, read+release per op, at most {args.ops} ops per level, {args.sessions} sessions")
    print_level_table(store, results)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
