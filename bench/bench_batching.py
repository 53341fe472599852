"""Actor batching: provider throughput at concurrency 1, 16 and 256, as ratios against 1.

For each of the providers redis, mysql, postgresql and file, one operation is
one request's worth of provider work: a read followed by a release of one
changed key, on one of ``--sessions`` stored sessions, sent through the
manager's actor (so what is measured is how well the actor's drained batches
turn into few round trips). All levels of a provider run in this process
against the same store, one after the other, and are printed as a ratio
against concurrency 1 measured in this run, next to what the provider
counts per operation (redis: pipelines sent, ``round_trips``; mysql and
postgresql: SQL statements sent, ``statements``; file: nothing).

A provider whose server does not answer on 127.0.0.1 is skipped with the
reason printed. Each level stops after ``--ops`` operations or ``--seconds``
seconds, whichever comes first. Nothing is asserted.

    python3 bench/bench_batching.py [--quick] [--providers redis,file] [--ops 10000] [--seconds 3]

Keys go under a random ``gsbench:<hex>:`` prefix, tables are
``gsbench_<hex>``, files go to a temporary directory; all are removed
afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from _common import (
    LEVELS,
    LevelResult,
    Store,
    add_port_options,
    create_sessions,
    open_store,
    print_level_table,
    run_level,
)

from gosession_tornado import SessionManager
from gosession_tornado.errors import SessionError

PROVIDERS = ("redis", "mysql", "postgresql", "file")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run, for the tests)")
    parser.add_argument("--providers", default=",".join(PROVIDERS), help="comma-separated subset")
    parser.add_argument("--ops", type=int, default=None, help="most operations per level (default 10000)")
    parser.add_argument("--seconds", type=float, default=None, help="most seconds per level (default 3)")
    parser.add_argument("--sessions", type=int, default=None, help="stored sessions (default 512)")
    add_port_options(parser)
    args = parser.parse_args(argv)
    quick = args.quick
    args.ops = args.ops or (120 if quick else 10000)
    args.seconds = args.seconds or (0.5 if quick else 3.0)
    args.sessions = args.sessions or (64 if quick else 512)
    args.providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    unknown = set(args.providers) - set(PROVIDERS)
    if unknown:
        parser.error(f"unknown provider(s) {sorted(unknown)}; choose from {', '.join(PROVIDERS)}")
    return args


async def bench_store(store: Store, args: argparse.Namespace) -> list[LevelResult]:
    """Start a manager on *store*, warm it up, then run every level in :data:`LEVELS`."""
    m = SessionManager(store.config)
    async with m:
        sids = await create_sessions(m, args.sessions)
        await run_level(m, store, sids, 16, min(300, args.ops), args.seconds)  # connections, scripts
        return [await run_level(m, store, sids, c, args.ops, args.seconds) for c in LEVELS]


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"batching: read+release per op through the actor; at most {args.ops} ops or "
        f"{args.seconds:g} s per level; {args.sessions} sessions; ratios vs concurrency 1 in this run"
    )
    for name in args.providers:
        print(f"== {name} ==", flush=True)
        store = open_store(name, args)
        if isinstance(store, str):
            print(f"{name}: skipped ({store})\n", flush=True)
            continue
        try:
            results = await bench_store(store, args)
        except SessionError as exc:
            print(f"{name}: skipped ({type(exc).__name__}: {exc})\n", flush=True)
            continue
        finally:
            await store.cleanup()
        print_level_table(store, results)
        print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
