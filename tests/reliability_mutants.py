"""Deliberately broken providers: the stress model must catch each of them.

Imported by the reliability server processes (``StoreSetup.imports``), it
registers the provider ``mutant``, a dict store whose ``provider_config``
names the one bug it has. ``tests/test_reliability_model.py`` runs the stress
load on each and checks that the model reports the violation the bug must
cause, so a green stress run means something.
"""

from __future__ import annotations

import pathlib
import random
from typing import Any

from gosession_tornado import UnknownProviderError, lookup, register
from gosession_tornado.provider import Changes
from reliability.stores import STORES, StoreSetup, register_store

from .support import DictStore

#: bug -> the violation kind the model must report for it.
BUGS = {
    "stale_read": "stale read",  # a read sometimes serves the record as it was one read earlier
    "lost_write": "stale read",  # a release is sometimes dropped (and answered as done)
    "incr_as_set": "lost increment",  # an increment stores the delta instead of adding it
    "regen_keeps_old": "old id served",  # regenerate copies the record and leaves the old id alive
    "destroy_noop": "old id served",  # destroy deletes nothing
    "cross_talk": "cross-talk",  # a read sometimes serves another session's record
    "whole_record": "stale read",  # a release writes back the whole record as the request read it
    "read_any": "old id served",  # an unknown id reads as an empty session (the manager then adopts it)
}


class MutantStore(DictStore):
    """A dict store with the bug named by its ``provider_config`` (see :data:`BUGS`)."""

    def __init__(self) -> None:
        super().__init__()
        self.bug = ""
        self.rng = random.Random(7)
        self.previous: dict[str, dict[Any, Any]] = {}
        self.seen_by_request: dict[str, dict[Any, Any]] = {}

    async def session_init(self, max_lifetime: int, config: Any) -> None:
        if config not in BUGS and config != "none":
            raise ValueError(f"unknown bug {config!r} (or 'none')")
        self.bug = str(config)

    async def session_read(self, sid: str) -> dict[Any, Any] | None:
        data = self.data.get(sid)
        if data is None:
            return {} if self.bug == "read_any" else None
        if self.bug == "stale_read":
            old = self.previous.get(sid)
            self.previous[sid] = dict(data)
            if old is not None and self.rng.random() < 0.3:
                return dict(old)
        if self.bug == "cross_talk" and len(self.data) > 1 and self.rng.random() < 0.05:
            other = self.rng.choice([s for s in self.data if s != sid])
            return dict(self.data[other])
        if self.bug == "whole_record":
            self.seen_by_request[sid] = dict(data)
        return dict(data)

    async def session_regenerate(self, old_sid: str, sid: str) -> dict[Any, Any]:
        if self.bug == "regen_keeps_old":
            self.data[sid] = dict(self.data.get(old_sid, {}))
            return dict(self.data[sid])
        return await super().session_regenerate(old_sid, sid)

    async def session_destroy(self, sid: str) -> None:
        if self.bug != "destroy_noop":
            await super().session_destroy(sid)

    async def session_release(self, sid: str, changes: Changes, expiry: int) -> None:
        if sid not in self.data and not changes.create:
            return
        if self.bug == "lost_write" and not changes.create and self.rng.random() < 0.05:
            return
        record = self.data.setdefault(sid, {})
        if self.bug == "whole_record" and sid in self.seen_by_request:
            # the classic lost update: the request's view overwrites what others wrote meanwhile
            record.clear()
            record.update(self.seen_by_request[sid])
        changes.apply(record)
        if self.bug == "incr_as_set":
            for key, (_, delta) in changes.increments.items():
                record[key] = delta


try:
    lookup("mutant")
except UnknownProviderError:
    register("mutant", MutantStore)


def mutant_store(bug: str, *, name: str | None = None, where: str | None = None) -> str:
    """Register (once) a reliability store serving this module's dict store with *bug*
    (its ``provider_config``; ``"none"``: no bug); return the store's name."""
    name = name or f"mutant-{bug}"
    if name not in STORES:
        async def open_it(workdir: pathlib.Path, unique: str) -> StoreSetup:
            async def cleanup() -> None:
                pass

            return StoreSetup(
                provider="mutant",
                config={"provider": "mutant", "cookie_name": "sid", "provider_config": bug},
                client_side=False, shared=False, where=where or f"a dict store with the bug {bug!r}",
                cleanup=cleanup, imports=["tests.reliability_mutants"],
            )

        register_store(name, open_it)
    return name
