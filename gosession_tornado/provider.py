"""The provider interface (beego's verbs, async) and the messages actors carry.

A provider owns one session store. Its methods are called **only from inside
its actor task** (see :mod:`gosession_tornado.actor`), one batch at a time,
so a provider needs no locks around its own state.

Session data crosses this interface as a plain ``dict`` mapping keys
(``str``/``int``/anything :mod:`~gosession_tornado.codec` serializes) to
values. A provider serializes with :func:`gosession_tornado.codec.encode`
when its store needs bytes.

Write your own by subclassing :class:`Provider` and calling
:func:`gosession_tornado.register`::

    class OwnProvider(Provider):
        async def session_init(self, max_lifetime, config): ...
        async def session_read(self, sid): ...
        ...

    register("own", OwnProvider)
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from . import codec

if TYPE_CHECKING:  # pragma: no cover
    from .config import ManagerConfig

__all__ = [
    "Provider",
    "BatchVerbs",
    "Changes",
    "Message",
    "Init",
    "Read",
    "Exist",
    "Regenerate",
    "Destroy",
    "All",
    "GC",
    "Release",
    "DecodeCookie",
    "EncodeCookie",
    "Close",
    "SessionData",
    "DecodedCookie",
    "NOW_KINDS",
    "add_delta",
    "refresh_step",
]

SessionData = dict[Any, Any]


class DecodedCookie(NamedTuple):
    """What a client-side provider's :meth:`Provider.cookie_decode` found in a cookie."""

    sid: str
    data: SessionData
    #: Per-session lifetime in seconds (``set_expiry``), or ``None`` for the manager's default.
    expiry: int | None = None
    #: The cookie must be issued again even if the request changes nothing: it was
    #: made with an older key (rotation) or is old enough to need refreshing.
    reissue: bool = False


def add_delta(current: Any, delta: int) -> int:
    """*current* + *delta* for an increment: a missing or non-int *current* counts as 0."""
    if isinstance(current, bool) or not isinstance(current, int):
        return delta
    return current + delta


def refresh_step(lifetime: int) -> int:
    """Seconds a read must move a session's expiry before a store writes the refresh.

    A read within this long of the last write or refresh leaves the stored
    expiry alone, so a session can expire up to this much *earlier* than
    *lifetime* seconds after its last read, never later. 1/60 of the
    lifetime (one minute of an hour), at least one second. The memory, file,
    mysql and postgresql stores throttle their read refreshes by it.
    """
    return max(1, lifetime // 60)


class Changes:
    """What one request did to a session: the delta a release applies.

    Applying it to the stored record ``r`` means: if :attr:`flushed`, clear
    ``r``; then delete every key in :attr:`deleted`; then add each delta of
    :attr:`increments` to what ``r`` holds (see :func:`add_delta`); then set
    every item of :attr:`set`. Keys neither set nor deleted keep whatever
    value the store holds *now*, which is what prevents lost updates between
    concurrent requests.

    A :class:`~gosession_tornado.Session` builds its changes from the msgpack
    bytes it made when each value was set (:meth:`Session.set
    <gosession_tornado.Session.set>` encodes to check that a value
    serializes), so a value is encoded once per request: :meth:`encoded_items`
    hands those bytes to stores that keep one field per key (Redis), and
    :attr:`set` decodes them, on first use, for stores that merge into a
    decoded record. Either way the value stored is the one the key had when
    it was last set, never an object shared with the request.
    """

    __slots__ = ("_encoded", "_set", "create", "deleted", "flushed", "full", "increments")

    def __init__(
        self,
        set: dict[Any, Any] | None = None,
        deleted: frozenset[Any] = frozenset(),
        flushed: bool = False,
        create: bool = False,
        full: dict[Any, Any] | None = None,
        *,
        encoded: dict[Any, tuple[bytes, bytes]] | None = None,
        increments: dict[Any, tuple[bytes, int]] | None = None,
    ) -> None:
        self._set = set
        self._encoded = encoded
        #: Keys changed by ``Session.incr``: key -> (encoded key, delta). The store
        #: adds the delta to what it holds *now* (a missing or non-int value counts
        #: as 0), atomically, so concurrent increments are never lost. Disjoint from
        #: :attr:`set` and :attr:`deleted`.
        self.increments: dict[Any, tuple[bytes, int]] = increments or {}
        #: Keys deleted during the request (and not set again afterwards).
        self.deleted = deleted
        #: ``session.flush()`` was called: clear the stored record first.
        self.flushed = flushed
        #: The record may be created if missing (a new session). When False and the
        #: record is gone (destroyed or expired meanwhile), the release must not
        #: resurrect it.
        self.create = create
        #: The full data the request ended with; only client-side providers (cookie) need it.
        self.full = full

    @property
    def set(self) -> dict[Any, Any]:
        """Keys assigned during the request, with their final values (decoded on first use)."""
        if self._set is None:
            enc = self._encoded
            self._set = {k: codec.decode(v) for k, (_, v) in enc.items()} if enc else {}
        return self._set

    def encoded_items(self) -> list[tuple[bytes, bytes]]:
        """``(codec.encode(key), codec.encode(value))`` for every key in :attr:`set`.

        The bytes the session made at ``set()`` time when it has them, else
        encoded now.

        :raises TypeError: if a key or value cannot be serialized (only for
            changes not built by a session, which checks at ``set()`` time).
        """
        if self._encoded is not None:
            return list(self._encoded.values())
        return [(codec.encode(k), codec.encode(v)) for k, v in (self._set or {}).items()]

    @property
    def empty(self) -> bool:
        """True when applying these changes would change no stored key."""
        if self.deleted or self.flushed or self.increments:
            return False
        return not (self._encoded if self._encoded is not None else self._set)

    def apply(self, data: dict[Any, Any]) -> dict[Any, Any]:
        """Apply the delta to *data* in place and return it."""
        if self.flushed:
            data.clear()
        for key in self.deleted:
            data.pop(key, None)
        for key, (_, delta) in self.increments.items():
            data[key] = add_delta(data.get(key), delta)
        data.update(self.set)
        return data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Changes):
            return NotImplemented
        return (
            self.set == other.set
            and {k: d for k, (_, d) in self.increments.items()}
            == {k: d for k, (_, d) in other.increments.items()}
            and self.deleted == other.deleted
            and self.flushed == other.flushed
            and self.create == other.create
            and self.full == other.full
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Changes(set={self.set!r}, deleted={self.deleted!r}, flushed={self.flushed!r}, "
            f"create={self.create!r}, full={self.full!r})"
        )


# ---------------------------------------------------------------- messages


@dataclasses.dataclass(frozen=True)
class Message:
    """Base of the messages a provider actor handles."""

    kind: ClassVar[str] = "message"


@dataclasses.dataclass(frozen=True)
class Init(Message):
    kind: ClassVar[str] = "init"
    max_lifetime: int
    config: Any


@dataclasses.dataclass(frozen=True)
class Read(Message):
    kind: ClassVar[str] = "read"
    sid: str


@dataclasses.dataclass(frozen=True)
class Exist(Message):
    kind: ClassVar[str] = "exist"
    sid: str


@dataclasses.dataclass(frozen=True)
class Regenerate(Message):
    kind: ClassVar[str] = "regenerate"
    old_sid: str
    sid: str


@dataclasses.dataclass(frozen=True)
class Destroy(Message):
    kind: ClassVar[str] = "destroy"
    sid: str


@dataclasses.dataclass(frozen=True)
class All(Message):
    kind: ClassVar[str] = "all"


@dataclasses.dataclass(frozen=True)
class GC(Message):
    kind: ClassVar[str] = "gc"


@dataclasses.dataclass(frozen=True)
class Release(Message):
    kind: ClassVar[str] = "release"
    sid: str
    changes: Changes
    expiry: int


@dataclasses.dataclass(frozen=True)
class DecodeCookie(Message):
    kind: ClassVar[str] = "decode_cookie"
    value: str


@dataclasses.dataclass(frozen=True)
class EncodeCookie(Message):
    kind: ClassVar[str] = "encode_cookie"
    sid: str
    data: dict[Any, Any]
    expiry: int


@dataclasses.dataclass(frozen=True)
class Close(Message):
    kind: ClassVar[str] = "close"


# ---------------------------------------------------------------- provider


class Provider(abc.ABC):
    """A session store, driven by its actor.

    Lifetimes are in seconds. ``sid`` arguments have already been validated by
    the manager (``[A-Za-z0-9_-]``, 32-160 characters), but a provider that
    builds paths or keys from them should check again.

    Methods that subclasses must implement: :meth:`session_init`,
    :meth:`session_read`, :meth:`session_exist`, :meth:`session_regenerate`,
    :meth:`session_destroy`, :meth:`session_all`, :meth:`session_gc`,
    :meth:`session_release`. Optional: :meth:`session_close`,
    :meth:`handle_batch` (to turn a batch into one round trip).
    """

    #: True for providers whose whole state lives in the client's cookie.
    client_side: ClassVar[bool] = False
    #: Extra that provides this provider's client library (for error messages).
    extra: ClassVar[str | None] = None
    #: True for a provider whose whole store lives in this process and whose
    #: verbs for :data:`NOW_KINDS` run synchronously in :meth:`handle_now`
    #: and cannot fail (``memory``). For such a provider the actor runs a
    #: read or a release on the caller's stack when it is idle (nothing
    #: queued, no batch running): the same order and exclusive access the
    #: actor task gives, without the hop. When it is busy, a release is
    #: queued without waiting (every later read queues behind it) and a read
    #: waits its turn. Not inherited: a subclass is False unless it sets it
    #: itself (it may change how the verbs behave). Leave False for a store
    #: that other processes read.
    in_process: ClassVar[bool] = False

    #: True for a provider whose ``handle_batch`` may run on a caller's stack
    #: (see :meth:`ActorRef.call <gosession_tornado.actor.ActorRef.call>`): when
    #: the actor is idle, a read runs there as a batch of one, exclusively and
    #: in order, without the hop to the actor task. The built-in network and
    #: file providers set it; leave it False if your provider relies on
    #: running in the actor's own task.
    inline_when_idle: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "in_process" not in cls.__dict__:
            cls.in_process = False

    def __init__(self) -> None:
        self.max_lifetime = 3600
        #: The manager's configuration; set by the manager before ``session_init``.
        self.manager_config: Any = None

    # -- methods that subclasses must implement ---------------------------

    @abc.abstractmethod
    async def session_init(self, max_lifetime: int, config: Any) -> None:
        """Open the store. *config* is ``provider_config`` (string or dict).

        Raise :class:`~gosession_tornado.errors.ConfigError` for a bad config
        and :class:`~gosession_tornado.errors.ProviderUnavailableError` when
        the store cannot be reached.
        """

    @abc.abstractmethod
    async def session_read(self, sid: str) -> SessionData | None:
        """Return the data of a live session and refresh its last access, or ``None``.

        ``None`` means unknown or expired; reading never creates a record.
        An expired record must never be returned, even before GC has run.
        """

    @abc.abstractmethod
    async def session_exist(self, sid: str) -> bool:
        """True if *sid* names a live (unexpired) session. Does not refresh it."""

    @abc.abstractmethod
    async def session_regenerate(self, old_sid: str, sid: str) -> SessionData:
        """Move the record of *old_sid* to *sid* atomically; *old_sid* stops existing.

        Returns the moved data (an empty dict, and a new empty record, when
        *old_sid* did not exist).
        """

    @abc.abstractmethod
    async def session_destroy(self, sid: str) -> None:
        """Delete the record of *sid*; a missing record is not an error."""

    @abc.abstractmethod
    async def session_all(self) -> int:
        """Number of live sessions."""

    @abc.abstractmethod
    async def session_gc(self) -> None:
        """Remove every expired record."""

    @abc.abstractmethod
    async def session_release(self, sid: str, changes: Changes, expiry: int) -> None:
        """Apply *changes* to the record of *sid* and set its idle lifetime to *expiry* seconds.

        Only the keys in *changes* are written, atomically, so that a concurrent
        request's keys survive. A missing record is created only if
        ``changes.create``; otherwise the release is dropped (the session was
        destroyed or expired meanwhile).
        """

    # -- optional ----------------------------------------------------------

    def handle_now(self, message: Message) -> Any:
        """``in_process`` providers: answer a :data:`NOW_KINDS` message synchronously.

        Called by the actor on the caller's stack, only while the actor is
        idle; must not await, block or call the actor back.
        """
        raise NotImplementedError(f"{type(self).__name__} does not answer messages synchronously")

    async def session_close(self) -> None:  # noqa: B027 - optional hook
        """Release connections, pools and files. Called once, inside the actor."""

    @classmethod
    def configure_manager(cls, config: ManagerConfig) -> ManagerConfig:
        """Adjust the manager's configuration from this provider's ``provider_config``.

        Called once when a :class:`~gosession_tornado.SessionManager` is built,
        in the caller's thread, so a bad ``provider_config`` can raise
        :class:`~gosession_tornado.errors.ConfigError` early. The default
        returns *config* unchanged; the cookie provider applies beego's
        ``cookieName``, ``secure`` and ``maxage`` from its own config.
        """
        return config

    async def cookie_decode(self, value: str) -> DecodedCookie | None:
        """Client-side providers: a :class:`DecodedCookie` from a cookie value, or ``None``.

        ``None`` means the cookie is tampered, expired or undecodable (log a
        warning); the manager then starts a fresh session. Set
        :attr:`DecodedCookie.reissue` to have the manager write the cookie
        again even if the request changes nothing (key rotation, refresh).
        """
        raise NotImplementedError(f"{type(self).__name__} is not a client-side provider")

    async def cookie_encode(self, sid: str, data: SessionData, expiry: int) -> str:
        """Client-side providers: the cookie value that carries *data* for *expiry* seconds.

        Raise :class:`~gosession_tornado.errors.CookieTooLargeError` if the
        value would be over 4096 bytes.
        """
        raise NotImplementedError(f"{type(self).__name__} is not a client-side provider")

    def dispatch(self, message: Message) -> Coroutine[Any, Any, Any]:
        """The coroutine of the verb that *message* names (await it for the result).

        :raises TypeError: for a message no verb answers.
        """
        verb = _VERBS.get(type(message))
        if verb is None:
            for cls, candidate in _VERBS.items():  # a subclass of a known message
                if isinstance(message, cls):
                    verb = candidate
                    break
            else:
                raise TypeError(f"unknown provider message {message!r}")
        return verb(self, message)

    async def handle_batch(self, messages: Sequence[Message]) -> list[Any]:
        """Handle every message the actor drained in one turn.

        Returns one outcome per message, in order: the verb's result, or the
        exception it raised (an exception fails only its own message). The
        default handles them one after another; network providers override
        this to send a batch in one round trip (a pipeline, an ``IN (…)``
        query).
        """
        results: list[Any] = []
        dispatch = self.dispatch
        for message in messages:
            try:
                results.append(await dispatch(message))
            except Exception as exc:  # one message fails, the batch goes on
                results.append(exc)
        return results


class BatchVerbs(Provider):
    """A provider whose beego verbs each send one message down its own batch path.

    The subclass implements :meth:`_run_one`, which answers one message as
    its :meth:`~Provider.handle_batch` would; every data verb here only wraps
    its arguments in the matching message (``session_read(sid)`` runs
    ``Read(sid)``, and so on). A subclass may still override any verb (say a
    no-op ``session_gc``). Used by the file and Redis providers.
    """

    @abc.abstractmethod
    async def _run_one(self, message: Message) -> Any:
        """Return *message*'s result, or raise its error.

        Must not call :meth:`~Provider.dispatch`, which calls the verbs back.
        """

    async def session_read(self, sid: str) -> SessionData | None:
        result: SessionData | None = await self._run_one(Read(sid))
        return result

    async def session_exist(self, sid: str) -> bool:
        return bool(await self._run_one(Exist(sid)))

    async def session_regenerate(self, old_sid: str, sid: str) -> SessionData:
        result: SessionData = await self._run_one(Regenerate(old_sid, sid))
        return result

    async def session_destroy(self, sid: str) -> None:
        await self._run_one(Destroy(sid))

    async def session_all(self) -> int:
        return int(await self._run_one(All()))

    async def session_gc(self) -> None:
        await self._run_one(GC())

    async def session_release(self, sid: str, changes: Changes, expiry: int) -> None:
        await self._run_one(Release(sid, changes, expiry))


async def _init(provider: Provider, m: Init) -> None:
    provider.max_lifetime = m.max_lifetime
    await provider.session_init(m.max_lifetime, m.config)


#: Message type -> the verb that answers it (what :meth:`Provider.dispatch` calls).
_VERBS: dict[type[Message], Callable[[Provider, Any], Coroutine[Any, Any, Any]]] = {
    Read: lambda p, m: p.session_read(m.sid),
    Release: lambda p, m: p.session_release(m.sid, m.changes, m.expiry),
    Exist: lambda p, m: p.session_exist(m.sid),
    Regenerate: lambda p, m: p.session_regenerate(m.old_sid, m.sid),
    Destroy: lambda p, m: p.session_destroy(m.sid),
    All: lambda p, m: p.session_all(),
    GC: lambda p, m: p.session_gc(),
    DecodeCookie: lambda p, m: p.cookie_decode(m.value),
    EncodeCookie: lambda p, m: p.cookie_encode(m.sid, m.data, m.expiry),
    Init: _init,
    Close: lambda p, m: p.session_close(),
}


#: Message kinds an ``in_process`` provider answers in :meth:`Provider.handle_now`
#: (a client-side one: :class:`DecodeCookie` and :class:`EncodeCookie`).
NOW_KINDS: frozenset[type[Message]] = frozenset(
    {Read, Release, Exist, Destroy, Regenerate, DecodeCookie, EncodeCookie}
)
