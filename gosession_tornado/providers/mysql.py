"""The ``mysql`` provider: sessions in a MySQL/MariaDB table, beego's schema, via aiomysql.

``provider_config`` is a Go DSN (``user:pass@tcp(127.0.0.1:3306)/dbname?table=session``),
a ``mysql://`` URL or a dict; see :mod:`gosession_tornado.dsn`. Needs the
``mysql`` extra (``pip install 'gosession-tornado[mysql]'``).

The table is beego's, created if missing (InnoDB)::

    CREATE TABLE `session` (
      `session_key`    CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
      `session_data`   MEDIUMBLOB,
      `session_expiry` INT UNSIGNED NOT NULL,
      PRIMARY KEY (`session_key`),
      KEY `session_expiry` (`session_expiry`)
    ) ENGINE=InnoDB

What holds:

* ``session_data`` is ``codec.encode({"data": {...}, "lifetime": seconds})``
  (msgpack); ``session_expiry`` is the Unix time (whole seconds, rounded down) at
  which the session expires: last access + its lifetime. A row whose
  ``session_expiry`` is not in the future is never served, GC or not.
* Reads refresh ``session_expiry``, at most once per ``max(1, lifetime // 60)``
  seconds per session, and never over a concurrent writer's value.
* A release locks the row (``SELECT … FOR UPDATE`` in a READ COMMITTED
  transaction), applies the request's :class:`~gosession_tornado.provider.Changes`
  to what is stored *now* and writes it back, so concurrent requests, in this
  process or others, lose no keys. A missing or expired row is recreated only
  for a new session (``changes.create``), never resurrected.
* The actor's batches become few statements: all reads and existence checks
  of a batch are one ``SELECT … WHERE session_key IN (…)`` (plus one
  ``UPDATE`` for the expiry refresh); all releases one transaction; all
  destroys one ``DELETE … IN (…)``. :attr:`MySQLProvider.statements` counts
  the statements sent, by verb.
* A server that is down or unreachable gives
  :class:`~gosession_tornado.errors.ProviderUnavailableError` (connect timeout
  below ``provider_timeout``); broken pooled connections are discarded, so the
  provider recovers by itself when the server is back.
* Session ids longer than the key column (64 characters) cannot be stored:
  ``session_init`` refuses a manager whose ids can be longer
  (``session_id_prefix`` + 2 × ``session_id_length`` > 64) with
  :class:`~gosession_tornado.errors.ConfigError`, and such ids are unknown.
"""

# SQL is built with f-strings only from the table name (validated as a plain identifier
# in dsn.py and backtick-quoted) and from "%s" placeholder lists; every value is a parameter.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import re
import ssl
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import aiomysql
import pymysql
from pymysql.constants import CLIENT

from .. import codec
from ..dsn import MySQLSettings, parse_mysql_config
from ..errors import ConfigError, ProviderUnavailableError, SessionError
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

__all__ = ["MySQLProvider", "MEDIUMBLOB_MAX"]

log = logging.getLogger("gosession_tornado.mysql")

_T = TypeVar("_T")

#: Largest value a MEDIUMBLOB holds, in bytes.
MEDIUMBLOB_MAX = 2**24 - 1
_BLOB_TYPES = {"tinyblob", "blob", "mediumblob", "longblob", "varbinary", "binary"}
_KEY_TYPES = {"char", "varchar", "binary", "varbinary"}
_INT_TYPES = {"int", "bigint", "mediumint"}
_SID_RE = re.compile(r"^[A-Za-z0-9_-]+\Z")
_EXPIRY_MAX = 2**32 - 1
#: Rows one GC statement deletes at most.
_GC_CHUNK = 5000

# MySQL/MariaDB error codes.
_ER_DUP_ENTRY = 1062
_ER_LOCK_WAIT_TIMEOUT = 1205
_ER_LOCK_DEADLOCK = 1213
#: Retried (the whole operation, on a fresh connection) this many times at most.
_CONFLICT_RETRIES = 3
#: The configuration is at fault: access denied, unknown database, bad variable.
_CONFIG_CODES = frozenset({1044, 1045, 1049, 1142, 1193, 1227, 1231, 1232, 1698})
#: The server is there but cannot serve now (too many connections, shutdown, killed, lock waits).
_BUSY_CODES = frozenset({1040, 1053, 1152, 1158, 1159, 1160, 1161, 1205, 1213, 1317, 1927, 4031})
#: The connection broke mid-use: retry once on a fresh one.
_LOST_CODES = frozenset({0, 2006, 2013, 2055})


def _code(exc: BaseException) -> int:
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return int(exc.args[0])
    return 0


def _message(exc: BaseException) -> str:
    if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) > 1:
        return f"{exc.args[1]} (error {exc.args[0]})"
    return str(exc) or type(exc).__name__


def _expiry_at(now: float, lifetime: int) -> int:
    """Unix time, rounded down to the second, at which a session idle since *now* expires.

    Rounding down means a session is never served after its lifetime (it may
    end up to one second early): the column holds whole seconds.
    """
    return min(max(math.floor(now + lifetime), 0), _EXPIRY_MAX)


def _refresh_step(lifetime: int) -> int:
    """Seconds a read must gain on the stored expiry before it is written (throttles refreshes)."""
    return max(1, lifetime // 60)


def _placeholders(n: int) -> str:
    return ", ".join(["%s"] * n)


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


class MySQLProvider(Provider):
    """Sessions in a MySQL/MariaDB table shared by every process that uses it.

    Construct it through a :class:`~gosession_tornado.SessionManager` with
    provider name ``"mysql"``; all methods run inside the provider's actor.
    """

    extra = "mysql"

    def __init__(self) -> None:
        super().__init__()
        #: Parsed connection settings (after ``session_init``).
        self.settings: MySQLSettings | None = None
        #: Statements sent to the server, by first SQL word (``"select"``, ``"update"``, ``"begin"`` …).
        self.statements: collections.Counter[str] = collections.Counter()
        self._pool: Any = None
        self._prepared: weakref.WeakSet[Any] = weakref.WeakSet()
        self._table = "`session`"
        self._timeout = 5.0
        #: Longest session id the key column holds (characters).
        self.max_sid_length = 64
        #: Largest encoded session the table (and ``max_allowed_packet``) accepts, in bytes.
        self.max_payload = MEDIUMBLOB_MAX
        self._max_statement = 8 * 1024 * 1024

    # ------------------------------------------------------------ setup

    @classmethod
    def configure_manager(cls, config: ManagerConfig) -> ManagerConfig:
        """Parse ``provider_config`` at once, so a bad DSN fails in ``SessionManager(...)``.

        :raises ConfigError: for a malformed DSN, URL or dict.
        """
        parse_mysql_config(config.provider_config)
        return config

    async def session_init(self, max_lifetime: int, config: Any) -> None:
        """Parse *config*, open the pool, create or check the table.

        :raises ConfigError: for a bad config, bad credentials, an unknown
            database, an incompatible table, or session ids that would not fit
            the key column.
        :raises ProviderUnavailableError: if the server cannot be reached.
        """
        self.max_lifetime = max_lifetime
        settings = parse_mysql_config(config)
        mc = self.manager_config
        timeout = getattr(mc, "provider_timeout", None)
        self._timeout = float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else 5.0
        self.settings = settings
        self._table = f"`{settings.table}`"
        try:
            self._pool = await aiomysql.create_pool(
                minsize=settings.minsize,
                maxsize=settings.maxsize,
                pool_recycle=settings.pool_recycle,
                host=settings.host,
                port=settings.port,
                unix_socket=settings.unix_socket,
                user=settings.user or None,
                password=settings.password,
                db=settings.database,
                charset=settings.charset,
                autocommit=True,
                connect_timeout=self._connect_timeout(settings),
                ssl=self._ssl_context(settings.tls),
            )
        except (pymysql.err.MySQLError, OSError) as exc:
            raise self._translate(exc) from exc
        try:
            await self._run(self._setup_table)
            if mc is not None:
                longest = len(mc.session_id_prefix) + 2 * mc.session_id_length
                if longest > self.max_sid_length:
                    raise ConfigError(
                        f"session ids of this manager can be {longest} characters long, but the mysql "
                        f"table {settings.table!r} stores at most {self.max_sid_length} "
                        "(session_key CHAR(64), as beego); lower session_id_length "
                        f"(at most {(self.max_sid_length - len(mc.session_id_prefix)) // 2}) "
                        "or shorten session_id_prefix",
                        key="session_id_length",
                    )
        except BaseException:
            await self._close_pool()
            raise

    def _connect_timeout(self, settings: MySQLSettings) -> float:
        """Connect timeout in seconds: the configured one, kept below ``provider_timeout``."""
        limit = self._timeout
        default = max(0.05, limit * 0.5)
        wanted = settings.connect_timeout
        if not wanted:  # None or 0 (Go: no timeout) -> ours
            return default
        if wanted >= limit:
            capped = max(0.05, limit * 0.8)
            warnings.warn(
                f"mysql connect timeout {wanted:g} s is not below provider_timeout {limit:g} s; "
                f"using {capped:g} s (raise provider_timeout to allow more)",
                UserWarning,
                stacklevel=2,
            )
            return capped
        return wanted

    @staticmethod
    def _ssl_context(mode: str) -> ssl.SSLContext | None:
        if mode == "false":
            return None
        ctx = ssl.create_default_context()
        if mode in ("skip-verify", "preferred"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def _setup_table(self, conn: Any) -> None:
        columns = await self._columns(conn)
        if not columns:
            await self._query(
                conn,
                f"CREATE TABLE IF NOT EXISTS {self._table} ("
                "`session_key` CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, "
                "`session_data` MEDIUMBLOB, "
                "`session_expiry` INT UNSIGNED NOT NULL, "
                "PRIMARY KEY (`session_key`), "
                "KEY `session_expiry` (`session_expiry`)"
                ") ENGINE=InnoDB",
            )
            columns = await self._columns(conn)
        assert self.settings is not None
        table = self.settings.table

        def bad(msg: str) -> ConfigError:
            return ConfigError(
                f"mysql table {table!r} is not a session table: {msg}; expected beego's "
                "session(session_key char(64) primary key, session_data blob, session_expiry int unsigned)",
                key="table",
            )

        for name in ("session_key", "session_data", "session_expiry"):
            if name not in columns:
                raise bad(f"column {name!r} is missing")
        key_type, key_len = columns["session_key"]
        data_type, data_len = columns["session_data"]
        expiry_type, _ = columns["session_expiry"]
        if key_type not in _KEY_TYPES or not key_len:
            raise bad(f"session_key is {key_type}")
        if data_type not in _BLOB_TYPES or not data_len:
            raise bad(f"session_data is {data_type}, not a binary type")
        if expiry_type not in _INT_TYPES:
            raise bad(f"session_expiry is {expiry_type}")
        self.max_sid_length = key_len
        _, rows = await self._query(
            conn,
            "SELECT ENGINE, @@max_allowed_packet FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            [table],
        )
        engine, packet = (rows[0][0], int(rows[0][1])) if rows else ("", 16 * 1024 * 1024)
        if str(engine).lower() != "innodb":
            log.warning(
                "mysql session table %r uses engine %s: without InnoDB transactions, concurrent "
                "requests on one session may lose updates (ALTER TABLE … ENGINE=InnoDB)",
                table,
                engine,
            )
        # Bytes are escaped client-side and may double in the worst case.
        self._max_statement = max(64 * 1024, packet // 2 - 4096)
        self.max_payload = max(1, min(data_len, self._max_statement - 1024))

    async def _columns(self, conn: Any) -> dict[str, tuple[str, int]]:
        assert self.settings is not None
        _, rows = await self._query(
            conn,
            "SELECT COLUMN_NAME, DATA_TYPE, CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            [self.settings.table],
        )
        return {str(r[0]).lower(): (str(r[1]).lower(), int(r[2] or 0)) for r in rows}

    async def session_close(self) -> None:
        await self._close_pool()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pool.clear(), max(0.1, self._timeout / 2))  # polite COM_QUIT
        pool.terminate()
        with contextlib.suppress(Exception):
            await pool.wait_closed()

    # ------------------------------------------------------------ plumbing

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection, prepared once; closed instead of reused after any error."""
        pool = self._pool
        if pool is None:
            raise ProviderUnavailableError(
                "mysql session provider is not open (session_init failed or the manager was closed)"
            )
        conn = await pool.acquire()
        try:
            if conn not in self._prepared:
                await self._prepare(conn)
            yield conn
        except BaseException:
            conn.close()  # mid-query or mid-transaction: its state is unknown
            raise
        finally:
            await pool.release(conn)

    async def _prepare(self, conn: Any) -> None:
        """Per connection: READ COMMITTED (no gap locks) and lock waits shorter than a call.

        :raises ConfigError: if ``tls`` is ``true`` or ``skip-verify`` and the server offers
            no TLS (aiomysql would silently go on unencrypted; the Go driver refuses too).
        """
        assert self.settings is not None
        if self.settings.tls in ("true", "skip-verify") and not (
            getattr(conn, "server_capabilities", 0) & CLIENT.SSL
        ):
            raise ConfigError(
                f"mysql server at {self.settings.where} does not offer TLS but provider_config "
                f"asks for tls={self.settings.tls}; enable TLS on the server, or use tls=preferred "
                "to allow an unencrypted connection",
                key="tls",
            )
        await self._query(conn, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        assigns = dict(self.settings.variables)
        assigns.setdefault("innodb_lock_wait_timeout", str(max(1, int(self._timeout / 2))))
        await self._query(conn, "SET SESSION " + ", ".join(f"{k} = {v}" for k, v in assigns.items()))
        self._prepared.add(conn)

    async def _query(self, conn: Any, sql: str, args: Sequence[Any] | None = None) -> tuple[int, list[Any]]:
        """Run one statement; returns (affected or found rows, fetched rows)."""
        self.statements[sql.split(None, 1)[0].lower()] += 1
        async with conn.cursor() as cur:
            await cur.execute(sql, args)
            rows = await cur.fetchall()
            return int(cur.rowcount), list(rows or ())

    async def _begin(self, conn: Any) -> None:
        self.statements["begin"] += 1
        await conn.begin()

    async def _commit(self, conn: Any) -> None:
        self.statements["commit"] += 1
        await conn.commit()

    async def _run(self, op: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run *op* on a pooled connection, retrying deadlocks, key races and lost connections.

        *op* must be safe to repeat from the start (each attempt is a fresh
        transaction on a fresh connection).
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._connection() as conn:
                    return await op(conn)
            except (pymysql.err.MySQLError, OSError) as exc:
                code = _code(exc)
                if code in (_ER_LOCK_DEADLOCK, _ER_DUP_ENTRY) and attempt <= _CONFLICT_RETRIES:
                    log.debug("mysql: %s, retrying", _message(exc))
                    continue
                lost = code in _LOST_CODES and isinstance(
                    exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError)
                )
                if lost and attempt == 1:
                    log.debug("mysql: connection lost (%s), retrying on a fresh one", _message(exc))
                    continue
                raise self._translate(exc) from exc

    def _translate(self, exc: BaseException) -> SessionError:
        where = self.settings.where if self.settings else "?"
        code = _code(exc)
        msg = _message(exc)
        if code in _CONFIG_CODES:
            return ConfigError(
                f"mysql session store at {where}: {msg}; check user, password, database and "
                "parameters in provider_config",
                key="provider_config",
            )
        if (
            code in _BUSY_CODES
            or code >= 2000
            or isinstance(exc, (pymysql.err.InterfaceError, OSError))
            or (code in _LOST_CODES and isinstance(exc, pymysql.err.OperationalError))
        ):
            return ProviderUnavailableError(
                f"mysql session store at {where} is unavailable: {msg}; is the server up? "
                "(sessions work again as soon as it answers)"
            )
        return SessionError(f"mysql session store at {where} failed: {msg}")

    def _storable(self, sid: str) -> bool:
        return len(sid) <= self.max_sid_length and _SID_RE.match(sid) is not None

    def _decode(self, sid: str, blob: bytes | None) -> tuple[dict[Any, Any], int] | None:
        """``(data, lifetime)`` from a stored row, or ``None`` (logged) if it is not ours/corrupt."""
        try:
            record = codec.decode(bytes(blob or b""))
            data = record["data"]
            lifetime = record.get("lifetime", self.max_lifetime)
            if not isinstance(data, dict) or isinstance(lifetime, bool) or not isinstance(lifetime, int):
                raise ValueError("unexpected record layout")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("mysql session %s…: undecodable session_data treated as missing: %s", sid[:8], exc)
            return None
        return data, lifetime

    def _encode(self, data: dict[Any, Any], lifetime: int) -> bytes:
        blob = codec.encode({"data": data, "lifetime": lifetime})
        if len(blob) > self.max_payload:
            raise SessionError(
                f"encoded session is {len(blob)} bytes, over the {self.max_payload}-byte limit of the "
                "mysql session table (column size / max_allowed_packet); store less in the session"
            )
        return blob

    # ------------------------------------------------------------ batched operations

    async def _lookup(self, sids: Sequence[str], refresh: set[str]) -> dict[str, tuple[bytes, int]]:
        """Live rows of *sids* as ``{sid: (session_data, lifetime)}`` in one SELECT.

        Rows of sids in *refresh* get their expiry moved to now + lifetime, in
        one UPDATE that leaves rows alone whose expiry changed meanwhile.
        """
        keys = sorted({s for s in sids if self._storable(s)})
        if not keys:
            return {}

        async def op(conn: Any) -> dict[str, tuple[bytes, int]]:
            now = time.time()
            _, rows = await self._query(
                conn,
                f"SELECT session_key, session_data, session_expiry FROM {self._table} "
                f"WHERE session_key IN ({_placeholders(len(keys))}) AND session_expiry > %s",
                [*keys, now],
            )
            found: dict[str, tuple[bytes, int]] = {}
            bumps: list[tuple[str, int, int]] = []
            for key, blob, expiry in rows:
                decoded = self._decode(key, blob)
                if decoded is None:
                    continue
                lifetime = decoded[1]
                found[key] = (bytes(blob), lifetime)
                new = _expiry_at(now, lifetime)
                if key in refresh and new - int(expiry) >= _refresh_step(lifetime):
                    bumps.append((key, int(expiry), new))
            if bumps:
                await self._refresh(conn, bumps)
            return found

        return await self._run(op)

    async def _refresh(self, conn: Any, bumps: list[tuple[str, int, int]]) -> None:
        when_new = " ".join(["WHEN %s THEN %s"] * len(bumps))
        args: list[Any] = []
        for key, _, new in bumps:
            args += [key, new]
        args += [key for key, _, _ in bumps]
        for key, old, _ in bumps:
            args += [key, old]
        try:
            await self._query(
                conn,
                f"UPDATE {self._table} SET session_expiry = CASE session_key {when_new} END "
                f"WHERE session_key IN ({_placeholders(len(bumps))}) "
                f"AND session_expiry = CASE session_key {when_new} END",
                args,
            )
        except pymysql.err.OperationalError as exc:
            if _code(exc) not in (_ER_LOCK_WAIT_TIMEOUT, _ER_LOCK_DEADLOCK):
                raise
            # Someone holds the row; their write sets a fresh expiry anyway.
            log.debug("mysql: expiry refresh skipped: %s", _message(exc))

    async def _release_many(self, items: Sequence[Release]) -> list[Any]:
        """Apply every release in one transaction; one outcome (None or exception) per item."""
        keys = sorted({m.sid for m in items if self._storable(m.sid)})

        async def op(conn: Any) -> list[Any]:
            outcomes: list[Any] = [None] * len(items)
            for i, m in enumerate(items):
                if not self._storable(m.sid):
                    outcomes[i] = SessionError(
                        f"session id of {len(m.sid)} characters cannot be stored in the mysql table "
                        f"(at most {self.max_sid_length} of [A-Za-z0-9_-])"
                    )
            if not keys:
                return outcomes
            await self._begin(conn)
            now = time.time()
            _, rows = await self._query(
                conn,
                f"SELECT session_key, session_data, session_expiry FROM {self._table} "
                f"WHERE session_key IN ({_placeholders(len(keys))}) FOR UPDATE",
                keys,
            )
            state = {key: _Row(in_table=False) for key in keys}
            for key, blob, expiry in rows:
                row = state[key] = _Row(in_table=True)
                if int(expiry) > now:
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
                (updates if row.in_table else inserts).append((key, blob, _expiry_at(now, row.lifetime)))
            for chunk in self._chunks(updates):
                when = " ".join(["WHEN %s THEN %s"] * len(chunk))
                args: list[Any] = []
                for key, blob, _ in chunk:
                    args += [key, blob]
                for key, _, expiry in chunk:
                    args += [key, expiry]
                args += [key for key, _, _ in chunk]
                await self._query(
                    conn,
                    f"UPDATE {self._table} SET session_data = CASE session_key {when} END, "
                    f"session_expiry = CASE session_key {when} END "
                    f"WHERE session_key IN ({_placeholders(len(chunk))})",
                    args,
                )
            for chunk in self._chunks(inserts):
                await self._query(
                    conn,
                    f"INSERT INTO {self._table} (session_key, session_data, session_expiry) VALUES "
                    + ", ".join(["(%s, %s, %s)"] * len(chunk)),
                    [v for row3 in chunk for v in row3],
                )
            await self._commit(conn)
            return outcomes

        return await self._run(op)

    def _chunks(self, rows: list[tuple[str, bytes, int]]) -> list[list[tuple[str, bytes, int]]]:
        """Split rows so that no statement exceeds the packet budget (a large row goes alone)."""
        chunks: list[list[tuple[str, bytes, int]]] = []
        current: list[tuple[str, bytes, int]] = []
        size = 0
        for row in rows:
            cost = 2 * len(row[1]) + 3 * len(row[0]) + 64
            if current and size + cost > self._max_statement:
                chunks.append(current)
                current, size = [], 0
            current.append(row)
            size += cost
        if current:
            chunks.append(current)
        return chunks

    async def _destroy_many(self, sids: Sequence[str]) -> None:
        keys = sorted({s for s in sids if self._storable(s)})
        if not keys:
            return

        async def op(conn: Any) -> None:
            await self._query(
                conn,
                f"DELETE FROM {self._table} WHERE session_key IN ({_placeholders(len(keys))})",
                keys,
            )

        await self._run(op)

    # ------------------------------------------------------------ beego's verbs

    async def session_read(self, sid: str) -> SessionData | None:
        found = await self._lookup([sid], {sid})
        row = found.get(sid)
        if row is None:
            return None
        decoded = self._decode(sid, row[0])
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
            raise SessionError(
                f"session id of {len(sid)} characters cannot be stored in the mysql table "
                f"(at most {self.max_sid_length} of [A-Za-z0-9_-])"
            )
        keys = sorted({k for k in (old_sid, sid) if self._storable(k)})

        async def op(conn: Any) -> SessionData:
            await self._begin(conn)
            now = time.time()
            _, rows = await self._query(
                conn,
                f"SELECT session_key, session_data, session_expiry FROM {self._table} "
                f"WHERE session_key IN ({_placeholders(len(keys))}) FOR UPDATE",
                keys,
            )
            live: dict[str, tuple[bytes, dict[Any, Any], int]] = {}
            present = set()
            for key, blob, expiry in rows:
                present.add(key)
                if int(expiry) > now:
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
                await self._query(conn, f"DELETE FROM {self._table} WHERE session_key = %s", [old_sid])
            expiry = _expiry_at(now, lifetime)
            if sid in present:
                await self._query(
                    conn,
                    f"UPDATE {self._table} SET session_data = %s, session_expiry = %s WHERE session_key = %s",
                    [blob, expiry, sid],
                )
            else:
                await self._query(
                    conn,
                    f"INSERT INTO {self._table} (session_key, session_data, session_expiry) "
                    "VALUES (%s, %s, %s)",
                    [sid, blob, expiry],
                )
            await self._commit(conn)
            return data

        return await self._run(op)

    async def session_all(self) -> int:
        async def op(conn: Any) -> int:
            _, rows = await self._query(
                conn, f"SELECT COUNT(*) FROM {self._table} WHERE session_expiry > %s", [time.time()]
            )
            return int(rows[0][0])

        return await self._run(op)

    async def session_gc(self) -> None:
        """Delete expired rows, in chunks of 5000, for at most half of ``provider_timeout``.

        Whatever is left goes in the next pass; expired rows are never served meanwhile.
        """
        deadline = time.monotonic() + self._timeout / 2

        async def op(conn: Any) -> int:
            deleted, _ = await self._query(
                conn,
                f"DELETE FROM {self._table} WHERE session_expiry <= %s LIMIT {_GC_CHUNK}",
                [time.time()],
            )
            return deleted

        while await self._run(op) >= _GC_CHUNK and time.monotonic() < deadline:
            pass

    # ------------------------------------------------------------ batching

    async def handle_batch(self, messages: Sequence[Message]) -> list[Any]:
        """Turn a drained mailbox into few statements.

        Reads and existence checks share one ``SELECT … IN (…)`` (and one expiry
        ``UPDATE``), releases one transaction, destroys one ``DELETE … IN (…)``;
        the groups run concurrently on separate pooled connections (messages in
        one batch are concurrent, so any order is a valid one). Other messages
        run one by one. Each message gets its own outcome.
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
                    row = found.get(m.sid)
                    decoded = None if row is None else self._decode(m.sid, row[0])
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
