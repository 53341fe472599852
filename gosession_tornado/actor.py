"""The actor runtime every provider runs in.

One asyncio task owns a :class:`~gosession_tornado.provider.Provider` and takes
:class:`Envelope` objects (a message and, for an *ask*, a reply future) from
an :class:`asyncio.Queue` mailbox. What holds:

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
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from .errors import ProviderClosedError, ProviderUnavailableError
from .provider import Close, Init, Message, Provider

__all__ = ["ActorRef", "Envelope", "KindStats"]

log = logging.getLogger("gosession_tornado.actor")

#: Messages handed to one ``handle_batch`` call at most.
DEFAULT_MAX_BATCH = 256


@dataclasses.dataclass
class Envelope:
    """A message on its way to the actor, with the future its reply settles."""

    message: Message
    reply: asyncio.Future[Any] | None
    enqueued: float = dataclasses.field(default_factory=time.monotonic)


@dataclasses.dataclass
class KindStats:
    """Counters for one message kind. Latencies are in seconds, enqueue to reply."""

    calls: int = 0
    errors: int = 0
    total_latency: float = 0.0
    max_latency: float = 0.0

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
    :param timeout: seconds an ask may take, queueing included (default 5).
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
        self._mailbox: asyncio.Queue[Envelope | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._stats: dict[str, KindStats] = {}
        self.batches = 0
        self.largest_batch = 0

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
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"gosession-actor-{self.name}"
        )
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
            self._mailbox.put_nowait(None)  # wake the actor
        await self._closed.wait()

    # ------------------------------------------------------------ calls

    def mailbox_depth(self) -> int:
        """Messages waiting in the mailbox right now."""
        return self._mailbox.qsize()

    def stats(self) -> dict[str, dict[str, float]]:
        """Per message kind: calls, errors, mean and max latency in milliseconds."""
        return {kind: s.as_dict() for kind, s in sorted(self._stats.items())}

    async def ask(self, message: Message, *, timeout: float | None = None) -> Any:
        """Send *message* and await the provider's reply.

        :raises ProviderClosedError: if the actor is closed or closes meanwhile.
        :raises ProviderUnavailableError: if no reply came within *timeout*
            seconds (default: the actor's ``timeout``).
        :raises Exception: whatever the provider raised for this message.
        """
        if self._closing or self._task is None:
            raise ProviderClosedError(
                f"session provider {self.name!r} is closed; start the SessionManager "
                "(await manager.start()) before using it"
            )
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._mailbox.put_nowait(Envelope(message, fut))
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(fut), limit)
        except TimeoutError:
            if not fut.done():
                fut.cancel()  # tells the actor to skip it if still queued
            self._record(message.kind, time.monotonic() - limit, error=True)
            raise ProviderUnavailableError(
                f"session provider {self.name!r} did not answer a {message.kind!r} call within "
                f"{limit:g} s; is its server up? (raise provider_timeout if it is just slow)"
            ) from None
        except asyncio.CancelledError:
            if not fut.done():
                fut.cancel()
            raise

    def tell(self, message: Message) -> None:
        """Send *message* without waiting; a failure is logged, never raised."""
        if self._closing or self._task is None:
            log.debug("tell(%s) to closed provider %r dropped", message.kind, self.name)
            return
        self._mailbox.put_nowait(Envelope(message, None))

    # ------------------------------------------------------------ the actor

    def _record(self, kind: str, started: float, *, error: bool) -> None:
        st = self._stats.get(kind)
        if st is None:
            st = self._stats[kind] = KindStats()
        latency = time.monotonic() - started
        st.calls += 1
        if error:
            st.errors += 1
        st.total_latency += latency
        if latency > st.max_latency:
            st.max_latency = latency

    async def _run(self) -> None:
        try:
            while True:
                first = await self._mailbox.get()
                batch: list[Envelope] = [] if first is None else [first]
                while len(batch) < self.max_batch:
                    try:
                        item = self._mailbox.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if item is not None:
                        batch.append(item)
                # Skip asks whose caller has given up (timed out or cancelled).
                live = [e for e in batch if e.reply is None or not e.reply.done()]
                if self._closing:
                    # Init may still run (start() racing close()); everything else fails.
                    self._fail(live)
                    break
                if live:
                    await self._handle(live)
        finally:
            await self._shutdown()

    async def _handle(self, batch: list[Envelope]) -> None:
        self.batches += 1
        if len(batch) > self.largest_batch:
            self.largest_batch = len(batch)
        messages = [e.message for e in batch]
        try:
            outcomes = await asyncio.wait_for(self.provider.handle_batch(messages), self.timeout)
            if len(outcomes) != len(batch):
                raise RuntimeError(
                    f"{type(self.provider).__name__}.handle_batch returned {len(outcomes)} "
                    f"results for {len(batch)} messages"
                )
        except TimeoutError:
            exc: BaseException = ProviderUnavailableError(
                f"session provider {self.name!r} took longer than {self.timeout:g} s; "
                "is its server up?"
            )
            outcomes = [exc] * len(batch)
        except Exception as exc2:  # the whole batch failed
            outcomes = [exc2] * len(batch)
        for env, outcome in zip(batch, outcomes):
            failed = isinstance(outcome, BaseException)
            if env.reply is not None and env.reply.done():
                continue  # the caller timed out and was counted then
            self._record(env.message.kind, env.enqueued, error=failed)
            if env.reply is None:
                if failed:
                    log.warning(
                        "session provider %r: %s failed: %s", self.name, env.message.kind, outcome
                    )
                continue
            if failed:
                env.reply.set_exception(outcome)
            else:
                env.reply.set_result(outcome)

    def _fail(self, batch: list[Envelope]) -> None:
        for env in batch:
            if env.reply is not None and not env.reply.done():
                env.reply.set_exception(
                    ProviderClosedError(f"session provider {self.name!r} was closed")
                )

    async def _shutdown(self) -> None:
        self._closing = True
        # Anything that slipped in meanwhile fails too.
        while True:
            try:
                item = self._mailbox.get_nowait()
            except asyncio.QueueEmpty:
                break
            if item is not None:
                self._fail([item])
        try:
            await asyncio.wait_for(self.provider.dispatch(Close()), self.timeout)
        except (TimeoutError, Exception) as exc:
            log.warning("session provider %r: close failed: %s", self.name, exc)
        self._closed.set()

