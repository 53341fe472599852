"""Shared pieces of the benchmarks: stores with their own namespace, reachability, output.

Every store a benchmark opens lives under a name of its own: a random
``gsbench:<hex>:`` redis key prefix, a ``gsbench_<hex>`` MySQL/PostgreSQL
table, a fresh temporary directory for the file provider. :meth:`Store.cleanup`
deletes it again. A server that does not accept a TCP connection on
127.0.0.1 within one second gives a skip reason instead of a store.

Only loopback traffic: every host here is ``127.0.0.1``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gosession_tornado import SessionManager
from gosession_tornado.provider import Changes, Provider, Read, Release

HOST = "127.0.0.1"
#: Concurrency levels of the batching benchmarks; the first is the baseline.
LEVELS = (1, 16, 256)
#: Providers that talk to a server, and the one that talks to a disk.
NETWORK_PROVIDERS = ("redis", "mysql", "postgresql")

MYSQL_USER = os.environ.get("GOSESSION_MYSQL_USER", "root")
MYSQL_PASSWORD = os.environ.get("GOSESSION_MYSQL_PASSWORD", "")
MYSQL_DB = os.environ.get("GOSESSION_MYSQL_DB", "test")
PG_USER = os.environ.get("GOSESSION_PG_USER", "postgres")
PG_PASSWORD = os.environ.get("GOSESSION_PG_PASSWORD", "")
PG_DB = os.environ.get("GOSESSION_PG_DB", "test")


def add_port_options(parser: argparse.ArgumentParser) -> None:
    """``--redis-port``, ``--mysql-port``, ``--pg-port`` (defaults: the env vars the tests use)."""
    parser.add_argument("--redis-port", type=int, default=int(os.environ.get("GOSESSION_REDIS_PORT", "6379")))
    parser.add_argument("--mysql-port", type=int, default=int(os.environ.get("GOSESSION_MYSQL_PORT", "3306")))
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("GOSESSION_PG_PORT", "5432")))


def server_answers(port: int, timeout: float = 1.0) -> bool:
    """True if something accepts a TCP connection on 127.0.0.1:*port* within *timeout* seconds."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def server_port(name: str, args: argparse.Namespace) -> int | None:
    """The port *name*'s server listens on per *args*, or None for a provider without a server."""
    attr = {"redis": "redis_port", "mysql": "mysql_port", "postgresql": "pg_port"}.get(name)
    return None if attr is None else int(getattr(args, attr))


@dataclasses.dataclass
class Store:
    """A session store of one provider under a namespace of its own.

    :attr:`config` is a :class:`SessionManager` configuration;
    :attr:`counter_name` names what :meth:`count` counts (round trips,
    statements), or is ``None`` when the provider counts nothing.
    """

    name: str
    config: dict[str, Any]
    cleanup: Callable[[], Awaitable[None]]
    counter_name: str | None = None

    def count(self, provider: Provider) -> int:
        """The provider's counter now: redis round trips, memcached commands, SQL statements (or 0)."""
        if self.name == "redis":
            return int(getattr(provider, "round_trips", 0))
        if self.name == "memcache":
            return int(getattr(provider, "commands", 0))
        statements = getattr(provider, "statements", None)
        return int(sum(statements.values())) if statements is not None else 0


async def _noop() -> None:
    return None


def open_store(name: str, args: argparse.Namespace) -> Store | str:
    """A :class:`Store` for provider *name*, or the reason it is skipped (server unreachable).

    Nothing is created on the server here: the provider creates its table on
    start, and :meth:`Store.cleanup` removes whatever it created.
    """
    tag = secrets.token_hex(4)
    port = server_port(name, args)
    if port is not None and not server_answers(port):
        return f"no {name} server answers on {HOST}:{port}"
    base: dict[str, Any] = {"provider": name, "cookie_name": "sid", "gc_lifetime": 3600}
    if name == "memory":
        return Store(name, {**base, "provider_config": ""}, _noop)
    if name == "cookie":
        from cryptography.fernet import Fernet

        key = Fernet.generate_key().decode("ascii")
        return Store(name, {**base, "provider_config": {"keys": [key]}}, _noop)
    if name == "file":
        directory = tempfile.mkdtemp(prefix="gsbench-")

        async def rm_dir() -> None:
            shutil.rmtree(directory, ignore_errors=True)

        return Store(name, {**base, "provider_config": directory}, rm_dir)
    if name == "redis":
        prefix = f"gsbench:{tag}:"

        async def del_keys() -> None:
            await delete_redis_prefix(args.redis_port, prefix)

        cfg = {**base, "provider_config": f"{HOST}:{args.redis_port},16,", "key_prefix": prefix}
        return Store(name, cfg, del_keys, "round trips")
    table = f"gsbench_{tag}"
    if name == "mysql":
        cred = f"{MYSQL_USER}:{MYSQL_PASSWORD}" if MYSQL_PASSWORD else MYSQL_USER
        dsn = f"{cred}@tcp({HOST}:{args.mysql_port})/{MYSQL_DB}?table={table}&maxsize=16"

        async def drop_mysql() -> None:
            await drop_mysql_table(args.mysql_port, table)

        return Store(name, {**base, "provider_config": dsn}, drop_mysql, "statements")
    if name == "postgresql":
        dsn = (
            f"user={PG_USER} password={PG_PASSWORD} host={HOST} port={args.pg_port} "
            f"dbname={PG_DB} sslmode=disable table={table}"
        )

        async def drop_pg() -> None:
            await drop_pg_table(args.pg_port, table)

        return Store(name, {**base, "provider_config": dsn}, drop_pg, "statements")
    raise ValueError(f"unknown provider {name!r}")


async def delete_redis_prefix(port: int, prefix: str) -> None:
    """Delete every key under *prefix* on 127.0.0.1:*port* (SCAN + DEL)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis(host=HOST, port=port)
    try:
        pattern = "".join("\\" + c if c in "\\*?[]" else c for c in prefix) + "*"
        keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
    finally:
        await client.aclose()


async def drop_mysql_table(port: int, table: str) -> None:
    """``DROP TABLE IF EXISTS`` *table* (a generated ``gsbench_<hex>`` name) in the bench database."""
    import aiomysql

    conn = await aiomysql.connect(
        host=HOST, port=port, user=MYSQL_USER, password=MYSQL_PASSWORD, db=MYSQL_DB, autocommit=True
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP TABLE IF EXISTS `{table}`")
    finally:
        conn.close()


async def drop_pg_table(port: int, table: str) -> None:
    """``DROP TABLE IF EXISTS`` *table* (a generated ``gsbench_<hex>`` name) in the bench database."""
    import asyncpg

    conn = await asyncpg.connect(
        host=HOST, port=port, user=PG_USER, password=PG_PASSWORD or None, database=PG_DB, ssl="disable"
    )
    try:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
    finally:
        await conn.close()


# ---------------------------------------------------------------- provider-level load


@dataclasses.dataclass
class LevelResult:
    """One concurrency level: operations done, seconds taken, provider counter delta."""

    concurrency: int
    ops: int
    seconds: float
    counted: int

    @property
    def rate(self) -> float:
        """Operations per second."""
        return self.ops / self.seconds if self.seconds > 0 else 0.0


async def create_sessions(m: SessionManager, n: int) -> list[str]:
    """*n* new stored sessions (``{"n": 0}``, lifetime 600 s) in *m*'s provider; their ids."""
    sids = [m.new_sid() for _ in range(n)]
    for i in range(0, n, 256):
        await asyncio.gather(
            *(m._ask(Release(s, Changes(set={"n": 0}, create=True), 600)) for s in sids[i : i + 256])
        )
    return sids


async def run_level(
    m: SessionManager, store: Store, sids: Sequence[str], concurrency: int, ops: int, seconds: float
) -> LevelResult:
    """Read + release (one changed key) through *m*'s actor with *concurrency* workers.

    Stops after *ops* operations or *seconds* seconds, whichever comes first;
    an operation started before the deadline is finished and counted.
    """
    actor = m._actor
    assert actor is not None
    provider = actor.provider
    remaining = ops
    done = 0
    counter = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal remaining, done, counter
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            counter += 1
            sid = sids[counter % len(sids)]
            await m._ask(Read(sid))
            await m._ask(Release(sid, Changes(set={"n": counter}), 600))
            done += 1

    before = store.count(provider)
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return LevelResult(concurrency, done, elapsed, store.count(provider) - before)


def print_level_table(store: Store, results: Sequence[LevelResult]) -> None:
    """One row per level: ops/s, the ratio to the first level, counter per operation."""
    base = results[0].rate
    counter = f"{store.counter_name}/op" if store.counter_name else "counter/op"
    print(f"{'concurrency':>11}  {'ops':>6}  {'ops/s':>9}  {'vs c=1':>7}  {counter:>15}")
    for r in results:
        per_op = f"{r.counted / r.ops:.3f}" if store.counter_name and r.ops else "n/a"
        ratio = r.rate / base if base else 0.0
        print(f"{r.concurrency:>11}  {r.ops:>6}  {r.rate:>9.0f}  {ratio:>6.2f}x  {per_op:>15}")

