"""The ``postgresql`` provider: sessions in a PostgreSQL table, beego's column names, via asyncpg.

``provider_config`` is beego's libpq ``key=value`` DSN
(``user=postgres password= host=127.0.0.1 port=5432 dbname=test sslmode=disable``),
a ``postgresql://`` / ``postgres://`` URL or a dict; see
:mod:`gosession_tornado.providers.sql.postgresql_dsn`. Needs the ``postgresql`` extra
(``pip install 'gosession-tornado[postgresql]'``).

The table has beego's columns and is created if missing::

    CREATE TABLE IF NOT EXISTS "session" (
      session_key    varchar(64) PRIMARY KEY,
      session_data   bytea NOT NULL,
      session_expiry timestamptz NOT NULL
    );
    CREATE INDEX IF NOT EXISTS "session_expiry_<crc>" ON "session" (session_expiry);

A table made with beego's own DDL (``char(64)``, ``bytea``, ``timestamp``)
works as it is.

What holds:

* ``session_data`` is ``codec.encode({"data": {...}, "lifetime": seconds})``
  (msgpack); ``session_expiry`` is the moment the session expires: last
  access + its lifetime, taken from the **database server's clock**
  (``now()``), so every application host agrees on it. A row whose
  ``session_expiry`` is not in the future is never served, GC or not.
* Reads refresh ``session_expiry``, at most once per ``max(1, lifetime // 60)``
  seconds per session; rows a writer holds locked are skipped
  (``FOR UPDATE SKIP LOCKED``): the writer sets a fresh expiry anyway.
* A release of a session this process read or wrote last is one
  compare-and-swap ``UPDATE … WHERE session_key = … AND session_data =
  <what was read> AND session_expiry > now() RETURNING session_key``, no
  transaction; a new session's first save is one ``INSERT … ON CONFLICT DO
  NOTHING``. A release whose row changed meanwhile (another process), or of a
  session this process does not remember, locks the row (``SELECT … FOR
  UPDATE`` in a transaction), applies the request's
  :class:`~gosession_tornado.provider.Changes` to what is stored *now* and
  writes it back, so concurrent requests, in this process or others, lose no
  keys. A missing or expired row is recreated only for a new session
  (``changes.create``), never resurrected.
* The actor's batches become few statements: all reads and existence checks
  of a batch are one ``SELECT … WHERE session_key = ANY($1)`` (plus one
  ``UPDATE`` for the expiry refresh); all releases one ``UPDATE … FROM
  unnest(…)`` plus, if needed, one ``INSERT`` and one locked transaction; all
  destroys one ``DELETE … = ANY($1)``. A read and a release at concurrency 1
  are two statements (prepared once per connection by asyncpg).
  :attr:`PostgreSQLProvider.statements` counts the statements sent, by verb.
* A server that is down or unreachable gives
  :class:`~gosession_tornado.errors.ProviderUnavailableError` (connect
  timeout below ``provider_timeout``); broken pooled connections are
  discarded, so the provider recovers by itself when the server is back.
"""

# SQL is built with f-strings only from the table name (validated as a plain identifier in
# postgresql_dsn.py and double-quoted), the key column's type name (one of three constants) and
# index names derived from them; every value is a $n parameter.
# ruff: noqa: S608
from __future__ import annotations

import asyncio
import ssl
import zlib
from typing import Any

import asyncpg

from ..._log import get_logger
from ...errors import ProviderUnavailableError
from ...provider import refresh_step
from .base import GC_CHUNK, Found, SQLBatchProvider, SwapRow, WriteRow, split_rows
from .postgresql_dsn import PostgreSQLSettings, parse_postgresql_config

__all__ = ["PostgreSQLProvider", "MAX_PAYLOAD"]

log = get_logger("gosession_tornado.postgresql")

#: Largest encoded session stored, in bytes (``bytea`` itself holds up to 1 GiB).
MAX_PAYLOAD = 16 * 1024 * 1024
#: Bytes of session data one UPDATE/INSERT statement carries at most.
_STATEMENT_BUDGET = 64 * 1024 * 1024
#: Longest sid the manager ever makes (prefix included); the limit for a ``text`` key.
_SID_MAX = 160
#: Key column types: pg_type name -> the array cast used in statements.
_KEY_TYPES = {"bpchar": "bpchar", "varchar": "varchar", "text": "text"}
_EXPIRY_TYPES = {"timestamptz", "timestamp"}

# SQLSTATEs.
_UNIQUE_VIOLATION = "23505"
_DEADLOCK = "40P01"
_SERIALIZATION = "40001"
_LOCK_NOT_AVAILABLE = "55P03"
#: The configuration is at fault: bad password/user, unknown database, no privilege,
#: unknown or invalid run-time parameter.
_CONFIG_STATES = frozenset({"3D000", "42501", "42704", "22023", "55P02", "3F000", "42P01"})
#: The server cannot serve now (beyond the 08 class: connection exceptions).
_BUSY_CLASSES = ("08", "53", "57", "58")
_BUSY_STATES = frozenset({_LOCK_NOT_AVAILABLE, _DEADLOCK, _SERIALIZATION})


def _state(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", "") or "")


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``"DELETE 12"``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class PostgreSQLProvider(SQLBatchProvider[PostgreSQLSettings]):
    """Sessions in a PostgreSQL table (beego's columns), through asyncpg.

    Every value is a ``$n`` parameter; a batch's rows travel as arrays
    (``unnest``), and expiry times come from the server's clock.
    """

    extra = "postgresql"
    dialect = "postgresql"
    payload_limit = "postgresql session provider"
    key_column = "session_key varchar(64)"
    table_shape = "session(session_key char(64) primary key, session_data bytea, session_expiry timestamp)"
    _log = log
    _driver_errors = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
    _parse_config = staticmethod(parse_postgresql_config)

    def __init__(self) -> None:
        super().__init__()
        self._key = "varchar"
        #: Largest encoded session stored, in bytes.
        self.max_payload = MAX_PAYLOAD

    # ------------------------------------------------------------ setup

    async def _open_pool(self, settings: PostgreSQLSettings) -> Any:
        server_settings = dict(settings.server_settings)
        server_settings.update(
            {
                "application_name": settings.application_name,
                # timestamp (without time zone) columns, beego's, hold UTC.
                "TimeZone": "UTC",
                # A release that waits longer than this for a row lock fails instead of hanging.
                "lock_timeout": f"{max(100, int(self._timeout * 500))}ms",
            }
        )
        pool = await asyncpg.create_pool(
            host=settings.host,
            port=settings.port,
            user=settings.user or None,
            password=settings.password or None,
            database=settings.database or None,
            ssl=settings.sslmode,
            timeout=self._connect_timeout(settings),
            min_size=settings.min_size,
            max_size=settings.max_size,
            max_inactive_connection_lifetime=settings.max_inactive_lifetime,
            server_settings=server_settings,
            # Our connections carry no session state to reset (transactions end in
            # COMMIT, ROLLBACK or a terminated connection): skip asyncpg's reset query,
            # a round trip per release.
            reset=_no_reset,
        )
        if settings.max_inactive_lifetime > 0:
            self._hold_seconds = min(60.0, settings.max_inactive_lifetime)
        return pool

    async def _setup_table(self, conn: Any) -> None:
        assert self.settings is not None
        table = self.settings.table
        columns = await self._columns(conn)
        if not columns:
            # CREATE ... IF NOT EXISTS is not safe against itself in PostgreSQL: two
            # processes starting at once both pass the check and one fails on the
            # catalog's unique index ("type ... already exists"). A transaction-scoped
            # advisory lock on the table's name makes the first start of several
            # workers serialise here; it is released at COMMIT (or ROLLBACK on error).
            index = f'"{table[:40]}_expiry_{zlib.crc32(table.encode()):08x}"'
            lock = zlib.crc32(f"gosession_tornado:{self._table}".encode())
            await self._begin(conn)
            await self._execute(conn, "SELECT pg_advisory_xact_lock($1::bigint)", lock)
            await self._execute(
                conn,
                f"CREATE TABLE IF NOT EXISTS {self._table} ("
                "session_key varchar(64) PRIMARY KEY, "
                "session_data bytea NOT NULL, "
                "session_expiry timestamptz NOT NULL)",
            )
            await self._execute(conn, f"CREATE INDEX IF NOT EXISTS {index} ON {self._table} (session_expiry)")
            await self._commit(conn)
            columns = await self._columns(conn)
        bad = self._not_a_session_table
        self._check_columns(columns)
        key_type, key_mod = columns["session_key"]
        if key_type not in _KEY_TYPES:
            raise bad(f"session_key is {key_type}, not char, varchar or text")
        if columns["session_data"][0] != "bytea":
            raise bad(f"session_data is {columns['session_data'][0]}, not bytea")
        if columns["session_expiry"][0] not in _EXPIRY_TYPES:
            raise bad(f"session_expiry is {columns['session_expiry'][0]}, not timestamp(tz)")
        unique = await self._fetch(
            conn,
            "SELECT 1 FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indnatts = 1 "
            "AND a.attname = 'session_key'",
            self._table,
        )
        if not unique:
            raise bad("session_key is not its primary key (nor unique)")
        self._key = _KEY_TYPES[key_type]
        self.max_sid_length = key_mod - 4 if key_mod > 4 else _SID_MAX

    async def _columns(self, conn: Any) -> dict[str, tuple[str, int]]:
        rows = await self._fetch(
            conn,
            "SELECT a.attname, t.typname, a.atttypmod FROM pg_attribute a "
            "JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            self._table,
        )
        return {str(r[0]): (str(r[1]), int(r[2])) for r in rows}

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), max(0.1, self._timeout / 2))  # polite Terminate
        except (Exception, asyncio.CancelledError):
            pool.terminate()

    # ------------------------------------------------------------ plumbing

    async def _acquire(self) -> Any:
        pool = self._pool
        if pool is None:
            raise ProviderUnavailableError(
                "postgresql session provider is not open (session_init failed or the manager was closed)"
            )
        return await pool.acquire(timeout=self._timeout)

    async def _release(self, conn: Any) -> None:
        pool = self._pool
        if pool is None:
            conn.terminate()
        else:
            await pool.release(conn)

    async def _discard(self, conn: Any, exc: BaseException | None) -> None:
        """Terminate *conn* after any error but a plain SQL one (then it is rolled back and kept)."""
        state = _state(exc) if exc is not None else ""
        try:
            if not isinstance(exc, asyncpg.PostgresError) or state[:2] in ("08", "57"):
                conn.terminate()  # mid-query, cancelled or lost: its state is unknown
            elif conn.is_in_transaction():
                try:  # a plain SQL error (a key race, a deadlock): the connection is fine
                    await conn.execute("ROLLBACK")
                except BaseException:
                    conn.terminate()
                    raise
        finally:
            await self._release(conn)

    def _usable(self, conn: Any) -> bool:
        return not conn.is_closed()

    async def _fetch(self, conn: Any, sql: str, *args: Any) -> list[Any]:
        self.statements[sql.split(None, 1)[0].lower()] += 1
        return list(await conn.fetch(sql, *args))

    async def _execute(self, conn: Any, sql: str, *args: Any) -> str:
        self.statements[sql.split(None, 1)[0].lower()] += 1
        return str(await conn.execute(sql, *args))

    async def _begin(self, conn: Any) -> None:
        self.statements["begin"] += 1
        await conn.execute("BEGIN")

    async def _commit(self, conn: Any) -> None:
        self.statements["commit"] += 1
        await conn.execute("COMMIT")

    def _is_conflict(self, exc: BaseException) -> bool:
        return _state(exc) in (_DEADLOCK, _UNIQUE_VIOLATION, _SERIALIZATION)

    def _is_lost(self, exc: BaseException) -> bool:
        return isinstance(exc, (asyncpg.ConnectionDoesNotExistError, ConnectionError)) or (
            isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)
        )

    def _explain(self, exc: BaseException) -> str:
        state = _state(exc)
        return f"{exc} (SQLSTATE {state})" if state else (str(exc) or type(exc).__name__)

    def _config_fault(self, exc: BaseException) -> tuple[str, str] | None:
        state = _state(exc)
        if state[:2] == "28" or state in _CONFIG_STATES:
            return "provider_config", "check user, password, dbname and parameters in provider_config"
        if isinstance(exc, (asyncpg.ClientConfigurationError, ssl.SSLCertVerificationError)) or (
            isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc)
        ):  # sslmode=require on a server without TLS, a missing root certificate ...: not an outage
            return "sslmode", (
                "check sslmode and the certificates, or use sslmode=prefer/disable for a server without TLS"
            )
        return None

    def _unavailable(self, exc: BaseException) -> bool:
        state = _state(exc)
        return (
            state[:2] in _BUSY_CLASSES
            or state in _BUSY_STATES
            or isinstance(exc, (asyncpg.InterfaceError, OSError, asyncpg.PostgresConnectionError))
        )

    # ------------------------------------------------------------ statements

    async def _lookup_rows(self, conn: Any, keys: list[str], refresh: set[str]) -> Found:
        """Live, decodable rows of *keys* as ``{sid: (session_data, data)}`` in one SELECT.

        Rows of sids in *refresh* whose expiry is at least a refresh step
        stale get it moved to now + lifetime in one UPDATE.
        """
        rows = await self._fetch(
            conn,
            f"SELECT session_key::text, session_data, "
            f"EXTRACT(EPOCH FROM session_expiry - now())::float8 FROM {self._table} "
            f"WHERE session_key = ANY($1::{self._key}[]) AND session_expiry > now()",
            keys,
        )
        found, due = self._decode_found(rows, refresh)
        bumps: list[tuple[str, int]] = []
        for key, lifetime, remaining in due:
            if lifetime - remaining >= refresh_step(lifetime):
                bumps.append((key, lifetime))
        if bumps:
            await self._refresh(conn, bumps)
        return found

    async def _refresh(self, conn: Any, bumps: list[tuple[str, int]]) -> None:
        """Move the expiry of *bumps* ``[(sid, lifetime)]`` to now + lifetime, in one statement.

        Rows locked by a writer are skipped (its commit sets a fresh expiry);
        rows refreshed meanwhile by someone else are left alone.
        """
        try:
            await self._execute(
                conn,
                f"UPDATE {self._table} AS t SET session_expiry = now() + make_interval(secs => v.lifetime) "
                f"FROM (SELECT s.session_key, u.lifetime FROM {self._table} AS s "
                f"JOIN unnest($1::{self._key}[], $2::int4[]) AS u(key, lifetime) ON s.session_key = u.key "
                "WHERE s.session_expiry > now() AND s.session_expiry <= "
                "now() + make_interval(secs => u.lifetime - greatest(1, u.lifetime / 60)) "
                "FOR UPDATE OF s SKIP LOCKED) AS v "
                "WHERE t.session_key = v.session_key",
                [k for k, _ in bumps],
                [lt for _, lt in bumps],
            )
        except asyncpg.PostgresError as exc:
            if _state(exc) not in (_LOCK_NOT_AVAILABLE, _DEADLOCK):
                raise
            log.debug("postgresql: expiry refresh skipped: %s", exc)

    async def _lock_rows(self, conn: Any, keys: list[str], now: float) -> list[tuple[str, Any, bool]]:
        rows = await self._fetch(
            conn,
            f"SELECT session_key::text, session_data, session_expiry > now() FROM {self._table} "
            f"WHERE session_key = ANY($1::{self._key}[]) ORDER BY session_key FOR UPDATE",
            keys,
        )
        return [(key, blob, bool(live)) for key, blob, live in rows]

    async def _swap_rows(
        self, conn: Any, rows: list[SwapRow], now: float, exact: bool
    ) -> tuple[set[str], set[str]]:
        """Compare-and-swap, no transaction: the new record where the old one still is, live.

        One row: a plain ``UPDATE``; more: one ``UPDATE … FROM unnest(…)
        RETURNING session_key`` per ~64 MiB, which says exactly which matched
        (so nothing is ever unsure, *exact* or not).
        """
        if len(rows) == 1:
            key, blob, lifetime, old = rows[0]
            status = await self._execute(
                conn,
                f"UPDATE {self._table} SET session_data = $2, "
                "session_expiry = now() + make_interval(secs => $3::int4) "
                "WHERE session_key = $1 AND session_data = $4 AND session_expiry > now()",
                key, blob, lifetime, old,
            )
            return ({key} if _count(status) == 1 else set()), set()
        done: set[str] = set()
        for chunk in split_rows(rows, _STATEMENT_BUDGET, (1, 3)):
            returned = await self._fetch(
                conn,
                f"UPDATE {self._table} AS t SET session_data = v.data, "
                "session_expiry = now() + make_interval(secs => v.lifetime) "
                f"FROM unnest($1::{self._key}[], $2::bytea[], $3::int4[], $4::bytea[]) "
                "AS v(key, data, lifetime, old) "
                "WHERE t.session_key = v.key AND t.session_data = v.old AND t.session_expiry > now() "
                "RETURNING t.session_key::text",
                [r[0] for r in chunk], [r[1] for r in chunk], [r[2] for r in chunk], [r[3] for r in chunk],
            )
            done.update(r[0] for r in returned)
        return done, set()

    async def _insert_new(self, conn: Any, rows: list[WriteRow], now: float) -> set[str]:
        """``INSERT … ON CONFLICT DO NOTHING``, no transaction; the sids that went in."""
        if len(rows) == 1:
            key, blob, lifetime = rows[0]
            status = await self._execute(
                conn,
                f"INSERT INTO {self._table} (session_key, session_data, session_expiry) "
                "VALUES ($1, $2, now() + make_interval(secs => $3::int4)) ON CONFLICT DO NOTHING",
                key, blob, lifetime,
            )
            return {key} if _count(status) == 1 else set()
        done: set[str] = set()
        for chunk in split_rows(rows, _STATEMENT_BUDGET):
            returned = await self._fetch(
                conn,
                f"INSERT INTO {self._table} (session_key, session_data, session_expiry) "
                "SELECT v.key, v.data, now() + make_interval(secs => v.lifetime) "
                f"FROM unnest($1::{self._key}[], $2::bytea[], $3::int4[]) AS v(key, data, lifetime) "
                "ON CONFLICT DO NOTHING RETURNING session_key::text",
                *_columns_of(chunk),
            )
            done.update(r[0] for r in returned)
        return done

    async def _write_rows(
        self, conn: Any, updates: list[WriteRow], inserts: list[WriteRow], now: float
    ) -> None:
        for chunk in split_rows(updates, _STATEMENT_BUDGET):
            await self._execute(
                conn,
                f"UPDATE {self._table} AS t SET session_data = v.data, "
                "session_expiry = now() + make_interval(secs => v.lifetime) "
                f"FROM unnest($1::{self._key}[], $2::bytea[], $3::int4[]) AS v(key, data, lifetime) "
                "WHERE t.session_key = v.key",
                *_columns_of(chunk),
            )
        for chunk in split_rows(inserts, _STATEMENT_BUDGET):
            await self._execute(
                conn,
                f"INSERT INTO {self._table} (session_key, session_data, session_expiry) "
                "SELECT v.key, v.data, now() + make_interval(secs => v.lifetime) "
                f"FROM unnest($1::{self._key}[], $2::bytea[], $3::int4[]) AS v(key, data, lifetime)",
                *_columns_of(chunk),
            )

    async def _delete_rows(self, conn: Any, keys: list[str]) -> None:
        await self._execute(
            conn, f"DELETE FROM {self._table} WHERE session_key = ANY($1::{self._key}[])", keys
        )

    async def _delete_one(self, conn: Any, sid: str) -> None:
        await self._execute(conn, f"DELETE FROM {self._table} WHERE session_key = $1", sid)

    async def _put_one(
        self, conn: Any, sid: str, blob: bytes, lifetime: int, exists: bool, now: float
    ) -> None:
        if exists:
            await self._execute(
                conn,
                f"UPDATE {self._table} SET session_data = $1, "
                "session_expiry = now() + make_interval(secs => $2::int4) WHERE session_key = $3",
                blob, lifetime, sid,
            )
        else:
            await self._execute(
                conn,
                f"INSERT INTO {self._table} (session_key, session_data, session_expiry) "
                "VALUES ($1, $2, now() + make_interval(secs => $3::int4))",
                sid, blob, lifetime,
            )

    async def _count_live(self, conn: Any) -> int:
        rows = await self._fetch(conn, f"SELECT count(*) FROM {self._table} WHERE session_expiry > now()")
        return int(rows[0][0])

    async def _gc_chunk(self, conn: Any) -> int:
        """Delete up to 5000 expired rows; rows a writer holds locked are skipped."""
        status = await self._execute(
            conn,
            f"DELETE FROM {self._table} WHERE session_key IN (SELECT session_key FROM {self._table} "
            f"WHERE session_expiry <= now() LIMIT {GC_CHUNK} FOR UPDATE SKIP LOCKED)",
        )
        return _count(status)


async def _no_reset(conn: Any) -> None:
    """Pool reset hook: nothing to undo (see :meth:`PostgreSQLProvider._discard`)."""


def _columns_of(rows: list[tuple[str, bytes, int]]) -> tuple[list[str], list[bytes], list[int]]:
    """Column arrays (keys, blobs, lifetimes) for an ``unnest($1, $2, $3)``."""
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
