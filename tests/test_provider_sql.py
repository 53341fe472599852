"""The SQL providers (mysql, postgresql) beyond the contract suite, one suite run over both:
storage and expiry, concurrency (HTTP and cross-process), batching and statement-count
proof, compare-and-swap releases and their fallback, GC, outage and recovery.

Each test runs once per :class:`~tests.sql_helpers.Dialect` (``[mysql]``,
``[postgresql]``), which supplies what differs: the server and its DSN, raw SQL
on it, how statements are counted (MariaDB's own ``Com_*`` counters of the
provider's only connection; PostgreSQL protocol messages decoded by a proxy on
the way), the driver's errors, and the few outcomes that differ by design. What
only one provider has (config forms, TLS, schema, server settings) is in
``test_provider_mysql.py`` and ``test_provider_postgresql.py``.

Every test that touches a shared server uses its own table ``session_t<hex>``
and drops it. Outage tests never touch the shared server: the manager talks to
a TCP proxy on a free port (:class:`~tests.sql_helpers.Proxy`) that the test
stops and starts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import tornado.escape
import tornado.httpclient

from gosession_tornado import (
    ConfigError,
    ProviderUnavailableError,
    Session,
    SessionError,
    SessionManager,
    codec,
)
from gosession_tornado.provider import All, Changes, Destroy, Exist, Read, Regenerate, Release

from .conftest import Client, free_port
from .sql_helpers import DIALECTS, Dialect, Increment, Proxy, Value, check_too_large_fails_alone, round_trip
from .support import Dump, SetKey, ask, create, update


@pytest.fixture(params=DIALECTS, ids=[d.name for d in DIALECTS])
def db(request: pytest.FixtureRequest) -> Dialect:
    """Each SQL provider in turn (its dialect)."""
    d: Dialect = request.param
    return d


@pytest.fixture
async def table(db: Dialect) -> AsyncIterator[str]:
    """A fresh table name on the shared server of the provider (required); dropped afterwards."""
    async with db.fresh_table() as name:
        yield name


def paths(db: Dialect, m: SessionManager) -> collections.Counter[str]:
    """A copy of *m*'s release path counters."""
    counts: collections.Counter[str] = db.provider_of(m).release_paths.copy()
    return counts


def incr(**deltas: int) -> Changes:
    """A release delta on an existing session: ``Session.incr`` of each key by its delta."""
    return Changes(increments={k: (codec.encode(k), d) for k, d in deltas.items()})


# ---------------------------------------------------------------- the shared base (no server)


def test_split_rows_keeps_statements_within_the_budget() -> None:
    from gosession_tornado.providers.sql.base import _ROW_ALLOWANCE, split_rows

    rows = [(f"k{i}", b"x" * 100, 600, b"y" * 50) for i in range(10)]
    assert split_rows(rows, 10**6, (1, 3)) == [rows]  # the usual case: one statement
    assert split_rows([], 10**6) == []  # nothing to send: no statement
    per_row = _ROW_ALLOWANCE + 2 * 150
    chunks = split_rows(rows, 3 * per_row, (1, 3), factor=2)
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [r for c in chunks for r in c] == rows  # order kept
    big = ("big", b"z" * 10_000, 600, b"")
    chunks = split_rows([rows[0], big, rows[1]], 5_000)
    assert chunks == [[rows[0]], [big], [rows[1]]]  # a row over the budget goes alone


# ---------------------------------------------------------------- config against the server


async def test_bad_credentials_database_or_parameter_are_config_errors(db: Dialect, table: str) -> None:
    for config in (
        db.dsn(table, user=f"nobody_{secrets.token_hex(3)}", password="x"),
        db.dsn(table, database=f"nodb_{secrets.token_hex(3)}"),
        db.dsn(table, no_such_parameter_here=1),
    ):
        m = SessionManager(db.name, {"provider_config": config})
        with pytest.raises(ConfigError, match="provider_config"):
            await m.start()
        await m.close()


async def test_connect_timeout_is_kept_below_provider_timeout(db: Dialect) -> None:
    key, ten_seconds = db.connect_timeout_10s
    m = SessionManager(
        {"provider": db.name, "provider_timeout": 1.0,
         "provider_config": db.dsn("session", port=free_port(), **{key: ten_seconds})}
    )
    with pytest.warns(UserWarning, match="connect timeout 10 s is not below provider_timeout 1 s"), \
            pytest.raises(ProviderUnavailableError):
        await m.start()
    await m.close()


# ---------------------------------------------------------------- storage and expiry


async def test_row_holds_msgpack_data_lifetime_and_expiry(db: Dialect, table: str) -> None:
    async with db.manager(table) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(user="ann", n=1), 600))
        row = await db.raw_row(table, sid)
        assert row is not None
        assert row.record == {"data": {"user": "ann", "n": 1}, "lifetime": 600}
        low, high = db.fresh_window
        assert low <= row.left <= high


async def test_expired_row_is_never_served_nor_resurrected(db: Dialect, table: str) -> None:
    async with db.manager(table) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(old=1), 600))
        expired_at = await db.expire(table, sid)
        assert await ask(m, Read(sid)) is None
        assert await ask(m, Exist(sid)) is False
        assert await ask(m, All()) == 0
        await ask(m, Release(sid, update(b=2), 600))  # a late release of that session
        row = await db.raw_row(table, sid)  # untouched
        assert row is not None and row.left < 0
        assert (row.record, row.expiry) == ({"data": {"old": 1}, "lifetime": 600}, expired_at)
        await ask(m, Release(sid, create(new=1), 600))  # a new session may reuse the row
        assert await ask(m, Read(sid)) == {"new": 1}  # the expired data does not leak back


async def test_expiry_is_never_late(db: Dialect, table: str) -> None:
    async with db.manager(table) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(a=1), 1))
        # Taken after the save: its transaction (whose now() sets the expiry) began before this,
        # so a slow save under load cannot make a correct provider look late.
        written = time.monotonic()
        await asyncio.sleep(max(0.0, written + 1.05 - time.monotonic()))
        assert await ask(m, Read(sid)) is None


async def test_read_refreshes_expiry_once_per_step(db: Dialect, table: str) -> None:
    async with db.manager(table) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(a=1), 600))
        await db.set_expiry(table, 30, sid)
        p = db.provider_of(m)
        updates = p.statements["update"]
        assert await ask(m, Read(sid)) == {"a": 1}
        row = await db.raw_row(table, sid)
        low, high = db.fresh_window
        assert row is not None and low <= row.left <= high
        assert p.statements["update"] == updates + 1
        assert await ask(m, Exist(sid)) is True  # existence checks never refresh
        assert await ask(m, Read(sid)) == {"a": 1}  # within the step (10 s for 600 s): no write
        assert p.statements["update"] == updates + 1


async def test_session_ids_longer_than_the_key_column_are_refused(db: Dialect, table: str) -> None:
    m = SessionManager(db.name, {"provider_config": db.dsn(table), "session_id_length": 40})
    with pytest.raises(ConfigError, match="session_id_length") as info:
        await m.start()
    assert info.value.key == "session_id_length"
    await m.close()
    async with SessionManager(
        db.name, {"provider_config": db.dsn(table), "session_id_length": 32}
    ) as m:
        sid = await round_trip(m, a=1)
        assert len(sid) == 64
        too_long = "a" * 65
        assert await ask(m, Read(too_long)) is None
        assert await ask(m, Exist(too_long)) is False
        with pytest.raises(SessionError, match="65 characters"):
            await ask(m, Release(too_long, create(a=1), 600))


async def test_corrupt_row_reads_as_missing(db: Dialect, table: str) -> None:
    async with db.manager(table) as m:
        sid = m.new_sid()
        await db.insert_raw(table, sid, b"\xc1 not msgpack")
        assert await ask(m, Read(sid)) is None
        await ask(m, Release(sid, create(fresh=True), 600))
        assert await ask(m, Read(sid)) == {"fresh": True}


async def test_too_large_session_fails_alone(db: Dialect, table: str) -> None:
    async with db.manager(table) as m:
        db.provider_of(m).max_payload = 1000
        await check_too_large_fails_alone(m, 2000, "1000-byte limit")


async def test_regenerate_moves_the_row_in_one_transaction(db: Dialect, table: str) -> None:
    async with db.manager(table) as m:
        old, new = m.new_sid(), m.new_sid()
        await ask(m, Release(old, create(user="ann"), 777))
        p = db.provider_of(m)
        begins = p.statements["begin"]
        assert await ask(m, Regenerate(old, new)) == {"user": "ann"}
        assert p.statements["begin"] == begins + 1
        assert p.statements["begin"] == p.statements["commit"]
        assert await db.raw_row(table, old) is None
        row = await db.raw_row(table, new)
        assert row is not None and row.record == {"data": {"user": "ann"}, "lifetime": 777}
        fresh = m.new_sid()
        assert await ask(m, Regenerate(m.new_sid(), fresh)) == {}  # unknown old id: a new empty record
        assert await ask(m, Read(fresh)) == {}


async def test_a_mixed_batch_answers_every_message(db: Dialect, table: str) -> None:
    async with db.manager(table) as m:
        a, b, c, d, e = (m.new_sid() for _ in range(5))
        for sid in (a, b, c, e):
            await ask(m, Release(sid, create(sid=sid), 600))
        actor = m._actor
        assert actor is not None
        before = actor.batches
        results = await asyncio.gather(
            ask(m, Read(a)),
            ask(m, Exist(e)),  # not b: an Exist beside b's Regenerate may see either side
            ask(m, Release(a, update(x=1), 600)),
            ask(m, Destroy(c)),
            ask(m, Read(d)),
            ask(m, Release(d, create(y=2), 600)),
            ask(m, Regenerate(b, m.new_sid())),
            ask(m, Release("bad id!", create(), 600)),
            ask(m, Read(a)),
            return_exceptions=True,
        )
        assert actor.batches == before + 1
        assert results[0] in ({"sid": a}, {"sid": a, "x": 1})
        assert results[1] is True
        assert results[2] is None and results[3] is None and results[5] is None
        assert results[4] in (None, {"y": 2})
        assert results[6] == {"sid": b}
        assert isinstance(results[7], SessionError)  # fails alone
        assert results[8] == results[0] and results[8] is not results[0]  # never a shared dict
        assert await ask(m, Read(a)) == {"sid": a, "x": 1}
        assert await ask(m, Read(c)) is None
        assert await ask(m, Read(d)) == {"y": 2}
        assert await ask(m, Exist(b)) is False  # moved


# ---------------------------------------------------------------- concurrency and lifetime


async def test_50_concurrent_http_requests_on_one_session_lose_no_key(
    db: Dialect, table: str, serve: Any
) -> None:
    async with db.manager(table) as m:
        client = await serve([(r"/set/(\w+)", SetKey), ("/dump", Dump)], session_manager=m)
        assert (await client.fetch("/set/start")).code == 200
        http = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=64)
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
        try:
            results = await asyncio.gather(
                *(http.fetch(f"{client.base_url}/set/k{i}", headers={"Cookie": cookie}) for i in range(50))
            )
        finally:
            http.close()
        assert {r.code for r in results} == {200}
        dump = tornado.escape.json_decode((await client.fetch("/dump")).body)
        assert set(dump["keys"]) == {"start"} | {f"k{i}" for i in range(50)}
        assert await db.row_count(table) == 1


async def test_256_concurrent_clients_no_errors(db: Dialect, table: str, serve: Any) -> None:
    async with db.manager(table) as m:
        base = (await serve([("/", Increment)], session_manager=m)).base_url
        http = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=256)
        try:
            firsts = await asyncio.gather(*(http.fetch(base + "/", raise_error=False) for _ in range(256)))
            assert [r.code for r in firsts] == [200] * 256
            cookies = [r.headers["Set-Cookie"].split(";", 1)[0] for r in firsts]
            assert len(set(cookies)) == 256
            seconds = await asyncio.gather(
                *(http.fetch(base + "/", headers={"Cookie": c}, raise_error=False) for c in cookies)
            )
            assert [r.code for r in seconds] == [200] * 256
            assert [tornado.escape.json_decode(r.body)["n"] for r in seconds] == [2] * 256
        finally:
            http.close()
        assert await m.get_active_sessions() == 256
        assert await db.row_count(table) == 256
        p = db.provider_of(m)
        assert p.statements["begin"] < 2 * 256  # batched: far fewer transactions than releases


async def test_cross_process_updates_lose_nothing(db: Dialect, table: str) -> None:
    async with db.manager(table) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(), 600))
        start_at = f"{time.time() + 3.0:.3f}"
        tags = ("a", "b", "c")
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", db.child_script, db.dsn(table), sid, tag, "40", start_at,
                stderr=asyncio.subprocess.PIPE,
            )
            for tag in tags
        ]
        outputs = [await p.communicate() for p in procs]
        assert [p.returncode for p in procs] == [0] * len(tags), [err.decode() for _, err in outputs]
        data = await m.read(sid)
        assert data is not None
        assert set(data) == {f"{tag}{i}" for tag in tags for i in range(40)}


async def test_workers_starting_at_once_on_a_new_table_all_start(db: Dialect, table: str) -> None:
    # Several processes of one app (tornado's fork_processes, a rolling restart) create
    # the table on their first start at the same moment. PostgreSQL's CREATE TABLE IF
    # NOT EXISTS races against itself ("type ... already exists"); none may fail.
    for attempt in range(10):  # the race needs the creations to overlap: try a few times
        managers = [db.manager(table) for _ in range(16)]
        results = await asyncio.gather(*(m.start() for m in managers), return_exceptions=True)
        try:
            assert [r for r in results if isinstance(r, BaseException)] == []
            sid = managers[0].new_sid()
            await ask(managers[0], Release(sid, create(), 600))
            assert await managers[-1].read(sid) is not None
        finally:
            await asyncio.gather(*(m.close() for m in managers), return_exceptions=True)
        if attempt < 9:
            await db.drop_table(table)


async def test_data_survives_closing_and_reopening(db: Dialect, table: str, serve: Any) -> None:
    m = db.manager(table)
    client = await serve([(r"/set/(\w+)", SetKey), ("/dump", Dump)], session_manager=m)
    assert (await client.fetch("/set/kept")).code == 200
    await m.close()
    m2 = db.manager(table)
    client2 = await serve([("/dump", Dump)], session_manager=m2)
    client2.cookies = dict(client.cookies)
    try:
        dump = tornado.escape.json_decode((await client2.fetch("/dump")).body)
        assert dump["keys"] == ["kept"]
    finally:
        await m2.close()


async def test_1000_expired_sessions_are_not_served_and_gc_leaves_no_rows(db: Dialect, table: str) -> None:
    async with SessionManager(
        db.name, {"provider_config": db.dsn(table), "max_lifetime": 1, "gc_lifetime": 3600}
    ) as m:
        sids = [m.new_sid() for _ in range(1000)]
        await asyncio.gather(*(ask(m, Release(sid, create(i=i), 1)) for i, sid in enumerate(sids)))
        assert await db.row_count(table) == 1000
        deadline = time.monotonic() + 30
        while await m.get_active_sessions() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert await m.get_active_sessions() == 0
        assert await ask(m, Read(sids[0])) is None
        assert await db.row_count(table) == 1000  # expired but not yet collected
        await m.gc()
        assert await db.row_count(table) == 0


# ---------------------------------------------------------------- batching proof


async def test_100_concurrent_reads_are_one_select_and_one_update(db: Dialect, table: str) -> None:
    async with db.counted(table) as (m, server):
        p = db.provider_of(m)
        sids = [m.new_sid() for _ in range(100)]
        await asyncio.gather(*(ask(m, Release(sid, create(i=i), 600)) for i, sid in enumerate(sids)))
        # Make every expiry stale so that the reads must refresh all of them.
        await db.set_expiry(table, 30)
        actor = m._actor
        assert actor is not None
        batches, statements, before = actor.batches, p.statements.copy(), await server.snapshot()

        results = await asyncio.gather(*(m.read(sid) for sid in sids))

        assert results == [{"i": i} for i in range(100)]
        assert actor.batches - batches == 1
        assert p.statements - statements == collections.Counter(select=1, update=1)
        sent = await server.since(before, db.sent_by_100_reads)  # what the server received
        assert sent == db.sent_by_100_reads, sent
        assert await db.all_expire_after(table, 590)  # all 100 refreshed by that one UPDATE


async def test_50_concurrent_releases_are_one_statement(db: Dialect, table: str) -> None:
    """Releases of remembered sessions are one compare-and-swap UPDATE, new ones one INSERT:
    no transaction."""
    async with db.counted(table) as (m, server):
        p = db.provider_of(m)
        sids = [m.new_sid() for _ in range(5)]
        await asyncio.gather(*(ask(m, Release(sid, create(), 600)) for sid in sids))
        others = [m.new_sid() for _ in range(10)]
        statements, before = p.statements.copy(), await server.snapshot()

        await asyncio.gather(
            *(ask(m, Release(sids[i % 5], update(**{f"k{i}": i}), 600)) for i in range(50)),
            *(ask(m, Release(o, create(new=o), 600)) for o in others),
        )

        assert p.statements - statements == collections.Counter(update=1, insert=1)
        sent = await server.since(before, db.sent_by_50_releases)
        assert sent == db.sent_by_50_releases, sent
        for j, sid in enumerate(sids):
            assert await ask(m, Read(sid)) == {f"k{i}": i for i in range(j, 50, 5)}
        assert await db.row_count(table) == 15


async def test_read_and_release_of_a_request_are_two_statements(db: Dialect, table: str, serve: Any) -> None:
    """At concurrency 1 a request that reads and changes its session sends one SELECT and one
    UPDATE, counted by the server (mysql) or on the wire (postgresql, where each is prepared
    once per connection); a new session's first save is one INSERT; a read-only request one
    SELECT."""
    async with db.counted(table) as (m, server):
        p = db.provider_of(m)
        client = await serve([("/", Value)], session_manager=m)

        async def counted(path: str, expected: dict[str, Any]) -> tuple[Any, dict[str, Any], Any]:
            before, statements = await server.snapshot(), p.statements.copy()
            body = tornado.escape.json_decode((await client.fetch(path)).body)
            return body, await server.since(before, expected), p.statements - statements

        requests = [
            ("/?set=a", {"v": "a"}, collections.Counter(insert=1)),
            ("/?set=b", {"v": "b"}, collections.Counter(select=1, update=1)),
            ("/?set=c", {"v": "c"}, collections.Counter(select=1, update=1)),
            ("/", {"v": "c"}, collections.Counter(select=1)),
        ]
        assert len(requests) == len(db.sent_by_requests)
        for (path, body, statements), sent in zip(requests, db.sent_by_requests):
            assert await counted(path, sent) == (body, sent, statements)


# ---------------------------------------------------------------- compare-and-swap releases


async def test_swap_conflict_falls_back_to_the_locked_path(db: Dialect, table: str) -> None:
    """Another process changed the row since *a* read it: *a*'s swap misses, the locked path
    applies *a*'s change on top of *b*'s, and *a*'s next release is a swap again."""
    async with db.manager(table) as a, db.manager(table) as b:
        sid = a.new_sid()
        await ask(a, Release(sid, create(start=1), 600))
        assert await ask(a, Read(sid)) == {"start": 1}  # a remembers the row
        assert await ask(b, Read(sid)) == {"start": 1}
        await ask(b, Release(sid, update(by_b=2), 600))  # the row changes under a

        before = paths(db, a)
        await ask(a, Release(sid, update(by_a=3), 600))
        assert paths(db, a) - before == collections.Counter(conflicts=1, locked=1)
        assert await ask(b, Read(sid)) == {"start": 1, "by_b": 2, "by_a": 3}

        before = paths(db, a)
        await ask(a, Release(sid, update(again=4, by_b=5), 600))  # a wrote it last: a swap
        assert paths(db, a) - before == collections.Counter(swapped=1)
        assert await ask(b, Read(sid)) == {"start": 1, "by_b": 5, "by_a": 3, "again": 4}


async def test_a_read_beside_a_release_keeps_the_newer_record(db: Dialect, table: str) -> None:
    """A read and a release of one session in the same batch: what the release wrote is what
    is remembered (the read may have seen the row before it), so the next save is a swap."""
    async with db.manager(table) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(n=0), 600))
        actor = m._actor
        assert actor is not None
        p = db.provider_of(m)
        real = p._lookup_rows

        async def slow_lookup(conn: Any, keys: list[str], refresh: set[str]) -> Any:
            found = await real(conn, keys, refresh)  # (most likely) the row before the release ...
            await asyncio.sleep(0.05)  # ... answered after the release is done
            return found

        p._lookup_rows = slow_lookup
        try:
            before, batches = paths(db, m), actor.batches
            for n in range(1, 6):
                read, _ = await asyncio.gather(ask(m, Read(sid)), ask(m, Release(sid, update(n=n), 600)))
                assert read in ({"n": n - 1}, {"n": n})
            assert actor.batches - batches == 5
        finally:
            del p._lookup_rows
        await ask(m, Release(sid, update(last=True), 600))
        assert paths(db, m) - before == collections.Counter(swapped=6)
        assert await ask(m, Read(sid)) == {"n": 5, "last": True}


async def test_equal_increments_from_two_managers_both_count(db: Dialect, table: str) -> None:
    """Both managers read n=1 and increment it: the second swap misses, and finding the row
    already holding the very bytes it meant to write (n=2) must not make it skip its own +1."""
    async with db.manager(table) as a, db.manager(table) as b:
        sid = a.new_sid()
        await ask(a, Release(sid, create(n=1), 600))
        assert await ask(a, Read(sid)) == {"n": 1}
        assert await ask(b, Read(sid)) == {"n": 1}
        await ask(a, Release(sid, incr(n=1), 600))
        before = paths(db, b)
        await ask(b, Release(sid, incr(n=1), 600))
        assert paths(db, b) - before == collections.Counter(conflicts=1, locked=1)
        assert await ask(a, Read(sid)) == {"n": 3}


async def test_two_managers_lose_no_increment(db: Dialect, table: str) -> None:
    """Requests on two managers increment one counter at once: every increment counts."""
    rounds = 15
    async with db.manager(table) as a, db.manager(table) as b:
        sid = a.new_sid()
        await ask(a, Release(sid, create(n=0), 600))

        async def requests(m: SessionManager) -> None:
            for _ in range(rounds):
                data = await m.read(sid)
                assert data is not None
                s = Session(m, sid, data)
                s.incr("n")
                await s.release()

        await asyncio.gather(*(requests(m) for m in (a, a, b, b)))
        assert await a.read(sid) == {"n": 4 * rounds}


async def test_swap_never_resurrects_a_destroyed_or_expired_session(db: Dialect, table: str) -> None:
    """A remembered session that was destroyed, or expired, meanwhile is not written back."""
    async with db.manager(table) as m:
        gone, expired, new = m.new_sid(), m.new_sid(), m.new_sid()
        for sid in (gone, expired):
            await ask(m, Release(sid, create(a=1), 600))
            assert await ask(m, Read(sid)) == {"a": 1}
        await db.delete(table, gone)  # another process destroyed it
        await db.expire(table, expired)
        before = paths(db, m)
        await asyncio.gather(
            ask(m, Release(gone, update(b=2), 600)),
            ask(m, Release(expired, update(b=2), 600)),
        )
        assert paths(db, m) - before == collections.Counter(conflicts=2, locked=2)
        assert not await db.present(table, gone)
        assert not await db.live(table, expired)
        assert await ask(m, Read(gone)) is None
        assert await ask(m, Read(expired)) is None
        # The same for a session this process never read (the locked path from the start) ...
        await ask(m, Release(expired, update(c=3), 600))
        assert not await db.live(table, expired)
        # ... while a new session is created by its first save.
        await ask(m, Release(new, create(n=1), 600))
        assert await ask(m, Read(new)) == {"n": 1}


async def test_two_managers_changing_different_keys_lose_nothing(db: Dialect, table: str) -> None:
    """Two managers (two processes' worth of state) run read-modify-write requests on the same
    sessions at once, each request setting its own key: no key is lost, whatever path wrote it."""
    rounds = 12
    async with db.manager(table) as a, db.manager(table) as b:
        sids = [a.new_sid() for _ in range(3)]
        for sid in sids:
            await ask(a, Release(sid, create(), 600))

        async def requests(m: SessionManager, sid: str, tag: str) -> None:
            for i in range(rounds):
                data = await m.read(sid)
                assert data is not None, "session vanished"
                s = Session(m, sid, data)
                s[f"{tag}{i}"] = i
                await s.release()

        tags = ("a0", "a1", "b0", "b1")
        await asyncio.gather(
            *(
                requests(a if tag[0] == "a" else b, sid, f"{tag}_{n}_")
                for n, sid in enumerate(sids)
                for tag in tags
            )
        )
        for n, sid in enumerate(sids):
            data = await a.read(sid)
            assert data is not None
            assert set(data) == {f"{tag}_{n}_{i}" for tag in tags for i in range(rounds)}
        # They did get in each other's way, and the locked path sorted it out.
        assert paths(db, a)["conflicts"] + paths(db, b)["conflicts"] > 0


async def test_a_partly_matching_multi_row_swap_is_sorted_out_by_the_locked_path(
    db: Dialect, table: str
) -> None:
    """One batch swaps two remembered sessions, one of which another process changed: both
    end up right (and the one already written is not written twice)."""
    async with db.manager(table) as a, db.manager(table) as b:
        kept, changed = a.new_sid(), a.new_sid()
        for sid in (kept, changed):
            await ask(a, Release(sid, create(sid=sid), 600))
            assert await ask(a, Read(sid)) == {"sid": sid}
        assert await ask(b, Read(changed)) == {"sid": changed}
        await ask(b, Release(changed, update(by_b=1), 600))
        p = db.provider_of(a)
        statements, before = p.statements.copy(), paths(db, a)
        await asyncio.gather(
            ask(a, Release(kept, update(x=1), 600)),
            ask(a, Release(changed, update(x=2), 600)),
        )
        assert (p.statements - statements, paths(db, a) - before) == db.partly_matching_swap
        assert await ask(b, Read(kept)) == {"sid": kept, "x": 1}
        assert await ask(b, Read(changed)) == {"sid": changed, "by_b": 1, "x": 2}


async def test_a_retried_swap_is_not_applied_twice(db: Dialect, table: str) -> None:
    """The connection breaks after a swap was applied but before its answer arrived.

    Plain changes: the retry misses (the row already holds the new record), and
    the locked path sees it is written. Increments: the swap is not sent again
    (it may have been written); the release fails, and the increment counts once.
    """
    async with db.manager(table) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(a=1, n=0), 600))
        assert await ask(m, Read(sid)) == {"a": 1, "n": 0}
        p = db.provider_of(m)
        real = p._swap_rows
        calls = 0

        async def applied_then_lost(conn: Any, rows: Any, now: float, exact: bool) -> Any:
            nonlocal calls
            calls += 1
            done = await real(conn, rows, now, exact)
            if calls == 1:
                raise db.lost_connection()
            return done

        p._swap_rows = applied_then_lost
        try:
            statements, before = p.statements.copy(), paths(db, m)
            await ask(m, Release(sid, update(b=2, a=None), 600))
            assert calls == 2
            assert paths(db, m) - before == collections.Counter(conflicts=1, locked=1)
            # Two swaps (the second missed), a locked read, and no write: it was there already.
            assert (p.statements - statements)["update"] == 2
            assert (p.statements - statements)["insert"] == 0
            assert await ask(m, Read(sid)) == {"a": None, "b": 2, "n": 0}

            calls = 0
            with pytest.raises(ProviderUnavailableError):
                await ask(m, Release(sid, incr(n=1), 600))
            assert calls == 1  # never sent twice
        finally:
            del p._swap_rows
        assert await ask(m, Read(sid)) == {"a": None, "b": 2, "n": 1}
        await ask(m, Release(sid, incr(n=1), 600))  # and the next one goes through
        assert await ask(m, Read(sid)) == {"a": None, "b": 2, "n": 2}


async def test_a_failing_statement_fails_only_its_releases(db: Dialect, table: str) -> None:
    """The INSERT of a batch's new sessions fails: those releases fail, the swap of the
    same batch is written and answered."""
    async with db.manager(table) as m:
        old, new = m.new_sid(), m.new_sid()
        await ask(m, Release(old, create(a=1), 600))
        assert await ask(m, Read(old)) == {"a": 1}
        p = db.provider_of(m)

        async def failing(conn: Any, rows: Any, now: float) -> set[str]:
            raise db.syntax_error()

        p._insert_new = failing
        try:
            results = await asyncio.gather(
                ask(m, Release(old, update(b=2), 600)),
                ask(m, Release(new, create(n=1), 600)),
                return_exceptions=True,
            )
        finally:
            del p._insert_new
        assert results[0] is None
        assert isinstance(results[1], SessionError)
        assert await ask(m, Read(old)) == {"a": 1, "b": 2}
        assert await ask(m, Read(new)) is None


async def test_increments_in_a_partly_matching_batch_count_once(db: Dialect, table: str) -> None:
    """As the partly matching swap above, with increments: each counts exactly once."""
    async with db.manager(table) as a, db.manager(table) as b:
        kept, changed = a.new_sid(), a.new_sid()
        for sid in (kept, changed):
            await ask(a, Release(sid, create(n=1), 600))
            assert await ask(a, Read(sid)) == {"n": 1}
        assert await ask(b, Read(changed)) == {"n": 1}
        await ask(b, Release(changed, incr(n=1), 600))  # changed: n=2, and the bytes a will try
        p = db.provider_of(a)
        statements, before = p.statements.copy(), paths(db, a)
        await asyncio.gather(ask(a, Release(kept, incr(n=1), 600)), ask(a, Release(changed, incr(n=1), 600)))
        assert p.statements - statements == db.partly_matching_increments
        assert paths(db, a) - before == collections.Counter(swapped=1, conflicts=1, locked=1)
        assert await ask(b, Read(kept)) == {"n": 2}
        assert await ask(b, Read(changed)) == {"n": 3}


async def test_a_lost_commit_is_not_repeated_with_increments(db: Dialect, table: str) -> None:
    """The locked way, connection lost after COMMIT was sent: plain changes are sent again
    (harmless), increments are not (the release fails; the increment counted once)."""
    async with db.manager(table) as m:
        sid = m.new_sid()
        await ask(m, Release(sid, create(n=0), 600))
        p = db.provider_of(m)
        real = p._commit
        calls = 0

        async def committed_then_lost(conn: Any) -> None:
            nonlocal calls
            calls += 1
            await real(conn)
            if calls == 1:
                raise db.lost_connection()

        p._commit = committed_then_lost
        try:
            p._forget([sid])  # not remembered: the locked way
            await ask(m, Release(sid, update(a=1), 600))
            assert calls == 2  # sent again, and harmless
            p._forget([sid])
            calls = 0
            with pytest.raises(ProviderUnavailableError):
                await ask(m, Release(sid, incr(n=1), 600))
            assert calls == 1
        finally:
            del p._commit
        assert await ask(m, Read(sid)) == {"n": 1, "a": 1}


async def test_remembered_records_are_bounded(db: Dialect, table: str) -> None:
    """At most ``known_max_entries`` records are remembered; a forgotten session's release
    takes the locked path and is just as right; records over ``known_max_record`` bytes are
    never remembered."""
    async with db.manager(table) as m:
        p = db.provider_of(m)
        p.known_max_entries = 8
        sids = [m.new_sid() for _ in range(20)]
        await asyncio.gather(*(ask(m, Release(sid, create(i=i), 600)) for i, sid in enumerate(sids)))
        for sid in sids:
            await ask(m, Read(sid))
        assert len(p._known) == 8
        assert set(p._known) == set(sids[-8:])
        before = paths(db, m)
        await ask(m, Release(sids[0], update(x=1), 600))  # forgotten: locked
        await ask(m, Release(sids[-1], update(x=1), 600))  # remembered: one swap
        assert paths(db, m) - before == collections.Counter(locked=1, swapped=1)
        assert await ask(m, Read(sids[0])) == {"i": 0, "x": 1}
        assert await ask(m, Read(sids[-1])) == {"i": 19, "x": 1}
        p.known_max_record = 64
        big = m.new_sid()
        await ask(m, Release(big, create(blob="x" * 100), 600))
        assert await ask(m, Read(big)) == {"blob": "x" * 100}
        assert big not in p._known
        assert p._known_bytes == sum(len(v) for v in p._known.values())


# ---------------------------------------------------------------- outage and recovery


@contextlib.asynccontextmanager
async def behind_a_proxy(db: Dialect, table: str, serve: Any) -> AsyncIterator[tuple[Proxy, Client]]:
    """An application whose manager reaches the server through a (started) proxy."""
    proxy = db.proxy(free_port())
    await proxy.start()
    m = db.manager(table, port=proxy.port, timeout=2.0)
    client = await serve([("/", Value)], session_manager=m)
    try:
        yield proxy, client
    finally:
        await m.close()
        await proxy.stop()


async def fetch(client: Client, path: str) -> tuple[int, Any]:
    """The status and the JSON body of ``GET path``."""
    resp = await client.fetch(path)
    return resp.code, tornado.escape.json_decode(resp.body)


async def test_nothing_listening_is_unavailable_then_works_when_it_listens(db: Dialect, table: str) -> None:
    port = free_port()
    m = db.manager(table, port=port, timeout=2.0)
    with pytest.raises(ProviderUnavailableError, match="unavailable"):
        await m.start()
    proxy = db.proxy(port)
    await proxy.start()
    try:
        await m.start()  # the same manager, no restart of anything else
        await round_trip(m, a=1)
    finally:
        await m.close()
        await proxy.stop()


async def test_server_gone_gives_503_and_recovers_without_restart(
    db: Dialect, table: str, serve: Any
) -> None:
    async with behind_a_proxy(db, table, serve) as (proxy, client):
        assert await fetch(client, "/?set=kept") == (200, {"v": "kept"})

        await proxy.stop()  # every connection reset, nothing listening
        down = await client.fetch("/")
        assert down.code == 503
        assert b"unavailable" in down.body.lower()

        await proxy.start()
        assert await fetch(client, "/") == (200, {"v": "kept"})  # nothing lost


async def test_hung_server_times_out_then_recovers(db: Dialect, table: str, serve: Any) -> None:
    async with behind_a_proxy(db, table, serve) as (proxy, client):
        assert (await client.fetch("/?set=kept")).code == 200
        await proxy.restart(hang=True)  # accepts connections, never answers
        assert (await client.fetch("/")).code == 503  # within provider_timeout, not a hang
        await proxy.restart(hang=False)
        assert await fetch(client, "/") == (200, {"v": "kept"})
