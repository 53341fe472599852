"""The ``memory`` provider: sessions in a dict owned by the actor.

Idle expiry by last access: a session not read or released for its lifetime
(``max_lifetime``, or the per-session ``set_expiry`` value) is gone; an
expired record is never served even before GC removes it. Nothing survives a
process restart, and sessions are not shared between processes; use
``file``, ``redis``, ``mysql`` or ``postgresql`` for that.

``provider_config`` is ignored.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from ..provider import Changes, Provider, SessionData

__all__ = ["MemoryProvider"]


class _Record:
    __slots__ = ("data", "last_access", "lifetime")

    def __init__(self, data: SessionData, lifetime: int) -> None:
        self.data = data
        self.last_access = time.monotonic()
        self.lifetime = lifetime

    def expired(self, now: float) -> bool:
        return now - self.last_access >= self.lifetime


class MemoryProvider(Provider):
    """Sessions in process memory. Reads return a deep copy, so a request's
    in-place mutations never leak into the store without a release."""

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[str, _Record] = {}

    async def session_init(self, max_lifetime: int, config: Any) -> None:
        self.max_lifetime = max_lifetime

    def _live(self, sid: str) -> _Record | None:
        rec = self._records.get(sid)
        if rec is None:
            return None
        if rec.expired(time.monotonic()):
            del self._records[sid]
            return None
        return rec

    async def session_read(self, sid: str) -> SessionData | None:
        rec = self._live(sid)
        if rec is None:
            return None
        rec.last_access = time.monotonic()
        return copy.deepcopy(rec.data)

    async def session_exist(self, sid: str) -> bool:
        return self._live(sid) is not None

    async def session_regenerate(self, old_sid: str, sid: str) -> SessionData:
        rec = self._live(old_sid)
        if rec is None:
            rec = _Record({}, self.max_lifetime)
        else:
            del self._records[old_sid]
            rec.last_access = time.monotonic()
        self._records[sid] = rec
        return copy.deepcopy(rec.data)

    async def session_destroy(self, sid: str) -> None:
        self._records.pop(sid, None)

    async def session_all(self) -> int:
        await self.session_gc()
        return len(self._records)

    async def session_gc(self) -> None:
        now = time.monotonic()
        dead = [sid for sid, rec in self._records.items() if rec.expired(now)]
        for sid in dead:
            del self._records[sid]

    async def session_release(self, sid: str, changes: Changes, expiry: int) -> None:
        rec = self._live(sid)
        if rec is None:
            if not changes.create:
                return  # destroyed or expired meanwhile: do not resurrect
            rec = self._records[sid] = _Record({}, expiry)
        # Deep-copy what is stored so the request's objects never alias the store.
        Changes(
            set=copy.deepcopy(changes.set), deleted=changes.deleted, flushed=changes.flushed
        ).apply(rec.data)
        rec.lifetime = expiry
        rec.last_access = time.monotonic()

    async def session_close(self) -> None:
        self._records.clear()
