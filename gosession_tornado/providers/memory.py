"""The ``memory`` provider: sessions in a dict owned by the actor.

Idle expiry by last access: a session not read or released for its lifetime
(``max_lifetime``, or the per-session ``set_expiry`` value) is gone; an
expired record is never served even before GC removes it. Nothing survives a
process restart, and sessions are not shared between processes; use
``file``, ``redis``, ``mysql`` or ``postgresql`` for that.

``provider_config`` is ignored.

How it is kept (the costs are per operation, not per stored session):

* Each record is one ``bytes`` object: a 16-byte header (deadline, lifetime)
  and the session's msgpack bytes (:mod:`~gosession_tornado.codec`). A read
  decodes once (and rewrites the record only when it moves the deadline by a
  :func:`~gosession_tornado.provider.refresh_step`); a release decodes,
  applies the request's delta and encodes once. Nothing the store holds is
  ever shared with a request, so no deep copies are needed, and a stored
  session costs about 400 bytes with 10 small keys.
* Expiry is indexed by deadline in one-second buckets (a set of ids per
  second, and a heap of the bucket seconds). A GC pass visits only the
  buckets whose second has passed, so it costs what expired, not what is
  stored, and it yields to the event loop every :data:`GC_SLICE` seconds of
  work, so even a pass that drops millions of sessions never stalls the loop
  for longer than that.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .. import codec
from ..provider import (
    GC,
    Changes,
    Destroy,
    Exist,
    Message,
    Provider,
    Read,
    Regenerate,
    Release,
    SessionData,
    refresh_step,
)

__all__ = ["MemoryProvider", "GC_SLICE"]

#: Longest stretch of GC work (seconds) between two yields to the event loop.
GC_SLICE = 0.001
#: Sessions dropped between two looks at the clock during GC.
_GC_CHECK_EVERY = 128


#: A record is one ``bytes``: this header (monotonic deadline in seconds as a
#: double, idle lifetime in seconds) followed by the session's msgpack bytes.
#: One object per session, not tracked by the cyclic GC.
_HEAD = struct.Struct("<dq")
_HEAD_SIZE = _HEAD.size
_EMPTY = codec.encode({})
#: Runs an iterator to its end, keeping nothing.
_consume: Callable[[Iterable[Any]], None] = collections.deque(maxlen=0).extend


def _deadline(record: bytes) -> float:
    deadline: float = _HEAD.unpack_from(record)[0]
    return deadline


class MemoryProvider(Provider):
    """Sessions in process memory, as msgpack bytes, with an expiry index by deadline."""

    in_process = True

    def __init__(self) -> None:
        super().__init__()
        #: sid -> record (see :data:`_HEAD`)
        self._records: dict[str, bytes] = {}
        #: deadline second -> ids whose deadline falls in that second
        self._buckets: dict[int, set[str]] = {}
        #: the seconds of :attr:`_buckets`, as a heap (may hold seconds already emptied)
        self._seconds: list[int] = []

    async def session_init(self, max_lifetime: int, config: Any) -> None:
        self.max_lifetime = max_lifetime

    # ------------------------------------------------------------ the index

    def _index(self, sid: str, second: int) -> None:
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = set()
            heapq.heappush(self._seconds, second)
        bucket.add(sid)

    def _unindex(self, sid: str, second: int) -> None:
        bucket = self._buckets.get(second)
        if bucket is not None:
            bucket.discard(sid)
            if not bucket:
                del self._buckets[second]

    def _store(self, sid: str, old_deadline: float | None, deadline: float, lifetime: int, blob: Any) -> None:
        """Store *blob* (bytes or a memoryview) under *sid*, moving it in the index if due."""
        self._records[sid] = _HEAD.pack(deadline, lifetime) + blob
        new = int(deadline)
        if old_deadline is None:
            self._index(sid, new)
        elif int(old_deadline) != new:
            self._unindex(sid, int(old_deadline))
            self._index(sid, new)

    def _live(self, sid: str, now: float) -> tuple[bytes, float, int] | None:
        """The record of *sid* with its deadline and lifetime, or ``None`` (an expired one is dropped)."""
        rec = self._records.get(sid)
        if rec is None:
            return None
        deadline, lifetime = _HEAD.unpack_from(rec)
        if deadline <= now:
            del self._records[sid]
            self._unindex(sid, int(deadline))
            return None
        return rec, deadline, lifetime

    # ------------------------------------------------------------ verbs (synchronous)

    def read(self, sid: str) -> SessionData | None:
        """The data of a live session (fresh objects), refreshing its last access.

        The refresh is throttled as in the other stores: the record is rewritten
        only when the read moves its deadline by
        :func:`~gosession_tornado.provider.refresh_step` seconds or
        more (a sixtieth of the lifetime, at least 1 s), so a session read
        again and again may expire up to that much before "lifetime after its
        last access", never later. A release always sets the full lifetime.
        """
        rec = self._records.get(sid)
        if rec is None:
            return None
        deadline, lifetime = _HEAD.unpack_from(rec)
        now = time.monotonic()
        if deadline <= now:
            del self._records[sid]
            self._unindex(sid, int(deadline))
            return None
        blob = memoryview(rec)[_HEAD_SIZE:]
        new = now + lifetime
        if new - deadline >= refresh_step(lifetime):  # else the record is not rewritten
            self._records[sid] = _HEAD.pack(new, lifetime) + blob
            if int(new) != int(deadline):
                self._unindex(sid, int(deadline))
                self._index(sid, int(new))
        data: SessionData = codec.decode(blob)
        return data

    def release(self, sid: str, changes: Changes, expiry: int) -> None:
        """Apply *changes* to the stored bytes and set the idle lifetime to *expiry* seconds."""
        now = time.monotonic()
        live = self._live(sid, now)
        if live is None:
            if not changes.create:
                return  # destroyed or expired meanwhile: do not resurrect
            blob: Any = codec.encode(changes.apply({})) if not changes.empty else _EMPTY
            self._store(sid, None, now + expiry, expiry, blob)
            return
        rec, deadline, _ = live
        blob = memoryview(rec)[_HEAD_SIZE:]
        if not changes.empty:
            data = {} if changes.flushed else codec.decode(blob)
            blob = codec.encode(changes.apply(data))
        self._store(sid, deadline, now + expiry, expiry, blob)

    def regenerate(self, old_sid: str, sid: str) -> SessionData:
        now = time.monotonic()
        live = self._live(old_sid, now)
        if live is None:
            blob: Any = _EMPTY
            lifetime = self.max_lifetime
        else:
            rec, deadline, lifetime = live
            del self._records[old_sid]
            self._unindex(old_sid, int(deadline))
            blob = memoryview(rec)[_HEAD_SIZE:]
        self._store(sid, None, now + lifetime, lifetime, blob)
        data: SessionData = codec.decode(blob)
        return data

    def destroy(self, sid: str) -> None:
        rec = self._records.pop(sid, None)
        if rec is not None:
            self._unindex(sid, int(_deadline(rec)))

    # ------------------------------------------------------------ beego verbs

    async def session_read(self, sid: str) -> SessionData | None:
        return self.read(sid)

    async def session_exist(self, sid: str) -> bool:
        return self._live(sid, time.monotonic()) is not None

    async def session_regenerate(self, old_sid: str, sid: str) -> SessionData:
        return self.regenerate(old_sid, sid)

    async def session_destroy(self, sid: str) -> None:
        self.destroy(sid)

    async def session_all(self) -> int:
        await self.session_gc()
        return len(self._records)

    async def session_release(self, sid: str, changes: Changes, expiry: int) -> None:
        self.release(sid, changes, expiry)

    async def session_gc(self) -> None:
        """Drop every expired session.

        Visits only the buckets of seconds that have begun (the current one
        partly); yields to the event loop after at most :data:`GC_SLICE`
        seconds of work.
        """
        records, buckets, seconds = self._records, self._buckets, self._seconds
        drop = records.pop
        clock = time.perf_counter
        started = clock()
        now = time.monotonic()
        current = int(now)
        while seconds and seconds[0] <= current:
            second = heapq.heappop(seconds)
            bucket = buckets.pop(second, None)
            if not bucket:
                continue
            ids = list(bucket)
            kept: list[str] = []
            whole = second < current  # every deadline in this bucket has passed
            for start in range(0, len(ids), _GC_CHECK_EVERY):
                chunk = ids[start : start + _GC_CHECK_EVERY]
                if whole:  # every one expired: drop them in C, no per-record check
                    _consume(map(drop, chunk, itertools.repeat(None)))
                else:
                    for sid in chunk:
                        rec = records.get(sid)
                        if rec is not None:
                            if _deadline(rec) <= now:
                                del records[sid]
                            else:  # later this second
                                kept.append(sid)
                if clock() - started > GC_SLICE:
                    try:
                        await asyncio.sleep(0)  # only the actor touches the store: safe
                    except BaseException:  # cut short (batch timeout, close): keep the rest indexed
                        kept.extend(ids[start + _GC_CHECK_EVERY :])
                        if kept:
                            buckets.setdefault(second, set()).update(kept)
                            heapq.heappush(seconds, second)
                        raise
                    started = clock()
            if kept:
                buckets[second] = set(kept)
                heapq.heappush(seconds, second)
                break  # only the current second keeps ids: nothing later is due

    async def session_close(self) -> None:
        self._records.clear()
        self._buckets.clear()
        self._seconds.clear()

    def handle_now(self, message: Message) -> Any:
        """Reads, releases, exists, destroys and regenerates, synchronously."""
        kind = type(message)
        if kind is Read:
            return self.read(message.sid)  # type: ignore[attr-defined]
        if kind is Release:
            m: Release = message  # type: ignore[assignment]
            self.release(m.sid, m.changes, m.expiry)
            return None
        if kind is Exist:
            return self._live(message.sid, time.monotonic()) is not None  # type: ignore[attr-defined]
        if kind is Destroy:
            self.destroy(message.sid)  # type: ignore[attr-defined]
            return None
        if kind is Regenerate:
            r: Regenerate = message  # type: ignore[assignment]
            return self.regenerate(r.old_sid, r.sid)
        raise TypeError(f"the memory provider does not answer {message!r} synchronously")

    async def handle_batch(self, messages: Sequence[Message]) -> list[Any]:
        """Answer reads and releases without a coroutine per message; GC runs last."""
        results: list[Any] = []
        gc_at: list[int] = []
        # The synchronous shortcuts only while the verbs are this class's own
        # (a subclass or a test may replace them).
        fast_read = getattr(self.session_read, "__func__", None) is MemoryProvider.session_read
        fast_release = getattr(self.session_release, "__func__", None) is MemoryProvider.session_release
        for message in messages:
            kind = type(message)
            try:
                if kind is Read and fast_read:
                    results.append(self.read(message.sid))  # type: ignore[attr-defined]
                elif kind is Release and fast_release:
                    m: Release = message  # type: ignore[assignment]
                    self.release(m.sid, m.changes, m.expiry)
                    results.append(None)
                elif kind is GC:
                    gc_at.append(len(results))
                    results.append(None)
                else:
                    results.append(await self.dispatch(message))
            except Exception as exc:  # one message fails, the batch goes on
                results.append(exc)
        if gc_at:
            try:
                await self.session_gc()
            except Exception as exc:
                for i in gc_at:
                    results[i] = exc
        return results
