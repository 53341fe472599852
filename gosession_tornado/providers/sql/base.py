"""What the SQL providers (``mysql``, ``postgresql``) share: batching, the record codec, the verbs.

:class:`SQLBatchProvider` holds the logic that does not depend on the
database: how a drained mailbox becomes few statements, how a release
applies :class:`~gosession_tornado.provider.Changes`, how an id moves
(``session_regenerate``), the stored record
``codec.encode({"data": {...}, "lifetime": seconds})``, the connections the
actor keeps at hand and the retry loop around them. A subclass supplies the
SQL and the driver: the hooks below marked "subclass".

How a release is written
------------------------

The provider remembers (in a bounded LRU owned by the actor,
:attr:`SQLBatchProvider.known_max_entries` entries) the exact
``session_data`` each session had when this process last read or wrote it.
A release of a remembered session is **one compare-and-swap statement**,
without a transaction: the remembered record, with the request's changes
applied, is written ``WHERE session_key = … AND session_data = <remembered>
AND session_expiry > now``. It matches only if nobody changed the row since,
and the row is still live, so it writes exactly what a locked
read-modify-write would have written. All such releases of a batch share one
statement (and a new session's first save is one ``INSERT``).

A release that finds no match (another process wrote the row meanwhile, it
expired, it was destroyed or moved) or of a session this process does not
remember goes the safe way: a transaction that locks the rows
(``SELECT … FOR UPDATE``), applies the changes to what is stored *now* and
writes back; a missing or expired row is then recreated only for a new
session (``changes.create``), never resurrected.

A compare-and-swap may be retried after a lost connection, and (mysql) a
multi-row one only says how many rows matched, not which. For such a row
only (outcome unknown), the locked path treats a row that already holds
exactly the record the attempt wrote as written. That is safe because those
changes are idempotent (``set``, ``delete`` and ``flush`` give the same
result applied once or twice). Increments (``Session.incr``) are not:
releases carrying them get a compare-and-swap whose answer says exactly
whether it was written (mysql: one statement per row), are never sent again
once a lost connection may have let them through (the release fails with
:class:`~gosession_tornado.errors.ProviderUnavailableError` instead: counted
at most once), and a row that merely *looks* written (another request added
the same increment) gets theirs applied on top.

What holds (for every subclass):

* ``statements`` counts the statements sent, by first SQL word.
* A session id that does not fit the key column (or is not ``[A-Za-z0-9_-]``)
  is unknown to reads and refused by writes with a :class:`SessionError`.
* A row that does not decode to ``{"data": dict, "lifetime": int}`` is
  treated as missing (and logged), never served.
* An encoded session over ``max_payload`` bytes is refused with a
  :class:`SessionError`; the other sessions of the batch are still written.
* Connections: the actor keeps up to two pooled connections at hand between
  batches (no pool round trip per batch); one that failed or was cancelled
  mid-statement is closed, never reused.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import operator
import re
import time
import warnings
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from ... import codec
from ..._log import get_logger
from ...errors import ConfigError, ProviderUnavailableError, SessionError
from ...provider import (
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
    from ...config import ManagerConfig

__all__ = ["SQLBatchProvider", "Settings", "SettingsT"]

_T = TypeVar("_T")
_R = TypeVar("_R", bound=tuple[Any, ...])

SID_RE = re.compile(r"^[A-Za-z0-9_-]+\Z")
#: Rows one GC statement deletes at most.
GC_CHUNK = 5000
#: A conflicting operation is retried (whole, on a fresh transaction) this many times at most.
CONFLICT_RETRIES = 3
#: Connections the actor keeps at hand between batches (reads and releases of one
#: batch run concurrently: two).
HOLD_CONNECTIONS = 2

#: Bytes counted per row for its key, numbers and SQL around them (ids are at most 160 characters).
_ROW_ALLOWANCE = 4 * 160 + 128

#: A row to write: (session id, encoded record, lifetime in seconds).
WriteRow = tuple[str, bytes, int]
#: A compare-and-swap: (session id, new record, lifetime in seconds, the record it replaces).
SwapRow = tuple[str, bytes, int, bytes]
#: A looked-up row: session id -> (stored record, its decoded data).
Found = dict[str, tuple[bytes, SessionData]]


def split_rows(rows: list[_R], budget: int, blobs: tuple[int, ...] = (1,), factor: int = 1) -> list[list[_R]]:
    """*rows* in chunks whose bytes (``factor`` × the blob fields at *blobs*, plus an
    allowance for key and numbers) stay within *budget*; a row over it goes alone.

    The usual case, everything in one chunk, is decided in C (no call per row).
    No rows, no chunks.
    """
    if not rows:
        return []
    total = _ROW_ALLOWANCE * len(rows)
    for i in blobs:
        total += factor * sum(map(len, map(operator.itemgetter(i), rows)))
    if total <= budget:
        return [rows]
    chunks: list[list[_R]] = []
    current: list[_R] = []
    size = 0
    for row in rows:
        cost = _ROW_ALLOWANCE + factor * sum(len(row[i]) for i in blobs)
        if current and size + cost > budget:
            chunks.append(current)
            current, size = [], 0
        current.append(row)
        size += cost
    if current:
        chunks.append(current)
    return chunks


class Settings(Protocol):
    """What the base reads of a subclass's parsed settings."""

    @property
    def table(self) -> str: ...

    @property
    def connect_timeout(self) -> float | None: ...

    @property
    def where(self) -> str: ...


#: The settings type of a subclass (``MySQLSettings``, ``PostgreSQLSettings``).
SettingsT = TypeVar("SettingsT", bound=Settings)


class _Row:
    """A session row as a locked release transaction sees it."""

    __slots__ = ("blob", "data", "dirty", "in_table", "lifetime", "live", "members", "touched")

    def __init__(self, in_table: bool) -> None:
        self.in_table = in_table
        self.live = False
        self.data: dict[Any, Any] = {}
        self.lifetime = 0
        self.blob: bytes | None = None
        self.touched = False
        self.dirty = False
        self.members: list[int] = []


class SQLBatchProvider(Provider, Generic[SettingsT]):
    """A provider keeping sessions in one SQL table ``(session_key, session_data, session_expiry)``.

    Construct a subclass through a :class:`~gosession_tornado.SessionManager`
    with its provider name; all methods run inside the provider's actor.
    Subclasses set :attr:`dialect`, :attr:`payload_limit`, :attr:`key_column`,
    :attr:`table_shape`, :attr:`quote`, ``_log`` and ``_driver_errors``, and
    implement the hooks marked "subclass" (the driver and the SQL).
    """

    inline_when_idle = True

    #: Provider name, as said in messages and logs (``"mysql"``).
    dialect: ClassVar[str] = "sql"
    #: What limits the size of an encoded session, as said in the "too large" message.
    payload_limit: ClassVar[str] = "session table"
    #: How the key column is described in the "ids too long" message.
    key_column: ClassVar[str] = "session_key varchar(64)"
    #: The table this provider expects, as said when a table does not fit it.
    table_shape: ClassVar[str] = "session(session_key, session_data, session_expiry)"
    #: The character that quotes the table name in SQL.
    quote: ClassVar[str] = '"'
    _log: ClassVar[logging.Logger] = get_logger("gosession_tornado.sql")
    #: Driver exceptions :meth:`_run` retries or translates.
    _driver_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError,)
    #: Sessions whose stored record is remembered for compare-and-swap releases.
    known_max_entries: ClassVar[int] = 4096
    #: Bytes of remembered records at most (a larger record goes the locked way).
    known_max_bytes: ClassVar[int] = 8 * 1024 * 1024
    #: A record larger than this is not remembered (its releases go the locked way).
    known_max_record: ClassVar[int] = 64 * 1024

    max_payload: int

    def __init__(self) -> None:
        super().__init__()
        #: Statements sent to the server, by first SQL word (``"select"``, ``"update"``, ``"begin"`` …).
        self.statements: collections.Counter[str] = collections.Counter()
        #: Releases written by one compare-and-swap (``"swapped"``), a first ``INSERT``
        #: (``"inserted"``) or the locked path (``"locked"``), and swaps that found
        #: the row changed (``"conflicts"``).
        self.release_paths: collections.Counter[str] = collections.Counter()
        #: Parsed connection settings (after ``session_init``).
        self.settings: SettingsT | None = None
        self._pool: Any = None
        #: The table name, quoted for SQL (after ``session_init``).
        self._table = f"{self.quote}session{self.quote}"
        #: ``provider_timeout`` in seconds (after ``session_init``).
        self._timeout = 5.0
        self._sid_fits: Callable[[str], re.Match[str] | None] = SID_RE.match
        #: Longest session id the key column holds (characters).
        self.max_sid_length = 64
        #: sid -> the stored record as this process last read or wrote it (LRU order).
        self._known: dict[str, bytes] = {}
        self._known_bytes = 0
        #: Connections at hand between batches: (connection, monotonic time of last use).
        self._idle: list[tuple[Any, float]] = []
        #: Calls of ours waiting for the pool (a connection given back then goes to them).
        self._waiting = 0
        #: Seconds a connection may stay at hand unused before it goes back to the pool.
        self._hold_seconds = 60.0

    @property
    def max_sid_length(self) -> int:
        """Longest session id the key column holds (characters)."""
        return self._max_sid_length

    @max_sid_length.setter
    def max_sid_length(self, n: int) -> None:
        self._max_sid_length = n
        # One C call decides whether an id can be stored (see _storable).
        self._sid_fits = re.compile(rf"[A-Za-z0-9_-]{{1,{n}}}\Z").match

    # ------------------------------------------------------------ subclass hooks

    @staticmethod
    def _parse_config(config: Any) -> Any:  # pragma: no cover - subclass
        """Parse ``provider_config``; raises :class:`ConfigError`."""
        raise NotImplementedError

    async def _open_pool(self, settings: SettingsT) -> Any:  # pragma: no cover - subclass
        """The driver's connection pool for *settings* (the driver's errors pass through)."""
        raise NotImplementedError

    async def _setup_table(self, conn: Any) -> None:  # pragma: no cover - subclass
        """Create the table if it is missing, else check that it is a session table."""
        raise NotImplementedError

    async def _close_pool(self) -> None:  # pragma: no cover - subclass
        raise NotImplementedError

    async def _acquire(self) -> Any:  # pragma: no cover - subclass
        """A connection from the pool, ready for use (raises if the pool is not open)."""
        raise NotImplementedError

    async def _release(self, conn: Any) -> None:  # pragma: no cover - subclass
        """Give a healthy, idle connection back to the pool."""
        raise NotImplementedError

    async def _discard(self, conn: Any, exc: BaseException | None) -> None:  # pragma: no cover - subclass
        """Close *conn*, which failed with *exc* (or was cancelled), and give it back to the pool."""
        raise NotImplementedError

    def _usable(self, conn: Any) -> bool:
        """False for a connection at hand that is known to be closed."""
        return True

    def _config_fault(self, exc: BaseException) -> tuple[str, str] | None:  # pragma: no cover - subclass
        """``(key, what to check)`` if *exc* means the configuration is at fault, else ``None``."""
        raise NotImplementedError

    def _unavailable(self, exc: BaseException) -> bool:  # pragma: no cover - subclass
        """True if *exc* means the server is down, unreachable or cannot serve now."""
        raise NotImplementedError

    def _is_conflict(self, exc: BaseException) -> bool:  # pragma: no cover - subclass
        """A deadlock or key race: the operation is retried from the start."""
        raise NotImplementedError

    def _is_lost(self, exc: BaseException) -> bool:  # pragma: no cover - subclass
        """The connection broke mid-use: the operation is retried once on a fresh one."""
        raise NotImplementedError

    def _describe(self, exc: BaseException) -> str:
        """*exc* as said in debug logs."""
        return str(exc)

    def _explain(self, exc: BaseException) -> str:
        """*exc* as said in the errors callers see."""
        return self._describe(exc)

    async def _begin(self, conn: Any) -> None:  # pragma: no cover - subclass
        raise NotImplementedError

    async def _commit(self, conn: Any) -> None:  # pragma: no cover - subclass
        raise NotImplementedError

    async def _lookup_rows(
        self, conn: Any, keys: list[str], refresh: set[str]
    ) -> Found:  # pragma: no cover - subclass
        """Live, decodable rows of *keys* as ``{sid: (session_data, decoded data)}``.

        Refreshes the expiry of the rows of *refresh* that are a refresh step stale.
        """
        raise NotImplementedError

    async def _swap_rows(
        self, conn: Any, rows: list[SwapRow], now: float, exact: bool
    ) -> tuple[set[str], set[str]]:  # pragma: no cover - subclass
        """Compare-and-swap *rows*, no transaction: write the new record and expiry = now + lifetime
        where the row is live and holds exactly the old record.

        Returns ``(written, unsure)``: the sids written, and those that may or
        may not have been (a statement that says how many rows matched, not
        which). With *exact* (the rows carry increments) nothing may be
        unsure.
        """
        raise NotImplementedError

    async def _insert_new(
        self, conn: Any, rows: list[WriteRow], now: float
    ) -> set[str]:  # pragma: no cover - subclass
        """Insert rows of new sessions, no transaction; returns the sids inserted
        (a key already in the table is left alone)."""
        raise NotImplementedError

    async def _lock_rows(
        self, conn: Any, keys: list[str], now: float
    ) -> list[tuple[str, Any, bool]]:  # pragma: no cover - subclass
        """In a transaction: lock the rows of *keys*; ``[(sid, session_data, live)]``."""
        raise NotImplementedError

    async def _write_rows(
        self, conn: Any, updates: list[WriteRow], inserts: list[WriteRow], now: float
    ) -> None:  # pragma: no cover - subclass
        """In a transaction: update existing rows, insert new ones; expiry = now + lifetime."""
        raise NotImplementedError

    async def _delete_one(self, conn: Any, sid: str) -> None:  # pragma: no cover - subclass
        raise NotImplementedError

    async def _put_one(
        self, conn: Any, sid: str, blob: bytes, lifetime: int, exists: bool, now: float
    ) -> None:  # pragma: no cover - subclass
        """In a transaction: update (*exists*) or insert one row; expiry = now + lifetime."""
        raise NotImplementedError

    async def _delete_rows(self, conn: Any, keys: list[str]) -> None:  # pragma: no cover - subclass
        raise NotImplementedError

    async def _count_live(self, conn: Any) -> int:  # pragma: no cover - subclass
        raise NotImplementedError

    async def _gc_chunk(self, conn: Any) -> int:  # pragma: no cover - subclass
        """Delete up to :data:`GC_CHUNK` expired rows; returns how many went."""
        raise NotImplementedError

    # ------------------------------------------------------------ setup

    async def session_init(self, max_lifetime: int, config: Any) -> None:
        """Parse *config*, open the pool, create or check the table.

        :raises ConfigError: for a bad config, bad credentials, an unknown
            database (or run-time parameter), an incompatible table, or session
            ids that would not fit the key column.
        :raises ProviderUnavailableError: if the server cannot be reached.
        """
        self.max_lifetime = max_lifetime
        settings: SettingsT = self._parse_config(config)
        self._take_timeout()
        self.settings = settings
        self._table = f"{self.quote}{settings.table}{self.quote}"
        try:
            self._pool = await self._open_pool(settings)
        except self._driver_errors as exc:
            raise self._translate(exc) from exc
        try:
            await self._run(self._setup_table)
            self._check_sid_length(settings.table)
        except BaseException:
            await self._close_pool()
            raise

    def _translate(self, exc: BaseException) -> SessionError:
        """*exc*, a driver error, as the error callers see.

        :class:`ConfigError` if the configuration is at fault,
        :class:`ProviderUnavailableError` if the server cannot serve now (the
        next request tries again), else :class:`SessionError`.
        """
        where = self.settings.where if self.settings else "?"
        msg = self._explain(exc)
        fault = self._config_fault(exc)
        if fault is not None:
            key, check = fault
            return ConfigError(f"{self.dialect} session store at {where}: {msg}; {check}", key=key)
        if self._unavailable(exc):
            return ProviderUnavailableError(
                f"{self.dialect} session store at {where} is unavailable: {msg}; is the server up? "
                "(sessions work again as soon as it answers)"
            )
        return SessionError(f"{self.dialect} session store at {where} failed: {msg}")

    def _not_a_session_table(self, problem: str) -> ConfigError:
        """The error for a table that is not one this provider can use."""
        table = self.settings.table if self.settings else "?"
        return ConfigError(
            f"{self.dialect} table {table!r} is not a session table: {problem}; expected beego's "
            f"{self.table_shape}",
            key="table",
        )

    def _check_columns(self, columns: Collection[str]) -> None:
        """:raises ConfigError: if one of beego's three columns is missing."""
        for name in ("session_key", "session_data", "session_expiry"):
            if name not in columns:
                raise self._not_a_session_table(f"column {name!r} is missing")

    def _decode_found(
        self, rows: Iterable[tuple[str, bytes, Any]], refresh: Collection[str]
    ) -> tuple[Found, list[tuple[str, int, Any]]]:
        """The looked-up *rows* ``(sid, session_data, expiry column)`` that decode, as :data:`Found`,
        and ``(sid, lifetime, expiry column)`` of those among them whose sid is in *refresh*.

        A row that does not decode is left out (and logged): it reads as missing.
        """
        found: Found = {}
        due: list[tuple[str, int, Any]] = []
        decode = self._decode
        for key, blob, expiry in rows:
            decoded = decode(key, blob)
            if decoded is None:
                continue
            data, lifetime = decoded
            found[key] = (blob, data)
            if key in refresh:
                due.append((key, lifetime, expiry))
        return found, due

    @classmethod
    def configure_manager(cls, config: ManagerConfig) -> ManagerConfig:
        """Parse ``provider_config`` at once, so a bad DSN fails in ``SessionManager(...)``.

        :raises ConfigError: for a malformed DSN, URL or dict.
        """
        cls._parse_config(config.provider_config)
        return config

    def _take_timeout(self) -> None:
        """``_timeout`` (seconds) from the manager's ``provider_timeout``, 5 s without one."""
        timeout = getattr(self.manager_config, "provider_timeout", None)
        self._timeout = float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else 5.0

    def _check_sid_length(self, table: str) -> None:
        """:raises ConfigError: if this manager's session ids can be longer than the key column."""
        mc = self.manager_config
        if mc is None:
            return
        longest = len(mc.session_id_prefix) + 2 * mc.session_id_length
        if longest > self.max_sid_length:
            raise ConfigError(
                f"session ids of this manager can be {longest} characters long, but the "
                f"{self.dialect} table {table!r} stores at most {self.max_sid_length} "
                f"({self.key_column}); lower session_id_length "
                f"(at most {(self.max_sid_length - len(mc.session_id_prefix)) // 2}) "
                "or shorten session_id_prefix",
                key="session_id_length",
            )

    def _connect_timeout(self, settings: Settings) -> float:
        """Connect timeout in seconds: the configured one, kept below ``provider_timeout``."""
        limit = self._timeout
        default = max(0.05, limit * 0.5)
        wanted = settings.connect_timeout
        if not wanted:  # None or 0 (the drivers: no timeout / wait forever) -> ours
            return default
        if wanted >= limit:
            capped = max(0.05, limit * 0.8)
            warnings.warn(
                f"{self.dialect} connect timeout {wanted:g} s is not below provider_timeout {limit:g} s; "
                f"using {capped:g} s (raise provider_timeout to allow more)",
                UserWarning,
                stacklevel=2,
            )
            return capped
        return wanted

    async def session_close(self) -> None:
        await self._release_idle()
        self._known.clear()
        self._known_bytes = 0
        await self._close_pool()

    # ------------------------------------------------------------ connections

    async def _take(self) -> Any:
        """A connection: the most recently used one at hand, else one from the pool.

        ``self._idle`` is read again after every wait: another job of the batch
        may have handed the idle connections back to the pool meanwhile
        (:meth:`_release_idle`), and one of those must never be used.
        """
        while self._idle:
            conn, used = self._idle.pop()
            if time.monotonic() - used <= self._hold_seconds and self._usable(conn):
                return conn
            await self._release(conn)  # the pool closes or recycles it by its own rules
        self._waiting += 1
        try:
            return await self._acquire()
        finally:
            self._waiting -= 1

    async def _give_back(self, conn: Any) -> None:
        """Keep *conn* at hand for the next batch, or return it to the pool if one of ours waits."""
        if self._waiting or len(self._idle) >= HOLD_CONNECTIONS:
            await self._release(conn)
        else:
            self._idle.append((conn, time.monotonic()))

    async def _discard_quietly(self, conn: Any, exc: BaseException) -> None:
        """:meth:`_discard`; a failure to close a broken connection is logged, not raised over *exc*."""
        try:
            await self._discard(conn, exc)
        except Exception as err:
            self._log.debug("%s: closing a failed connection failed too: %s", self.dialect, err)

    async def _release_idle(self) -> None:
        """Give every connection at hand back to the pool (after one was found lost)."""
        idle = self._idle[:]
        self._idle.clear()  # in place: a _take() waiting meanwhile finds none of them
        for conn, _ in idle:
            try:
                await self._release(conn)
            except Exception as exc:  # pragma: no cover - a pool that is going away anyway
                self._log.debug("%s: releasing a connection failed: %s", self.dialect, exc)

    async def _run(
        self, op: Callable[[Any], Awaitable[_T]], *, may_repeat: Callable[[], bool] | None = None
    ) -> _T:
        """Run *op* on a connection, retrying deadlocks, key races and lost connections.

        *op* must be safe to repeat from the start (each attempt is a fresh
        transaction, on a fresh connection after a lost one), unless
        *may_repeat* says otherwise: after a lost connection *op* is run again
        only if ``may_repeat()`` is true (an increment that may have been
        written is never sent twice; the call fails instead). A connection that
        failed, or whose call was cancelled, is closed and never reused.
        """
        attempt = 0
        while True:
            attempt += 1
            conn = None
            try:
                conn = await self._take()
                result = await op(conn)
            except self._driver_errors as exc:
                if conn is not None:
                    await self._discard_quietly(conn, exc)
                lost = self._is_lost(exc)
                if lost:  # the others at hand are likely broken the same way
                    await self._release_idle()
                if self._is_conflict(exc) and attempt <= CONFLICT_RETRIES:
                    self._log.debug("%s: %s, retrying", self.dialect, self._describe(exc))
                    continue
                if lost and attempt == 1:
                    if may_repeat is None or may_repeat():
                        self._log.debug(
                            "%s: connection lost (%s), retrying on a fresh one",
                            self.dialect,
                            self._describe(exc),
                        )
                        continue
                    self._log.warning(
                        "%s: connection lost (%s) after a save with increments was sent; not sent "
                        "again (it may or may not have been written)",
                        self.dialect,
                        self._describe(exc),
                    )
                raise self._translate(exc) from exc
            except BaseException as exc:  # cancelled (a batch over provider_timeout), or a bug
                if conn is not None:
                    await self._discard_quietly(conn, exc)
                raise
            await self._give_back(conn)
            return result

    # ------------------------------------------------------------ records

    def _storable(self, sid: str) -> bool:
        """True for an id of ``[A-Za-z0-9_-]`` that fits the key column."""
        return self._sid_fits(sid) is not None

    def _too_long(self, sid: str) -> SessionError:
        return SessionError(
            f"session id of {len(sid)} characters cannot be stored in the {self.dialect} table "
            f"(at most {self.max_sid_length} of [A-Za-z0-9_-])"
        )

    def _decode(self, sid: str, blob: bytes | None) -> tuple[dict[Any, Any], int] | None:
        """``(data, lifetime)`` from a stored row, or ``None`` (logged) if it is not ours/corrupt."""
        try:
            record = codec.decode(blob or b"")
            data = record["data"]
            lifetime = record.get("lifetime", self.max_lifetime)
            if not isinstance(data, dict) or isinstance(lifetime, bool) or not isinstance(lifetime, int):
                raise ValueError("unexpected record layout")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self._log.warning(
                "%s session %s…: undecodable session_data treated as missing: %s", self.dialect, sid[:8], exc
            )
            return None
        return data, lifetime

    def _encode(self, data: dict[Any, Any], lifetime: int) -> bytes:
        blob = codec.encode({"data": data, "lifetime": lifetime})
        if len(blob) > self.max_payload:
            raise SessionError(
                f"encoded session is {len(blob)} bytes, over the {self.max_payload}-byte limit of the "
                f"{self.payload_limit}; store less in the session"
            )
        return blob

    # ------------------------------------------------------------ remembered records

    def _remember(self, sid: str, blob: bytes) -> None:
        """Note *blob* as *sid*'s stored record (most recently used); evicts the oldest over the bounds."""
        known = self._known
        old = known.pop(sid, None)
        if old is not None:
            self._known_bytes -= len(old)
        size = len(blob)
        if size > self.known_max_record:
            return
        known[sid] = blob
        self._known_bytes += size
        if len(known) > self.known_max_entries or self._known_bytes > self.known_max_bytes:
            while len(known) > self.known_max_entries or self._known_bytes > self.known_max_bytes:
                evicted = known.pop(next(iter(known)))
                self._known_bytes -= len(evicted)

    def _forget(self, sids: Iterable[str]) -> None:
        known = self._known
        for sid in sids:
            old = known.pop(sid, None)
            if old is not None:
                self._known_bytes -= len(old)

    # ------------------------------------------------------------ batched operations

    async def _lookup(
        self, sids: Sequence[str], refresh: set[str], written: Collection[str] = ()
    ) -> Found:
        """Live, decodable rows of *sids* as ``{sid: (session_data, data)}``, in one SELECT.

        Rows of sids in *refresh* whose expiry is at least a refresh step
        stale get it moved to now + lifetime, in one UPDATE. The records
        found are remembered, except for sids in *written*: releases running
        beside this lookup write those, and what they remember is newer than
        what the lookup may have seen.
        """
        fits = self._sid_fits
        keys = sorted({s for s in sids if fits(s) is not None})
        if not keys:
            return {}
        found = await self._run(lambda conn: self._lookup_rows(conn, keys, refresh))
        remember = self._remember
        for key, (blob, _) in found.items():
            if key not in written:
                remember(key, blob)
        return found

    async def _release_many(self, items: Sequence[Release]) -> list[Any]:
        """Apply every release; one outcome (None or exception) per item.

        Remembered sessions: one compare-and-swap statement for all; new
        sessions: one INSERT; whatever is left (not remembered, or changed
        meanwhile): one locked transaction. A statement that fails fails only
        the releases it carried.
        """
        outcomes: list[Any] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        fits = self._sid_fits
        for i, m in enumerate(items):
            if fits(m.sid) is not None:
                groups.setdefault(m.sid, []).append(i)
            else:
                outcomes[i] = self._too_long(m.sid)
        swaps: list[SwapRow] = []  # changes that are safe to apply twice
        counted: list[SwapRow] = []  # with increments: written exactly once or failed
        inserts: list[WriteRow] = []
        locked: list[int] = []
        known = self._known
        for sid, members in groups.items():
            old = known.get(sid)
            data: dict[Any, Any]
            if old is not None:
                decoded = self._decode(sid, old)
                if decoded is None:
                    locked += members
                    continue
                data = decoded[0]
            elif all(items[i].changes.create for i in members):
                data = {}
            else:
                locked += members
                continue
            lifetime = 0
            increments = False
            for i in members:
                changes = items[i].changes
                if not changes.empty:
                    changes.apply(data)
                    increments = increments or bool(changes.increments)
                lifetime = items[i].expiry
            try:
                blob = self._encode(data, lifetime)
            except (TypeError, SessionError) as exc:
                for i in members:
                    outcomes[i] = exc
                continue
            if old is None:
                inserts.append((sid, blob, lifetime))
            else:
                (counted if increments else swaps).append((sid, blob, lifetime, old))
        # sid -> the record a statement may have written (outcome unknown); see _release_locked.
        unsure: dict[str, bytes] = {}
        paths = self.release_paths
        for rows, exact in ((swaps, False), (counted, True)):
            if not rows:
                continue
            runs = 0

            async def swap(
                conn: Any, rows: list[SwapRow] = rows, exact: bool = exact
            ) -> tuple[set[str], set[str]]:
                nonlocal runs
                runs += 1
                return await self._swap_rows(conn, rows, time.time(), exact)

            try:
                # Increments: once sent, never again (a lost answer fails them instead).
                written, maybe = await self._run(swap, may_repeat=(lambda: False) if exact else None)
            except Exception as exc:  # only these fail; the other statements go on
                for row in rows:
                    for i in groups[row[0]]:
                        outcomes[i] = exc
                continue
            for sid, blob, _, _ in rows:
                if sid in written:
                    self._remember(sid, blob)
                    paths["swapped"] += 1
                    continue
                if sid in maybe or runs > 1:  # a lost first attempt may have written it
                    unsure[sid] = blob
                paths["conflicts"] += 1
                locked += groups[sid]
        if inserts:
            runs = 0

            async def insert(conn: Any) -> set[str]:
                nonlocal runs
                runs += 1
                return await self._insert_new(conn, inserts, time.time())

            try:
                inserted = await self._run(insert)
            except Exception as exc:
                for new in inserts:
                    for i in groups[new[0]]:
                        outcomes[i] = exc
            else:
                for sid, blob, _ in inserts:
                    if sid in inserted:
                        self._remember(sid, blob)
                        paths["inserted"] += 1
                    else:
                        if runs > 1:  # a fresh id: nobody else writes these exact bytes under it
                            unsure[sid] = blob
                        locked += groups[sid]
        if locked:
            locked.sort()
            self.release_paths["locked"] += len({items[i].sid for i in locked})
            try:
                await self._release_locked(items, locked, outcomes, unsure)
            except Exception as exc:
                for i in locked:
                    outcomes[i] = exc
        return outcomes

    async def _release_locked(
        self, items: Sequence[Release], indexes: list[int], outcomes: list[Any], unsure: dict[str, bytes]
    ) -> None:
        """Apply the releases *indexes* of *items* in one transaction that locks their rows.

        ``unsure[sid]`` is a record a statement of this batch may have
        written (its answer was lost, or it said "some rows matched" but not
        which); those changes carry no increments, so applying them twice is
        harmless. A live row that holds exactly that record has them: it is
        left as it is. Releases with increments are never applied twice: a
        connection lost after their COMMIT was sent fails them instead.
        """
        keys = sorted({items[i].sid for i in indexes})
        commit_sent = False
        counted = any(items[i].changes.increments for i in indexes)

        async def op(conn: Any) -> dict[str, bytes | None]:
            nonlocal commit_sent
            for i in indexes:  # a retry starts over: only this attempt's outcomes count
                outcomes[i] = None
            results: dict[str, bytes | None] = {}
            await self._begin(conn)
            now = time.time()
            rows = await self._lock_rows(conn, keys, now)
            state = {key: _Row(in_table=False) for key in keys}
            for key, blob, live in rows:
                row = state[key] = _Row(in_table=True)
                if live:
                    blob = bytes(blob)
                    decoded = self._decode(key, blob)
                    if decoded is not None:
                        row.live = True
                        row.data, row.lifetime = decoded
                        row.blob = blob
            for key, row in state.items():
                results[key] = row.blob  # what stays stored unless written below
            for i in indexes:
                m = items[i]
                row = state[m.sid]
                if row.live and row.blob is not None and row.blob == unsure.get(m.sid):
                    continue  # already applied by this batch's compare-and-swap
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
            updates: list[WriteRow] = []
            inserts: list[WriteRow] = []
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
                results[key] = blob
            if updates or inserts:
                await self._write_rows(conn, updates, inserts, now)
            commit_sent = True
            await self._commit(conn)
            return results

        results = await self._run(op, may_repeat=(lambda: not commit_sent) if counted else None)
        for key, blob in results.items():
            if blob is None:
                self._forget((key,))
            else:
                self._remember(key, blob)

    async def _destroy_many(self, sids: Sequence[str]) -> None:
        keys = sorted({s for s in sids if self._storable(s)})
        if not keys:
            return
        self._forget(keys)
        await self._run(lambda conn: self._delete_rows(conn, keys))

    # ------------------------------------------------------------ beego's verbs

    async def session_read(self, sid: str) -> SessionData | None:
        found = (await self._lookup([sid], {sid})).get(sid)
        return None if found is None else found[1]

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
        self._forget(keys)

        async def op(conn: Any) -> SessionData:
            await self._begin(conn)
            now = time.time()
            rows = await self._lock_rows(conn, keys, now)
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
                await self._delete_one(conn, old_sid)
            await self._put_one(conn, sid, blob, lifetime, sid in present, now)
            await self._commit(conn)
            return data

        return await self._run(op)

    async def session_all(self) -> int:
        return await self._run(self._count_live)

    async def session_gc(self) -> None:
        """Delete expired rows, 5000 per statement, for at most half of ``provider_timeout``.

        Whatever is left goes in the next pass; expired rows are never served meanwhile.
        """
        deadline = time.monotonic() + self._timeout / 2
        while await self._run(self._gc_chunk) >= GC_CHUNK and time.monotonic() < deadline:
            pass

    # ------------------------------------------------------------ batching

    async def handle_batch(self, messages: Sequence[Message]) -> list[Any]:
        """Turn a drained mailbox into few statements.

        Reads and existence checks share one SELECT (and one expiry UPDATE),
        releases one compare-and-swap UPDATE (plus one INSERT for new
        sessions, one locked transaction for conflicts), destroys one DELETE;
        the groups run concurrently on separate connections (messages in one
        batch are concurrent, so any order is a valid one). Other messages
        run one by one. Each message gets its own outcome.
        """
        if self._pool is None:
            return await super().handle_batch(messages)
        results: list[Any] = [None] * len(messages)
        lookups: list[int] = []
        releases: list[int] = []
        destroys: list[int] = []
        others: list[int] = []
        for i, m in enumerate(messages):
            kind = type(m)
            if kind is Read or kind is Exist:
                lookups.append(i)
            elif kind is Release:
                releases.append(i)
            elif kind is Destroy:
                destroys.append(i)
            elif isinstance(m, (Init, Close)):
                return await super().handle_batch(messages)
            else:
                others.append(i)

        async def do_lookups() -> None:
            reads: set[str] = set()
            sids: list[str] = []
            for i in lookups:
                m = messages[i]
                assert isinstance(m, (Read, Exist))
                sids.append(m.sid)
                if type(m) is Read:
                    reads.add(m.sid)
            written: set[str] = set()
            for i in releases:
                m = messages[i]
                assert isinstance(m, Release)
                written.add(m.sid)
            try:
                found = await self._lookup(sids, reads, written)
            except Exception as exc:
                for i in lookups:
                    results[i] = exc
                return
            handed: set[str] = set()
            for i in lookups:
                m = messages[i]
                assert isinstance(m, (Read, Exist))
                row = found.get(m.sid)
                if type(m) is Exist:
                    results[i] = row is not None
                elif row is not None:
                    # Each reader gets data of its own: two reads of one sid never share values.
                    if m.sid in handed:
                        decoded = self._decode(m.sid, row[0])
                        results[i] = None if decoded is None else decoded[0]
                    else:
                        handed.add(m.sid)
                        results[i] = row[1]

        async def do_releases() -> None:
            items: list[Release] = []
            for i in releases:
                m = messages[i]
                assert isinstance(m, Release)
                items.append(m)
            try:
                outcomes = await self._release_many(items)
            except Exception as exc:
                outcomes = [exc] * len(items)
            for i, outcome in zip(releases, outcomes):
                results[i] = outcome

        async def do_destroys() -> None:
            sids: list[str] = []
            for i in destroys:
                m = messages[i]
                assert isinstance(m, Destroy)
                sids.append(m.sid)
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
        if len(jobs) == 1:
            await jobs[0]  # no Task needed for a batch of one kind
        else:
            await asyncio.gather(*jobs)
        return results
