"""Session: mapping API, change tracking, flashes, expiry, and what release sends."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest

from gosession_tornado import Changes, Session, SessionManager, register, unregister
from gosession_tornado.provider import Message, Release
from gosession_tornado.providers.memory import MemoryProvider
from gosession_tornado.session import META_KEY
from tests.support import make_handler

SID = "0123456789abcdef" * 2


class RecordingMemory(MemoryProvider):
    """The memory provider, recording every Release message it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.releases: list[Release] = []

    async def handle_batch(self, messages: Sequence[Message]) -> list[Any]:
        self.releases.extend(m for m in messages if isinstance(m, Release))
        return await super().handle_batch(messages)


@pytest.fixture
def recording_name(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"recmem_{request.node.name[:40]}"
    register(name, RecordingMemory)
    yield name
    unregister(name)


@pytest.fixture
async def manager(recording_name: str) -> AsyncIterator[SessionManager]:
    async with SessionManager(recording_name, cookie_name="sid", max_lifetime=600) as m:
        yield m


def releases(m: SessionManager) -> list[Release]:
    assert m._actor is not None
    p = m._actor.provider
    assert isinstance(p, RecordingMemory)
    return p.releases


async def stored_session(m: SessionManager, **data: Any) -> Session:
    """A session that exists in the store with *data*, loaded as a later request would."""
    h = make_handler()
    s = await m.session_start(h)
    s.update(data)
    await s.release(h)
    again = await m.session_start(make_handler(f"sid={s.session_id}"))
    assert not again.is_new
    releases(m).clear()
    return again


# ---------------------------------------------------------------- mapping API


def test_mapping_api() -> None:
    s = Session(None, SID, {"a": 1, 2: "two"})
    assert s["a"] == 1
    assert s[2] == "two"
    assert s.get("a") == 1
    assert s.get("missing") is None
    assert s.get("missing", "dflt") == "dflt"
    with pytest.raises(KeyError):
        s["missing"]
    assert "a" in s
    assert "missing" not in s
    assert len(s) == 2
    assert sorted(map(str, iter(s))) == ["2", "a"]
    s["b"] = [1]
    s.set("c", 3)
    assert s.to_dict() == {"a": 1, 2: "two", "b": [1], "c": 3}
    del s["a"]
    assert "a" not in s
    with pytest.raises(KeyError):
        del s["a"]
    s.delete("never-there")  # beego: not an error
    assert dict(s.items()) == {2: "two", "b": [1], "c": 3}
    assert s.setdefault("d", 4) == 4
    assert s.pop("d") == 4
    s.update({"e": 5})
    assert s["e"] == 5


def test_iterating_while_changing_is_safe() -> None:
    s = Session(None, SID, {"a": 1, "b": 2, "c": 3})
    for key in s:
        del s[key]
    assert len(s) == 0


def test_beego_spellings() -> None:
    s = Session(None, SID)
    s.Set("k", "v")
    assert s.Get("k") == "v"
    s.Delete("k")
    assert s.Get("k") is None
    s.Set("x", 1)
    s.Flush()
    assert len(s) == 0
    assert s.SessionID() == SID == s.session_id


def test_repr_does_not_show_the_whole_sid() -> None:
    assert SID not in repr(Session(None, SID))


def test_constructor_copies_the_data() -> None:
    data = {"a": 1}
    s = Session(None, SID, data)
    s["b"] = 2
    assert data == {"a": 1}


# ---------------------------------------------------------------- change tracking


def test_new_session_is_not_modified() -> None:
    s = Session(None, SID, {"a": 1})
    assert not s.modified
    assert s.changes() == Changes(set={}, deleted=frozenset(), flushed=False, create=False)
    assert s.changes().empty


def test_set_is_tracked() -> None:
    s = Session(None, SID, {"a": 1})
    s["b"] = 2
    s["a"] = 10
    assert s.modified
    ch = s.changes()
    assert ch.set == {"a": 10, "b": 2}
    assert ch.deleted == frozenset()
    assert not ch.flushed


def test_delete_is_tracked_and_cancels_a_set() -> None:
    s = Session(None, SID, {"a": 1})
    s["b"] = 2
    del s["b"]
    s.delete("a")
    ch = s.changes()
    assert ch.set == {}
    assert ch.deleted == {"a", "b"}
    assert s.modified


def test_set_after_delete_cancels_the_delete() -> None:
    s = Session(None, SID, {"a": 1})
    del s["a"]
    s["a"] = 2
    ch = s.changes()
    assert ch.set == {"a": 2}
    assert ch.deleted == frozenset()


def test_flush_is_tracked() -> None:
    s = Session(None, SID, {"a": 1, "b": 2})
    s["c"] = 3
    s.flush()
    s["d"] = 4
    ch = s.changes()
    assert ch.flushed
    assert ch.set == {"d": 4}
    assert ch.deleted == frozenset()
    assert s.to_dict() == {"d": 4}
    s2 = Session(None, SID, {"a": 1})
    s2.clear()
    assert s2.changes().flushed


def test_changes_apply_keeps_keys_nobody_touched() -> None:
    stored = {"mine": 1, "theirs": 2, "gone": 3}
    Changes(set={"mine": 10}, deleted=frozenset({"gone"})).apply(stored)
    assert stored == {"mine": 10, "theirs": 2}
    Changes(set={"x": 1}, flushed=True).apply(stored)
    assert stored == {"x": 1}


def test_in_place_mutation_needs_mark_modified() -> None:
    s = Session(None, SID, {"cart": [1]})
    s["cart"].append(2)
    assert not s.modified
    s.mark_modified("cart")
    assert s.changes().set == {"cart": [1, 2]}
    s.mark_modified("absent")
    assert "absent" not in s.changes().set


def test_changes_create_follows_is_new() -> None:
    assert Session(None, SID, is_new=True).changes().create
    assert not Session(None, SID, is_new=False).changes().create


def test_is_new() -> None:
    assert Session(None, SID, is_new=True).is_new
    assert not Session(None, SID).is_new


# ---------------------------------------------------------------- flashes


def test_flashes_are_read_once() -> None:
    s = Session(None, SID)
    s.add_flash("saved")
    s.add_flash({"level": "warn", "text": "careful"})
    assert s.flashes() == ["saved", {"level": "warn", "text": "careful"}]
    assert s.flashes() == []
    assert "_flash" not in s


def test_flashes_under_their_own_keys() -> None:
    s = Session(None, SID)
    s.add_flash("a", key="errors")
    s.add_flash("b")
    assert s.flashes("errors") == ["a"]
    assert s.flashes() == ["b"]
    assert s.flashes("errors") == []


def test_flashes_of_a_non_list_value() -> None:
    s = Session(None, SID, {"_flash": "single"})
    assert s.flashes() == ["single"]
    assert s.changes().deleted == {"_flash"}


async def test_flashes_survive_a_request_and_are_gone_after_reading(manager: SessionManager) -> None:
    h = make_handler()
    s = await manager.session_start(h)
    s.add_flash("hello")
    await s.release(h)
    h2 = make_handler(f"sid={s.session_id}")
    s2 = await manager.session_start(h2)
    assert s2.flashes() == ["hello"]
    await s2.release(h2)
    s3 = await manager.session_start(make_handler(f"sid={s.session_id}"))
    assert s3.flashes() == []


# ---------------------------------------------------------------- expiry


def test_set_expiry() -> None:
    s = Session(None, SID, {"a": 1})
    assert s.expiry is None
    s.set_expiry(86400)
    assert s.expiry == 86400
    assert s.modified
    assert "a" not in s.changes().set  # no data key was changed
    s.set_expiry(0)
    assert s.expiry == 0


async def test_set_expiry_is_kept_by_later_requests(manager: SessionManager) -> None:
    s = await stored_session(manager, a=1)
    s.set_expiry(86400)
    await s.release()
    again = await manager.session_start(make_handler(f"sid={s.session_id}"))
    assert again.expiry == 86400
    assert again.to_dict() == {"a": 1}  # the stored settings never show as a key
    assert await manager.read(s.session_id) == {"a": 1}


def test_the_reserved_meta_key_cannot_be_set() -> None:
    s = Session(None, SID, {"a": 1, META_KEY: {"expiry": 60}})
    assert META_KEY not in s
    assert s.expiry == 60
    with pytest.raises(KeyError, match="reserved"):
        s[META_KEY] = 1


@pytest.mark.parametrize("bad", [1.5, "60", True])  # None: back to the defaults (issue 10)
def test_set_expiry_takes_whole_seconds(bad: Any) -> None:
    with pytest.raises(TypeError, match="seconds"):
        Session(None, SID).set_expiry(bad)


async def test_set_expiry_is_sent_as_the_release_expiry(manager: SessionManager) -> None:
    s = await stored_session(manager, a=1)
    s.set_expiry(86400)
    await s.release()
    assert [r.expiry for r in releases(manager)] == [86400]
    s.set_expiry(0)  # browser-session cookie: server keeps max_lifetime
    await s.release()
    assert releases(manager)[-1].expiry == 600


async def test_negative_expiry_destroys_at_release(manager: SessionManager) -> None:
    s = await stored_session(manager, a=1)
    s.set_expiry(-1)
    await s.release()
    assert await manager.read(s.session_id) is None
    assert s.destroyed


# ---------------------------------------------------------------- release


async def test_release_without_a_manager_raises() -> None:
    with pytest.raises(RuntimeError, match="not attached"):
        await Session(None, SID).release()


async def test_release_sends_only_the_changes(manager: SessionManager) -> None:
    s = await stored_session(manager, keep=1, change=2, drop=3)
    s["change"] = 20
    s["new"] = 4
    del s["drop"]
    assert s["keep"] == 1  # reading is not a change
    await s.release()
    (rel,) = releases(manager)
    assert rel.sid == s.session_id
    assert rel.changes.set == {"change": 20, "new": 4}
    assert rel.changes.deleted == {"drop"}
    assert not rel.changes.flushed
    assert not rel.changes.create
    assert rel.expiry == 600
    assert await manager.read(s.session_id) == {"keep": 1, "change": 20, "new": 4}


async def test_unmodified_session_writes_nothing(manager: SessionManager) -> None:
    s = await stored_session(manager, a=1)
    _ = s.get("a"), len(s), list(s)
    await s.release()
    assert releases(manager) == []


async def test_releasing_twice_writes_once_and_later_changes_are_tracked(manager: SessionManager) -> None:
    s = await stored_session(manager, a=1)
    s["b"] = 2
    await s.release()
    await s.release()
    assert len(releases(manager)) == 1
    assert not s.modified
    s["c"] = 3
    await s.release()
    assert [r.changes.set for r in releases(manager)] == [{"b": 2}, {"c": 3}]


async def test_new_session_is_created_with_create_flag(manager: SessionManager) -> None:
    h = make_handler()
    s = await manager.session_start(h)
    assert s.is_new
    s["x"] = 1
    await s.release(h)
    (rel,) = releases(manager)
    assert rel.changes.create
    assert not s.is_new  # saved now
    assert await manager.read(s.session_id) == {"x": 1}


async def test_concurrent_sessions_changing_different_keys_lose_nothing(manager: SessionManager) -> None:
    base = await stored_session(manager, shared=0)
    a = await manager.session_start(make_handler(f"sid={base.session_id}"))
    b = await manager.session_start(make_handler(f"sid={base.session_id}"))
    a["from_a"] = 1
    b["from_b"] = 2
    del b["shared"]
    await a.release()
    await b.release()
    assert await manager.read(base.session_id) == {"from_a": 1, "from_b": 2}


async def test_flush_release_clears_the_stored_record(manager: SessionManager) -> None:
    s = await stored_session(manager, a=1, b=2)
    s.flush()
    s["c"] = 3
    await s.release()
    assert releases(manager)[0].changes.flushed
    assert await manager.read(s.session_id) == {"c": 3}


async def test_stored_data_does_not_alias_the_request(manager: SessionManager) -> None:
    s = await stored_session(manager, cart=[1])
    s["cart"] = s["cart"] + [2]
    await s.release()
    s["cart"].append(3)  # after release, not assigned again
    assert await manager.read(s.session_id) == {"cart": [1, 2]}


async def test_release_of_a_destroyed_session_does_not_resurrect_it(manager: SessionManager) -> None:
    s = await stored_session(manager, a=1)
    other = await manager.session_start(make_handler(f"sid={s.session_id}"))
    h = make_handler(f"sid={s.session_id}")
    await manager.session_start(h)
    await manager.session_destroy(h)
    other["late"] = 1
    await other.release()
    assert await manager.read(s.session_id) is None


# ---------------------------------------------------------------- incr and Django's expiry vocabulary


def test_incr_returns_the_value_and_records_the_delta() -> None:
    s = Session(None, "0" * 32, {"n": 5})
    assert s.incr("n") == 6
    assert s.incr("n", 10) == 16
    assert s.incr("fresh", -2) == -2
    ch = s.changes()
    assert {k: d for k, (_, d) in ch.increments.items()} == {"n": 11, "fresh": -2}
    assert ch.set == {} and not ch.empty and s.modified
    stored = {"n": 100, "other": 1}
    assert ch.apply(stored) == {"n": 111, "other": 1, "fresh": -2}  # the delta, on what the store has


def test_incr_after_a_set_or_delete_is_a_set_and_a_set_after_incr_wins() -> None:
    s = Session(None, "0" * 32, {"n": 5, "m": 1})
    s["n"] = 7
    assert s.incr("n") == 8
    del s["m"]
    assert s.incr("m") == 1
    s.incr("k")
    s["k"] = 42
    ch = s.changes()
    assert ch.increments == {}
    assert ch.set == {"n": 8, "m": 1, "k": 42}


@pytest.mark.parametrize("bad", [1.5, "1", True, None])
def test_incr_refuses_a_non_int_delta(bad: Any) -> None:
    with pytest.raises(TypeError):
        Session(None, "0" * 32).incr("n", bad)


def test_incr_refuses_a_non_int_value_and_an_overflow() -> None:
    s = Session(None, "0" * 32, {"name": "ann", "flag": True, "big": 2**64 - 1})
    with pytest.raises(TypeError, match="'name' holds a str"):
        s.incr("name")
    with pytest.raises(TypeError, match="'flag'"):
        s.incr("flag")
    with pytest.raises(TypeError):
        s.incr("big")
    assert not s.modified


def test_set_expiry_vocabulary() -> None:
    s = Session(None, "0" * 32)
    assert s.get_expiry_age() == 3600 and s.get_expire_at_browser_close()
    s.set_expiry(600)
    assert s.get_expiry_age() == 600 and not s.get_expire_at_browser_close()
    s.set_expiry(0)
    assert s.get_expire_at_browser_close() and s.get_expiry_age() == 3600
    s.set_expiry(datetime.timedelta(minutes=5))
    assert 298 <= s.get_expiry_age() <= 300 and not s.get_expire_at_browser_close()
    assert s.expires_at is not None and s.expiry is None
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)
    s.set_expiry(when)
    assert s.get_expiry_date() == when.astimezone(datetime.timezone.utc)
    assert s.get_expiry_date().tzinfo is not None
    s.set_expiry(None)
    assert s.expiry is None and s.expires_at is None and s.get_expiry_age() == 3600
    s.set_expiry(datetime.timedelta(seconds=-1))
    assert s.expiry == -1 and s.get_expiry_age() == 0  # ended: destroyed at release


def test_set_expiry_refuses_a_naive_datetime_and_other_types() -> None:
    s = Session(None, "0" * 32)
    with pytest.raises(TypeError, match="aware"):
        s.set_expiry(datetime.datetime.now())
    for bad in ("60", 1.5, True, [60]):
        with pytest.raises(TypeError):
            s.set_expiry(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most"):
        s.set_expiry(datetime.timedelta(days=365 * 100))


async def test_the_moment_is_kept_by_later_requests(manager: SessionManager) -> None:
    s = await stored_session(manager, a=1)
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    s.set_expiry(when)
    await s.release()
    again = await manager.session_start(make_handler(f"sid={s.session_id}"))
    assert again.get_expiry_date() == when.astimezone(datetime.timezone.utc)
    assert releases(manager)[-1].expiry <= 3600  # the store keeps it no longer than that
