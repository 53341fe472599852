"""The actor runtime: ask/tell, batching, failure isolation, close, timeouts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from gosession_tornado import (
    Changes,
    ProviderClosedError,
    ProviderUnavailableError,
    SessionManager,
    register,
    unregister,
)
from gosession_tornado.actor import ActorRef
from gosession_tornado.provider import GC, All, Destroy, Exist, Message, Read, Release
from tests.support import DictStore

SID = "a" * 32


class BoomError(Exception):
    """Raised by the test providers on purpose."""


class DictProvider(DictStore):
    """A dict store that records which task called it and how big each batch was.

    ``read("fail…")`` raises :class:`BoomError`; ``read("block…")`` waits on
    :attr:`gate` (an :class:`asyncio.Event`) after setting :attr:`entered`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, dict[Any, Any]] = {}
        self.batch_sizes: list[int] = []
        self.tasks: set[asyncio.Task[Any] | None] = set()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.closed = False
        self.released: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def handle_batch(self, messages: Sequence[Message]) -> list[Any]:
        self.batch_sizes.append(len(messages))
        return await super().handle_batch(messages)

    async def session_init(self, max_lifetime: int, config: Any) -> None:
        self.tasks.add(asyncio.current_task())

    async def session_read(self, sid: str) -> dict[Any, Any] | None:
        self.tasks.add(asyncio.current_task())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._read(sid)
        finally:
            self.in_flight -= 1

    async def _read(self, sid: str) -> dict[Any, Any] | None:
        await asyncio.sleep(0)  # give a concurrent caller the chance to overlap
        if sid.startswith("fail"):
            raise BoomError(f"read of {sid} failed")
        if sid.startswith("block"):
            self.entered.set()
            await self.gate.wait()
        return self.data.get(sid)

    async def session_destroy(self, sid: str) -> None:
        if sid.startswith("fail"):
            raise BoomError(f"destroy of {sid} failed")
        self.data.pop(sid, None)

    async def session_release(self, sid: str, changes: Changes, expiry: int) -> None:
        self.tasks.add(asyncio.current_task())
        if sid.startswith("block"):
            self.entered.set()
            await self.gate.wait()
        changes.apply(self.data.setdefault(sid, {}))
        self.released.append(sid)

    async def session_close(self) -> None:
        self.closed = True


def put(sid: str, **values: Any) -> Release:
    return Release(sid, Changes(set=values, create=True), 60)


@pytest.fixture
async def actor() -> AsyncIterator[ActorRef]:
    ref = ActorRef(DictProvider(), name="dict", timeout=5.0)
    await ref.start(60, "")
    yield ref
    await ref.close()


def prov(ref: ActorRef) -> DictProvider:
    assert isinstance(ref.provider, DictProvider)
    return ref.provider


# ---------------------------------------------------------------- ask / tell


async def test_ask_returns_the_result(actor: ActorRef) -> None:
    assert await actor.ask(Read(SID)) is None
    assert await actor.ask(put(SID, a=1)) is None
    assert await actor.ask(Read(SID)) == {"a": 1}
    assert await actor.ask(Exist(SID)) is True
    assert await actor.ask(All()) == 1


async def test_ask_reraises_the_providers_exception(actor: ActorRef) -> None:
    with pytest.raises(BoomError, match="read of fail1 failed"):
        await actor.ask(Read("fail1"))
    assert actor.stats()["read"]["errors"] == 1


async def test_tell_never_waits(actor: ActorRef) -> None:
    p = prov(actor)
    result = actor.tell(put("block-tell", a=1))  # the provider blocks on p.gate
    assert result is None  # a plain call, nothing to await
    await asyncio.wait_for(p.entered.wait(), 5)  # the actor is inside session_release now
    assert "block-tell" not in p.released  # still waiting on the gate, yet tell returned
    p.gate.set()
    await actor.ask(All())  # FIFO: the tell has been handled once this returns
    assert p.released == ["block-tell"]
    assert p.data["block-tell"] == {"a": 1}


async def test_tell_logs_errors(actor: ActorRef, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gosession_tornado.actor"):
        actor.tell(Destroy("fail-tell"))
        await actor.ask(All())  # the tell was handled before this
    messages = [r.getMessage() for r in caplog.records]
    assert any("destroy" in m and "destroy of fail-tell failed" in m for m in messages), messages
    assert actor.stats()["destroy"]["errors"] == 1


async def test_tell_after_close_is_dropped() -> None:
    ref = ActorRef(DictProvider(), timeout=1.0)
    await ref.start(60, "")
    await ref.close()
    ref.tell(GC())  # no exception, no hang
    assert prov(ref).closed


# ---------------------------------------------------------------- batching


async def test_actor_drains_all_queued_messages_in_one_turn(actor: ActorRef) -> None:
    p = prov(actor)
    await actor.ask(put(SID, n=0))
    p.batch_sizes.clear()
    results = await asyncio.gather(*(actor.ask(Read(SID)) for _ in range(50)))
    assert results == [{"n": 0}] * 50
    assert max(p.batch_sizes) > 1, p.batch_sizes
    assert sum(p.batch_sizes) == 50
    assert actor.largest_batch > 1



@pytest.mark.parametrize("queued", [1, 3])
async def test_an_ask_whose_caller_went_away_never_reaches_the_provider(
    actor: ActorRef, queued: int
) -> None:
    """Alone in the mailbox (the batch-of-one path) or among others, a cancelled ask is skipped."""
    p = prov(actor)
    blocked = asyncio.ensure_future(actor.ask(Read("block-skip")))
    await asyncio.wait_for(p.entered.wait(), 5)
    gone = asyncio.ensure_future(actor.ask(put("gone", x=1)))
    others = [asyncio.ensure_future(actor.ask(put(f"kept-{i}", x=i))) for i in range(queued - 1)]
    await asyncio.sleep(0)
    gone.cancel()
    p.gate.set()
    await asyncio.wait_for(asyncio.gather(blocked, *others), 5)
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert await actor.ask(Exist("gone")) is False
    assert "gone" not in p.released
    assert p.released == [f"kept-{i}" for i in range(queued - 1)]
    assert actor.stats().get("release", {}).get("calls", 0) == queued - 1


async def test_batch_with_one_failing_message_fails_only_that_message(actor: ActorRef) -> None:
    p = prov(actor)
    await actor.ask(put(SID, n=1))
    p.batch_sizes.clear()
    messages: list[Message] = [Read(SID)] * 10 + [Read("fail-x")] + [Read(SID)] * 10
    results = await asyncio.gather(*(actor.ask(m) for m in messages), return_exceptions=True)
    assert max(p.batch_sizes) > 1
    assert isinstance(results[10], BoomError)
    assert results[:10] == [{"n": 1}] * 10
    assert results[11:] == [{"n": 1}] * 10


async def test_actor_keeps_serving_after_an_exception(actor: ActorRef) -> None:
    for i in range(3):
        with pytest.raises(BoomError):
            await actor.ask(Read(f"fail{i}"))
        await actor.ask(put(SID, i=i))
        assert await actor.ask(Read(SID)) == {"i": i}


class WholeBatchFails(DictProvider):
    async def handle_batch(self, messages: Sequence[Message]) -> list[Any]:
        if any(isinstance(m, Read) for m in messages):
            raise BoomError("the whole pipeline failed")
        return await super().handle_batch(messages)


async def test_a_whole_batch_failing_fails_its_messages_and_the_actor_goes_on() -> None:
    ref = ActorRef(WholeBatchFails(), timeout=2.0)
    await ref.start(60, "")
    try:
        results = await asyncio.gather(*(ref.ask(Read(SID)) for _ in range(5)), return_exceptions=True)
        assert all(isinstance(r, BoomError) for r in results), results
        assert await ref.ask(All()) == 0
        assert ref.stats()["read"]["errors"] == 5
    finally:
        await ref.close()


async def test_start_fails_when_init_fails() -> None:
    class BadInit(DictProvider):
        async def session_init(self, max_lifetime: int, config: Any) -> None:
            raise BoomError("bad config")

    ref = ActorRef(BadInit(), timeout=2.0)
    with pytest.raises(BoomError, match="bad config"):
        await ref.start(60, "")
    assert not ref.running
    with pytest.raises(ProviderClosedError):
        await ref.ask(All())


class WrongCount(DictProvider):
    async def handle_batch(self, messages: Sequence[Message]) -> list[Any]:
        if any(isinstance(m, Read) for m in messages):
            return []
        return await super().handle_batch(messages)


async def test_handle_batch_returning_the_wrong_count_is_an_error() -> None:
    ref = ActorRef(WrongCount(), timeout=2.0)
    await ref.start(60, "")
    try:
        with pytest.raises(RuntimeError, match="0 results for 1 messages"):
            await ref.ask(Read(SID))
        assert await ref.ask(All()) == 0  # still serving
    finally:
        await ref.close()


# ---------------------------------------------------------------- close


async def test_close_fails_pending_and_later_asks_without_hanging() -> None:
    p = DictProvider()
    ref = ActorRef(p, timeout=0.5)
    await ref.start(60, "")
    in_progress = asyncio.ensure_future(ref.ask(Read("block-1")))
    await asyncio.wait_for(p.entered.wait(), 5)
    # Queued behind the blocked batch; a long own timeout so only close() can end it.
    pending = [asyncio.ensure_future(ref.ask(Read(SID), timeout=60)) for _ in range(5)]
    await asyncio.sleep(0)
    await asyncio.wait_for(ref.close(), 10)  # bounded by the batch timeout, never a hang
    for fut in pending:
        with pytest.raises(ProviderClosedError):
            await asyncio.wait_for(fut, 5)
    with pytest.raises(ProviderUnavailableError):  # the blocked call failed too (timed out or closed)
        await asyncio.wait_for(in_progress, 5)
    with pytest.raises(ProviderClosedError, match="closed"):
        await ref.ask(Read(SID))
    assert p.closed  # session_close ran
    assert not ref.running


async def test_close_with_queued_asks_fails_them_with_provider_closed() -> None:
    p = DictProvider()
    ref = ActorRef(p, timeout=5.0)
    await ref.start(60, "")
    asks = [asyncio.ensure_future(ref.ask(Read(SID))) for _ in range(10)]
    await asyncio.sleep(0)  # they are in the mailbox now
    closing = asyncio.ensure_future(ref.close())
    results = await asyncio.wait_for(asyncio.gather(*asks, return_exceptions=True), 10)
    await asyncio.wait_for(closing, 10)
    # Each either ran before close (None: unknown sid) or failed cleanly.
    assert all(r is None or isinstance(r, ProviderClosedError) for r in results), results


async def test_close_is_idempotent_and_works_before_start() -> None:
    ref = ActorRef(DictProvider())
    await ref.close()
    with pytest.raises(ProviderClosedError):
        await ref.ask(All())
    ref2 = ActorRef(DictProvider())
    await ref2.start(60, "")
    await ref2.close()
    await ref2.close()


async def test_ask_before_start_raises_provider_closed() -> None:
    ref = ActorRef(DictProvider())
    with pytest.raises(ProviderClosedError, match="start"):
        await ref.ask(All())


# ---------------------------------------------------------------- timeouts


def test_default_timeout_is_five_seconds() -> None:
    assert ActorRef(DictProvider()).timeout == 5.0


async def test_per_call_timeout_raises_provider_unavailable_and_actor_recovers() -> None:
    p = DictProvider()
    ref = ActorRef(p, timeout=0.2)
    await ref.start(60, "")
    try:
        with pytest.raises(ProviderUnavailableError, match=r"did not answer|took longer"):
            await ref.ask(Read("block-forever"))
        # The hanging batch was cancelled: later calls work.
        await ref.ask(put(SID, ok=True))
        assert await ref.ask(Read(SID)) == {"ok": True}
        assert ref.stats()["read"]["errors"] >= 1
    finally:
        await ref.close()


async def test_calls_queued_behind_a_hanging_batch_fail_or_succeed_but_never_hang() -> None:
    p = DictProvider()
    ref = ActorRef(p, timeout=0.2)
    await ref.start(60, "")
    try:
        blocked = asyncio.ensure_future(ref.ask(Read("block-2")))
        await asyncio.wait_for(p.entered.wait(), 5)
        behind = [asyncio.ensure_future(ref.ask(Exist(SID))) for _ in range(5)]
        results = await asyncio.wait_for(
            asyncio.gather(blocked, *behind, return_exceptions=True), 10
        )
        assert isinstance(results[0], ProviderUnavailableError)
        for r in results[1:]:
            assert r is False or isinstance(r, ProviderUnavailableError)
        assert await ref.ask(Exist(SID)) is False
    finally:
        await ref.close()


async def test_explicit_per_ask_timeout() -> None:
    p = DictProvider()
    ref = ActorRef(p, timeout=30)
    await ref.start(60, "")
    try:
        with pytest.raises(ProviderUnavailableError):
            await ref.ask(Read("block-3"), timeout=0.1)
        p.gate.set()  # let the batch finish so the actor is free again
        assert await ref.ask(All()) == 0
    finally:
        await ref.close()



def test_actor_reads_the_loops_own_clock_unless_it_is_asyncios() -> None:
    """Deadlines and latencies use ``loop.time()``; on asyncio's loop that is ``time.monotonic``."""
    import time

    from gosession_tornado.actor import _clock_of

    class SkewedLoop(asyncio.SelectorEventLoop):
        """A loop whose clock is an hour ahead of ``time.monotonic`` (as uvloop's differs)."""

        def time(self) -> float:
            return time.monotonic() + 3600.0

    plain = asyncio.new_event_loop()
    skewed = SkewedLoop()
    try:
        assert _clock_of(plain) is time.monotonic
        assert _clock_of(skewed) == skewed.time

        async def timed_out_ask() -> tuple[float, dict[str, Any]]:
            ref = ActorRef(DictProvider(), timeout=0.2)
            await ref.start(60, "")
            try:
                started = time.monotonic()
                with pytest.raises(ProviderUnavailableError):
                    await ref.ask(Read("block-skewed"))
                return time.monotonic() - started, ref.stats()["read"]
            finally:
                await ref.close()

        # On the skewed loop the timeout still fires after 0.2 s, not 0 s or an hour,
        # and the latency recorded is that 0.2 s, not an hour.
        waited, read = skewed.run_until_complete(timed_out_ask())
        assert 0.15 <= waited < 5
        assert read["errors"] == 1 and read["max_latency_ms"] < 5000
    finally:
        plain.close()
        skewed.close()


# ---------------------------------------------------------------- via the manager


@pytest.fixture
def dict_provider_name(request: pytest.FixtureRequest) -> Any:
    name = f"dict_{request.node.name[:40]}"
    register(name, DictProvider)
    yield name
    unregister(name)


async def test_user_registered_provider_runs_inside_the_actor(dict_provider_name: str) -> None:
    async with SessionManager(dict_provider_name, cookie_name="sid") as m:
        assert m._actor is not None
        p = prov(m._actor)
        assert await m.read(SID) is None
        await m._ask(put(SID, a=1))
        assert await m.read(SID) == {"a": 1}
        # Calls run in the actor, never in the caller's task, and one at a time.
        assert asyncio.current_task() not in p.tasks
        results = await asyncio.gather(*(m.read(SID) for _ in range(30)))
        assert results == [{"a": 1}] * 30
        assert p.max_in_flight == 1
        assert max(p.batch_sizes) > 1  # the user's provider is batched like a built-in
        assert p.manager_config is m.config
    assert p.closed


async def test_manager_provider_timeout_reaches_the_actor(dict_provider_name: str) -> None:
    async with SessionManager(dict_provider_name, provider_timeout=0.2) as m:
        assert m._actor is not None
        assert m._actor.timeout == 0.2
        with pytest.raises(ProviderUnavailableError):
            await m._ask(Read("block-manager"))
        assert await m.get_active_sessions() == 0  # recovered


async def test_init_that_hangs_makes_start_fail_cleanly() -> None:
    class HangingInit(DictProvider):
        async def session_init(self, max_lifetime: int, config: Any) -> None:
            await asyncio.Event().wait()

    ref = ActorRef(HangingInit(), timeout=0.2)
    with pytest.raises(ProviderUnavailableError):
        await ref.start(60, "")
    assert not ref.running
    with pytest.raises(ProviderClosedError):
        await ref.ask(All())


# ---------------------------------------------------------------- call(): inline when idle


class InlineProvider(DictProvider):
    """A provider that lets an idle actor run an ask on the caller's stack."""

    inline_when_idle = True


async def test_call_runs_inline_on_an_idle_actor_and_queues_the_rest_behind_it() -> None:
    p = InlineProvider()
    ref = ActorRef(p, timeout=5)
    await ref.start(60, "")
    try:
        await ref.ask(put(SID, a=1))
        p.tasks.clear()
        assert await ref.call(Read(SID)) == {"a": 1}
        assert p.tasks == {asyncio.current_task()}  # ran right here, no hop
        # while one caller runs a batch inline, the others queue and run after it,
        # in the actor task, never two batches at once
        p.tasks.clear()
        first = asyncio.ensure_future(ref.call(Read("block-inline")))
        await asyncio.wait_for(p.entered.wait(), 5)
        assert not ref.idle
        behind = [asyncio.ensure_future(ref.call(Read(SID))) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert not any(f.done() for f in behind)  # waiting behind the inline batch
        p.gate.set()
        assert await first is None
        assert await asyncio.gather(*behind) == [{"a": 1}] * 5
        assert p.max_in_flight == 1
        assert len(p.tasks) == 2  # the first caller's task, then the actor's for the queued batch
        assert ref.stats()["read"]["calls"] >= 7
    finally:
        await ref.close()


async def test_call_inline_is_bounded_by_the_timeout_and_the_actor_goes_on() -> None:
    p = InlineProvider()
    ref = ActorRef(p, timeout=0.2)
    await ref.start(60, "")
    try:
        with pytest.raises(ProviderUnavailableError, match="took longer"):
            await ref.call(Read("block-forever-inline"))
        assert ref.idle
        await ref.ask(put(SID, ok=True))
        assert await ref.call(Read(SID)) == {"ok": True}
        assert ref.stats()["read"]["errors"] == 1
    finally:
        await ref.close()


async def test_close_waits_for_an_inline_batch_then_fails_the_queue() -> None:
    p = InlineProvider()
    ref = ActorRef(p, timeout=5)
    await ref.start(60, "")
    running = asyncio.ensure_future(ref.call(Read("block-close")))
    await asyncio.wait_for(p.entered.wait(), 5)
    queued = asyncio.ensure_future(ref.call(Read(SID)))
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(ref.close())
    await asyncio.sleep(0.05)
    assert not closing.done() and not p.closed  # the provider is not closed under a running batch
    p.gate.set()
    assert await running is None
    await asyncio.wait_for(closing, 5)
    with pytest.raises(ProviderClosedError):
        await queued
    assert p.closed


async def test_a_provider_without_the_flag_always_runs_in_the_actor_task() -> None:
    p = DictProvider()
    ref = ActorRef(p)
    await ref.start(60, "")
    try:
        p.tasks.clear()
        await ref.call(Read(SID))
        assert asyncio.current_task() not in p.tasks
    finally:
        await ref.close()


class SwallowingProvider(InlineProvider):
    """``read("swallow…")`` sleeps past the timeout and swallows the cancellation, then answers."""

    async def _read(self, sid: str) -> dict[Any, Any] | None:
        if sid.startswith("swallow"):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                return {"swallowed": True}
        return await super()._read(sid)


async def test_an_inline_timeout_leaves_the_calling_task_uncancelled() -> None:
    """The sweep cancels the caller's task; the call undoes that before it raises 503's error."""
    p = InlineProvider()
    ref = ActorRef(p, timeout=0.2)
    await ref.start(60, "")
    try:
        task = asyncio.current_task()
        assert task is not None
        with pytest.raises(ProviderUnavailableError, match="took longer"):
            await ref.call(Read("block-uncancel"))
        assert task.cancelling() == 0
        await asyncio.sleep(0.01)  # the task goes on: no cancellation is left pending
        async with asyncio.timeout(5):  # and a later timeout in the same task still works
            await ref.ask(put(SID, ok=True))
        assert await ref.call(Read(SID)) == {"ok": True}
    finally:
        await ref.close()


async def test_an_inline_call_cancelled_from_outside_is_cancelled_not_timed_out() -> None:
    p = InlineProvider()
    ref = ActorRef(p, timeout=0.2)
    await ref.start(60, "")
    try:
        # cancelled before its deadline
        early = asyncio.ensure_future(ref.call(Read("block-early")))
        await asyncio.wait_for(p.entered.wait(), 5)
        early.cancel()
        with pytest.raises(asyncio.CancelledError):
            await early
        assert ref.idle
        # cancelled from outside in the same turn as the deadline passes: the cancellation wins
        p.entered.clear()
        both = asyncio.ensure_future(ref.call(Read("block-both")))
        await asyncio.wait_for(p.entered.wait(), 5)
        loop = asyncio.get_running_loop()
        loop.call_at(ref._batch_deadline, both.cancel)
        with pytest.raises(asyncio.CancelledError):
            await both
        assert ref.idle
        assert await ref.call(Read(SID)) is None
    finally:
        await ref.close()


async def test_an_inline_call_whose_provider_swallows_the_timeout_returns_its_answer() -> None:
    p = SwallowingProvider()
    ref = ActorRef(p, timeout=0.2)
    await ref.start(60, "")
    try:
        task = asyncio.current_task()
        assert task is not None
        assert await ref.call(Read("swallow")) == {"swallowed": True}
        assert task.cancelling() == 0
        await asyncio.sleep(0.01)
        assert ref.idle
    finally:
        await ref.close()


async def test_inline_calls_share_the_actors_one_timer() -> None:
    """No timer per call: the deadline sweep is armed once and re-armed at most once per timeout."""
    p = InlineProvider()
    ref = ActorRef(p, timeout=5)
    await ref.start(60, "")
    loop = asyncio.get_running_loop()
    armed = 0
    original = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        nonlocal armed
        armed += 1
        return original(when, callback, *args, **kwargs)

    try:
        p.tasks.clear()
        loop.call_at = counting_call_at  # type: ignore[method-assign]
        for _ in range(200):
            assert await ref.call(Read(SID)) is None
        assert armed <= 1
        assert p.tasks == {asyncio.current_task()}  # every call ran inline
    finally:
        loop.call_at = original  # type: ignore[method-assign]
        await ref.close()
