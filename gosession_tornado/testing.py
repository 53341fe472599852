"""Helpers for testing an application that uses gosession-tornado.

Give a test a logged-in visitor without driving the login form, and look at
what a request stored, on any provider::

    cookie = await make_session_cookie(manager, {"user": "ann"})
    response = await http_client.fetch(url, headers={"Cookie": cookie})
    assert (await read_session(manager, cookie))["visits"] == 1

What holds:

* Every helper goes through the manager's public request path (a request
  without a connection: :meth:`SessionManager.session_start
  <gosession_tornado.manager.SessionManager.session_start>` and
  :meth:`~gosession_tornado.manager.SessionManager.release_session`), so a
  session made here is stored exactly as a request would store it: on every
  provider (the ``cookie`` provider included: the cookie value *is* the
  session), with ``hash_session_ids``, ``session_id_prefix`` and
  ``set_expiry`` honoured.
* :func:`make_session` stores the session even when *data* is empty (a new
  session is otherwise stored only once a request modifies it), so the id it
  returns is always known to the store.
* The helpers start the manager if needed (in the running event loop); close
  it at the end of the test (``await manager.close()``, or
  :class:`SessionTestMixin`, which does it for ``AsyncHTTPTestCase``).
* Nothing here is needed in production code, and nothing is imported from
  :mod:`tornado.testing` at run time.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import tornado.httputil
import tornado.web

from .manager import SessionManager
from .request import cookie_value
from .web import managers_for

if TYPE_CHECKING:  # pragma: no cover
    import tornado.httpclient
    import tornado.testing

    _TestCaseBase = tornado.testing.AsyncHTTPTestCase
else:
    _TestCaseBase = object

__all__ = [
    "MadeSession",
    "make_session",
    "make_session_cookie",
    "read_session",
    "session_cookie",
    "SessionTestMixin",
]

_T = TypeVar("_T")

#: What :func:`make_session` takes as *expiry*: what :meth:`Session.set_expiry
#: <gosession_tornado.session.Session.set_expiry>` takes (``None``: the manager's default).
Expiry = int | datetime.timedelta | datetime.datetime | None


@dataclasses.dataclass(frozen=True)
class MadeSession:
    """A stored session made by :func:`make_session`.

    ``session_id`` is the real id (what :meth:`SessionManager.read
    <gosession_tornado.manager.SessionManager.read>` and the command line take,
    also with ``hash_session_ids``); ``cookie`` is the ``Cookie`` request
    header value that carries it, ``name=value``. With the ``cookie`` provider
    the value is the encrypted session itself, not the id.
    """

    session_id: str
    cookie: str

    @property
    def headers(self) -> dict[str, str]:
        """``{"Cookie": cookie}``: request headers for :meth:`AsyncHTTPClient.fetch`."""
        return {"Cookie": self.cookie}

    @property
    def cookie_value(self) -> str:
        """The cookie's value alone (the part after ``name=``)."""
        return self.cookie.partition("=")[2]


class _NoConnection:
    """The one method :class:`tornado.web.RequestHandler` calls on a connection when built."""

    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        """Nothing to watch: the request never had a connection."""


def _offline_handler(cookie: str | None = None) -> tornado.web.RequestHandler:
    """A handler for a ``GET /`` that never reaches a socket, carrying ``Cookie: cookie``.

    Used to run the manager's request path (session_start, release_session)
    outside a server; its response headers are read back, never sent.
    """
    headers = tornado.httputil.HTTPHeaders({"Host": "127.0.0.1"})
    if cookie is not None:
        headers["Cookie"] = cookie
    request = tornado.httputil.HTTPServerRequest(
        start_line=tornado.httputil.RequestStartLine("GET", "/", "HTTP/1.1"),
        headers=headers,
        connection=_NoConnection(),  # type: ignore[arg-type]
    )
    return tornado.web.RequestHandler(tornado.web.Application(), request)


def _set_cookie_in(headers: Iterable[str], name: str) -> str | None:
    """``name=value`` from the last ``Set-Cookie`` for *name* in *headers*; ``None`` if absent or expiring."""
    found: str | None = None
    prefix = f"{name}="
    for header in headers:
        if not header.startswith(prefix):
            continue
        first, *attrs = header.split(";")
        value = first[len(prefix):].strip()
        expired = any(a.strip().lower() == "max-age=0" for a in attrs)
        found = None if expired or not value else f"{name}={value}"
    return found


async def make_session(
    manager: SessionManager, data: Mapping[Any, Any] | None = None, *, expiry: Expiry = None
) -> MadeSession:
    """Create and store a session holding *data*; return its id and ``Cookie`` header value.

    Goes through the same path as a request that sets those keys: every key
    and value is checked by the codec (:class:`TypeError` naming the key
    otherwise), the session is stored by the provider, and its cookie is the
    one the manager would send. An empty (or ``None``) *data* still stores the
    session. *expiry* is passed to :meth:`Session.set_expiry
    <gosession_tornado.session.Session.set_expiry>` (seconds, a timedelta or an
    aware datetime; ``0``: a browser-session cookie).

    :raises TypeError: if a key or value cannot be stored in a session.
    :raises ValueError: if *expiry* would destroy the session at once (negative
        seconds, a moment in the past).
    :raises ProviderUnavailableError: if the store is down.
    """
    handler = _offline_handler()
    session = manager.fresh_session(handler)
    if data:
        for key, value in data.items():
            session[key] = value
    else:
        session.flush()  # an empty session is stored too: flush() marks it modified
    if expiry is not None:
        session.set_expiry(expiry)
        if session.expiry is not None and session.expiry < 0:
            raise ValueError(f"make_session(expiry={expiry!r}) would destroy the session at once")
    await manager.release_session(session, handler)
    name = manager.config.cookie_name
    cookie = _set_cookie_in(handler._headers.get_list("Set-Cookie"), name)
    if cookie is None:  # enable_set_cookie=false: the request carries the id all the same
        cookie = f"{name}={session.session_id}"
    return MadeSession(session_id=session.session_id, cookie=cookie)


async def make_session_cookie(
    manager: SessionManager, data: Mapping[Any, Any] | None = None, *, expiry: Expiry = None
) -> str:
    """:func:`make_session`, returning only the ``Cookie`` header value (``name=value``)."""
    return (await make_session(manager, data, expiry=expiry)).cookie


def _cookie_of(manager: SessionManager, session: str | MadeSession) -> str:
    """The ``Cookie`` header carrying *session* for *manager*."""
    name = manager.config.cookie_name
    if isinstance(session, MadeSession):
        return session.cookie
    if not isinstance(session, str):
        raise TypeError(
            f"read_session() takes a session id, a cookie value, a Cookie header or a MadeSession, "
            f"got {type(session).__name__}"
        )
    value = cookie_value(session, name)
    return f"{name}={value if value is not None else session.strip()}"


async def read_session(manager: SessionManager, session: str | MadeSession) -> dict[Any, Any] | None:
    """The data stored for *session*, or ``None`` if the store does not know it.

    *session* is a session id, a cookie value, a ``Cookie`` header (``name=value``,
    possibly among other cookies; the manager's cookie name is picked out), or
    a :class:`MadeSession`. The answer is what the next request would see:
    ``None`` for an unknown, expired, destroyed or malformed id, and (``cookie``
    provider) for a value that does not decrypt or has expired. Flash messages
    are included under their key; the manager's own bookkeeping is not.
    Reading refreshes the session's idle timeout, as a request does.

    :raises ProviderUnavailableError: if the store is down.
    """
    handler = _offline_handler(_cookie_of(manager, session))
    loaded = await manager.session_start(handler)
    if loaded.is_new:
        return None
    return loaded.to_dict()


def session_cookie(manager: SessionManager, response: Any) -> str | None:
    """``name=value`` of *manager*'s cookie set by *response*, ready for a ``Cookie`` header.

    *response* is a :class:`tornado.httpclient.HTTPResponse`, its
    :class:`~tornado.httputil.HTTPHeaders`, or an iterable of ``Set-Cookie``
    header values. ``None`` if the response set no such cookie, or expired it
    (``Max-Age=0``, as after ``session_destroy``).
    """
    headers = getattr(response, "headers", response)
    if isinstance(headers, tornado.httputil.HTTPHeaders):
        values: Iterable[str] = headers.get_list("Set-Cookie")
    elif isinstance(headers, str):
        values = [headers]
    else:
        values = headers
    return _set_cookie_in(values, manager.config.cookie_name)


class SessionTestMixin(_TestCaseBase):
    """For :class:`tornado.testing.AsyncHTTPTestCase`: the helpers as plain methods.

    Put it first in the bases (``class T(SessionTestMixin, AsyncHTTPTestCase)``).
    *name* picks a named manager of the application (``session_managers``);
    ``""`` is the one behind ``self.session``. At ``tearDown`` every session
    manager of the application is closed inside the test's IOLoop, so build the
    managers in ``get_app()`` (each test gets a fresh IOLoop); set
    :attr:`close_session_managers` to False to keep them open.
    """

    #: Close the application's session managers in ``tearDown``.
    close_session_managers: bool = True

    def _session_app(self) -> tornado.web.Application:
        app = getattr(self, "_app", None)  # AsyncHTTPTestCase keeps get_app()'s result there
        if app is None:
            app = self.http_server.request_callback
        if not isinstance(app, tornado.web.Application):
            raise TypeError("SessionTestMixin needs get_app() to return a tornado.web.Application")
        return app

    def get_session_manager(self, name: str = "") -> SessionManager:
        """The application's session manager *name* (``""``: the main one)."""
        managers = managers_for(self._session_app())
        try:
            return managers[name]
        except KeyError:
            raise KeyError(
                f"the application has no session manager {name!r} (it has {sorted(managers)})"
            ) from None

    def _run(self, make: Callable[[], Awaitable[_T]]) -> _T:
        result: _T = self.io_loop.run_sync(make)
        return result

    def make_session(
        self, data: Mapping[Any, Any] | None = None, *, name: str = "", expiry: Expiry = None
    ) -> MadeSession:
        """:func:`make_session` on manager *name*, run in the test's IOLoop."""
        manager = self.get_session_manager(name)
        return self._run(lambda: make_session(manager, data, expiry=expiry))

    def make_session_cookie(
        self, data: Mapping[Any, Any] | None = None, *, name: str = "", expiry: Expiry = None
    ) -> str:
        """:func:`make_session_cookie` on manager *name*, run in the test's IOLoop."""
        return self.make_session(data, name=name, expiry=expiry).cookie

    def read_session(self, session: str | MadeSession, *, name: str = "") -> dict[Any, Any] | None:
        """:func:`read_session` on manager *name*, run in the test's IOLoop."""
        manager = self.get_session_manager(name)
        return self._run(lambda: read_session(manager, session))

    def session_cookie(self, response: Any, *, name: str = "") -> str | None:
        """:func:`session_cookie` for manager *name*."""
        return session_cookie(self.get_session_manager(name), response)

    def tearDown(self) -> None:
        if self.close_session_managers:
            managers = set(managers_for(self._session_app()).values())

            async def close_all() -> None:
                for manager in managers:
                    await manager.close()

            self.io_loop.run_sync(close_all)
        super().tearDown()
