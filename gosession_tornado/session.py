"""The in-request session: a mapping with change tracking, flashes and expiry.

A :class:`Session` is a plain in-memory dict for the duration of one request.
It records which keys were set and deleted, so that releasing it sends only
those changes to the provider (see :class:`~gosession_tornado.provider.Changes`);
keys another request changed meanwhile survive.

Values are checked at :meth:`Session.set` time: anything the codec cannot
serialize raises :class:`TypeError` naming the key. Mutating a stored value in
place (``session["cart"].append(x)``) is not seen; assign it again or call
:meth:`Session.mark_modified`.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

from . import codec
from .config import MAX_COOKIE_LIFETIME, SAME_SITE_VALUES, ManagerConfig
from .errors import ConfigError
from .provider import Changes

if TYPE_CHECKING:  # pragma: no cover
    from tornado.web import RequestHandler

__all__ = ["Session", "SessionOwner", "FLASH_KEY", "META_KEY", "COOKIE_OPTIONS"]

#: Default key flashes are stored under.
FLASH_KEY = "_flash"

#: Reserved key under which the stored record keeps this session's own settings
#: (``set_expiry`` lifetime, ``set_cookie_options``), so that later requests,
#: re-issued cookies and ``session_destroy`` use them. Never visible through
#: the mapping; :meth:`Session.set` refuses it.
META_KEY = "__gosession__"

#: Cookie attributes :meth:`Session.set_cookie_options` accepts (the
#: :class:`~gosession_tornado.config.ManagerConfig` field names).
COOKIE_OPTIONS = ("path", "domain", "secure", "http_only", "same_site", "partitioned")


def _check_cookie_option(name: str, value: Any) -> Any:
    """The canonical value of cookie attribute *name*; :class:`ConfigError` if invalid."""
    if name in ("secure", "http_only", "partitioned"):
        if not isinstance(value, bool):
            raise ConfigError(f"cookie option {name!r} must be a bool, got {value!r}", key=name)
        return value
    if not isinstance(value, str):
        raise ConfigError(f"cookie option {name!r} must be a string, got {value!r}", key=name)
    if name == "path" and (not value.startswith("/") or any(c in value for c in ";\r\n")):
        raise ConfigError(
            f"cookie option 'path' must start with '/' and hold no ';', got {value!r}", key=name
        )
    if name == "domain" and any(c in value for c in ";\r\n ,"):
        raise ConfigError(f"cookie option 'domain' is not a valid cookie domain: {value!r}", key=name)
    if name == "same_site":
        canon = SAME_SITE_VALUES.get(value.lower())
        if canon is None:
            raise ConfigError(
                f"cookie option 'same_site' must be 'Lax', 'Strict' or 'None', got {value!r}", key=name
            )
        return canon
    return value

_MISSING = object()


class SessionOwner(Protocol):
    """What a :class:`Session` needs from whoever started it and saves it.

    :class:`~gosession_tornado.SessionManager` is the one implementation; the
    session knows nothing else about it, and the manager drives the session
    only through the methods under "Used by the owner" below.
    """

    @property
    def config(self) -> ManagerConfig:
        """The configuration (defaults for the lifetimes and the cookie)."""

    @property
    def vary_names(self) -> tuple[str, ...]:
        """Request headers a response depends on once it used the session."""

    async def release_session(self, session: Session, handler: Any = None) -> None:
        """Save *session*'s changes (and write its cookie into *handler*'s response)."""

    def release_nowait(self, session: Session, handler: Any = None) -> asyncio.Future[Any] | None:
        """Start saving *session*; ``None`` when already done, else a future to wait for."""


class Session(MutableMapping[Any, Any]):
    """One session as seen by one request.

    Created by :meth:`SessionManager.session_start`; not meant to be built by
    hand. Supports ``s[k]``, ``s[k] = v``, ``del s[k]``, ``k in s``,
    ``len(s)``, ``iter(s)`` and beego's ``get``/``set``/``delete``/``flush``.
    """

    __slots__ = (
        "_accessed",
        "_cookie_changed",
        "_cookie_options",
        "_data",
        "_deleted",
        "_destroyed",
        "_expires_at",
        "_expiry",
        "_expiry_changed",
        "_flushed",
        "_incr",
        "_is_new",
        "_manager",
        "_regenerated",
        "_save_if_unmodified",
        "_set",
        "_sid",
    )

    def __init__(
        self,
        manager: SessionOwner | None,
        sid: str,
        data: dict[Any, Any] | None = None,
        *,
        is_new: bool = False,
        expiry: int | None = None,
        save_if_unmodified: bool | None = None,
    ) -> None:
        self._manager = manager
        self._sid = sid
        #: Read or written by the request (the response then depends on it: ``Vary``).
        self._accessed = False
        self._data: dict[Any, Any] = dict(data) if data else {}
        #: key -> (encoded key, encoded value) of every key set in this request:
        #: the bytes made at set() time, reused by the release.
        self._set: dict[Any, tuple[bytes, bytes]] = {}
        self._deleted: set[Any] = set()
        self._flushed = False
        self._is_new = is_new
        #: Seconds; ``None`` means the manager's ``max_lifetime``.
        self._expiry = expiry
        #: Unix time (s) the session ends at, whatever its use (set_expiry(datetime/timedelta)).
        self._expires_at: float | None = None
        #: key -> (encoded key, delta) of the keys changed by incr() (and not set since).
        self._incr: dict[Any, tuple[bytes, int]] = {}
        self._expiry_changed = False
        self._regenerated = False
        self._destroyed = False
        self._save_if_unmodified = is_new if save_if_unmodified is None else save_if_unmodified
        #: Per-session cookie attributes (see :meth:`set_cookie_options`).
        self._cookie_options: dict[str, Any] = {}
        self._cookie_changed = False
        if META_KEY in self._data:
            self._load_meta(self._data.pop(META_KEY))

    def _load_meta(self, meta: Any) -> None:
        """Restore the settings an earlier request stored under :data:`META_KEY`."""
        if not isinstance(meta, dict):
            return
        expiry = meta.get("expiry")
        if self._expiry is None and isinstance(expiry, int) and not isinstance(expiry, bool) and expiry >= 0:
            self._expiry = expiry
        expires_at = meta.get("expires_at")
        if isinstance(expires_at, (int, float)) and not isinstance(expires_at, bool):
            self._expires_at = float(expires_at)
        options = meta.get("cookie")
        if isinstance(options, dict):
            for name, value in options.items():
                if name in COOKIE_OPTIONS:
                    try:
                        self._cookie_options[name] = _check_cookie_option(name, value)
                    except ConfigError:
                        continue  # a stale or foreign value: the manager's default applies

    # ------------------------------------------------------------ identity

    @property
    def manager(self) -> SessionOwner | None:
        """The :class:`~gosession_tornado.SessionManager` that started this session."""
        return self._manager

    @property
    def session_id(self) -> str:
        """The session id (beego's ``SessionID()``)."""
        return self._sid

    def SessionID(self) -> str:  # noqa: N802 - beego spelling
        """beego's spelling of :attr:`session_id`."""
        return self._sid

    @property
    def is_new(self) -> bool:
        """True if this session was created by this request (no valid sid came in)."""
        return self._is_new

    @property
    def modified(self) -> bool:
        """True if this request set, incremented, deleted or flushed keys, or changed expiry or options."""
        return bool(
            self._set
            or self._incr
            or self._deleted
            or self._flushed
            or self._expiry_changed
            or self._cookie_changed
        )

    @property
    def accessed(self) -> bool:
        """True once this request read or wrote the session (its response then carries ``Vary``)."""
        return self._accessed

    @property
    def expiry(self) -> int | None:
        """This session's lifetime in seconds set by :meth:`set_expiry`, else ``None``."""
        return self._expiry

    @property
    def destroyed(self) -> bool:
        """True once the session was destroyed in this request."""
        return self._destroyed

    # ------------------------------------------------------------ mapping

    def __getitem__(self, key: Any) -> Any:
        self._accessed = True
        return self._data[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: Any) -> None:
        self._accessed = True
        if key not in self._data:
            raise KeyError(key)
        self.delete(key)

    def __contains__(self, key: object) -> bool:
        self._accessed = True
        return key in self._data

    def __iter__(self) -> Iterator[Any]:
        self._accessed = True
        return iter(list(self._data))

    def __len__(self) -> int:
        self._accessed = True
        return len(self._data)

    def __repr__(self) -> str:
        return (
            f"<Session {self._sid[:8]}… keys={len(self._data)} "
            f"new={self._is_new} modified={self.modified}>"
        )

    def get(self, key: Any, default: Any = None) -> Any:
        """Value of *key*, or *default* (beego's ``Get``)."""
        self._accessed = True
        return self._data.get(key, default)

    def incr(self, key: Any, delta: int = 1) -> int:
        """Add *delta* to the integer under *key* (missing: 0) and return the new value.

        The value returned is the one this request sees; the release applies
        the **delta**, atomically in the store (a server-side script, a row
        lock, a file lock, a compare-and-swap, or the memory provider's
        actor), so concurrent requests incrementing one key lose no
        increment. If the key was set or deleted earlier in the same request,
        the new value is simply set. On the ``cookie`` provider the increment
        is local to the request, like every change there.

        :raises TypeError: if *delta* is not an int, or *key* holds something
            other than an int.
        """
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"incr() takes an int delta, got {delta!r}")
        current = self._data.get(key, 0)
        if isinstance(current, bool) or not isinstance(current, int):
            raise TypeError(f"session key {key!r} holds a {type(current).__name__}, not an int")
        value = current + delta
        if key in self._set or key in self._deleted or self._flushed:
            self.set(key, value)  # an absolute write is pending anyway
            return value
        kb, _ = codec.encode_item(key, value)  # checks the key and that the sum fits in 64 bits
        self._accessed = True
        pending = self._incr.get(key)
        self._incr[key] = (kb, delta + (pending[1] if pending else 0))
        self._data[key] = value
        return value

    def set(self, key: Any, value: Any) -> None:
        """Set *key* to *value* (beego's ``Set``).

        The value is serialized now, and those bytes are what the release
        stores: later in-place changes to *value* (``lst.append(x)``) are not
        saved unless the key is set again or :meth:`mark_modified` is called.

        :raises TypeError: naming *key* if *key* or *value* cannot be serialized.
        :raises KeyError: for the reserved key :data:`META_KEY`.
        """
        if key == META_KEY:
            raise KeyError(f"session key {META_KEY!r} is reserved by gosession-tornado")
        self._accessed = True
        self._set[key] = codec.encode_item(key, value)
        self._data[key] = value
        if self._incr:
            self._incr.pop(key, None)
        if self._deleted:
            self._deleted.discard(key)

    def delete(self, key: Any) -> None:
        """Remove *key*; a missing key is not an error (beego's ``Delete``)."""
        self._accessed = True
        if key == META_KEY:
            return  # reserved, never visible: nothing to delete
        self._data.pop(key, None)
        self._set.pop(key, None)
        if self._incr:
            self._incr.pop(key, None)
        self._deleted.add(key)

    def flush(self) -> None:
        """Remove every key (beego's ``Flush``); the stored record is cleared at release."""
        self._accessed = True
        self._data.clear()
        self._set.clear()
        self._incr.clear()
        self._deleted.clear()
        self._flushed = True

    def clear(self) -> None:
        """Same as :meth:`flush`."""
        self.flush()

    def mark_modified(self, key: Any) -> None:
        """Record that the value under *key* was mutated in place, so it is saved."""
        if key in self._data:
            self.set(key, self._data[key])

    def to_dict(self) -> dict[Any, Any]:
        """A shallow copy of the data."""
        self._accessed = True
        return dict(self._data)

    # ------------------------------------------------------------ beego names

    Get = get
    Set = set
    Delete = delete
    Flush = flush

    # ------------------------------------------------------------ flashes

    def add_flash(self, value: Any, key: str = FLASH_KEY) -> None:
        """Queue a flash message under *key*; it lasts until :meth:`flashes` reads it."""
        current = self._data.get(key)
        queue = list(current) if isinstance(current, list) else []
        queue.append(value)
        self.set(key, queue)

    def flashes(self, key: str = FLASH_KEY) -> list[Any]:
        """Return and remove the flash messages under *key* (read once)."""
        self._accessed = True
        current = self._data.get(key, _MISSING)
        if current is _MISSING:
            return []
        self.delete(key)
        return list(current) if isinstance(current, list) else [current]

    # ------------------------------------------------------------ expiry

    def set_expiry(self, value: int | datetime.timedelta | datetime.datetime | None) -> None:
        """Set when this session ends (Django's vocabulary; gorilla's "remember me").

        * an ``int`` ``> 0``: the session ends that many seconds after its last
          access (it slides with use) and the cookie gets ``Max-Age``;
        * ``0``: a browser-session cookie; the server keeps the manager's
          ``max_lifetime`` after the last access;
        * an ``int`` ``< 0``: the session is destroyed when the request ends
          (gorilla's ``MaxAge < 0``);
        * a :class:`datetime.timedelta` or an aware :class:`datetime.datetime`:
          the session ends at that moment (now + the timedelta), however much
          it is used; one in the past destroys it when the request ends;
        * ``None``: back to the manager's defaults (``max_lifetime``,
          ``cookie_lifetime``).

        Every provider, the cookie provider included, keeps the choice with
        the session, so later requests and re-issued cookies use it.

        :raises TypeError: for another type, or a naive datetime.
        :raises ValueError: for more than ``2**31 - 1`` seconds (about 68 years).
        """
        expires_at: float | None = None
        if value is None:
            seconds: int | None = None
        elif isinstance(value, (datetime.datetime, datetime.timedelta)):
            if isinstance(value, datetime.datetime):
                if value.tzinfo is None or value.utcoffset() is None:
                    raise TypeError(
                        "set_expiry() takes an aware datetime (e.g. tzinfo=datetime.timezone.utc), "
                        f"got the naive {value!r}"
                    )
                expires_at = value.timestamp()
            else:
                expires_at = time.time() + value.total_seconds()
            remaining = expires_at - time.time()
            if remaining > MAX_COOKIE_LIFETIME:
                raise ValueError(f"set_expiry() takes at most {MAX_COOKIE_LIFETIME} seconds from now")
            seconds = None if remaining > 0 else -1
            if seconds is not None:
                expires_at = None  # already over: destroyed at the end of the request
        elif isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"set_expiry() takes seconds (int), a timedelta, an aware datetime or None, got {value!r}"
            )
        else:
            if value > MAX_COOKIE_LIFETIME:
                raise ValueError(
                    f"set_expiry() takes at most {MAX_COOKIE_LIFETIME} seconds (about 68 years; "
                    f"browsers keep a cookie 400 days at most), got {value}"
                )
            seconds = value
        self._expiry = seconds
        self._expires_at = expires_at
        self._expiry_changed = True
        self._accessed = True

    def get_expiry_age(self) -> int:
        """Seconds until this session ends if it is not used again (Django's ``get_expiry_age``).

        For a browser-session cookie (``set_expiry(0)``) this is how long the
        server keeps it: the manager's ``max_lifetime``.
        """
        if self._expires_at is not None:
            return max(0, int(self._expires_at - time.time()))
        if self._expiry is not None and self._expiry > 0:
            return self._expiry
        if self._expiry is not None and self._expiry < 0:
            return 0
        return self._manager.config.max_lifetime if self._manager is not None else 3600

    def get_expiry_date(self) -> datetime.datetime:
        """When this session ends if it is not used again, as an aware UTC datetime."""
        if self._expires_at is not None:
            return datetime.datetime.fromtimestamp(self._expires_at, datetime.timezone.utc)
        now = datetime.datetime.now(datetime.timezone.utc)
        return now + datetime.timedelta(seconds=self.get_expiry_age())

    def get_expire_at_browser_close(self) -> bool:
        """True if the session's cookie dies with the browser session (no ``Max-Age``)."""
        if self._expires_at is not None:
            return False
        if self._expiry is not None:
            return self._expiry == 0
        return self._manager is None or self._manager.config.cookie_lifetime <= 0

    @property
    def expires_at(self) -> float | None:
        """The Unix time (s) this session ends at, when ``set_expiry`` gave a moment; else ``None``."""
        return self._expires_at

    # ------------------------------------------------------------ cookie options

    @property
    def cookie_options(self) -> dict[str, Any]:
        """This session's own cookie attributes (a copy); missing ones come from the manager."""
        return dict(self._cookie_options)

    def set_cookie_options(
        self,
        *,
        path: str | None = None,
        domain: str | None = None,
        secure: bool | None = None,
        http_only: bool | None = None,
        same_site: str | None = None,
        partitioned: bool | None = None,
    ) -> None:
        """Override the manager's cookie attributes for this session (gorilla's per-session ``Options``).

        Arguments left ``None`` keep their current value. The options are
        stored with the session, so the cookie is re-issued now and every later
        ``Set-Cookie`` for it, the expiring one of ``session_destroy``
        included, carries the same ``Path``, ``Domain``, ``Secure``,
        ``HttpOnly``, ``SameSite`` and ``Partitioned``. Changing ``path`` or
        ``domain`` of an existing cookie leaves the browser's old cookie in
        place: set them when the session starts (e.g. at login).

        :raises ConfigError: for a value of the wrong type or an invalid one.
        """
        given = {
            "path": path, "domain": domain, "secure": secure,
            "http_only": http_only, "same_site": same_site, "partitioned": partitioned,
        }
        checked = {name: _check_cookie_option(name, v) for name, v in given.items() if v is not None}
        if not checked:
            return
        self._cookie_options.update(checked)
        self._cookie_changed = True
        self._accessed = True

    # ------------------------------------------------------------ release

    def _meta(self) -> dict[str, Any]:
        """The settings stored under :data:`META_KEY` (empty if there are none)."""
        meta: dict[str, Any] = {}
        if self._expiry is not None and self._expiry >= 0:
            meta["expiry"] = self._expiry
        if self._expires_at is not None:
            meta["expires_at"] = self._expires_at
        if self._cookie_options:
            meta["cookie"] = dict(self._cookie_options)
        return meta

    def record(self) -> dict[Any, Any]:
        """The data as a client-side store keeps it: the mapping plus :data:`META_KEY` if set."""
        record = dict(self._data)
        meta = self._meta()
        if meta:
            record[META_KEY] = meta
        return record

    def changes(self) -> Changes:
        """The delta this request made (what :meth:`release` sends)."""
        changed = dict(self._set)
        deleted = frozenset(self._deleted) if self._deleted else frozenset()
        if self._expiry_changed or self._cookie_changed or self._flushed:
            meta = self._meta()
            if meta:
                changed[META_KEY] = codec.encode_item(META_KEY, meta)
            elif not self._flushed:
                deleted = deleted | {META_KEY}
        return Changes(
            deleted=deleted,
            flushed=self._flushed,
            create=self._is_new,
            encoded=changed,
            increments=dict(self._incr) if self._incr else None,
        )

    def needs_save(self) -> bool:
        """True if releasing this session would write anything."""
        return not self._destroyed and (self.modified or self._save_if_unmodified)

    async def release(self, handler: RequestHandler | None = None) -> None:
        """Save the changes to the provider (beego's ``SessionRelease``).

        The :class:`~gosession_tornado.SessionMixin` calls this for you before
        the response is sent. Releasing twice writes once; changes made after a
        release are tracked again and written by the next release.
        """
        if self._manager is None:
            raise RuntimeError("this Session is not attached to a SessionManager")
        await self._manager.release_session(self, handler)

    SessionRelease = release

    # -- used by the owner (the SessionManager) -------------------------------

    @property
    def cookie_due(self) -> bool:
        """True when this request changed what the cookie carries (expiry, cookie options)."""
        return self._expiry_changed or self._cookie_changed

    def mark_saved(self) -> None:
        """The owner stored the changes: start a fresh change log (the session is no longer new)."""
        self._set.clear()
        self._incr.clear()
        self._deleted.clear()
        self._flushed = False
        self._expiry_changed = False
        self._cookie_changed = False
        self._is_new = False
        self._save_if_unmodified = False

    def save_anyway(self) -> None:
        """Have the next release write even if nothing changes (a cookie to re-issue)."""
        self._save_if_unmodified = True

    def rebind(self, sid: str) -> None:
        """The owner moved this session to id *sid* (``session_regenerate_id``)."""
        self._sid = sid
        self._regenerated = True

    def mark_destroyed(self) -> None:
        """The owner destroyed this session: it is empty, and releases write nothing."""
        self._destroyed = True
        self._data.clear()
        self._set.clear()
        self._deleted.clear()
