"""The ``cookie`` provider: the whole session lives, encrypted, in the client's cookie.

The session (id, lifetime and data, msgpack via :mod:`gosession_tornado.codec`)
is encrypted and authenticated with :class:`cryptography.fernet.Fernet`
(AES-128-CBC + HMAC-SHA256); no crypto is done by hand. What holds:

* **Confidential and tamper-proof.** A cookie that was changed, truncated,
  made with an unknown key, is not base64, or holds an unexpected payload is
  refused: the request gets a fresh empty session and a warning is logged,
  never a 500.
* **Expiry is enforced on decode.** The Fernet token carries its issue time
  (seconds, authenticated). A cookie older than its lifetime (the manager's
  ``max_lifetime``, or the session's ``set_expiry`` value) is refused, even if
  the browser still sends it. A cookie issued more than
  :data:`CLOCK_SKEW` seconds in the future is refused too.
* **Sliding expiry.** A cookie older than :data:`REFRESH_FRACTION` of its
  lifetime is issued again at the end of the request (new issue time), so an
  active user stays logged in; a request on a fresh cookie that changes
  nothing sends no ``Set-Cookie``.
* **Key rotation.** ``keys`` lists Fernet keys newest first
  (:class:`~cryptography.fernet.MultiFernet`). New cookies are made with the
  newest; cookies made with an older key still decode and are re-issued with
  the newest key at the end of that request, even if the session did not
  change. Drop an old key once every cookie made with it has expired.
* **Size limit.** A cookie (``name=value``) over :data:`MAX_COOKIE_BYTES`
  (4096) bytes raises :class:`~gosession_tornado.errors.CookieTooLargeError`
  at release instead of being silently dropped by the browser.

``provider_config`` is a JSON string or a dict; keys match case-insensitively
(beego camelCase or snake_case):

``keys``
    list of Fernet keys (``Fernet.generate_key()``), newest first; a single
    key string is accepted too.
``securityKey`` / ``blockKey``
    beego's secrets (seed 001: ``{"cookieName":"gosessionid","securityKey":"beegocookiehashkey"}``).
    A Fernet key is derived from them with HKDF-SHA256; it is appended
    *after* ``keys`` (so ``{"keys": [new], "securityKey": old}`` migrates
    beego cookies to a Fernet key). HKDF does not slow down guessing: use a
    long random secret, not a password.
``securityName``
    bound into every cookie; a cookie made under another name is refused
    (default: the manager's cookie name).
``cookieName``, ``secure``, ``maxage``
    beego's cookie attributes; they set the manager's ``cookie_name``,
    ``secure`` and ``cookie_lifetime`` (``Max-Age``, seconds).

What a cookie store cannot do (server-side guarantees it does not give):

* ``session_destroy`` expires the browser's cookie, but a **copy** of the
  cookie taken earlier stays valid until it expires: there is no server
  record to delete. Keep ``max_lifetime`` short or rotate keys to revoke.
* **Concurrent requests** each carry the cookie they were sent; the last
  response wins, so keys set by overlapping requests can be lost.
* ``get_active_sessions()`` is always 0 and GC does nothing: the server does
  not know its sessions.
* A replayed old cookie (e.g. from before a logout) is accepted until it
  expires; do not store one-time tokens or balances in it.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import codec
from .._log import get_logger
from ..config import ManagerConfig
from ..errors import ConfigError, CookieTooLargeError
from ..provider import Changes, DecodeCookie, DecodedCookie, EncodeCookie, Message, Provider, SessionData
from ..values import boolean, integer, normalize_key, string

__all__ = [
    "CookieProvider",
    "CookieSettings",
    "parse_config",
    "derive_key",
    "MAX_COOKIE_BYTES",
    "REFRESH_FRACTION",
    "CLOCK_SKEW",
]

log = get_logger("gosession_tornado.cookie")

#: Largest ``name=value`` a browser keeps, in bytes.
MAX_COOKIE_BYTES = 4096
#: A cookie older than this fraction of its lifetime is issued again.
REFRESH_FRACTION = 0.25
#: Seconds a cookie's issue time may lie in the future (clock differences between servers).
CLOCK_SKEW = 60

#: Version tag of the encrypted payload ``[version, security_name, sid, lifetime, data]``.
_PAYLOAD_VERSION = 1
#: urlsafe base64, what a Fernet token is made of; checked before decoding.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-]+={0,2}")
_HKDF_SALT = b"gosession-tornado/cookie/v1"
_HKDF_INFO = b"fernet key (signing + encryption) from beego securityKey/blockKey"
_GENERIC_SID_RE = re.compile(r"[A-Za-z0-9_\-]{16,200}")


@dataclasses.dataclass(frozen=True)
class CookieSettings:
    """A parsed ``provider_config`` of the cookie provider."""

    #: Fernet keys (urlsafe base64, 32 bytes decoded), newest first; never empty.
    keys: tuple[bytes, ...]
    #: Name bound into every cookie; ``None``: the manager's cookie name.
    security_name: str | None = None
    #: beego's ``cookieName``; ``None`` if not given.
    cookie_name: str | None = None
    #: beego's ``secure``; ``None`` if not given.
    secure: bool | None = None
    #: beego's ``maxage`` (cookie ``Max-Age``, seconds); ``None`` if not given.
    max_age: int | None = None


def _len_prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def derive_key(security_key: str | bytes, block_key: str | bytes = b"") -> bytes:
    """A Fernet key derived from beego's *security_key* and *block_key* with HKDF-SHA256.

    Deterministic: the same secrets give the same key on every server and
    after a restart. The inputs are length-prefixed, so ``("ab", "c")`` and
    ``("a", "bc")`` give different keys.
    """
    sk = security_key.encode() if isinstance(security_key, str) else bytes(security_key)
    bk = block_key.encode() if isinstance(block_key, str) else bytes(block_key)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(_len_prefixed(sk) + _len_prefixed(bk)))


_KNOWN = {
    "keys": "keys",
    "securitykey": "security_key",
    "hashkey": "security_key",
    "blockkey": "block_key",
    "securityname": "security_name",
    "cookiename": "cookie_name",
    "secure": "secure",
    "maxage": "max_age",
}

_HOW_TO = (
    "give the cookie provider a secret: provider_config={'keys': [Fernet.generate_key()]} "
    "or beego's '{\"securityKey\": \"<a long random string>\"}'"
)


def _fernet_key(value: Any, where: str) -> bytes:
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    if not isinstance(value, bytes):
        raise ConfigError(f"cookie provider: {where} must be a Fernet key string, got {type(value).__name__}")
    try:
        Fernet(value)
    except (ValueError, TypeError):
        raise ConfigError(
            f"cookie provider: {where} is not a Fernet key (32 bytes, urlsafe base64; "
            "make one with cryptography.fernet.Fernet.generate_key())",
            key="keys",
        ) from None
    return value


def parse_config(raw: Any, *, warn: bool = True) -> CookieSettings:
    """Parse the cookie provider's ``provider_config`` (JSON string or dict).

    Unknown keys are ignored with a :class:`UserWarning`, and a short
    ``securityKey`` is logged as a warning, when *warn* is true.

    :raises ConfigError: when no secret is given or a value is invalid; the
        message names the key.
    """
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("utf-8", "replace")
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            raise ConfigError(f"cookie provider: provider_config is empty; {_HOW_TO}", key="provider_config")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"cookie provider: provider_config is not valid JSON ({exc}); {_HOW_TO}",
                key="provider_config",
            ) from None
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"cookie provider: provider_config must be a JSON object or a dict, got {type(raw).__name__}",
            key="provider_config",
        )
    values: dict[str, Any] = {}
    for key, value in raw.items():
        field = _KNOWN.get(normalize_key(str(key)))
        if field is None:
            if warn:
                warnings.warn(
                    f"cookie provider: unknown provider_config key {key!r} ignored "
                    "(known: keys, securityKey, blockKey, securityName, cookieName, secure, maxage)",
                    UserWarning,
                    stacklevel=3,
                )
            continue
        if value is not None:
            values[field] = (key, value)

    keys: list[bytes] = []
    if "keys" in values:
        name, given = values["keys"]
        items = [given] if isinstance(given, (str, bytes)) else given
        if not isinstance(items, (list, tuple)):
            raise ConfigError(
                f"cookie provider: {name!r} must be a list of Fernet keys, newest first", key=name
            )
        keys.extend(_fernet_key(k, f"{name}[{i}]") for i, k in enumerate(items))
    if "security_key" in values:
        name, sk = values["security_key"]
        bk: Any = values.get("block_key", (None, ""))[1]
        for label, secret in ((name, sk), ("blockKey", bk)):
            if not isinstance(secret, (str, bytes)):
                raise ConfigError(f"cookie provider: {label!r} must be a string", key=label)
        if not sk:
            raise ConfigError(f"cookie provider: {name!r} is empty; {_HOW_TO}", key=name)
        if warn and len(sk) + len(bk) < 32:
            log.warning(
                "cookie provider: securityKey/blockKey hold %d characters; use at least 32 random "
                "characters (or Fernet keys under 'keys'): a short secret can be guessed offline",
                len(sk) + len(bk),
            )
        keys.append(derive_key(sk, bk))
    elif "block_key" in values:
        raise ConfigError("cookie provider: 'blockKey' needs a 'securityKey' too", key="blockKey")
    if not keys:
        raise ConfigError(f"cookie provider: no key configured; {_HOW_TO}", key="provider_config")

    def typed(field: str, parse: Callable[[Any, str], Any]) -> Any:
        if field not in values:
            return None
        name, value = values[field]
        return parse(value, name)

    what = "cookie provider:"
    return CookieSettings(
        keys=tuple(keys),
        security_name=typed("security_name", lambda value, key: string(value, key, what)),
        cookie_name=typed("cookie_name", lambda value, key: string(value, key, what)),
        secure=typed("secure", lambda value, key: boolean(value, key, what, text=False)),
        # seconds
        max_age=typed("max_age", lambda value, key: integer(value, key, what, minimum=0, text=False)),
    )


class CookieProvider(Provider):
    """Sessions kept in an encrypted, authenticated cookie (see the module docstring).

    The server-side verbs (``session_read``, ``session_release`` …) are no-ops
    answering "unknown": the manager talks to this provider only through
    :meth:`cookie_decode` and :meth:`cookie_encode`.
    """

    client_side = True
    #: Decoding and encoding a cookie is pure computation: while the actor is
    #: idle the manager runs them on the request's own stack (see ``handle_now``).
    in_process = True

    def __init__(self) -> None:
        super().__init__()
        self._settings: CookieSettings | None = None
        self._fernet: MultiFernet | None = None
        self._current: Fernet | None = None
        self._older: MultiFernet | None = None
        self._security_name = ""
        self._cookie_name = "gosessionid"
        self._sid_re: re.Pattern[str] = _GENERIC_SID_RE

    # ------------------------------------------------------------ configuration

    @classmethod
    def configure_manager(cls, config: ManagerConfig) -> ManagerConfig:
        """Check ``provider_config`` early and apply beego's ``cookieName``, ``secure``, ``maxage``."""
        settings = parse_config(config.provider_config)
        changes: dict[str, Any] = {}
        if settings.cookie_name is not None and settings.cookie_name != config.cookie_name:
            if config.cookie_name != ManagerConfig.cookie_name:
                log.warning(
                    "cookie provider: provider_config cookieName %r overrides the manager's cookie_name %r",
                    settings.cookie_name,
                    config.cookie_name,
                )
            changes["cookie_name"] = settings.cookie_name
        if settings.secure and not config.secure:
            changes["secure"] = True
        if settings.max_age is not None and settings.max_age != config.cookie_lifetime:
            changes["cookie_lifetime"] = settings.max_age
        return config.replace(**changes) if changes else config

    async def session_init(self, max_lifetime: int, config: Any) -> None:
        self.max_lifetime = max_lifetime
        settings = parse_config(config, warn=False)
        self._settings = settings
        fernets = [Fernet(k) for k in settings.keys]
        self._current = fernets[0]
        self._fernet = MultiFernet(fernets)
        self._older = MultiFernet(fernets[1:]) if len(fernets) > 1 else None
        mc = self.manager_config
        if isinstance(mc, ManagerConfig):
            self._cookie_name = mc.cookie_name
            n = mc.session_id_length * 2
            self._sid_re = re.compile(rf"{re.escape(mc.session_id_prefix)}[0-9a-f]{{{n}}}")
        name = settings.security_name
        self._security_name = name if name is not None else self._cookie_name

    def _require_init(self) -> tuple[MultiFernet, Fernet]:
        if self._fernet is None or self._current is None:
            raise RuntimeError("CookieProvider used before session_init()")
        return self._fernet, self._current

    # ------------------------------------------------------------ the cookie

    def encode_value(self, sid: str, data: SessionData, lifetime: int, *, now: int | None = None) -> str:
        """The cookie value carrying *sid* and *data*, valid for *lifetime* seconds from *now*.

        *now* is a Unix time in seconds (default: the current time); it is the
        issue time sealed into the token.

        :raises CookieTooLargeError: if ``name=value`` exceeds :data:`MAX_COOKIE_BYTES`.
        """
        fernet, _ = self._require_init()
        payload = codec.encode([_PAYLOAD_VERSION, self._security_name, sid, int(lifetime), data])
        token = fernet.encrypt(payload) if now is None else fernet.encrypt_at_time(payload, now)
        value = token.decode("ascii")
        size = len(self._cookie_name) + 1 + len(value)
        if size > MAX_COOKIE_BYTES:
            raise CookieTooLargeError(size, MAX_COOKIE_BYTES, name=self._cookie_name)
        return value

    def decode_value(self, value: str, *, now: int | None = None) -> DecodedCookie | None:
        """The session in cookie *value* at Unix time *now* (seconds), or ``None`` (logged).

        Never raises for any input: a bad cookie only means a fresh session.
        """
        try:
            return self._decode(value, int(time.time()) if now is None else now)
        except Exception as exc:  # defence in depth: a bad cookie must never become a 500
            return self._reject(f"unexpected {type(exc).__name__}: {exc}")

    def _reject(self, reason: str) -> DecodedCookie | None:
        """Log why a cookie was refused; always ``None`` (a fresh session)."""
        log.warning("session cookie %r refused (%s); starting a fresh session", self._cookie_name, reason)
        return None

    def _decode(self, value: str, now: int) -> DecodedCookie | None:
        _, current = self._require_init()
        if not isinstance(value, str) or not value:
            return self._reject("empty")
        if len(value) > 2 * MAX_COOKIE_BYTES or not _TOKEN_RE.fullmatch(value):
            return self._reject(f"not a token: {len(value)} characters, not urlsafe base64")
        token = value.encode("ascii")
        stale = False
        try:
            plaintext = current.decrypt(token)
        except InvalidToken:
            if self._older is None:
                return self._reject("bad signature, wrong key, truncated or not a Fernet token")
            try:
                plaintext = self._older.decrypt(token)
            except InvalidToken:
                return self._reject("bad signature, wrong key, truncated or not a Fernet token")
            stale = True  # made with an older key: re-issue with the newest
        # The token is authenticated now: read its issue time (bytes 1-8, big-endian
        # seconds) from its first 12 base64 characters instead of verifying it again.
        issued = int.from_bytes(base64.urlsafe_b64decode(token[:12])[1:9], "big")
        try:
            payload = codec.decode(plaintext)
        except ValueError as exc:
            return self._reject(f"undecodable payload: {exc}")
        if not (isinstance(payload, list) and len(payload) == 5 and payload[0] == _PAYLOAD_VERSION):
            return self._reject("unknown payload format")
        _, name, sid, lifetime, data = payload
        if name != self._security_name:
            return self._reject("made for another securityName")
        if not isinstance(sid, str) or not self._sid_re.fullmatch(sid):
            return self._reject("malformed session id")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
            return self._reject("malformed lifetime")
        if not isinstance(data, dict):
            return self._reject("malformed data")
        age = now - issued
        if age < -CLOCK_SKEW:
            return self._reject(f"issued {-age} s in the future")
        if age >= lifetime:
            return self._reject(f"expired {age - lifetime} s ago (lifetime {lifetime} s)")
        refresh = age >= lifetime * REFRESH_FRACTION
        return DecodedCookie(sid, data, None, reissue=stale or refresh)

    def handle_now(self, message: Message) -> Any:
        """Decode or encode a cookie synchronously (pure computation, nothing to wait for)."""
        if isinstance(message, DecodeCookie):
            return self.decode_value(message.value)
        if isinstance(message, EncodeCookie):
            return self.encode_value(message.sid, message.data, message.expiry)
        raise TypeError(f"the cookie provider does not answer {message!r} synchronously")

    async def cookie_decode(self, value: str) -> DecodedCookie | None:
        return self.decode_value(value)

    async def cookie_encode(self, sid: str, data: SessionData, expiry: int) -> str:
        return self.encode_value(sid, data, expiry)

    # ------------------------------------------------------------ server-side verbs

    async def session_read(self, sid: str) -> SessionData | None:
        """Always ``None``: the server keeps no records."""
        return None

    async def session_exist(self, sid: str) -> bool:
        """Always False: the server keeps no records."""
        return False

    async def session_regenerate(self, old_sid: str, sid: str) -> SessionData:
        """Nothing to move on the server; the manager re-issues the cookie under *sid*."""
        return {}

    async def session_destroy(self, sid: str) -> None:
        """Nothing to delete on the server; the manager expires the cookie."""

    async def session_all(self) -> int:
        """Always 0: the server does not know its sessions."""
        return 0

    async def session_gc(self) -> None:
        """Nothing to collect: expired cookies are refused on decode."""

    async def session_release(self, sid: str, changes: Changes, expiry: int) -> None:
        """Nothing to write on the server; the manager calls :meth:`cookie_encode`."""
