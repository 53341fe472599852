"""An example provider: sessions in an SQLite file, one transaction per batch.

It shows the whole provider contract (see ``docs/own_provider.rst``):

* the state (one :mod:`sqlite3` connection) belongs to the actor: the verbs
  are only ever called from the actor task, one batch at a time, so there
  are no locks;
* :mod:`sqlite3` blocks, so every call runs on **one dedicated thread**: the
  IOLoop never blocks, and a batch the actor gave up on (``provider_timeout``)
  still finishes before the next one starts;
* :meth:`SQLiteProvider.handle_batch` turns a whole drained batch into one
  transaction (one ``fsync`` instead of one per request);
* :meth:`SQLiteProvider.session_release` applies the delta
  (:class:`~gosession_tornado.provider.Changes`) to the stored record inside
  a write transaction, so concurrent requests, in this process or another
  one, lose no keys.

Use it with ``register("sqlite", SQLiteProvider)`` and
``SessionManager("sqlite", {"provider_config": "/var/lib/app/sessions.db"})``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from gosession_tornado import ConfigError, Provider, ProviderUnavailableError, codec
from gosession_tornado.provider import (
    GC,
    All,
    Changes,
    Close,
    Destroy,
    Exist,
    Init,
    Message,
    Read,
    Regenerate,
    Release,
    SessionData,
)

T = TypeVar("T")

SCHEMA = """CREATE TABLE IF NOT EXISTS session (
    sid TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    lifetime INTEGER NOT NULL,  -- idle lifetime, seconds
    expires REAL NOT NULL       -- wall-clock time it expires, seconds since the epoch
)"""


class SQLiteProvider(Provider):
    """Sessions in an SQLite database file; ``provider_config`` is its path."""

    def __init__(self) -> None:
        super().__init__()
        self._db: sqlite3.Connection | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="sqlite-sessions"
        )

    # -- plumbing: everything blocking runs on the provider's one thread ----

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise ProviderUnavailableError("the sqlite session store is not open")
        return self._db

    def _open(self, path: str) -> sqlite3.Connection:
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=5
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(SCHEMA)
        except sqlite3.Error as exc:
            raise ProviderUnavailableError(
                f"cannot open session database {path!r}: {exc}"
            ) from exc
        return db

    # -- the verbs, synchronous, each inside the caller's transaction -------

    def _live(self, sid: str) -> tuple[bytes, int] | None:
        row = self.db.execute(
            "SELECT data, lifetime FROM session WHERE sid = ? AND expires > ?",
            (sid, time.time()),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def _read(self, sid: str) -> SessionData | None:
        row = self._live(sid)
        if row is None:
            return None  # unknown or expired: reading never creates a record
        data, lifetime = row
        self.db.execute(
            "UPDATE session SET expires = ? WHERE sid = ?",
            (time.time() + lifetime, sid),
        )
        result: SessionData = codec.decode(data)
        return result

    def _exist(self, sid: str) -> bool:
        return self._live(sid) is not None

    def _regenerate(self, old_sid: str, sid: str) -> SessionData:
        row = self._live(old_sid)
        data, lifetime = (
            row if row is not None else (codec.encode({}), self.max_lifetime)
        )
        self.db.execute("DELETE FROM session WHERE sid = ?", (old_sid,))
        self.db.execute(
            "INSERT OR REPLACE INTO session VALUES (?, ?, ?, ?)",
            (sid, data, lifetime, time.time() + lifetime),
        )
        result: SessionData = codec.decode(data)
        return result

    def _destroy(self, sid: str) -> None:
        self.db.execute("DELETE FROM session WHERE sid = ?", (sid,))

    def _all(self) -> int:
        row = self.db.execute(
            "SELECT COUNT(*) FROM session WHERE expires > ?", (time.time(),)
        ).fetchone()
        return int(row[0])

    def _gc(self) -> None:
        self.db.execute("DELETE FROM session WHERE expires <= ?", (time.time(),))

    def _release(self, sid: str, changes: Changes, expiry: int) -> None:
        row = self._live(sid)
        if row is None and not changes.create:
            return  # destroyed or expired meanwhile: never resurrect it
        data: SessionData = codec.decode(row[0]) if row is not None else {}
        changes.apply(data)  # only the keys this request touched
        self.db.execute(
            "INSERT OR REPLACE INTO session VALUES (?, ?, ?, ?)",
            (sid, codec.encode(data), expiry, time.time() + expiry),
        )

    def _handle(self, message: Message) -> Any:
        if isinstance(message, Read):
            return self._read(message.sid)
        if isinstance(message, Release):
            return self._release(message.sid, message.changes, message.expiry)
        if isinstance(message, Exist):
            return self._exist(message.sid)
        if isinstance(message, Regenerate):
            return self._regenerate(message.old_sid, message.sid)
        if isinstance(message, Destroy):
            return self._destroy(message.sid)
        if isinstance(message, All):
            return self._all()
        if isinstance(message, GC):
            return self._gc()
        raise NotImplementedError(
            f"{type(self).__name__} does not handle {message.kind!r}"
        )

    def _transaction(self, messages: Sequence[Message]) -> list[Any]:
        """Handle *messages* in one write transaction.

        A failure rolls back only its own message (a savepoint per message).
        """
        outcomes: list[Any] = []
        try:
            self.db.execute(
                "BEGIN IMMEDIATE"
            )  # take the write lock: other processes wait
        except sqlite3.Error as exc:
            return [
                ProviderUnavailableError(f"session database is locked or gone: {exc}")
            ] * len(messages)
        try:
            for message in messages:
                self.db.execute("SAVEPOINT message")
                try:
                    outcomes.append(self._handle(message))
                except Exception as exc:  # the error is this message's outcome
                    self.db.execute("ROLLBACK TO message")
                    outcomes.append(exc)
                self.db.execute("RELEASE message")
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            return [ProviderUnavailableError(f"session database failed: {exc}")] * len(
                messages
            )
        return outcomes

    # -- what the actor calls ------------------------------------------------

    async def handle_batch(self, messages: Sequence[Message]) -> list[Any]:
        if self._db is None or any(isinstance(m, (Init, Close)) for m in messages):
            return await super().handle_batch(
                messages
            )  # one by one, through the verbs below
        return await self._run(self._transaction, messages)

    async def session_init(self, max_lifetime: int, config: Any) -> None:
        if not isinstance(config, str) or not config:
            raise ConfigError(
                "the sqlite provider needs provider_config = a database file path"
            )
        self.max_lifetime = max_lifetime
        self._db = await self._run(self._open, config)

    async def session_read(self, sid: str) -> SessionData | None:
        result: SessionData | None = await self._one(Read(sid))
        return result

    async def session_exist(self, sid: str) -> bool:
        return await self._run(self._exist, sid)

    async def session_regenerate(self, old_sid: str, sid: str) -> SessionData:
        result: SessionData = await self._one(Regenerate(old_sid, sid))
        return result

    async def session_destroy(self, sid: str) -> None:
        await self._one(Destroy(sid))

    async def session_all(self) -> int:
        return await self._run(self._all)

    async def session_gc(self) -> None:
        await self._one(GC())

    async def session_release(self, sid: str, changes: Changes, expiry: int) -> None:
        await self._one(Release(sid, changes, expiry))

    async def _one(self, message: Message) -> Any:
        (outcome,) = await self._run(self._transaction, [message])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def session_close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._thread.shutdown(wait=False)
