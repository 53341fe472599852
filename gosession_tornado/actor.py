"""The actor runtime every provider runs in.

One asyncio task owns a :class:`~gosession_tornado.provider.Provider` and takes
:data:`Envelope` tuples (a message and, for an *ask*, a reply future) from
its mailbox. What holds:

* The provider is only ever called from the actor task, one batch at a time,
  so its state needs no locks.
* Each turn drains **every** message queued (up to ``max_batch``) and hands
  them to :meth:`Provider.handle_batch` together, so a network provider can
  answer many callers with one round trip.
* :meth:`ActorRef.ask` awaits the reply; the provider's exception is re-raised
  in the caller. :meth:`ActorRef.tell` never waits; its errors are logged.
* An exception fails only its own message; the actor keeps serving.
* A call that takes longer than ``timeout`` seconds (queueing included) raises
  :class:`~gosession_tornado.errors.ProviderUnavailableError`. A batch that
  hangs inside the provider is cancelled after ``timeout`` seconds, so a dead
  server cannot wedge the actor.
* :meth:`ActorRef.close` lets the batch in progress finish, fails every queued
  and every later ask with :class:`~gosession_tornado.errors.ProviderClosedError`,
  then closes the provider (inside the actor) and ends the task.

How it stays cheap (an ask costs about what a bare :class:`asyncio.Queue`
round trip costs, and much less per call when callers queue up together):

* A provider whose store lives in this process and whose verbs are
  synchronous (``memory``, see ``Provider.in_process``) is asked through
  :meth:`ActorRef.call_now` while the actor is idle: the message runs on the
  caller's stack, which is what the actor task would do next anyway, so the
  request does not suspend at all.
* The mailbox is a :class:`collections.deque`; an idle actor waits on one
  future that the next :meth:`~ActorRef.ask` or :meth:`~ActorRef.tell`
  settles. An ask creates one future (its reply) and nothing else: no Task,
  no ``wait_for``, no ``shield``.
* Deadlines are enforced by **one** timer per actor, a *deadline sweep*. An
  unanswered ask is either in the mailbox or in the batch in progress; the
  timer is armed no later than the earliest of their deadlines and, when it
  fires, fails every ask whose deadline has passed (futures are settled only
  if not done) and re-arms itself for the next one. An ask costs the timer
  nothing unless no timer is armed or its own timeout is shorter than the
  actor's. The batch in progress is covered by the same timer: a batch
  running past its deadline is cancelled by cancelling the task that runs it
  (the actor task, or the caller's for a batch of one run by
  :meth:`ActorRef.call`), which then answers it with
  ``ProviderUnavailableError`` and goes on. A call run inline costs the
  timer nothing either, on the same terms as an ask.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from typing import Any

from ._log import get_logger
from .errors import ProviderClosedError, ProviderUnavailableError
from .provider import Close, Init, Message, Provider

__all__ = ["ActorRef", "Envelope", "KindStats"]

log = get_logger("gosession_tornado.actor")

#: Messages handed to one ``handle_batch`` call at most.
DEFAULT_MAX_BATCH = 256


#: A message on its way to the actor: ``(message, reply, enqueued, deadline)``.
#: *reply* is the future an ask awaits (``None`` for a tell); *enqueued* is the
#: event loop's clock (:meth:`asyncio.AbstractEventLoop.time`, seconds) when it
#: was sent; *deadline* is when an ask gives up (``math.inf`` for a tell). A
#: plain tuple: building one costs a fraction of an object with attributes,
#: and every ask builds one.
Envelope = tuple[Message, "asyncio.Future[Any] | None", float, float]

#: The batch in progress when there is none.
_NO_BATCH: tuple[Envelope, ...] = ()


def _clock_of(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """*loop*'s clock: ``time.monotonic`` itself when ``loop.time()`` is asyncio's (it only calls it).

    Saves a Python-level call per reading on the default loop; any other loop
    (uvloop, say) keeps its own ``time()``, which ``call_at`` uses too.
    """
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


class KindStats:
    """Counters for one message kind. Latencies are in seconds, enqueue to reply."""

    __slots__ = ("calls", "errors", "max_latency", "total_latency")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.total_latency = 0.0
        self.max_latency = 0.0

    def as_dict(self) -> dict[str, float]:
        mean = self.total_latency / self.calls if self.calls else 0.0
        return {
            "calls": self.calls,
            "errors": self.errors,
            "mean_latency_ms": round(mean * 1000, 3),
            "max_latency_ms": round(self.max_latency * 1000, 3),
        }


class ActorRef:
    """Handle to a provider running in its own actor task.

    :param provider: the provider instance the actor owns.
    :param timeout: seconds an ask may take, queueing included (default 5);
        also the longest one batch may run inside the provider.
    :param max_batch: most messages handed to one ``handle_batch`` call.
    """

    def __init__(
        self,
        provider: Provider,
        *,
        name: str = "provider",
        timeout: float = 5.0,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self.provider = provider
        self.name = name
        self.timeout = timeout
        self.max_batch = max_batch
        self._mailbox: collections.deque[Envelope] = collections.deque()
        #: Set while the actor waits for mail; the next message settles it.
        self._wakeup: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock: Callable[[], float] = time.monotonic
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._stats: dict[str, KindStats] = {}
        self.batches = 0
        self.largest_batch = 0
        #: The batch inside the provider now (empty between batches).
        self._current: list[Envelope] | tuple[Envelope, ...] = _NO_BATCH
        # The deadline sweep: one timer, armed no later than the earliest deadline.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        #: Deadline of the batch inside the provider now (``math.inf``: none).
        self._batch_deadline = math.inf
        #: The task running that batch, which the sweep cancels past the deadline:
        #: the actor's own, or the caller's for a batch of one run by :meth:`call`.
        self._batch_task: asyncio.Task[Any] | None = None
        #: A batch of one runs on a caller's stack now (see :meth:`call`); settled when it ends.
        self._inline: asyncio.Future[None] | None = None
        #: The provider lets an idle actor run an ask on the caller's stack (see :meth:`call`).
        self.inline_when_idle = bool(getattr(provider, "inline_when_idle", False))
        self._batch_timed_out = False

    # ------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`close`."""
        return self._task is not None and not self._closing

    async def start(self, max_lifetime: int, config: Any) -> None:
        """Start the actor task and run ``session_init`` inside it.

        :raises ProviderUnavailableError: if init times out or the store is down;
            the actor is stopped again in that case.
        """
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._clock = _clock_of(self._loop)
        self._task = self._loop.create_task(self._run(), name=f"gosession-actor-{self.name}")
        try:
            await self.ask(Init(max_lifetime, config))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Fail queued and later asks with ``ProviderClosedError``; close the provider.

        Waits for the batch in progress (at most ``timeout`` seconds). Safe to
        call more than once.
        """
        if self._task is None:
            self._closing = True
            self._closed.set()
            return
        if not self._closing:
            self._closing = True
            self._wake()
        await self._closed.wait()

    # ------------------------------------------------------------ calls

    def mailbox_depth(self) -> int:
        """Messages waiting in the mailbox right now."""
        return len(self._mailbox)

    def stats(self) -> dict[str, dict[str, float]]:
        """Per message kind: calls, errors, mean and max latency in milliseconds."""
        return {kind: s.as_dict() for kind, s in sorted(self._stats.items())}

    def ask(self, message: Message, *, timeout: float | None = None) -> asyncio.Future[Any]:
        """Send *message*; the returned future settles with the provider's reply.

        Await it. Cancelling the awaiting task cancels the future, and the
        actor then skips the message if it has not run yet.

        :raises ProviderClosedError: (at once) if the actor is closed, or
            (from the future) if it closes before answering.
        :raises ProviderUnavailableError: (from the future) if no reply came
            within *timeout* seconds (default: the actor's ``timeout``).
        :raises Exception: (from the future) whatever the provider raised for
            this message.
        """
        loop = self._loop
        if self._closing or loop is None:
            raise ProviderClosedError(
                f"session provider {self.name!r} is closed; start the SessionManager "
                "(await manager.start()) before using it"
            )
        fut: asyncio.Future[Any] = loop.create_future()
        now = self._clock()
        deadline = now + (self.timeout if timeout is None else timeout)
        if deadline < self._timer_at:
            self._arm(deadline)
        self._mailbox.append((message, fut, now, deadline))
        waiter = self._wakeup
        if waiter is not None and self._inline is None:
            self._wakeup = None
            waiter.set_result(None)
        return fut

    async def call(self, message: Message) -> Any:
        """``await ask(message)``, but without the hop when the actor is idle.

        For a provider that allows it (``inline_when_idle``: the network and
        file providers), an ask to an idle actor runs the provider's
        ``handle_batch([message])`` right here, on the caller's stack, while
        the actor counts as busy: messages sent meanwhile queue up and run
        after it, in order, as they would behind any batch. The same exclusive
        access and order, minus two turns of the event loop, which is what a
        request pays when there is nothing to batch (concurrency 1). The call
        is bounded by ``timeout`` seconds like any batch, by the same deadline
        sweep: past its deadline the sweep cancels the calling task, and the
        cancellation comes back out of here as ``ProviderUnavailableError``
        (no timer of its own per call, unlike :func:`asyncio.timeout`).

        :raises ProviderUnavailableError: if it takes longer than ``timeout``.
        :raises Exception: whatever the provider raised for this message.
        """
        if not (self.inline_when_idle and self.idle):
            return await self.ask(message)
        task = asyncio.current_task()
        if task is None:  # a coroutine driven by hand: nothing the sweep could cancel
            return await self.ask(message)
        loop = self._loop
        assert loop is not None
        done: asyncio.Future[None] = loop.create_future()
        self._inline = done
        started = self._clock()
        self.batches += 1
        self.largest_batch = max(self.largest_batch, 1)
        deadline = started + self.timeout
        self._batch_deadline = deadline
        self._batch_task = task
        cancelling = task.cancelling()
        if deadline < self._timer_at:
            self._arm(deadline)
        try:
            try:
                outcomes = await self.provider.handle_batch([message])
            except asyncio.CancelledError:
                if not self._batch_timed_out:
                    raise  # the caller is being cancelled
                self._batch_timed_out = False
                if task.uncancel() > cancelling:
                    raise  # cancelled from outside as well: that wins
                outcomes = [
                    ProviderUnavailableError(
                        f"session provider {self.name!r} took longer than {self.timeout:g} s; "
                        "is its server up?"
                    )
                ]
            if len(outcomes) != 1:
                outcomes = [
                    RuntimeError(
                        f"{type(self.provider).__name__}.handle_batch returned {len(outcomes)} "
                        "results for 1 message"
                    )
                ]
        except Exception as exc:  # the whole batch failed
            outcomes = [exc]
        finally:
            if self._batch_timed_out:  # the sweep's cancel was swallowed inside the provider
                self._batch_timed_out = False
                task.uncancel()
            self._batch_deadline = math.inf
            self._batch_task = None
            self._inline = None
            done.set_result(None)
            if self._mailbox:
                self._wake()
        outcome = outcomes[0]
        self._record(message.kind, started, error=isinstance(outcome, BaseException))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    @property
    def idle(self) -> bool:
        """True while running with nothing queued and no batch in progress (a message would run next)."""
        return (
            not (self._mailbox or self._current or self._closing)
            and self._inline is None
            and self._loop is not None
        )

    def call_now(self, message: Message) -> Any:
        """Answer *message* on the caller's stack (only while :attr:`idle`, for an ``in_process`` provider).

        Same order and exclusive access as going through the actor task: the
        mailbox is empty and no batch runs, so the message would be next, and
        nothing else can touch the provider until this synchronous call returns.

        :raises Exception: whatever the provider raised.
        """
        st = self._stats.get(message.kind) or self._kind_stats(message.kind)
        st.calls += 1
        try:
            return self.provider.handle_now(message)
        except Exception:
            st.errors += 1
            raise

    def _kind_stats(self, kind: str) -> KindStats:
        st = self._stats[kind] = KindStats()
        return st

    def tell(self, message: Message) -> None:
        """Send *message* without waiting; a failure is logged, never raised."""
        loop = self._loop
        if self._closing or loop is None:
            log.debug("tell(%s) to closed provider %r dropped", message.kind, self.name)
            return
        self._mailbox.append((message, None, self._clock(), math.inf))
        self._wake()

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None and (self._inline is None or self._closing):
            self._wakeup = None
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------ deadlines

    def _arm(self, when: float) -> None:
        """(Re-)arm the sweep timer for loop time *when*, if that is earlier than now armed."""
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        """Fail every ask past its deadline, cancel a batch past its own, re-arm."""
        assert self._loop is not None
        self._timer = None
        self._timer_at = math.inf
        now = self._clock()
        nxt = math.inf
        for queue in (self._current, self._mailbox):
            for env in queue:
                reply = env[1]
                if reply is None or reply.done():
                    continue
                deadline = env[3]
                if deadline <= now:
                    self._time_out(env)
                elif deadline < nxt:
                    nxt = deadline
        batch_task = self._batch_task
        if self._batch_deadline <= now and not self._batch_timed_out and batch_task is not None:
            self._batch_timed_out = True
            batch_task.cancel()
        if not self._batch_timed_out and self._batch_deadline < nxt:
            nxt = self._batch_deadline
        if nxt < math.inf:
            self._arm(nxt)

    def _time_out(self, env: Envelope) -> None:
        message, reply, enqueued, deadline = env
        assert reply is not None
        limit = deadline - enqueued
        self._record(message.kind, enqueued, error=True)
        reply.set_exception(
            ProviderUnavailableError(
                f"session provider {self.name!r} did not answer a {message.kind!r} call within "
                f"{limit:g} s; is its server up? (raise provider_timeout if it is just slow)"
            )
        )

    # ------------------------------------------------------------ the actor

    def _record(self, kind: str, started: float, *, error: bool) -> None:
        st = self._stats.get(kind)
        if st is None:
            st = self._stats[kind] = KindStats()
        assert self._loop is not None
        latency = self._clock() - started
        st.calls += 1
        if error:
            st.errors += 1
        st.total_latency += latency
        if latency > st.max_latency:
            st.max_latency = latency

    async def _run(self) -> None:
        loop = self._loop
        task = self._task
        assert loop is not None and task is not None
        provider = self.provider
        stats = self._stats
        clock = self._clock
        inf = math.inf
        try:
            while True:
                mailbox = self._mailbox
                if not mailbox:
                    if self._closing:
                        break
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._wakeup = waiter
                    await waiter
                    continue
                if self._inline is not None:  # a caller runs a batch of one: queue behind it
                    await asyncio.shield(self._inline)
                    continue
                # Skip asks whose caller has given up (timed out or cancelled).
                if len(mailbox) == 1:  # the common case with nothing to batch
                    e = mailbox.popleft()
                    reply = e[1]
                    if reply is not None and reply.done():
                        continue
                    batch: list[Envelope] = [e]
                    messages: list[Message] = [e[0]]
                else:
                    if len(mailbox) <= self.max_batch:
                        self._mailbox = collections.deque()
                    else:
                        mailbox = collections.deque(mailbox.popleft() for _ in range(self.max_batch))
                    batch = []
                    messages = []
                    for e in mailbox:
                        reply = e[1]
                        if reply is None or not reply.done():
                            batch.append(e)
                            messages.append(e[0])
                if self._closing:
                    self._fail(batch)
                    break
                if not batch:
                    continue
                # -- one batch ------------------------------------------------
                n = len(batch)
                self.batches += 1
                if n > self.largest_batch:
                    self.largest_batch = n
                self._current = batch
                deadline = clock() + self.timeout
                self._batch_deadline = deadline
                self._batch_task = task
                if deadline < self._timer_at:
                    self._arm(deadline)
                outcomes: list[Any]
                try:
                    outcomes = await provider.handle_batch(messages)
                    if len(outcomes) != n:
                        raise RuntimeError(
                            f"{type(provider).__name__}.handle_batch returned {len(outcomes)} "
                            f"results for {n} messages"
                        )
                except asyncio.CancelledError:
                    if not self._batch_timed_out:
                        raise  # the actor itself is being cancelled
                    exc: BaseException = ProviderUnavailableError(
                        f"session provider {self.name!r} took longer than {self.timeout:g} s; "
                        "is its server up?"
                    )
                    outcomes = [exc] * n
                except Exception as exc2:  # the whole batch failed
                    outcomes = [exc2] * n
                finally:
                    if self._batch_timed_out and task.cancelling():
                        task.uncancel()  # our own cancel: the actor goes on
                    self._current = _NO_BATCH
                    self._batch_deadline = inf
                    self._batch_task = None
                    self._batch_timed_out = False
                now = clock()
                for (message, reply, enqueued, _), outcome in zip(batch, outcomes):
                    if reply is not None and reply.done():
                        continue  # the caller timed out (counted then) or went away
                    kind = message.kind
                    st = stats.get(kind)
                    if st is None:
                        st = stats[kind] = KindStats()
                    latency = now - enqueued
                    st.calls += 1
                    st.total_latency += latency
                    if latency > st.max_latency:
                        st.max_latency = latency
                    if isinstance(outcome, BaseException):
                        st.errors += 1
                        if reply is None:
                            log.warning("session provider %r: %s failed: %s", self.name, kind, outcome)
                        else:
                            reply.set_exception(outcome)
                    elif reply is not None:
                        reply.set_result(outcome)
        finally:
            self._wakeup = None
            await self._shutdown()

    def _fail(self, batch: list[Envelope]) -> None:
        for _message, reply, _enqueued, _deadline in batch:
            if reply is not None and not reply.done():
                reply.set_exception(
                    ProviderClosedError(f"session provider {self.name!r} was closed")
                )

    async def _shutdown(self) -> None:
        self._closing = True
        if self._inline is not None:  # a batch running on a caller's stack finishes first
            await asyncio.shield(self._inline)
        # Anything that slipped in meanwhile fails too.
        self._fail(list(self._mailbox))
        self._mailbox.clear()
        try:
            await asyncio.wait_for(self.provider.dispatch(Close()), self.timeout)
        except (TimeoutError, Exception) as exc:
            log.warning("session provider %r: close failed: %s", self.name, exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf
        self._closed.set()
