"""Errors raised by gosession-tornado.

Every error derives from :class:`SessionError`, so one ``except SessionError``
catches them all. The tree is shallow::

    SessionError
    ├── ConfigError                 bad configuration (wrong key type, bad value)
    ├── UnknownProviderError        no provider registered under that name
    ├── DuplicateProviderError      a provider name registered twice
    ├── ProviderUnavailableError    the store is down or too slow (mixin: 503)
    │   └── ProviderClosedError     the manager/provider was closed
    └── CookieTooLargeError         an encoded cookie exceeds 4096 bytes

Each message says what went wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "SessionError",
    "ConfigError",
    "UnknownProviderError",
    "DuplicateProviderError",
    "ProviderUnavailableError",
    "ProviderClosedError",
    "CookieTooLargeError",
]


class SessionError(Exception):
    """Root of every error this package raises."""


class ConfigError(SessionError, ValueError):
    """Raised when a configuration key has the wrong type or an invalid value.

    The message names the key.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class UnknownProviderError(SessionError, LookupError):
    """Raised when no provider is registered under the requested name.

    For a built-in provider whose client library is missing, the message names
    the extra to install (``pip install gosession-tornado[redis]``).
    """


class DuplicateProviderError(SessionError, ValueError):
    """Raised when :func:`~gosession_tornado.register` is called twice for one name."""


class ProviderUnavailableError(SessionError):
    """Raised when the provider's store is unreachable or a call exceeds ``provider_timeout``.

    The :class:`~gosession_tornado.SessionMixin` answers such a request with
    HTTP 503; the next request retries, so no restart is needed when the store
    comes back.
    """


class ProviderClosedError(ProviderUnavailableError):
    """Raised for calls pending on, or made after, a closed provider actor."""


class CookieTooLargeError(SessionError):
    """Raised at release when an encoded session cookie is larger than the limit.

    Browsers drop cookies over 4096 bytes silently, so the library refuses to
    send one instead. Store less in the session or use a server-side provider.
    """

    def __init__(self, size: int, limit: int = 4096, *, name: str = "") -> None:
        what = f"cookie {name!r}" if name else "session cookie"
        super().__init__(
            f"encoded {what} is {size} bytes, over the {limit}-byte limit browsers "
            "accept; store less in the session or use a server-side provider"
        )
        self.size = size
        self.limit = limit
