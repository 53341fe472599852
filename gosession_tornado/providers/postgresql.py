"""The ``postgresql`` provider: sessions in a PostgreSQL table, beego's column names, via asyncpg.

``provider_config`` is beego's libpq ``key=value`` DSN
(``user=postgres password= host=127.0.0.1 port=5432 dbname=test sslmode=disable``),
a ``postgresql://`` / ``postgres://`` URL or a dict; see
:mod:`gosession_tornado.pg_dsn`. Needs the ``postgresql`` extra
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
* A release locks the row (``SELECT … FOR UPDATE`` in a transaction), applies
  the request's :class:`~gosession_tornado.provider.Changes` to what is stored
  *now* and writes it back, so concurrent requests, in this process or
  others, lose no keys. A missing or expired row is recreated only for a new
  session (``changes.create``), never resurrected.
* The actor's batches become few statements: all reads and existence checks
  of a batch are one ``SELECT … WHERE session_key = ANY($1)`` (plus one
  ``UPDATE`` for the expiry refresh); all releases one transaction; all
  destroys one ``DELETE … = ANY($1)``. :attr:`PostgreSQLProvider.statements`
  counts the statements sent, by verb.
* A server that is down or unreachable gives
  :class:`~gosession_tornado.errors.ProviderUnavailableError` (connect
  timeout below ``provider_timeout``); broken pooled connections are
  discarded, so the provider recovers by itself when the server is back.
"""

# SQL is built with f-strings only from the table name (validated as a plain identifier in
# pg_dsn.py and double-quoted), the key column's type name (one of three constants) and
# index names derived from them; every value is a $n parameter.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import re
import ssl
import time
import warnings
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from .. import codec
from ..errors import ConfigError, ProviderUnavailableError, SessionError
from ..pg_dsn import PostgreSQLSettings, parse_postgresql_config
from ..provider import (
    Changes,
    Close,
    Destroy,
    Exist,
    Init,
    Message,
    Provider,
    Read,
    Release,
    SessionData,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..config import ManagerConfig

__all__ = ["PostgreSQLProvider", "MAX_PAYLOAD"]

log = logging.getLogger("gosession_tornado.postgresql")

_T = TypeVar("_T")

#: Largest encoded session stored, in bytes (``bytea`` itself holds up to 1 GiB).
MAX_PAYLOAD = 16 * 1024 * 1024
#: Bytes of session data one UPDATE/INSERT statement carries at most.
_STATEMENT_BUDGET = 64 * 1024 * 1024
_SID_RE = re.compile(r"^[A-Za-z0-9_-]+\Z")
#: Longest sid the manager ever makes (prefix included); the limit for a ``text`` key.
_SID_MAX = 160
#: Rows one GC statement deletes at most.
_GC_CHUNK = 5000
#: Key column types: pg_type name -> the array cast used in statements.
_KEY_TYPES = {"bpchar": "bpchar", "varchar": "varchar", "text": "text"}
_EXPIRY_TYPES = {"timestamptz", "timestamp"}
#: Retried (the whole operation, on a fresh transaction) this many times at most.
_CONFLICT_RETRIES = 3

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


def _refresh_step(lifetime: int) -> int:
    """Seconds a read must gain on the stored expiry before it is written (throttles refreshes)."""
    return max(1, lifetime // 60)


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``"DELETE 12"``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


@dataclasses.dataclass
class _Row:
    """A session row as a release transaction sees it."""

    in_table: bool
    live: bool = False
    data: dict[Any, Any] = dataclasses.field(default_factory=dict)
    lifetime: int = 0
    blob: bytes | None = None
    touched: bool = False
    dirty: bool = False
    members: list[int] = dataclasses.field(default_factory=list)


class PostgreSQLProvider(Provider):
    """Sessions in a PostgreSQL table shared by every process that uses it.

    Construct it through a :class:`~gosession_tornado.SessionManager` with
    provider name ``"postgresql"``; all methods run inside the provider's actor.
    """

    extra = "postgresql"

    def __init__(self) -> None:
        super().__init__()
        #: Parsed connection settings (after ``session_init``).
        self.settings: PostgreSQLSettings | None = None
        #: Statements sent to the server, by first SQL word (``"select"``, ``"update"``, ``"begin"`` …).
        self.statements: collections.Counter[str] = collections.Counter()
        self._pool: Any = None
        self._table = '"session"'
        self._key = "varchar"
        self._timeout = 5.0
        #: Longest session id the key column holds (characters).
        self.max_sid_length = 64
        #: Largest encoded session stored, in bytes.
        self.max_payload = MAX_PAYLOAD

    # ------------------------------------------------------------ setup

    @classmethod
    def configure_manager(cls, config: ManagerConfig) -> ManagerConfig:
        """Parse ``provider_config`` at once, so a bad DSN fails in ``SessionManager(...)``.

        :raises ConfigError: for a malformed DSN, URL or dict.
        """
        parse_postgresql_config(config.provider_config)
        return config

    async def session_init(self, max_lifetime: int, config: Any) -> None:
        """Parse *config*, open the pool, create or check the table.

        :raises ConfigError: for a bad config, bad credentials, an unknown
            database or run-time parameter, an incompatible table, or session
            ids that would not fit the key column.
        :raises ProviderUnavailableError: if the server cannot be reached.
        """
        self.max_lifetime = max_lifetime
        settings = parse_postgresql_config(config)
        mc = self.manager_config
        timeout = getattr(mc, "provider_timeout", None)
        self._timeout = float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else 5.0
        self.settings = settings
        self._table = f'"{settings.table}"'
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
        try:
            self._pool = await asyncpg.create_pool(
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
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise self._translate(exc) from exc
        try:
            await self._run(self._setup_table)
            if mc is not None:
                longest = len(mc.session_id_prefix) + 2 * mc.session_id_length
                if longest > self.max_sid_length:
                    raise ConfigError(
                        f"session ids of this manager can be {longest} characters long, but the "
                        f"postgresql table {settings.table!r} stores at most {self.max_sid_length} "
                        "(session_key varchar(64)); lower session_id_length "
                        f"(at most {(self.max_sid_length - len(mc.session_id_prefix)) // 2}) "
                        "or shorten session_id_prefix",
                        key="session_id_length",
                    )
        except BaseException:
            await self._close_pool()
            raise

    def _connect_timeout(self, settings: PostgreSQLSettings) -> float:
        """Connect timeout in seconds: the configured one, kept below ``provider_timeout``."""
        limit = self._timeout
        default = max(0.05, limit * 0.5)
        wanted = settings.connect_timeout
        if not wanted:  # None or 0 (libpq: wait forever) -> ours
            return default
        if wanted >= limit:
            capped = max(0.05, limit * 0.8)
            warnings.warn(
                f"postgresql connect timeout {wanted:g} s is not below provider_timeout {limit:g} s; "
                f"using {capped:g} s (raise provider_timeout to allow more)",
                UserWarning,
                stacklevel=2,
            )
            return capped
        return wanted

    async def _setup_table(self, conn: Any) -> None:
        assert self.settings is not None
        table = self.settings.table
        columns = await self._columns(conn)
        if not columns:
            index = f'"{table[:40]}_expiry_{zlib.crc32(table.encode()):08x}"'
            await self._execute(
                conn,
                f"CREATE TABLE IF NOT EXISTS {self._table} ("
                "session_key varchar(64) PRIMARY KEY, "
                "session_data bytea NOT NULL, "
                "session_expiry timestamptz NOT NULL)",
            )
            await self._execute(conn, f"CREATE INDEX IF NOT EXISTS {index} ON {self._table} (session_expiry)")
            columns = await self._columns(conn)

        def bad(msg: str) -> ConfigError:
            return ConfigError(
                f"postgresql table {table!r} is not a session table: {msg}; expected beego's "
                "session(session_key char(64) primary key, session_data bytea, session_expiry timestamp)",
                key="table",
            )

        for name in ("session_key", "session_data", "session_expiry"):
            if name not in columns:
                raise bad(f"column {name!r} is missing")
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

    async def session_close(self) -> None:
        await self._close_pool()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), max(0.1, self._timeout / 2))  # polite Terminate
        except (Exception, asyncio.CancelledError):
            pool.terminate()

    # ------------------------------------------------------------ plumbing

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; terminated instead of reused after any error but a plain SQL one."""
        pool = self._pool
        if pool is None:
            raise ProviderUnavailableError(
                "postgresql session provider is not open (session_init failed or the manager was closed)"
            )
        conn = await pool.acquire(timeout=self._timeout)
        try:
            yield conn
        except BaseException as exc:
            state = _state(exc)
            if not isinstance(exc, asyncpg.PostgresError) or state[:2] in ("08", "57"):
                conn.terminate()  # mid-query, cancelled or lost: its state is unknown
            elif conn.is_in_transaction():
                try:  # a plain SQL error (a key race, a deadlock): the connection is fine
                    await conn.execute("ROLLBACK")
                except BaseException:
                    conn.terminate()
                    raise
            raise
        finally:
            await pool.release(conn)

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

    async def _run(self, op: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run *op* on a pooled connection, retrying deadlocks, key races and lost connections.

        *op* must be safe to repeat from the start (each attempt is a fresh
        transaction).
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._connection() as conn:
                    return await op(conn)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                state = _state(exc)
                if state in (_DEADLOCK, _UNIQUE_VIOLATION, _SERIALIZATION) and attempt <= _CONFLICT_RETRIES:
                    log.debug("postgresql: %s, retrying", exc)
                    continue
                lost = isinstance(exc, (asyncpg.ConnectionDoesNotExistError, ConnectionError)) or (
                    isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)
                )
                if lost and attempt == 1:
                    log.debug("postgresql: connection lost (%s), retrying on a fresh one", exc)
                    continue
                raise self._translate(exc) from exc

    def _translate(self, exc: BaseException) -> SessionError:
        where = self.settings.where if self.settings else "?"
        state = _state(exc)
        msg = f"{exc} (SQLSTATE {state})" if state else (str(exc) or type(exc).__name__)
        if state[:2] == "28" or state in _CONFIG_STATES:
            return ConfigError(
                f"postgresql session store at {where}: {msg}; check user, password, dbname and "
                "parameters in provider_config",
                key="provider_config",
            )
        if isinstance(exc, (asyncpg.ClientConfigurationError, ssl.SSLCertVerificationError)) or (
            isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc)
        ):  # sslmode=require on a server without TLS, a missing root certificate ...: not an outage
            return ConfigError(
                f"postgresql session store at {where}: {msg}; check sslmode and the certificates, "
                "or use sslmode=prefer/disable for a server without TLS",
                key="sslmode",
            )
        if (
            state[:2] in _BUSY_CLASSES
            or state in _BUSY_STATES
            or isinstance(exc, (asyncpg.InterfaceError, OSError, asyncpg.PostgresConnectionError))
        ):
            return ProviderUnavailableError(
                f"postgresql session store at {where} is unavailable: {msg}; is the server up? "
                "(sessions work again as soon as it answers)"
            )
        return SessionError(f"postgresql session store at {where} failed: {msg}")

    def _storable(self, sid: str) -> bool:
        return len(sid) <= self.max_sid_length and _SID_RE.match(sid) is not None

    def _too_long(self, sid: str) -> SessionError:
        return SessionError(
            f"session id of {len(sid)} characters cannot be stored in the postgresql table "
            f"(at most {self.max_sid_length} of [A-Za-z0-9_-])"
        )

    def _decode(self, sid: str, blob: bytes | None) -> tuple[dict[Any, Any], int] | None:
        """``(data, lifetime)`` from a stored row, or ``None`` (logged) if it is not ours/corrupt."""
        try:
            record = codec.decode(bytes(blob or b""))
            data = record["data"]
            lifetime = record.get("lifetime", self.max_lifetime)
            if not isinstance(data, dict) or isinstance(lifetime, bool) or not isinstance(lifetime, int):
                raise ValueError("unexpected record layout")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning(
                "postgresql session %s…: undecodable session_data treated as missing: %s", sid[:8], exc
            )
            return None
        return data, lifetime

    def _encode(self, data: dict[Any, Any], lifetime: int) -> bytes:
        blob = codec.encode({"data": data, "lifetime": lifetime})
        if len(blob) > self.max_payload:
            raise SessionError(
                f"encoded session is {len(blob)} bytes, over the {self.max_payload}-byte limit of the "
                "postgresql session provider; store less in the session"
            )
        return blob

    # ------------------------------------------------------------ batched operations

    async def _lookup(self, sids: Sequence[str], refresh: set[str]) -> dict[str, bytes]:
        """Live, decodable rows of *sids* as ``{sid: session_data}`` in one SELECT.

        Rows of sids in *refresh* whose expiry is at least a refresh step
        stale get it moved to now + lifetime in one UPDATE.
        """
        keys = sorted({s for s in sids if self._storable(s)})
        if not keys:
            return {}

        async def op(conn: Any) -> dict[str, bytes]:
            rows = await self._fetch(
                conn,
                f"SELECT session_key::text, session_data, "
                f"EXTRACT(EPOCH FROM session_expiry - now())::float8 FROM {self._table} "
                f"WHERE session_key = ANY($1::{self._key}[]) AND session_expiry > now()",
                keys,
            )
            found: dict[str, bytes] = {}
            bumps: list[tuple[str, int]] = []
            for key, blob, remaining in rows:
                decoded = self._decode(key, blob)
                if decoded is None:
                    continue
                found[key] = bytes(blob)
                lifetime = decoded[1]
                if key in refresh and lifetime - float(remaining) >= _refresh_step(lifetime):
                    bumps.append((key, lifetime))
            if bumps:
                await self._refresh(conn, bumps)
            return found

        return await self._run(op)

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

    async def _release_many(self, items: Sequence[Release]) -> list[Any]:
        """Apply every release in one transaction; one outcome (None or exception) per item."""
        keys = sorted({m.sid for m in items if self._storable(m.sid)})

        async def op(conn: Any) -> list[Any]:
            outcomes: list[Any] = [None if self._storable(m.sid) else self._too_long(m.sid) for m in items]
            if not keys:
                return outcomes
            await self._begin(conn)
            rows = await self._fetch(
                conn,
                f"SELECT session_key::text, session_data, session_expiry > now() FROM {self._table} "
                f"WHERE session_key = ANY($1::{self._key}[]) ORDER BY session_key FOR UPDATE",
                keys,
            )
            state = {key: _Row(in_table=False) for key in keys}
            for key, blob, live in rows:
                row = state[key] = _Row(in_table=True)
                if live:
                    decoded = self._decode(key, blob)
                    if decoded is not None:
                        row.live = True
                        row.data, row.lifetime = decoded
                        row.blob = bytes(blob)
            for i, m in enumerate(items):
                if outcomes[i] is not None:
                    continue
                row = state[m.sid]
                if not row.live:
                    if not m.changes.create:
                        continue  # destroyed or expired meanwhile: do not resurrect
                    row.live, row.data, row.dirty = True, {}, True
                if not m.changes.empty:
                    m.changes.apply(row.data)
                    row.dirty = True
                if m.expiry != row.lifetime:
                    row.lifetime = m.expiry
                    row.dirty = True
                row.touched = True
                row.members.append(i)
            updates: list[tuple[str, bytes, int]] = []
            inserts: list[tuple[str, bytes, int]] = []
            for key, row in state.items():
                if not row.touched:
                    continue
                try:
                    blob = self._encode(row.data, row.lifetime) if row.dirty or row.blob is None else row.blob
                except (TypeError, SessionError) as exc:
                    for i in row.members:
                        outcomes[i] = exc
                    continue
                (updates if row.in_table else inserts).append((key, blob, row.lifetime))
            for chunk in _chunks(updates):
                await self._execute(
                    conn,
                    f"UPDATE {self._table} AS t SET session_data = v.data, "
                    "session_expiry = now() + make_interval(secs => v.lifetime) "
                    f"FROM unnest($1::{self._key}[], $2::bytea[], $3::int4[]) AS v(key, data, lifetime) "
                    "WHERE t.session_key = v.key",
                    *_columns_of(chunk),
                )
            for chunk in _chunks(inserts):
                await self._execute(
                    conn,
                    f"INSERT INTO {self._table} (session_key, session_data, session_expiry) "
                    "SELECT v.key, v.data, now() + make_interval(secs => v.lifetime) "
                    f"FROM unnest($1::{self._key}[], $2::bytea[], $3::int4[]) AS v(key, data, lifetime)",
                    *_columns_of(chunk),
                )
            await self._commit(conn)
            return outcomes

        return await self._run(op)

    async def _destroy_many(self, sids: Sequence[str]) -> None:
        keys = sorted({s for s in sids if self._storable(s)})
        if not keys:
            return

        async def op(conn: Any) -> None:
            await self._execute(
                conn, f"DELETE FROM {self._table} WHERE session_key = ANY($1::{self._key}[])", keys
            )

        await self._run(op)

    # ------------------------------------------------------------ beego's verbs

    async def session_read(self, sid: str) -> SessionData | None:
        blob = (await self._lookup([sid], {sid})).get(sid)
        decoded = None if blob is None else self._decode(sid, blob)
        return None if decoded is None else decoded[0]

    async def session_exist(self, sid: str) -> bool:
        return sid in await self._lookup([sid], set())

    async def session_release(self, sid: str, changes: Changes, expiry: int) -> None:
        outcome = (await self._release_many([Release(sid, changes, expiry)]))[0]
        if isinstance(outcome, BaseException):
            raise outcome

    async def session_destroy(self, sid: str) -> None:
        await self._destroy_many([sid])

    async def session_regenerate(self, old_sid: str, sid: str) -> SessionData:
        if not self._storable(sid):
            raise self._too_long(sid)
        keys = sorted({k for k in (old_sid, sid) if self._storable(k)})

        async def op(conn: Any) -> SessionData:
            await self._begin(conn)
            rows = await self._fetch(
                conn,
                f"SELECT session_key::text, session_data, session_expiry > now() FROM {self._table} "
                f"WHERE session_key = ANY($1::{self._key}[]) ORDER BY session_key FOR UPDATE",
                keys,
            )
            live: dict[str, tuple[bytes, dict[Any, Any], int]] = {}
            present = set()
            for key, blob, alive in rows:
                present.add(key)
                if alive:
                    decoded = self._decode(key, blob)
                    if decoded is not None:
                        live[key] = (bytes(blob), *decoded)
            if old_sid in live:
                blob, data, lifetime = live[old_sid]
            elif sid in live:  # a retry after the first attempt committed: already moved
                await self._commit(conn)
                return live[sid][1]
            else:
                data, lifetime = {}, self.max_lifetime
                blob = self._encode(data, lifetime)
            if old_sid in present and old_sid != sid:
                await self._execute(conn, f"DELETE FROM {self._table} WHERE session_key = $1", old_sid)
            if sid in present:
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
            await self._commit(conn)
            return data

        return await self._run(op)

    async def session_all(self) -> int:
        async def op(conn: Any) -> int:
            rows = await self._fetch(conn, f"SELECT count(*) FROM {self._table} WHERE session_expiry > now()")
            return int(rows[0][0])

        return await self._run(op)

    async def session_gc(self) -> None:
        """Delete expired rows, 5000 per statement, for at most half of ``provider_timeout``.

        Rows a writer holds locked are skipped; whatever is left goes in the
        next pass (expired rows are never served meanwhile).
        """
        deadline = time.monotonic() + self._timeout / 2

        async def op(conn: Any) -> int:
            status = await self._execute(
                conn,
                f"DELETE FROM {self._table} WHERE session_key IN (SELECT session_key FROM {self._table} "
                f"WHERE session_expiry <= now() LIMIT {_GC_CHUNK} FOR UPDATE SKIP LOCKED)",
            )
            return _count(status)

        while await self._run(op) >= _GC_CHUNK and time.monotonic() < deadline:
            pass

    # ------------------------------------------------------------ batching

    async def handle_batch(self, messages: Sequence[Message]) -> list[Any]:
        """Turn a drained mailbox into few statements.

        Reads and existence checks share one ``SELECT … = ANY($1)`` (and one
        expiry ``UPDATE``), releases one transaction, destroys one
        ``DELETE … = ANY($1)``; the groups run concurrently on separate pooled
        connections (messages in one batch are concurrent, so any order is a
        valid one). Other messages run one by one. Each message gets its own
        outcome.
        """
        if self._pool is None or any(isinstance(m, (Init, Close)) for m in messages):
            return await super().handle_batch(messages)
        results: list[Any] = [None] * len(messages)
        lookups: list[int] = []
        releases: list[int] = []
        destroys: list[int] = []
        others: list[int] = []
        for i, m in enumerate(messages):
            if isinstance(m, (Read, Exist)):
                lookups.append(i)
            elif isinstance(m, Release):
                releases.append(i)
            elif isinstance(m, Destroy):
                destroys.append(i)
            else:
                others.append(i)

        async def do_lookups() -> None:
            reads = {m.sid for i in lookups if isinstance(m := messages[i], Read)}
            sids = [m.sid for i in lookups if isinstance(m := messages[i], (Read, Exist))]
            try:
                found = await self._lookup(sids, reads)
            except Exception as exc:
                for i in lookups:
                    results[i] = exc
                return
            for i in lookups:
                m = messages[i]
                if isinstance(m, Exist):
                    results[i] = m.sid in found
                elif isinstance(m, Read):
                    blob = found.get(m.sid)
                    # Decoded per reader: two reads of one sid never share mutable values.
                    decoded = None if blob is None else self._decode(m.sid, blob)
                    results[i] = None if decoded is None else decoded[0]

        async def do_releases() -> None:
            items = [m for i in releases if isinstance(m := messages[i], Release)]
            try:
                outcomes = await self._release_many(items)
            except Exception as exc:
                outcomes = [exc] * len(items)
            for i, outcome in zip(releases, outcomes):
                results[i] = outcome

        async def do_destroys() -> None:
            sids = [m.sid for i in destroys if isinstance(m := messages[i], Destroy)]
            try:
                await self._destroy_many(sids)
            except Exception as exc:
                for i in destroys:
                    results[i] = exc

        async def do_others() -> None:
            for i in others:
                try:
                    results[i] = await self.dispatch(messages[i])
                except Exception as exc:
                    results[i] = exc

        jobs: list[Awaitable[None]] = []
        if lookups:
            jobs.append(do_lookups())
        if releases:
            jobs.append(do_releases())
        if destroys:
            jobs.append(do_destroys())
        if others:
            jobs.append(do_others())
        await asyncio.gather(*jobs)
        return results


async def _no_reset(conn: Any) -> None:
    """Pool reset hook: nothing to undo (see :meth:`PostgreSQLProvider._connection`)."""


def _columns_of(rows: list[tuple[str, bytes, int]]) -> tuple[list[str], list[bytes], list[int]]:
    """Column arrays (keys, blobs, lifetimes) for an ``unnest($1, $2, $3)``."""
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def _chunks(rows: list[tuple[str, bytes, int]]) -> list[list[tuple[str, bytes, int]]]:
    """Split rows so that no statement carries more than ~64 MiB (a large row goes alone)."""
    chunks: list[list[tuple[str, bytes, int]]] = []
    current: list[tuple[str, bytes, int]] = []
    size = 0
    for row in rows:
        cost = len(row[1]) + len(row[0]) + 16
        if current and size + cost > _STATEMENT_BUDGET:
            chunks.append(current)
            current, size = [], 0
        current.append(row)
        size += cost
    if current:
        chunks.append(current)
    return chunks
