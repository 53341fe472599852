"""What one request carries: its per-request state, and the session cookie.

Three things live here, apart from the manager (which owns ids, the session
lifecycle and the provider actor) and from the session (the in-request
mapping and its change log):

* :class:`RequestState`: the bookkeeping kept on the Tornado handler during
  one request: the sessions each manager started, the ``Set-Cookie`` values
  queued, the header names the response varies on.
* :func:`cookie_value`: the value of one cookie in a ``Cookie`` request
  header, read without building every cookie of the request.
* :class:`CookieWriter`: the ``Set-Cookie`` values of one manager's cookie
  (its configured attributes, overridden per session), and
  :func:`apply_cookies`, which writes the queued ones into the handler's
  headers before they go out.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._log import get_logger
from .config import ManagerConfig
from .session import COOKIE_OPTIONS

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session

__all__ = [
    "RequestState",
    "request_state",
    "current_state",
    "apply_cookies",
    "cookie_value",
    "CookieWriter",
]

log = get_logger("gosession_tornado")

#: Attribute of the handler holding its :class:`RequestState`.
STATE_ATTR = "_gosession_state"


class RequestState:
    """The session bookkeeping of one request, kept on its handler."""

    __slots__ = ("cookie_issued", "cookies", "cookies_done", "sessions", "vary")

    def __init__(self) -> None:
        #: cookie name -> full Set-Cookie header value, applied before headers go out
        self.cookies: dict[str, str] = {}
        #: id(manager) -> the session that manager started for this request
        self.sessions: dict[int, Session] = {}
        #: id() of the sessions whose cookie (or sid header) was written
        self.cookie_issued: set[int] = set()
        #: cookie name -> the header value already put into the headers (or reported lost)
        self.cookies_done: dict[str, str] = {}
        #: header names the response varies on because a session cookie or header was
        #: written for it (sessions the request read add theirs at the end)
        self.vary: set[str] = set()


def request_state(handler: Any) -> RequestState:
    """The :class:`RequestState` of *handler*, created on first use."""
    state: RequestState | None = getattr(handler, STATE_ATTR, None)
    if state is None:
        state = RequestState()
        setattr(handler, STATE_ATTR, state)
    return state


def current_state(handler: Any) -> RequestState | None:
    """The :class:`RequestState` of *handler* if a session was touched, else ``None`` (never creates one)."""
    state: RequestState | None = getattr(handler, STATE_ATTR, None)
    return state


def apply_cookies(handler: Any) -> bool:
    """Write the pending session cookies into *handler*'s headers.

    Replaces earlier ``Set-Cookie`` headers for the same cookie names, so it may
    run any number of times. Returns False (and logs, once per cookie value) if
    the headers have already been sent without a cookie queued since.
    """
    state: RequestState | None = getattr(handler, STATE_ATTR, None)
    if state is None or not state.cookies:
        return True
    if getattr(handler, "_headers_written", False):
        lost = {n: v for n, v in state.cookies.items() if state.cookies_done.get(n) != v}
        if not lost:
            return True  # every queued cookie went out with the headers
        state.cookies_done.update(lost)
        log.warning(
            "session cookie(s) %s not sent: the response headers were already flushed; "
            "touch the session before the first flush()",
            ", ".join(sorted(lost)),
        )
        return False
    headers = handler._headers
    existing = headers.get_list("Set-Cookie")
    prefixes = tuple(f"{name}=" for name in state.cookies)
    kept = [h for h in existing if not h.startswith(prefixes)]
    if "Set-Cookie" in headers:
        del headers["Set-Cookie"]
    for value in kept:
        headers.add("Set-Cookie", value)
    for value in state.cookies.values():
        headers.add("Set-Cookie", value)
    state.cookies_done = dict(state.cookies)
    return True


def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie *name* in a ``Cookie`` request header, or ``None``.

    Parses like :func:`tornado.httputil.parse_cookie` (pairs split on ``;``,
    names and values stripped, the last pair of a name wins, a value in double
    quotes loses them) but looks only for *name*, so a request pays for one
    cookie, not for building a :class:`http.cookies.SimpleCookie` of all.
    """
    pattern = _COOKIE_PATTERNS.get(name)
    if pattern is None:
        pattern = _COOKIE_PATTERNS[name] = re.compile(rf"(?:^|;)[ \t]*{re.escape(name)}[ \t]*=([^;]*)")
    found = pattern.findall(header)
    if not found:
        return None
    value: str = found[-1].strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
    return value


_COOKIE_PATTERNS: dict[str, re.Pattern[str]] = {}


class CookieWriter:
    """The ``Set-Cookie`` values of one manager's session cookie.

    Attributes come from the :class:`~gosession_tornado.config.ManagerConfig`
    (``path``, ``domain``, ``secure``, ``http_only``, ``same_site``,
    ``partitioned``), each overridable per session
    (:meth:`Session.set_cookie_options <gosession_tornado.session.Session.set_cookie_options>`).
    """

    def __init__(self, config: ManagerConfig) -> None:
        self.config = config

    def attributes(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The cookie attributes: the manager's, overridden by a session's *options*."""
        c = self.config
        attrs: dict[str, Any] = {name: getattr(c, name) for name in COOKIE_OPTIONS}
        if options:
            attrs.update(options)
        return attrs

    def issue(self, value: str, max_age: int | None, options: Mapping[str, Any] | None = None) -> str:
        """The header value that sets the cookie to *value*; ``Max-Age``/``Expires`` if *max_age* (s)."""
        a = self.attributes(options)
        parts = [f"{self.config.cookie_name}={value}", f"Path={a['path']}"]
        if a["domain"]:
            parts.append(f"Domain={a['domain']}")
        if max_age is not None:
            parts.append(f"Expires={email.utils.formatdate(time.time() + max_age, usegmt=True)}")
            parts.append(f"Max-Age={max_age}")
        return self._tail(parts, a)

    def expire(self, options: Mapping[str, Any] | None = None) -> str:
        """The header value that expires the cookie, with the attributes it was set with."""
        a = self.attributes(options)
        parts = [f"{self.config.cookie_name}=", f"Path={a['path']}"]
        if a["domain"]:
            parts.append(f"Domain={a['domain']}")
        parts.append("Expires=Thu, 01 Jan 1970 00:00:00 GMT")
        parts.append("Max-Age=0")
        return self._tail(parts, a)

    @staticmethod
    def _tail(parts: list[str], a: Mapping[str, Any]) -> str:
        if a["http_only"]:
            parts.append("HttpOnly")
        if a["secure"]:
            parts.append("Secure")
        parts.append(f"SameSite={a['same_site']}")
        if a["partitioned"]:
            parts.append("Partitioned")
        return "; ".join(parts)
