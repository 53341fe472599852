"""Helpers shared by the SQL provider tests (test_provider_mysql, test_provider_postgresql)
and their contract-suite factories: messages, managers, per-test tables, a TCP proxy
for outages, request handlers, the cross-process child script, and the scenarios of
the compare-and-swap release that both providers must pass (``check_*``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import secrets
import socket
import struct
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import tornado.web

from gosession_tornado import Session, SessionManager, SessionMixin, codec
from gosession_tornado.provider import Changes, Read, Release
from gosession_tornado.providers._sql import SQLBatchProvider

from .support import ask, create, provider_of, update


def table_name(unique: str) -> str:
    """The session table of the test identified by *unique*."""
    return f"session_{unique}"


def sql_manager(provider: str, provider_config: str, *, timeout: float) -> SessionManager:
    """A manager of *provider* with cookie ``sid`` and *timeout* as ``provider_timeout`` (s)."""
    return SessionManager(
        {
            "provider": provider,
            "cookie_name": "sid",
            "provider_timeout": timeout,
            "provider_config": provider_config,
        }
    )


@contextlib.asynccontextmanager
async def fresh_table(
    server: tuple[str, str, int], drop_table: Callable[[str], Awaitable[None]]
) -> AsyncIterator[str]:
    """A fresh table name ``session_t<hex>`` on *server* (required); dropped afterwards."""
    from .conftest import require_server  # not at import: conftest imports the factories, they import us

    require_server(server)
    name = f"session_t{secrets.token_hex(5)}"
    try:
        yield name
    finally:
        await drop_table(name)


class Proxy:
    """A TCP forwarder on 127.0.0.1:*port* to the test server; stop() resets every connection.

    With ``hang=True`` it accepts connections and never answers (a hung server).
    Subclasses may override :meth:`_upstream` (client -> server) to look at the traffic.
    """

    def __init__(self, port: int, *, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self.hang = False
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(writer)
        try:
            if self.hang:
                await reader.read()  # until reset by stop()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self.writers.add(up_writer)
            await asyncio.gather(self._upstream(reader, up_writer), self._pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            writer.close()

    async def _upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward client -> server."""
        await self._pipe(reader, writer)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for w in list(self.writers):
            sock = w.get_extra_info("socket")
            if sock is not None:  # RST, like a crashed server, not a polite FIN
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        self.writers.clear()
        tasks, self.tasks = list(self.tasks), set()
        await asyncio.gather(*tasks, return_exceptions=True)


class Value(SessionMixin, tornado.web.RequestHandler):
    async def get(self) -> None:
        if self.get_argument("set", None) is not None:
            self.session["v"] = self.get_argument("set")
        self.write({"v": self.session.get("v")})


_CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from gosession_tornado import Session, SessionManager

    async def main(config, sid, tag, n, start_at):
        async with SessionManager({"provider": "PROVIDER", "provider_config": config}) as m:
            await asyncio.sleep(max(0.0, start_at - time.time()))  # all children write at once
            for i in range(n):  # read-modify-write, one request at a time, as a handler would
                data = await m.read(sid)
                assert data is not None, "session vanished"
                s = Session(m, sid, data)
                s[f"{tag}{i}"] = len(data)
                await s.release()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])))
    """
)


def child_script(provider: str) -> str:
    """A ``python -c`` script: argv config sid tag n start_at; *n* read-modify-writes of one session."""
    return _CHILD.replace("PROVIDER", provider)


# ---------------------------------------------------------------- compare-and-swap releases


@dataclasses.dataclass
class RawRows:
    """What a scenario may do to a provider's table behind its back (another process)."""

    #: DELETE the row of a sid.
    delete: Callable[[str], Awaitable[None]]
    #: Move the row's expiry into the past (it stays in the table, expired).
    expire: Callable[[str], Awaitable[None]]
    #: True if the row is in the table and live by the server's measure.
    live: Callable[[str], Awaitable[bool]]
    #: True if the row is in the table at all.
    present: Callable[[str], Awaitable[bool]]


def sql_provider(m: SessionManager) -> SQLBatchProvider:
    return provider_of(m, SQLBatchProvider)


def paths(m: SessionManager) -> collections.Counter[str]:
    """A copy of *m*'s release path counters."""
    return sql_provider(m).release_paths.copy()


async def check_swap_conflict_falls_back(a: SessionManager, b: SessionManager) -> None:
    """Another process changed the row since *a* read it: *a*'s swap misses, the locked path
    applies *a*'s change on top of *b*'s, and *a*'s next release is a swap again."""
    sid = a.new_sid()
    await ask(a, Release(sid, create(start=1), 600))
    assert await ask(a, Read(sid)) == {"start": 1}  # a remembers the row
    assert await ask(b, Read(sid)) == {"start": 1}
    await ask(b, Release(sid, update(by_b=2), 600))  # the row changes under a

    before = paths(a)
    await ask(a, Release(sid, update(by_a=3), 600))
    assert paths(a) - before == collections.Counter(conflicts=1, locked=1)
    assert await ask(b, Read(sid)) == {"start": 1, "by_b": 2, "by_a": 3}

    before = paths(a)
    await ask(a, Release(sid, update(again=4, by_b=5), 600))  # a wrote it last: a swap
    assert paths(a) - before == collections.Counter(swapped=1)
    assert await ask(b, Read(sid)) == {"start": 1, "by_b": 5, "by_a": 3, "again": 4}


async def check_a_read_beside_a_release_keeps_the_newer_record(m: SessionManager) -> None:
    """A read and a release of one session in the same batch: what the release wrote is what
    is remembered (the read may have seen the row before it), so the next save is a swap."""
    sid = m.new_sid()
    await ask(m, Release(sid, create(n=0), 600))
    actor = m._actor
    assert actor is not None
    p = sql_provider(m)
    real = p._lookup_rows

    async def slow_lookup(conn: Any, keys: list[str], refresh: set[str]) -> Any:
        found = await real(conn, keys, refresh)  # (most likely) the row before the release ...
        await asyncio.sleep(0.05)  # ... answered after the release is done
        return found

    p._lookup_rows = slow_lookup  # type: ignore[method-assign]
    try:
        before, batches = paths(m), actor.batches
        for n in range(1, 6):
            read, _ = await asyncio.gather(ask(m, Read(sid)), ask(m, Release(sid, update(n=n), 600)))
            assert read in ({"n": n - 1}, {"n": n})
        assert actor.batches - batches == 5
    finally:
        del p._lookup_rows
    await ask(m, Release(sid, update(last=True), 600))
    assert paths(m) - before == collections.Counter(swapped=6)
    assert await ask(m, Read(sid)) == {"n": 5, "last": True}


def incr(**deltas: int) -> Changes:
    """A release delta on an existing session: ``Session.incr`` of each key by its delta."""
    return Changes(increments={k: (codec.encode(k), d) for k, d in deltas.items()})


async def check_equal_increments_from_two_managers_both_count(a: SessionManager, b: SessionManager) -> None:
    """Both managers read n=1 and increment it: the second swap misses, and finding the row
    already holding the very bytes it meant to write (n=2) must not make it skip its own +1."""
    sid = a.new_sid()
    await ask(a, Release(sid, create(n=1), 600))
    assert await ask(a, Read(sid)) == {"n": 1}
    assert await ask(b, Read(sid)) == {"n": 1}
    await ask(a, Release(sid, incr(n=1), 600))
    before = paths(b)
    await ask(b, Release(sid, incr(n=1), 600))
    assert paths(b) - before == collections.Counter(conflicts=1, locked=1)
    assert await ask(a, Read(sid)) == {"n": 3}


async def check_managers_lose_no_increment(a: SessionManager, b: SessionManager, rounds: int = 15) -> None:
    """Requests on two managers increment one counter at once: every increment counts."""
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


async def check_swap_never_resurrects(m: SessionManager, raw: RawRows) -> None:
    """A remembered session that was destroyed, or expired, meanwhile is not written back."""
    gone, expired, new = m.new_sid(), m.new_sid(), m.new_sid()
    for sid in (gone, expired):
        await ask(m, Release(sid, create(a=1), 600))
        assert await ask(m, Read(sid)) == {"a": 1}
    await raw.delete(gone)  # another process destroyed it
    await raw.expire(expired)
    before = paths(m)
    await asyncio.gather(
        ask(m, Release(gone, update(b=2), 600)),
        ask(m, Release(expired, update(b=2), 600)),
    )
    assert paths(m) - before == collections.Counter(conflicts=2, locked=2)
    assert not await raw.present(gone)
    assert not await raw.live(expired)
    assert await ask(m, Read(gone)) is None
    assert await ask(m, Read(expired)) is None
    # The same for a session this process never read (the locked path from the start) ...
    await ask(m, Release(expired, update(c=3), 600))
    assert not await raw.live(expired)
    # ... while a new session is created by its first save.
    await ask(m, Release(new, create(n=1), 600))
    assert await ask(m, Read(new)) == {"n": 1}


async def check_managers_lose_nothing(a: SessionManager, b: SessionManager, rounds: int = 12) -> None:
    """Two managers (two processes' worth of state) run read-modify-write requests on the same
    sessions at once, each request setting its own key: no key is lost, whatever path wrote it."""
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
    assert paths(a)["conflicts"] + paths(b)["conflicts"] > 0


async def check_partly_matching_swap(
    a: SessionManager, b: SessionManager
) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """One batch swaps two remembered sessions, one of which another process changed: both
    end up right (and the one already written is not written twice). Returns *a*'s
    statement counts and release paths of that batch."""
    kept, changed = a.new_sid(), a.new_sid()
    for sid in (kept, changed):
        await ask(a, Release(sid, create(sid=sid), 600))
        assert await ask(a, Read(sid)) == {"sid": sid}
    assert await ask(b, Read(changed)) == {"sid": changed}
    await ask(b, Release(changed, update(by_b=1), 600))
    p = sql_provider(a)
    statements, before = p.statements.copy(), paths(a)
    await asyncio.gather(
        ask(a, Release(kept, update(x=1), 600)),
        ask(a, Release(changed, update(x=2), 600)),
    )
    result = p.statements - statements, paths(a) - before
    assert await ask(b, Read(kept)) == {"sid": kept, "x": 1}
    assert await ask(b, Read(changed)) == {"sid": changed, "by_b": 1, "x": 2}
    return result


async def check_retried_swap_is_not_applied_twice(
    m: SessionManager, lost: Callable[[], BaseException]
) -> None:
    """The connection breaks after a swap was applied but before its answer arrived.

    Plain changes: the retry misses (the row already holds the new record), and
    the locked path sees it is written. Increments: the swap is not sent again
    (it may have been written); the release fails, and the increment counts once.
    """
    from gosession_tornado import ProviderUnavailableError

    sid = m.new_sid()
    await ask(m, Release(sid, create(a=1, n=0), 600))
    assert await ask(m, Read(sid)) == {"a": 1, "n": 0}
    p = sql_provider(m)
    real = p._swap_rows
    calls = 0

    async def applied_then_lost(conn: Any, rows: Any, now: float, exact: bool) -> tuple[set[str], set[str]]:
        nonlocal calls
        calls += 1
        done = await real(conn, rows, now, exact)
        if calls == 1:
            raise lost()
        return done

    p._swap_rows = applied_then_lost  # type: ignore[method-assign]
    try:
        statements, before = p.statements.copy(), paths(m)
        await ask(m, Release(sid, update(b=2, a=None), 600))
        assert calls == 2
        assert paths(m) - before == collections.Counter(conflicts=1, locked=1)
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


async def check_increments_in_a_partly_matching_batch(
    a: SessionManager, b: SessionManager
) -> collections.Counter[str]:
    """As check_partly_matching_swap, with increments: each counts exactly once. Returns *a*'s
    statement counts of that batch."""
    kept, changed = a.new_sid(), a.new_sid()
    for sid in (kept, changed):
        await ask(a, Release(sid, create(n=1), 600))
        assert await ask(a, Read(sid)) == {"n": 1}
    assert await ask(b, Read(changed)) == {"n": 1}
    await ask(b, Release(changed, incr(n=1), 600))  # changed: n=2, and the bytes a will try
    p = sql_provider(a)
    statements, before = p.statements.copy(), paths(a)
    await asyncio.gather(ask(a, Release(kept, incr(n=1), 600)), ask(a, Release(changed, incr(n=1), 600)))
    result = p.statements - statements
    assert paths(a) - before == collections.Counter(swapped=1, conflicts=1, locked=1)
    assert await ask(b, Read(kept)) == {"n": 2}
    assert await ask(b, Read(changed)) == {"n": 3}
    return result


async def check_a_lost_commit_is_not_repeated_with_increments(
    m: SessionManager, lost: Callable[[], BaseException]
) -> None:
    """The locked way, connection lost after COMMIT was sent: plain changes are sent again
    (harmless), increments are not (the release fails; the increment counted once)."""
    from gosession_tornado import ProviderUnavailableError

    sid = m.new_sid()
    await ask(m, Release(sid, create(n=0), 600))
    p = sql_provider(m)
    real = p._commit
    calls = 0

    async def committed_then_lost(conn: Any) -> None:
        nonlocal calls
        calls += 1
        await real(conn)
        if calls == 1:
            raise lost()

    p._commit = committed_then_lost  # type: ignore[method-assign]
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


async def check_a_failing_statement_fails_only_its_releases(
    m: SessionManager, failure: Callable[[], BaseException]
) -> None:
    """The INSERT of a batch's new sessions fails: those releases fail, the swap of the
    same batch is written and answered."""
    from gosession_tornado import SessionError

    old, new = m.new_sid(), m.new_sid()
    await ask(m, Release(old, create(a=1), 600))
    assert await ask(m, Read(old)) == {"a": 1}
    p = sql_provider(m)

    async def failing(conn: Any, rows: Any, now: float) -> set[str]:
        raise failure()

    p._insert_new = failing  # type: ignore[method-assign]
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


async def check_remembered_records_are_bounded(m: SessionManager) -> None:
    """At most ``known_max_entries`` records are remembered; a forgotten session's release
    takes the locked path and is just as right; records over ``known_max_record`` bytes are
    never remembered."""
    p = sql_provider(m)
    p.known_max_entries = 8  # type: ignore[misc]
    sids = [m.new_sid() for _ in range(20)]
    await asyncio.gather(*(ask(m, Release(sid, create(i=i), 600)) for i, sid in enumerate(sids)))
    for sid in sids:
        await ask(m, Read(sid))
    assert len(p._known) == 8
    assert set(p._known) == set(sids[-8:])
    before = paths(m)
    await ask(m, Release(sids[0], update(x=1), 600))  # forgotten: locked
    await ask(m, Release(sids[-1], update(x=1), 600))  # remembered: one swap
    assert paths(m) - before == collections.Counter(locked=1, swapped=1)
    assert await ask(m, Read(sids[0])) == {"i": 0, "x": 1}
    assert await ask(m, Read(sids[-1])) == {"i": 19, "x": 1}
    p.known_max_record = 64  # type: ignore[misc]
    big = m.new_sid()
    await ask(m, Release(big, create(blob="x" * 100), 600))
    assert await ask(m, Read(big)) == {"blob": "x" * 100}
    assert big not in p._known
    assert p._known_bytes == sum(len(v) for v in p._known.values())
