"""The ``mysql`` provider: sessions in a MySQL/MariaDB table, beego's schema, via aiomysql.

``provider_config`` is a Go DSN (``user:pass@tcp(127.0.0.1:3306)/dbname?table=session``),
a ``mysql://`` URL or a dict; see :mod:`gosession_tornado.providers.sql.mysql_dsn`. Needs the
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
* A release of a session this process read or wrote last is one
  compare-and-swap ``UPDATE … WHERE session_key = … AND session_data =
  <what was read> AND session_expiry > now`` in autocommit (the connections
  use ``CLIENT.FOUND_ROWS``, so a row rewritten with the same bytes still
  counts as matched); a new session's first save is one ``INSERT``. A release
  whose row changed meanwhile (another process), or of a session this
  process does not remember, locks the row (``SELECT … FOR UPDATE`` in a
  READ COMMITTED transaction), applies the request's
  :class:`~gosession_tornado.provider.Changes` to what is stored *now* and
  writes it back, so concurrent requests, in this process or others, lose no
  keys. A missing or expired row is recreated only for a new session
  (``changes.create``), never resurrected.
* The actor's batches become few statements: all reads and existence checks
  of a batch are one ``SELECT … WHERE session_key IN (…)`` (plus one
  ``UPDATE`` for the expiry refresh); all releases one ``UPDATE`` (``CASE``
  per row) plus, if needed, one ``INSERT`` and one locked transaction; all
  destroys one ``DELETE … IN (…)``. A read and a release at concurrency 1 are
  two statements. :attr:`MySQLProvider.statements` counts the statements
  sent, by verb.
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
# in mysql_dsn.py and backtick-quoted) and from "%s" placeholder lists; every value is a parameter,
# except in the lookup and release statements, which inline session ids (checked against
# [A-Za-z0-9_-] by _key), integers and records as hex literals (X'…').
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
import weakref
from collections.abc import Sequence
from typing import Any

import aiomysql
import pymysql
from pymysql.constants import CLIENT

from ..._log import get_logger
from ...errors import ConfigError, ProviderUnavailableError
from ...provider import refresh_step
from .base import GC_CHUNK, SID_RE, Found, SQLBatchProvider, SwapRow, WriteRow, split_rows
from .mysql_dsn import MySQLSettings, parse_mysql_config

__all__ = ["MySQLProvider", "MEDIUMBLOB_MAX"]

log = get_logger("gosession_tornado.mysql")

#: Largest value a MEDIUMBLOB holds, in bytes.
MEDIUMBLOB_MAX = 2**24 - 1
_BLOB_TYPES = {"tinyblob", "blob", "mediumblob", "longblob", "varbinary", "binary"}
_KEY_TYPES = {"char", "varchar", "binary", "varbinary"}
_INT_TYPES = {"int", "bigint", "mediumint"}
_EXPIRY_MAX = 2**32 - 1

# MySQL/MariaDB error codes.
_ER_DUP_ENTRY = 1062
_ER_LOCK_WAIT_TIMEOUT = 1205
_ER_LOCK_DEADLOCK = 1213
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


def _placeholders(n: int) -> str:
    return ", ".join(["%s"] * n)


def _hex(blob: bytes) -> str:
    """*blob* as a MySQL hex literal: no escaping, whatever the connection's charset or sql_mode."""
    return f"X'{blob.hex()}'"


def _key(sid: str) -> str:
    """*sid* as a string literal; only ids of ``[A-Za-z0-9_-]`` ever get here (checked again)."""
    if SID_RE.match(sid) is None:  # pragma: no cover - callers pass storable ids only
        raise ValueError("session id with characters outside [A-Za-z0-9_-]")
    return f"'{sid}'"


class MySQLProvider(SQLBatchProvider[MySQLSettings]):
    """Sessions in a MySQL/MariaDB table (InnoDB, beego's schema), through aiomysql.

    Statements inline session ids and records as literals (ids are checked
    against ``[A-Za-z0-9_-]``, records are hex), so a batch of any size is one
    statement per ``max_allowed_packet``.
    """

    extra = "mysql"
    dialect = "mysql"
    payload_limit = "mysql session table (column size / max_allowed_packet)"
    key_column = "session_key CHAR(64), as beego"
    table_shape = "session(session_key char(64) primary key, session_data blob, session_expiry int unsigned)"
    quote = "`"
    _log = log
    _driver_errors = (pymysql.err.MySQLError, OSError)
    _parse_config = staticmethod(parse_mysql_config)

    def __init__(self) -> None:
        super().__init__()
        self._prepared: weakref.WeakSet[Any] = weakref.WeakSet()
        #: Largest encoded session the table (and ``max_allowed_packet``) accepts, in bytes.
        self.max_payload = MEDIUMBLOB_MAX
        self._max_statement = 8 * 1024 * 1024

    # ------------------------------------------------------------ setup

    async def _open_pool(self, settings: MySQLSettings) -> Any:
        pool = await aiomysql.create_pool(
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
            # UPDATE reports the rows it matched, not only those it changed: a
            # compare-and-swap that rewrites identical bytes still says "1".
            client_flag=CLIENT.FOUND_ROWS,
            connect_timeout=self._connect_timeout(settings),
            ssl=self._ssl_context(settings.tls),
        )
        if settings.pool_recycle >= 0:
            self._hold_seconds = min(60.0, settings.pool_recycle)
        return pool

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
        bad = self._not_a_session_table
        self._check_columns(columns)
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

    async def _acquire(self) -> Any:
        """A pooled connection, prepared once (closed again if preparing fails)."""
        pool = self._pool
        if pool is None:
            raise ProviderUnavailableError(
                "mysql session provider is not open (session_init failed or the manager was closed)"
            )
        conn = await pool.acquire()
        if conn not in self._prepared:
            try:
                await self._prepare(conn)
            except BaseException:
                conn.close()
                pool.release(conn)
                raise
        return conn

    async def _release(self, conn: Any) -> None:
        pool = self._pool
        if pool is None:
            conn.close()
        else:
            pool.release(conn)

    async def _discard(self, conn: Any, exc: BaseException | None) -> None:
        conn.close()  # mid-query or mid-transaction: its state is unknown
        await self._release(conn)

    def _usable(self, conn: Any) -> bool:
        reader = getattr(conn, "_reader", None)
        return not conn.closed and not (reader is not None and (reader.at_eof() or reader.exception()))

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

    def _is_conflict(self, exc: BaseException) -> bool:
        return _code(exc) in (_ER_LOCK_DEADLOCK, _ER_DUP_ENTRY)

    def _is_lost(self, exc: BaseException) -> bool:
        return _code(exc) in _LOST_CODES and isinstance(
            exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError)
        )

    def _describe(self, exc: BaseException) -> str:
        return _message(exc)

    def _config_fault(self, exc: BaseException) -> tuple[str, str] | None:
        if _code(exc) in _CONFIG_CODES:
            return "provider_config", "check user, password, database and parameters in provider_config"
        return None

    def _unavailable(self, exc: BaseException) -> bool:
        code = _code(exc)
        return (
            code in _BUSY_CODES
            or code >= 2000
            or isinstance(exc, (pymysql.err.InterfaceError, OSError))
            or (code in _LOST_CODES and isinstance(exc, pymysql.err.OperationalError))
        )

    # ------------------------------------------------------------ statements

    async def _lookup_rows(self, conn: Any, keys: list[str], refresh: set[str]) -> Found:
        """Live, decodable rows of *keys* as ``{sid: (session_data, data)}`` in one SELECT.

        Rows of sids in *refresh* get their expiry moved to now + lifetime, in
        one UPDATE that leaves rows alone whose expiry changed meanwhile.
        """
        now = time.time()
        _, rows = await self._query(
            conn,
            f"SELECT session_key, session_data, session_expiry FROM {self._table} "
            f"WHERE session_key IN ({', '.join(map(_key, keys))}) AND session_expiry > {math.floor(now)}",
        )
        found, due = self._decode_found(rows, refresh)
        bumps: list[tuple[str, int, int]] = []
        for key, lifetime, expiry in due:
            new = _expiry_at(now, lifetime)
            if new - int(expiry) >= refresh_step(lifetime):
                bumps.append((key, int(expiry), new))
        if bumps:
            await self._refresh(conn, bumps)
        return found

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

    async def _lock_rows(self, conn: Any, keys: list[str], now: float) -> list[tuple[str, Any, bool]]:
        _, rows = await self._query(
            conn,
            f"SELECT session_key, session_data, session_expiry FROM {self._table} "
            f"WHERE session_key IN ({_placeholders(len(keys))}) FOR UPDATE",
            keys,
        )
        return [(key, blob, int(expiry) > now) for key, blob, expiry in rows]

    async def _swap_rows(
        self, conn: Any, rows: list[SwapRow], now: float, exact: bool
    ) -> tuple[set[str], set[str]]:
        """One autocommit UPDATE per packet-sized chunk: new record where the old one still is.

        The server says how many rows matched (``CLIENT.FOUND_ROWS``), not
        which: a chunk that matched only some of its rows leaves them all
        unsure. With *exact* (increments), every row is its own statement.
        """
        live_after = math.floor(now)  # expiry (whole seconds) > now  <=>  expiry > floor(now)
        written: set[str] = set()
        unsure: set[str] = set()
        chunks = [[row] for row in rows] if exact else split_rows(rows, self._max_statement, (1, 3), factor=2)
        for chunk in chunks:
            if len(chunk) == 1:
                key, blob, lifetime, old = chunk[0]
                sql = (
                    f"UPDATE {self._table} SET session_data = {_hex(blob)}, "
                    f"session_expiry = {_expiry_at(now, lifetime)} WHERE session_key = {_key(key)} "
                    f"AND session_data = {_hex(old)} AND session_expiry > {live_after}"
                )
            else:
                keys = [_key(r[0]) for r in chunk]
                new = " ".join(f"WHEN {k} THEN {_hex(r[1])}" for k, r in zip(keys, chunk))
                expiry = " ".join(f"WHEN {k} THEN {_expiry_at(now, r[2])}" for k, r in zip(keys, chunk))
                olds = " ".join(f"WHEN {k} THEN {_hex(r[3])}" for k, r in zip(keys, chunk))
                sql = (
                    f"UPDATE {self._table} SET session_data = CASE session_key {new} END, "
                    f"session_expiry = CASE session_key {expiry} END "
                    f"WHERE session_key IN ({', '.join(keys)}) AND session_expiry > {live_after} "
                    f"AND session_data = CASE session_key {olds} END"
                )
            matched, _ = await self._query(conn, sql)
            if matched == len(chunk):
                written.update(r[0] for r in chunk)
            elif matched:
                unsure.update(r[0] for r in chunk)
        return written, unsure

    async def _insert_new(self, conn: Any, rows: list[WriteRow], now: float) -> set[str]:
        """One autocommit multi-row INSERT per chunk; a chunk that hits an existing key inserts nothing."""
        done: set[str] = set()
        for chunk in split_rows(rows, self._max_statement, factor=2):
            values = ", ".join(f"({_key(k)}, {_hex(b)}, {_expiry_at(now, lt)})" for k, b, lt in chunk)
            try:
                await self._query(
                    conn,
                    f"INSERT INTO {self._table} (session_key, session_data, session_expiry) VALUES {values}",
                )
            except pymysql.err.IntegrityError as exc:
                if _code(exc) != _ER_DUP_ENTRY:
                    raise
                continue  # the statement is atomic: none of the chunk went in
            done.update(k for k, _, _ in chunk)
        return done

    async def _write_rows(
        self, conn: Any, updates: list[WriteRow], inserts: list[WriteRow], now: float
    ) -> None:
        budget = self._max_statement
        for chunk in split_rows([(k, b, _expiry_at(now, lt)) for k, b, lt in updates], budget, factor=2):
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
        for chunk in split_rows([(k, b, _expiry_at(now, lt)) for k, b, lt in inserts], budget, factor=2):
            await self._query(
                conn,
                f"INSERT INTO {self._table} (session_key, session_data, session_expiry) VALUES "
                + ", ".join(["(%s, %s, %s)"] * len(chunk)),
                [v for row3 in chunk for v in row3],
            )

    async def _delete_rows(self, conn: Any, keys: list[str]) -> None:
        await self._query(
            conn,
            f"DELETE FROM {self._table} WHERE session_key IN ({_placeholders(len(keys))})",
            keys,
        )

    async def _delete_one(self, conn: Any, sid: str) -> None:
        await self._query(conn, f"DELETE FROM {self._table} WHERE session_key = %s", [sid])

    async def _put_one(
        self, conn: Any, sid: str, blob: bytes, lifetime: int, exists: bool, now: float
    ) -> None:
        expiry = _expiry_at(now, lifetime)
        if exists:
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

    async def _count_live(self, conn: Any) -> int:
        _, rows = await self._query(
            conn, f"SELECT COUNT(*) FROM {self._table} WHERE session_expiry > %s", [time.time()]
        )
        return int(rows[0][0])

    async def _gc_chunk(self, conn: Any) -> int:
        deleted, _ = await self._query(
            conn,
            f"DELETE FROM {self._table} WHERE session_expiry <= %s LIMIT {GC_CHUNK}",
            [time.time()],
        )
        return deleted
