"""SessionManager: session ids, cookies, the provider actor and GC.

The port of beego's ``session.Manager``. One manager owns one provider actor
(see :mod:`gosession_tornado.actor`) and one
:class:`tornado.ioloop.PeriodicCallback` that asks for a GC pass every
``gc_lifetime`` seconds.

What holds:

* Session ids come from :func:`secrets.token_hex`: ``session_id_length``
  random bytes as lowercase hex, after an optional prefix.
* A client-supplied id is used only if it is well-formed *and* the provider
  knows it; otherwise a new id is issued (no fixation, never a 500).
* ``Set-Cookie`` carries ``Path``, ``HttpOnly``, ``SameSite`` (and ``Secure``,
  ``Domain``, ``Partitioned``, ``Max-Age``/``Expires`` as configured); a
  destroyed session's cookie is expired with the same attributes.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import secrets
import time
import warnings
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from tornado.ioloop import PeriodicCallback

from ._log import get_logger
from .actor import ActorRef
from .config import ManagerConfig, build_config
from .errors import ProviderClosedError, SessionError
from .provider import (
    GC,
    All,
    DecodeCookie,
    Destroy,
    EncodeCookie,
    Exist,
    Message,
    Provider,
    Read,
    Regenerate,
    Release,
)
from .registry import lookup
from .request import CookieWriter, apply_cookies, cookie_value, request_state
from .session import META_KEY, Session

if TYPE_CHECKING:  # pragma: no cover
    from tornado.web import RequestHandler

__all__ = ["SessionManager", "Stats"]

_T = TypeVar("_T")


def _then(fut: asyncio.Future[_T], step: Callable[[_T], None]) -> asyncio.Future[_T]:
    """*fut* itself, with *step* run on its result as its first done callback.

    Done callbacks run in the order they were added, in the same turn of the
    loop, so whoever awaits *fut* (or adds a callback later) runs after *step*:
    no extra turn of the loop, no extra future. *step* is skipped when *fut*
    failed or was cancelled; an error in *step* is logged (it is a bug).
    """

    def done(f: asyncio.Future[_T]) -> None:
        if f.cancelled() or f.exception() is not None:
            return
        try:
            step(f.result())
        except Exception:
            log.exception("session bookkeeping after a save failed")

    fut.add_done_callback(done)
    return fut


log = get_logger("gosession_tornado")

def _plain(sid: str) -> str:
    return sid


def _hashed(sid: str) -> str:
    """The store key of *sid* with ``hash_session_ids``: sha256 as 64 lowercase hex digits."""
    return hashlib.sha256(sid.encode("ascii")).hexdigest()


class Stats(dict[str, Any]):
    """A snapshot of :meth:`SessionManager.stats`, usable as a dict right away.

    ``await manager.stats()`` additionally asks the provider for the current
    number of active sessions; the plain call reports the last known count.
    """

    def __init__(self, manager: SessionManager, data: Mapping[str, Any]) -> None:
        super().__init__(data)
        self._manager = manager

    def __await__(self) -> Generator[Any, None, Stats]:
        return self._refresh().__await__()

    async def _refresh(self) -> Stats:
        if not self._manager.started:  # reporting must not start a stopped manager
            state = "closed" if self._manager.closed else "not started"
            self["active_sessions_error"] = f"session manager is {state}"
            return self
        try:
            self["active_sessions"] = await self._manager.get_active_sessions()
        except SessionError as exc:
            self["active_sessions_error"] = str(exc)
        return self


class SessionManager:
    """Manages the sessions of one cookie name over one provider.

    Takes every calling form of the seeds (see :func:`~gosession_tornado.config.build_config`)::

        SessionManager("memory", "gosessionid", 3600, "")
        SessionManager("file", '{"cookieName":"gosessionid","gclifetime":3600,"ProviderConfig":"./tmp"}')
        SessionManager("redis", {"cookie_name": "sid", "provider_config": "127.0.0.1:6379,100,"})
        SessionManager("memory", cookie_name="sid", max_lifetime=600)

    The keyword form is typed (one parameter per
    :class:`~gosession_tornado.config.ManagerConfig` field, snake_case), so a
    type checker reports a misspelt key; at run time an unknown key (from a
    dict or a JSON string) is ignored with a warning that suggests the closest
    known one.

    :raises ConfigError: for a bad configuration.
    :raises UnknownProviderError: for an unknown provider name, or a built-in
        whose client library is not installed.
    """

    @overload
    def __init__(
        self,
        provider: str | Mapping[str, Any] | ManagerConfig = "memory",
        config: str | Mapping[str, Any] | None = None,
        /,
        *,
        cookie_name: str = ...,
        enable_set_cookie: bool = ...,
        gc_lifetime: int = ...,
        max_lifetime: int = ...,
        cookie_lifetime: int = ...,
        provider_config: Any = ...,
        domain: str = ...,
        path: str = ...,
        secure: bool = ...,
        http_only: bool = ...,
        same_site: str | int = ...,
        partitioned: bool = ...,
        session_id_length: int = ...,
        session_id_prefix: str = ...,
        enable_sid_in_http_header: bool = ...,
        session_name_in_http_header: str = ...,
        enable_sid_in_url_query: bool = ...,
        provider_timeout: float = ...,
        key_prefix: str = ...,
        eager_new_sessions: bool = ...,
        hash_session_ids: bool = ...,
    ) -> None:
        """``SessionManager("memory", cookie_name="sid")``, ``SessionManager("file", '{"cookieName": ...}')``,
        ``SessionManager("redis", {"cookie_name": ...})`` or ``SessionManager({"provider": ...})``."""

    @overload
    def __init__(
        self,
        provider: str,
        cookie_name: str,
        max_lifetime: int,
        provider_config: Any,
        secure: bool = ...,
        hash_func: str = ...,
        hash_key: str = ...,
        cookie_lifetime: int = ...,
        /,
    ) -> None:
        """beego's ``NewManager`` positional forms (seeds 000 and 004)."""

    def __init__(self, provider: Any = "memory", *args: Any, **kwargs: Any) -> None:
        self.config: ManagerConfig = build_config(provider, *args, **kwargs)
        self._provider_cls: type[Provider] = lookup(self.config.provider)
        self._client_side = self._provider_cls.client_side
        self._in_process = self._provider_cls.in_process
        self.config = self._provider_cls.configure_manager(self.config)
        self._actor: ActorRef | None = None
        self._gc_callback: PeriodicCallback | None = None
        self._start_lock: asyncio.Lock | None = None
        self._closed = False
        self._last_active: int | None = None
        self._sid_re = self._compile_sid_re()
        #: Builds this manager's Set-Cookie values.
        self._cookies = CookieWriter(self.config)
        #: The key a session is stored under: its id, or sha256(id) with hash_session_ids.
        self._key: Callable[[str], str] = _hashed if self.config.hash_session_ids else _plain

    # ------------------------------------------------------------ lifecycle

    @property
    def provider_name(self) -> str:
        """Name of the provider this manager uses."""
        return self.config.provider

    @property
    def client_side(self) -> bool:
        """True when the provider keeps sessions in the cookie itself."""
        return self._client_side

    @property
    def started(self) -> bool:
        """True between :meth:`start` and :meth:`close`."""
        return self._actor is not None and self._actor.running

    @property
    def closed(self) -> bool:
        """True after :meth:`close` (until an explicit :meth:`start`)."""
        return self._closed

    async def start(self) -> None:
        """Start the provider actor and the GC callback (beego: ``go m.GC()``).

        Idempotent and safe to call concurrently.

        :raises ProviderUnavailableError: if the provider cannot reach its store;
            calling again later retries.
        """
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self.started:
                return
            provider = self._provider_cls()
            provider.manager_config = self.config
            actor = ActorRef(provider, name=self.config.provider, timeout=self.config.provider_timeout)
            await actor.start(self.config.max_lifetime, self.config.provider_config)
            self._actor = actor
            self._closed = False
            self._gc_callback = PeriodicCallback(
                self._gc_tick, self.config.gc_lifetime * 1000, jitter=0.1
            )
            self._gc_callback.start()
            log.debug("session manager started: provider %r", self.config.provider)

    async def close(self) -> None:
        """Stop GC, fail pending calls with ``ProviderClosedError``, close the provider."""
        self._closed = True
        if self._gc_callback is not None:
            self._gc_callback.stop()
            self._gc_callback = None
        if self._actor is not None:
            await self._actor.close()

    async def __aenter__(self) -> SessionManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ensure_started(self) -> None:
        """Start on first use; a closed manager raises ``ProviderClosedError``."""
        if self.started:
            return
        if self._closed:
            raise ProviderClosedError(
                f"session manager for provider {self.config.provider!r} was closed"
            )
        await self.start()

    def _gc_tick(self) -> None:
        if self._actor is not None:
            self._actor.tell(GC())

    async def _ask(self, message: Message) -> Any:
        await self.ensure_started()
        assert self._actor is not None
        return await self._actor.ask(message)

    # ------------------------------------------------------------ ids

    def _compile_sid_re(self) -> re.Pattern[str]:
        n = self.config.session_id_length * 2
        return re.compile(rf"^{re.escape(self.config.session_id_prefix)}[0-9a-f]{{{n}}}\Z")

    def new_sid(self) -> str:
        """A fresh session id: prefix + ``session_id_length`` CSPRNG bytes as hex."""
        return self.config.session_id_prefix + secrets.token_hex(self.config.session_id_length)

    def valid_sid(self, sid: object) -> bool:
        """True if *sid* has the exact shape this manager generates."""
        return isinstance(sid, str) and self._sid_re.match(sid) is not None

    def _raw_from_request(self, handler: RequestHandler) -> str | None:
        c = self.config
        value: str | None = None
        headers = handler.request.headers
        if "Cookie" in headers:
            value = cookie_value(headers["Cookie"], c.cookie_name)
        if not value and c.enable_sid_in_http_header:
            value = headers.get(c.header_name)
        if not value and c.enable_sid_in_url_query:
            raw = handler.request.query_arguments.get(c.cookie_name)
            if raw:
                value = raw[-1].decode("latin-1")
        if value is not None and len(value) > 8192:
            return None
        return value or None

    # ------------------------------------------------------------ cookies

    def cookie_attributes(self, session: Session | None = None) -> dict[str, Any]:
        """Path, domain, secure, http_only, same_site, partitioned for *session*'s cookie.

        The manager's configuration, overridden by the session's own
        :meth:`Session.set_cookie_options`.
        """
        return self._cookies.attributes(session.cookie_options if session is not None else None)

    @property
    def _writes_cookie(self) -> bool:
        # A client-side store *is* the cookie, so it is written even with
        # enable_set_cookie=false (as beego's cookie provider does; seed 001).
        return self.config.enable_set_cookie or self._client_side

    def cookie_max_age(self, session: Session) -> int | None:
        """``Max-Age`` for *session*'s cookie in seconds, or ``None`` for a browser-session cookie."""
        if session.expires_at is not None:
            return max(1, math.ceil(session.expires_at - time.time()))
        if session.expiry is not None:
            return session.expiry if session.expiry > 0 else None
        return self.config.cookie_lifetime if self.config.cookie_lifetime > 0 else None

    def server_lifetime(self, session: Session) -> int:
        """Seconds the provider keeps *session* after its last access (never past its ``expires_at``)."""
        if session.expiry is not None and session.expiry > 0:
            lifetime = session.expiry
        else:
            lifetime = self.config.max_lifetime
        if session.expires_at is not None:
            lifetime = min(lifetime, max(1, math.ceil(session.expires_at - time.time())))
        return lifetime

    def _issue(self, handler: RequestHandler | None, session: Session, value: str | None = None) -> None:
        """Queue (and write, if still possible) the cookie/header carrying *session*."""
        if handler is None:
            return
        state = request_state(handler)
        if self._writes_cookie:
            state.cookies[self.config.cookie_name] = self._cookies.issue(
                value if value is not None else session.session_id,
                self.cookie_max_age(session),
                session.cookie_options,
            )
            apply_cookies(handler)
        if (
            self.config.enable_sid_in_http_header
            and not self._client_side
            and not getattr(handler, "_headers_written", False)
        ):
            handler.set_header(self.config.header_name, session.session_id)
        state.cookie_issued.add(id(session))
        state.vary.update(self.vary_names)

    @property
    def vary_names(self) -> tuple[str, ...]:
        """Request headers a response that used this manager's session depends on (for ``Vary``)."""
        if self.config.enable_sid_in_http_header and not self._client_side:
            return ("Cookie", self.config.header_name)
        return ("Cookie",)

    def _expire(self, handler: RequestHandler | None, session: Session | None = None) -> None:
        if handler is None or not self._writes_cookie:
            return
        state = request_state(handler)
        state.cookies[self.config.cookie_name] = self._cookies.expire(
            session.cookie_options if session is not None else None
        )
        state.vary.update(self.vary_names)
        apply_cookies(handler)

    # ------------------------------------------------------------ sessions

    def current_session(self, handler: RequestHandler) -> Session | None:
        """The session this manager started for *handler*'s request, if any."""
        return request_state(handler).sessions.get(id(self))

    async def session_start(self, handler: RequestHandler) -> Session:
        """The session of *handler*'s request (beego's ``SessionStart``).

        Reuses the client's session if its id is well-formed and known to the
        provider; otherwise starts a new one and queues its cookie. Calling it
        twice in one request returns the same :class:`Session`.

        :raises ProviderUnavailableError: if the provider is down or slow.
        """
        state = request_state(handler)
        existing = state.sessions.get(id(self))
        if existing is not None and not existing.destroyed:
            return existing
        actor = self._actor
        if actor is None or not actor.running:
            await self.ensure_started()
            actor = self._actor
            assert actor is not None
        raw = self._raw_from_request(handler)
        session: Session | None = None
        if raw is None:
            pass
        elif self._client_side:
            message = DecodeCookie(raw)
            if self._in_process and actor.idle:
                decoded = actor.call_now(message)
            else:
                decoded = await actor.ask(message)
            if decoded is not None:
                # a DecodedCookie, or a plain (sid, data, expiry) from an older provider
                sid, data, expiry = decoded[0], decoded[1], decoded[2]
                reissue = bool(getattr(decoded, "reissue", False))
                session = Session(self, sid, data, expiry=expiry, save_if_unmodified=reissue)
        elif self._sid_re.match(raw) is not None:
            if self._in_process and actor.idle:
                data = actor.call_now(Read(self._key(raw)))
            else:
                data = await actor.call(Read(self._key(raw)))
            if data is not None:
                session = Session(self, raw, data)
                if self.config.enable_sid_in_http_header and not handler._headers_written:
                    handler.set_header(self.config.header_name, raw)
        if session is not None and session.expires_at is not None and session.expires_at <= time.time():
            # set_expiry(datetime/timedelta) said it ends by now: never served past that
            if not self._client_side:
                actor.tell(Destroy(self._key(session.session_id)))
            session = None
        if session is None:
            # Stored, and given its cookie, only when a request modifies it (or eagerly, as beego).
            eager = self.config.eager_new_sessions
            session = Session(self, self.new_sid(), None, is_new=True, save_if_unmodified=eager)
            if eager and not self._client_side:
                self._issue(handler, session)
        state.sessions[id(self)] = session
        return session

    def fresh_session(self, handler: RequestHandler | None) -> Session:
        """A new empty session that is saved (and gets a cookie) only if modified."""
        session = Session(self, self.new_sid(), {}, is_new=True, save_if_unmodified=False)
        if handler is not None:
            request_state(handler).sessions[id(self)] = session
        return session

    async def release_session(self, session: Session, handler: RequestHandler | None = None) -> None:
        """Save *session*'s changes (beego's ``SessionRelease``); see :meth:`Session.release`.

        A session whose expiry was set negative is destroyed instead.

        :raises ProviderUnavailableError: if the provider is down or slow.
        :raises CookieTooLargeError: (cookie provider) if the cookie would be too large.
        """
        fut = self.release_nowait(session, handler)
        if fut is not None:
            await fut

    def release_nowait(
        self, session: Session, handler: RequestHandler | None = None
    ) -> asyncio.Future[None] | None:
        """Start saving *session* (see :meth:`release_session`) without a coroutine.

        Returns ``None`` when the save is already complete (nothing to write,
        or a provider whose store lives in this process, which applies its
        mailbox in order, so every later read sees the change), else a future
        that settles when it is. The mixin's ``finish()`` uses this so that a
        request's save costs no Task.

        :raises ProviderClosedError: if the manager was closed.
        """
        if session.destroyed:
            return None
        expiry = session.expiry
        if expiry is not None and expiry < 0:
            return asyncio.ensure_future(self._destroy_session(session, handler))
        if not session.needs_save():
            return None
        actor = self._actor
        if actor is None or not actor.running:
            return asyncio.ensure_future(self._release_after_start(session, handler))
        lifetime = self.server_lifetime(session)
        if self._client_side:
            encode = EncodeCookie(session.session_id, session.record(), lifetime)
            if self._in_process and actor.idle:
                self._encoded(session, handler, actor.call_now(encode))
                return None
            return _then(actor.ask(encode), lambda value: self._encoded(session, handler, value))
        message = Release(self._key(session.session_id), session.changes(), lifetime)
        if self._in_process:
            if actor.idle:
                actor.call_now(message)
                self._released(session, handler)
                return None
            if actor.mailbox_depth() < actor.max_batch:
                # Not awaited (later reads queue behind it), unless the mailbox is backed up:
                # then the caller waits its turn, which bounds the queue of a caller that never yields.
                actor.tell(message)
                self._released(session, handler)
                return None
        return _then(actor.ask(message), lambda _: self._released(session, handler))

    async def _release_after_start(self, session: Session, handler: RequestHandler | None) -> None:
        await self.ensure_started()
        fut = self.release_nowait(session, handler)
        if fut is not None:
            await fut

    def _encoded(self, session: Session, handler: RequestHandler | None, value: str) -> None:
        """A client-side session was encoded into cookie *value*: issue it."""
        session.mark_saved()
        self._issue(handler, session, value)

    def _released(self, session: Session, handler: RequestHandler | None) -> None:
        """*session*'s changes are stored: mark it saved, (re)issue its cookie if due."""
        reissue = session.cookie_due
        if handler is not None and not reissue and session.is_new:
            reissue = id(session) not in request_state(handler).cookie_issued
        session.mark_saved()
        # A cookie with a Max-Age slides with use (gorilla re-sends it on every save),
        # so a "remember me" cookie expires max-age after the last change, like the record.
        if handler is not None and (
            reissue
            or self.config.cookie_lifetime > 0
            or (session.expiry or 0) > 0
            or session.expires_at is not None
        ):
            self._issue(handler, session)

    async def session_destroy(self, handler: RequestHandler) -> None:
        """Delete the request's session and expire its cookie (beego's ``SessionDestroy``)."""
        session = self.current_session(handler)
        if session is None:
            # Load it first: its cookie must be expired with the attributes it was set with.
            session = await self.session_start(handler)
        await self._destroy_session(session, handler)

    async def _destroy_session(self, session: Session, handler: RequestHandler | None) -> None:
        stored = not session.is_new
        if not self._client_side and stored:  # a new session was never stored
            await self._ask(Destroy(self._key(session.session_id)))
        session.mark_destroyed()
        # Expire the browser's cookie if it may hold one: a stored session's, an eager
        # new one's, or whatever (unknown, malformed) cookie of ours the request carried.
        if handler is not None and (
            stored
            or self.config.eager_new_sessions
            or id(session) in request_state(handler).cookie_issued
            or self._raw_from_request(handler) is not None
        ):
            self._expire(handler, session)
        if (
            handler is not None
            and self.config.enable_sid_in_http_header
            and not getattr(handler, "_headers_written", False)
        ):
            handler.clear_header(self.config.header_name)  # as beego: no dead sid in the response

    async def session_regenerate_id(self, handler: RequestHandler) -> Session:
        """Move the request's session to a new id (beego's ``SessionRegenerateId``).

        The data moves atomically in the provider and the old id stops
        working. Call it at login to prevent session fixation. Returns the same
        :class:`Session` object, now under the new id.
        """
        session = self.current_session(handler)
        if session is None or session.destroyed:
            session = await self.session_start(handler)
        old = session.session_id
        new = self.new_sid()
        stored = not session.is_new
        if not self._client_side and stored:  # a never-saved session has nothing to move
            await self._ask(Regenerate(self._key(old), self._key(new)))
        session.rebind(new)
        if self._client_side:
            if stored:
                session.save_anyway()  # the cookie must be re-issued
        elif stored or id(session) in request_state(handler).cookie_issued:
            self._issue(handler, session)  # the old id is dead: the browser needs the new one
        request_state(handler).vary.update(self.vary_names)
        return session

    # ------------------------------------------------------------ admin

    async def get_active_sessions(self) -> int:
        """Number of live sessions in the provider (beego's ``GetActiveSession``)."""
        n = int(await self._ask(All()))
        self._last_active = n
        return n

    async def gc(self) -> None:
        """Run one GC pass now and wait for it."""
        await self._ask(GC())

    async def read(self, sid: str) -> dict[Any, Any] | None:
        """The stored data of *sid* (without a request), or ``None``; for admin tools and tests."""
        if not self.valid_sid(sid):
            return None
        data: dict[Any, Any] | None = await self._ask(Read(self._key(sid)))
        if data is not None:
            data.pop(META_KEY, None)
        return data

    async def destroy(self, sid: str) -> bool:
        """Delete the stored session *sid* without a request (for admin tools); True if it existed.

        A malformed id, or one the store does not know, gives False. Client-side
        providers keep nothing on the server: always False.
        """
        if self._client_side or not self.valid_sid(sid):
            return False
        key = self._key(sid)
        existed = bool(await self._ask(Exist(key)))
        if existed:
            await self._ask(Destroy(key))
        return existed

    def set_secure(self, secure: bool) -> None:
        """Turn the cookie's ``Secure`` attribute on or off (beego's ``SetSecure``)."""
        self.config = self.config.replace(secure=bool(secure))
        self._cookies = CookieWriter(self.config)

    def set_hash_func(self, hasher: str, key: str = "") -> None:
        """Accepted for beego compatibility; ids always come from the OS CSPRNG."""
        warnings.warn(
            f"set_hash_func({hasher!r}, …) is ignored: session ids come from the OS CSPRNG "
            "(secrets.token_hex), which needs no hashing",
            UserWarning,
            stacklevel=2,
        )

    # beego spellings
    SessionStart = session_start
    SessionDestroy = session_destroy
    SessionRegenerateId = session_regenerate_id
    GetActiveSession = get_active_sessions
    SetSecure = set_secure
    SetHashFunc = set_hash_func

    def stats(self) -> Stats:
        """Provider, active sessions, mailbox depth, and per-kind calls/errors/latency.

        Usable as a dict at once; ``await manager.stats()`` also refreshes
        ``active_sessions`` from the provider. Latencies are milliseconds.
        """
        actor = self._actor
        data: dict[str, Any] = {
            "provider": self.config.provider,
            "started": self.started,
            "active_sessions": self._last_active,
            "mailbox_depth": actor.mailbox_depth() if actor else 0,
            "batches": actor.batches if actor else 0,
            "largest_batch": actor.largest_batch if actor else 0,
            "calls": actor.stats() if actor else {},
        }
        return Stats(self, data)

    def __repr__(self) -> str:
        return f"<SessionManager provider={self.config.provider!r} cookie={self.config.cookie_name!r}>"

