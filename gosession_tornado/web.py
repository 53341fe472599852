"""Tornado glue: :class:`SessionMixin` and the application-settings lookup.

Put the mixin before :class:`tornado.web.RequestHandler`::

    class Handler(SessionMixin, tornado.web.RequestHandler):
        async def get(self):
            self.session["n"] = self.session.get("n", 0) + 1

and give the application one of these settings:

* ``session_manager=SessionManager(...)``;
* ``session={"provider": "memory", "cookie_name": "sid", ...}`` (a manager is
  built from the dict on first use);
* ``session_managers={"main": m1, "prefs": m2}`` (values may be managers or
  dicts); ``self.session`` uses ``"main"`` (or ``"default"``, or the only one),
  and ``await self.get_session("prefs")`` the others.

When each hook runs:

* :meth:`SessionMixin.prepare` loads ``self.session`` (starting the manager on
  first use). A subclass that overrides ``prepare`` must
  ``await super().prepare()``.
* :meth:`SessionMixin.finish` (and the first :meth:`SessionMixin.flush`) saves
  every session the request touched **before** the response goes out, so a
  client that sends its next request the moment the response arrives sees the
  new data. Cookies are written into the headers at the same point.
* A provider that is down or slow answers the request with HTTP 503
  ("Session store unavailable"); the next request retries.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from tornado.web import HTTPError, RequestHandler

from ._log import get_logger, redact
from .errors import ConfigError, CookieTooLargeError, ProviderUnavailableError, SessionError
from .manager import SessionManager
from .request import RequestState, apply_cookies, current_state, request_state
from .session import Session

__all__ = ["SessionMixin", "managers_for", "DEFAULT_NAMES"]

log = get_logger("gosession_tornado")

#: Names ``self.session`` looks for in ``session_managers``, in order.
DEFAULT_NAMES = ("main", "default", "session")
_APP_ATTR = "_gosession_managers"

if TYPE_CHECKING:  # pragma: no cover
    _Base = RequestHandler
else:
    _Base = object


def _as_manager(name: str, value: Any) -> SessionManager:
    if isinstance(value, SessionManager):
        return value
    if isinstance(value, Mapping):
        return SessionManager(dict(value))
    raise ConfigError(
        f"application setting for session manager {name!r} must be a SessionManager or a dict, "
        f"got {type(value).__name__}",
        key=name,
    )


def managers_for(application: Any) -> dict[str, SessionManager]:
    """The session managers configured in *application*'s settings, by name.

    The manager behind ``self.session`` is under the key ``""``. Built once per
    application and cached on it.
    """
    cached: dict[str, SessionManager] | None = getattr(application, _APP_ATTR, None)
    if cached is not None:
        return cached
    settings: Mapping[str, Any] = application.settings
    managers: dict[str, SessionManager] = {}
    named = settings.get("session_managers")
    if named is not None:
        if not isinstance(named, Mapping):
            raise ConfigError("application setting 'session_managers' must be a dict of name -> manager")
        for name, value in named.items():
            managers[str(name)] = _as_manager(str(name), value)
    main: SessionManager | None = None
    if settings.get("session_manager") is not None:
        main = _as_manager("session_manager", settings["session_manager"])
    elif settings.get("session") is not None:
        main = _as_manager("session", settings["session"])
    elif managers:
        for candidate in DEFAULT_NAMES:
            if candidate in managers:
                main = managers[candidate]
                break
        else:
            main = next(iter(managers.values()))
    if main is not None:
        managers[""] = main
    setattr(application, _APP_ATTR, managers)
    return managers


class SessionMixin(_Base):
    """Gives a :class:`~tornado.web.RequestHandler` ``self.session``.

    Class attribute :attr:`session_manager_name` picks which named manager
    backs ``self.session`` (default: the main one). Set
    :attr:`session_autoload` to False to skip loading in ``prepare()``
    (``self.session`` then loads nothing; use ``await self.get_session()``).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a handler class whose bases put ``RequestHandler`` before the mixin.

        In ``class H(RequestHandler, SessionMixin)`` Tornado's own ``prepare()``,
        ``flush()`` and ``finish()`` come first in the MRO and hide the mixin's,
        so no session would ever be loaded or saved.
        """
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        if RequestHandler in mro and mro.index(RequestHandler) < mro.index(SessionMixin):
            raise TypeError(
                f"{cls.__qualname__}: put SessionMixin before RequestHandler in the bases, e.g. "
                f"class {cls.__name__}(SessionMixin, tornado.web.RequestHandler): with RequestHandler "
                "first its prepare() and finish() hide the mixin's and no session is loaded or saved"
            )

    #: Which manager of ``session_managers`` backs ``self.session``; ``None`` = the main one.
    session_manager_name: ClassVar[str | None] = None
    #: Load ``self.session`` in ``prepare()``.
    session_autoload: ClassVar[bool] = True

    _gs_session: Session | None = None
    _gs_tail: asyncio.Future[Any] | None = None
    _gs_finish_future: asyncio.Future[None] | None = None
    #: A save failed and the response was replaced by the error page.
    _gs_failed: bool = False
    #: finish() has started the saves: a flush() from here on saves nothing.
    _gs_saved: bool = False

    # ------------------------------------------------------------ managers

    def session_manager_for(self, name: str | None = None) -> SessionManager:
        """The manager registered under *name* (``None``: the one behind ``self.session``)."""
        managers = managers_for(self.application)
        key = name if name is not None else (self.session_manager_name or "")
        manager = managers.get(key)
        if manager is None:
            if key == "":
                raise ConfigError(
                    "no session manager configured: pass session_manager=SessionManager(...), "
                    "session={...} or session_managers={...} to tornado.web.Application"
                )
            raise ConfigError(
                f"no session manager named {key!r} in the 'session_managers' application setting "
                f"(have: {', '.join(sorted(k for k in managers if k)) or 'none'})"
            )
        return manager

    @property
    def session_manager(self) -> SessionManager:
        """The manager behind ``self.session``."""
        return self.session_manager_for(None)

    # ------------------------------------------------------------ loading

    async def prepare(self) -> None:
        """Load ``self.session``. Subclasses that override this must ``await super().prepare()``."""
        if self.session_autoload:
            manager = self.session_manager_for(self.session_manager_name)
            try:
                self._gs_session = await manager.session_start(self)  # starts it on first use
            except ProviderUnavailableError as exc:
                raise self._unavailable(exc) from None
        parent = super().prepare()
        if parent is not None:
            await parent

    @property
    def session(self) -> Session:
        """The request's session, loaded in :meth:`prepare`."""
        if self._gs_session is None:
            raise RuntimeError(
                "self.session is not loaded: call `await super().prepare()` in your prepare(), "
                "or use `await self.get_session()`"
            )
        return self._gs_session

    async def get_session(self, name: str | None = None) -> Session:
        """The session of the manager named *name* (``None``: the main one).

        Each named manager has its own cookie; every session obtained here is
        saved before the response is sent.

        :raises tornado.web.HTTPError: 503 when the provider is unavailable.
        """
        manager = self.session_manager_for(name)
        try:
            session = await manager.session_start(self)  # starts the manager on first use
        except ProviderUnavailableError as exc:
            raise self._unavailable(exc) from None
        if name == self.session_manager_name or (name is None):
            self._gs_session = session
        return session

    async def session_destroy(self, name: str | None = None) -> Session:
        """Destroy the session (record deleted, cookie expired).

        Returns, and installs as ``self.session``, a fresh empty session that is
        saved only if the rest of the request writes to it (e.g. a flash).
        """
        manager = self.session_manager_for(name)
        try:
            await manager.session_destroy(self)
        except ProviderUnavailableError as exc:
            raise self._unavailable(exc) from None
        fresh = manager.fresh_session(self)
        if name is None or name == self.session_manager_name:
            self._gs_session = fresh
        return fresh

    async def session_regenerate_id(self, name: str | None = None) -> Session:
        """Move the session to a new id (call it at login against fixation)."""
        manager = self.session_manager_for(name)
        try:
            session = await manager.session_regenerate_id(self)
        except ProviderUnavailableError as exc:
            raise self._unavailable(exc) from None
        if name is None or name == self.session_manager_name:
            self._gs_session = session
        return session

    def _unavailable(self, exc: BaseException) -> HTTPError:
        # The client sees Tornado's error page for "503: Session Store Unavailable" only;
        # log_message (the details, ids shortened) is the one line Tornado logs for it
        # (tornado.general), and goes into the page only with serve_traceback.
        return HTTPError(
            503, "session store unavailable: %s", redact(str(exc)), reason="Session Store Unavailable"
        )

    # ------------------------------------------------------------ saving

    def _gs_drop_unsaved(self, state: RequestState) -> None:
        """A 5xx response: release nothing, and take back the cookie of a never-saved session.

        What already happened in the store stays done and keeps its cookie: a
        regenerated id (the old one is dead) and a destroy's expired cookie.
        """
        for session in state.sessions.values():
            manager = session.manager
            if manager is None or not session.is_new or session.destroyed:
                continue
            name = manager.config.cookie_name
            if id(session) in state.cookie_issued and name in state.cookies:
                del state.cookies[name]
                if not self._headers_written:
                    kept = [h for h in self._headers.get_list("Set-Cookie") if not h.startswith(f"{name}=")]
                    self.clear_header("Set-Cookie")
                    for value in kept:
                        self.add_header("Set-Cookie", value)
                    if manager.config.enable_sid_in_http_header:
                        self.clear_header(manager.config.header_name)
        apply_cookies(self)

    def _gs_apply_vary(self) -> None:
        """Add ``Vary: Cookie`` (and the sid header's name) if the response used a session.

        Merged into an existing ``Vary``; nothing for a request that never read
        or wrote a session.
        """
        state = current_state(self)
        if state is None or self._headers_written:
            return
        names = state.vary
        for session in state.sessions.values():
            if session.accessed and session.manager is not None:
                names.update(session.manager.vary_names)
        if not names:
            return
        headers = self._headers
        if "Vary" not in headers:
            headers["Vary"] = ", ".join(sorted(names))
            return
        tokens = [t.strip() for h in headers.get_list("Vary") for t in h.split(",") if t.strip()]
        have = {t.lower() for t in tokens}
        if "*" in have:
            return
        missing = [n for n in sorted(names) if n.lower() not in have]
        if missing:
            self.set_header("Vary", ", ".join(tokens + missing))

    def _gs_unsaved(self) -> list[Session]:
        if self._gs_failed:
            return []  # the response is the error page now; nothing is retried
        state = current_state(self)
        if state is None:
            return []  # no session was touched
        return [
            s
            for s in state.sessions.values()
            if s.needs_save() or (s.expiry is not None and s.expiry < 0 and not s.destroyed)
        ]

    async def _gs_release_all(self) -> None:
        sessions = self._gs_unsaved()
        if not sessions:
            return
        results = await asyncio.gather(
            *(s.release(self) for s in sessions), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    def _gs_chain(self, step: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        prev = self._gs_tail

        async def run() -> Any:
            if prev is not None:
                with contextlib.suppress(Exception):  # the earlier step reported its own failure
                    await prev
            return await step()

        fut = asyncio.ensure_future(run())
        self._gs_tail = fut
        return fut

    async def _gs_save(self) -> bool:
        """Release every touched session; on failure answer with an error. True if saved."""
        try:
            await self._gs_release_all()
        except Exception as exc:
            self._gs_save_failed(exc)
            return False
        apply_cookies(self)
        return True

    def _gs_save_failed(self, exc: BaseException) -> None:
        """Replace the response with the error page that fits *exc* (a failed save)."""
        if isinstance(exc, ProviderUnavailableError):
            self._gs_fail(503, "Session Store Unavailable", f"session store unavailable: {exc}", exc)
        elif isinstance(exc, CookieTooLargeError):
            self._gs_fail(500, "Session Cookie Too Large", str(exc), exc)
        elif isinstance(exc, SessionError):
            self._gs_fail(500, "Session Error", str(exc), exc)
        else:  # a provider bug: answer 500 rather than leave the request hanging
            log.error("session provider failed while saving", exc_info=exc)
            self._gs_fail(500, "Session Error", "the session could not be saved", exc)

    def _gs_fail(self, status: int, reason: str, message: str, exc: BaseException) -> None:
        """Replace the response with a one-line error; the details go to the log only."""
        log.error("could not save session for %s %s: %s", self.request.method, self.request.uri, exc)
        if self._headers_written:
            return
        self._gs_failed = True
        self.clear()
        request_state(self).cookies.clear()
        self.set_status(status, reason=reason)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        if status == 503:
            self.set_header("Retry-After", "1")
        body = f"{status} {reason}\n"
        if self.settings.get("serve_traceback"):  # debug mode shows details, as Tornado does
            body = f"{status} {reason}: {redact(message)}\n"
        self._write_buffer = [body.encode()]

    def write(self, chunk: str | bytes | dict[str, Any]) -> None:
        """As :meth:`RequestHandler.write`; dropped once a failed save replaced the response."""
        if self._gs_failed:
            return
        super().write(chunk)

    def flush(self, include_footers: bool = False) -> asyncio.Future[None]:
        """Save the touched sessions (and write their cookies) before the first flush."""
        if self._gs_saved or self._headers_written:
            return super().flush(include_footers)
        if not self._gs_unsaved():
            self._gs_apply_vary()
            return super().flush(include_footers)

        async def step() -> None:
            if not self._headers_written:
                await self._gs_save()
                if not self._gs_failed:
                    self._gs_apply_vary()
            await super(SessionMixin, self).flush(include_footers)

        return self._gs_chain(step)

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> asyncio.Future[None]:
        """Save the touched sessions, write their cookies, then finish the response.

        The saves start here and Tornado's ``finish`` runs from their done
        callbacks: no Task is created, and a provider whose releases need no
        waiting (``memory``) finishes the response at once.
        """
        if self._gs_finish_future is not None:
            return self._gs_finish_future
        if self._gs_tail is not None:  # a flush() is saving: finish after it, in order
            return self._gs_finish_chained(chunk)
        state = current_state(self)
        pending: list[asyncio.Future[None]] = []
        error: BaseException | None = None
        if state is not None and not self._gs_failed and self._status_code >= 500:
            self._gs_drop_unsaved(state)  # a failed request saves nothing
        elif state is not None and not self._gs_failed:
            for session in state.sessions.values():
                manager = session.manager
                if manager is None:
                    continue
                try:  # release_nowait() skips a session with nothing to save
                    fut = manager.release_nowait(session, self)
                except Exception as exc:
                    error = error or exc
                    continue
                if fut is not None:
                    pending.append(fut)
        self._gs_saved = True  # flush() from Tornado's finish() need not look again
        if self._status_code == 101 and pending and error is None:
            # A WebSocket handshake: Tornado detaches the stream right after finish(),
            # so the 101 cannot wait for a remote save. The save goes on; a cookie it
            # would have (re)issued cannot be sent any more (logged by apply_cookies).
            for fut in pending:
                fut.add_done_callback(self._gs_log_late_save)
            pending = []
        if not pending and error is None:
            if state is not None:
                apply_cookies(self)
                self._gs_apply_vary()
            return super().finish(chunk)
        result: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._gs_finish_future = result
        # As in Tornado, the handler counts as finished from this call on, although the
        # save still runs: _execute() skips the handler method after a finish() in
        # prepare() (e.g. a login redirect), and write() after finish() raises.
        self._finished = True
        if not pending:
            self._gs_finish_saved(error, chunk, result)
            return result
        waiting = len(pending)
        first_error: list[BaseException | None] = [error]

        def saved(f: asyncio.Future[None]) -> None:
            nonlocal waiting
            if first_error[0] is None:
                first_error[0] = asyncio.CancelledError() if f.cancelled() else f.exception()
            waiting -= 1
            if waiting == 0:
                self._gs_finish_saved(first_error[0], chunk, result)

        for fut in pending:
            fut.add_done_callback(saved)
        return result

    def _gs_log_late_save(self, fut: asyncio.Future[Any]) -> None:
        """A save that finished after a WebSocket handshake: log its failure, if any."""
        if not fut.cancelled() and fut.exception() is not None:
            log.error(
                "could not save session after the WebSocket handshake of %s: %s",
                self.request.uri, fut.exception(),
            )
        apply_cookies(self)  # a cookie queued now cannot go out: say so once

    def _gs_finish_saved(
        self,
        error: BaseException | None,
        chunk: str | bytes | dict[str, Any] | None,
        result: asyncio.Future[None],
    ) -> None:
        """The saves are done (*error*: the first failure): finish the response, settle *result*."""
        if error is not None:
            self._gs_save_failed(error)
        else:
            apply_cookies(self)
            self._gs_apply_vary()
        sent = self._gs_tornado_finish(chunk)
        if sent is None:
            if not result.done():
                result.set_result(None)
            return

        def done(f: asyncio.Future[None]) -> None:
            if not f.cancelled() and f.exception() is not None:
                # sent; the client went away: nothing left to tell it
                log.debug("finish after session save failed: %s", f.exception())
            if not result.done():
                result.set_result(None)

        sent.add_done_callback(done)

    def _gs_tornado_finish(
        self, chunk: str | bytes | dict[str, Any] | None
    ) -> asyncio.Future[None] | None:
        """Tornado's ``finish(chunk)``; if Tornado refuses the response, a 500 instead.

        Returns the future of the write, or ``None`` if there is nothing to wait for.
        """
        self._finished = False  # raised by finish() for the wait; Tornado's finish() checks it
        try:
            # write() drops the chunk if a failed save replaced the response; after a
            # flush() it still belongs to the (already started) body.
            return super().finish(chunk)
        except Exception:
            if self._finished:
                return None
            # Tornado refused the response (e.g. a body with a 204): answer 500 as it does.
            log.error("finish() of %s %s failed", self.request.method, self.request.uri, exc_info=True)
            self.clear()
            apply_cookies(self)
            self.set_status(500)
            try:
                return super().finish()
            except Exception:
                return None

    def _gs_finish_chained(self, chunk: str | bytes | dict[str, Any] | None) -> asyncio.Future[None]:
        """finish() after a flush() that saves: runs in order behind it (one Task)."""

        async def step() -> None:
            if self._status_code >= 500:
                state = current_state(self)
                if state is not None:
                    self._gs_drop_unsaved(state)
            elif await self._gs_save():
                self._gs_apply_vary()
            sent = self._gs_tornado_finish(chunk)
            if sent is not None:
                try:
                    await sent
                except Exception as exc:  # sent; the client went away
                    log.debug("finish after session save failed: %s", exc)

        fut: asyncio.Future[None] = self._gs_chain(step)
        self._gs_finish_future = fut
        self._finished = True
        return fut
