"""What the SQL providers (``mysql``, ``postgresql``) share: batching, the record codec, the verbs.

:class:`SQLBatchProvider` holds the logic that does not depend on the
database: how a drained mailbox becomes few statements (one lookup, one
release transaction, one delete), how a release applies
:class:`~gosession_tornado.provider.Changes` to the locked rows, how an id
moves (``session_regenerate``), the stored record
``codec.encode({"data": {...}, "lifetime": seconds})`` and the retry loop
around a pooled connection. A subclass supplies the SQL and the driver: the
hooks below marked "subclass".

What holds (for every subclass):

* ``statements`` counts the statements sent, by first SQL word.
* A session id that does not fit the key column (or is not ``[A-Za-z0-9_-]``)
  is unknown to reads and refused by writes with a :class:`SessionError`.
* A row that does not decode to ``{"data": dict, "lifetime": int}`` is
  treated as missing (and logged), never served.
* An encoded session over ``max_payload`` bytes is refused with a
  :class:`SessionError`; the other sessions of the batch are still written.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import re
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from .. import codec
from ..errors import ConfigError, SessionError
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

__all__ = ["SQLBatchProvider"]

_T = TypeVar("_T")

SID_RE = re.compile(r"^[A-Za-z0-9_-]+\Z")
#: Rows one GC statement deletes at most.
GC_CHUNK = 5000
#: A conflicting operation is retried (whole, on a fresh transaction) this many times at most.
CONFLICT_RETRIES = 3

#: A row to write: (session id, encoded record, lifetime in seconds).
WriteRow = tuple[str, bytes, int]


def refresh_step(lifetime: int) -> int:
    """Seconds a read must gain on the stored expiry before it is written (throttles refreshes)."""
    return max(1, lifetime // 60)


class _Timed(Protocol):
    @property
    def connect_timeout(self) -> float | None: ...


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


class SQLBatchProvider(Provider):
    """A provider keeping sessions in one SQL table ``(session_key, session_data, session_expiry)``.

    Subclasses set :attr:`dialect`, :attr:`payload_limit`, ``_log`` and
    ``_driver_errors`` and implement the hooks; all methods run inside the
    provider's actor.
    """

    #: Provider name, as said in messages and logs (``"mysql"``).
    dialect: ClassVar[str] = "sql"
    #: What limits the size of an encoded session, as said in the "too large" message.
    payload_limit: ClassVar[str] = "session table"
    #: How the key column is described in the "ids too long" message.
    key_column: ClassVar[str] = "session_key varchar(64)"
    _log: ClassVar[logging.Logger] = logging.getLogger("gosession_tornado.sql")
    #: Driver exceptions :meth:`_run` retries or translates.
    _driver_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError,)

    max_payload: int

    def __init__(self) -> None:
        super().__init__()
        #: Statements sent to the server, by first SQL word (``"select"``, ``"update"``, ``"begin"`` …).
        self.statements: collections.Counter[str] = collections.Counter()
        self._pool: Any = None
        #: ``provider_timeout`` in seconds (after ``session_init``).
        self._timeout = 5.0
        #: Longest session id the key column holds (characters).
        self.max_sid_length = 64

    # ------------------------------------------------------------ subclass hooks

    @staticmethod
    def _parse_config(config: Any) -> Any:  # pragma: no cover - subclass
        """Parse ``provider_config``; raises :class:`ConfigError`."""
        raise NotImplementedError

    async def _close_pool(self) -> None:  # pragma: no cover - subclass
        raise NotImplementedError

    def _connection(self) -> Any:  # pragma: no cover - subclass
        """An async context manager yielding a pooled connection."""
        raise NotImplementedError

    def _translate(self, exc: BaseException) -> SessionError:  # pragma: no cover - subclass
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

    async def _begin(self, conn: Any) -> None:  # pragma: no cover - subclass
        raise NotImplementedError

    async def _commit(self, conn: Any) -> None:  # pragma: no cover - subclass
        raise NotImplementedError

    async def _lookup_rows(
        self, conn: Any, keys: list[str], refresh: set[str]
    ) -> dict[str, bytes]:  # pragma: no cover - subclass
        """Live, decodable rows of *keys* as ``{sid: session_data}``; refreshes the expiry of *refresh*."""
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

    # ------------------------------------------------------------ setup helpers

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

    def _connect_timeout(self, settings: _Timed) -> float:
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
        await self._close_pool()

    # ------------------------------------------------------------ plumbing

    async def _run(self, op: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run *op* on a pooled connection, retrying deadlocks, key races and lost connections.

        *op* must be safe to repeat from the start (each attempt is a fresh
        transaction, on a fresh connection after a lost one).
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._connection() as conn:
                    return await op(conn)
            except self._driver_errors as exc:
                if self._is_conflict(exc) and attempt <= CONFLICT_RETRIES:
                    self._log.debug("%s: %s, retrying", self.dialect, self._describe(exc))
                    continue
                if self._is_lost(exc) and attempt == 1:
                    self._log.debug(
                        "%s: connection lost (%s), retrying on a fresh one", self.dialect, self._describe(exc)
                    )
                    continue
                raise self._translate(exc) from exc

    def _storable(self, sid: str) -> bool:
        return len(sid) <= self.max_sid_length and SID_RE.match(sid) is not None

    def _too_long(self, sid: str) -> SessionError:
        return SessionError(
            f"session id of {len(sid)} characters cannot be stored in the {self.dialect} table "
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

    # ------------------------------------------------------------ batched operations

    async def _lookup(self, sids: Sequence[str], refresh: set[str]) -> dict[str, bytes]:
        """Live, decodable rows of *sids* as ``{sid: session_data}``, in one SELECT.

        Rows of sids in *refresh* whose expiry is at least a refresh step
        stale get it moved to now + lifetime, in one UPDATE.
        """
        keys = sorted({s for s in sids if self._storable(s)})
        if not keys:
            return {}
        return await self._run(lambda conn: self._lookup_rows(conn, keys, refresh))

    async def _release_many(self, items: Sequence[Release]) -> list[Any]:
        """Apply every release in one transaction; one outcome (None or exception) per item."""
        keys = sorted({m.sid for m in items if self._storable(m.sid)})

        async def op(conn: Any) -> list[Any]:
            outcomes: list[Any] = [None if self._storable(m.sid) else self._too_long(m.sid) for m in items]
            if not keys:
                return outcomes
            await self._begin(conn)
            now = time.time()
            rows = await self._lock_rows(conn, keys, now)
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
            await self._write_rows(conn, updates, inserts, now)
            await self._commit(conn)
            return outcomes

        return await self._run(op)

    async def _destroy_many(self, sids: Sequence[str]) -> None:
        keys = sorted({s for s in sids if self._storable(s)})
        if not keys:
            return
        await self._run(lambda conn: self._delete_rows(conn, keys))

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
        releases one transaction, destroys one DELETE; the groups run
        concurrently on separate pooled connections (messages in one batch are
        concurrent, so any order is a valid one). Other messages run one by
        one. Each message gets its own outcome.
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
