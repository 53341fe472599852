"""Manager configuration: the seeds' three calling forms, beego and snake_case keys.

:class:`ManagerConfig` is the one frozen object the manager, the providers and
the mixin read. :func:`build_config` turns every calling form of the seeds
into one:

* positional, seed 000: ``("memory", "gosessionid", 3600, "")`` is
  ``(provider, cookie_name, max_lifetime, provider_config)``; the lifetime is
  also the GC interval, as in beego;
* positional, seed 004: the same plus ``secure, hash_func, hash_key,
  cookie_lifetime``;
* a beego JSON string, seeds 001/002:
  ``("file", '{"cookieName":"gosessionid","gclifetime":3600,"ProviderConfig":"./tmp"}')``;
* a dict and/or keyword arguments: ``("redis", {"cookie_name": "sid"}, provider_config="…")``.

Keys match case-insensitively, with or without underscores, so beego's
``cookieLifeTime`` and Python's ``cookie_lifetime`` are the same key. Unknown
keys are ignored with a :class:`UserWarning`; a value of the wrong type raises
:class:`~gosession_tornado.errors.ConfigError` naming the key. All times are
in **seconds**.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
import warnings
from collections.abc import Mapping
from typing import Any

from .errors import ConfigError
from .values import boolean, integer, json_object, normalize_key, number, string
from .values import fail as values_fail

__all__ = ["ManagerConfig", "build_config", "normalize_key", "SAME_SITE_VALUES"]

#: Accepted ``same_site`` values (case-insensitive) and beego's ``http.SameSite`` ints.
SAME_SITE_VALUES = {"lax": "Lax", "strict": "Strict", "none": "None"}
#: Largest cookie lifetime (``cookie_lifetime``, ``set_expiry``) in seconds, about 68 years:
#: its ``Expires`` date must stay printable (browsers keep a cookie 400 days at most anyway).
MAX_COOKIE_LIFETIME = 2**31 - 1
_BEEGO_SAME_SITE = {0: "Lax", 1: "Lax", 2: "Lax", 3: "Strict", 4: "None"}

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]{0,32}$")
_COOKIE_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 7230 token
_MIN_SID_BYTES = 16
_MAX_SID_BYTES = 64


@dataclasses.dataclass(frozen=True)
class ManagerConfig:
    """Everything a :class:`~gosession_tornado.SessionManager` is configured with.

    Field names are the snake_case keys; see the configuration reference in the
    docs for each key's beego spelling.
    """

    provider: str = "memory"
    #: Name of the cookie, and of the header/query parameter when those are enabled.
    cookie_name: str = "gosessionid"
    #: Write ``Set-Cookie`` for new, regenerated and destroyed sessions.
    enable_set_cookie: bool = True
    #: Seconds between two GC passes (> 0).
    gc_lifetime: int = 3600
    #: Server-side idle lifetime in seconds; defaults to ``gc_lifetime``.
    max_lifetime: int = 3600
    #: ``> 0``: cookie ``Max-Age``/``Expires`` in seconds; ``0``: browser-session cookie.
    cookie_lifetime: int = 0
    #: Provider-specific: a string (path, DSN, beego comma form, URL) or a dict.
    provider_config: Any = ""
    domain: str = ""
    path: str = "/"
    secure: bool = False
    http_only: bool = True
    #: ``"Lax"``, ``"Strict"`` or ``"None"`` (``None`` requires ``secure``).
    same_site: str = "Lax"
    #: CHIPS ``Partitioned`` attribute (requires ``secure``).
    partitioned: bool = False
    #: Random bytes in a generated session id (hex-encoded: twice as many chars).
    session_id_length: int = 16
    session_id_prefix: str = ""
    enable_sid_in_http_header: bool = False
    session_name_in_http_header: str = ""
    enable_sid_in_url_query: bool = False
    #: Seconds one provider call may take before ``ProviderUnavailableError``.
    provider_timeout: float = 5.0
    #: Prefix of keys in shared stores (redis family).
    key_prefix: str = "gosession:"
    #: beego's behaviour: store every new session and send its cookie at once, even
    #: when the request changes nothing. Default False: a new session is stored, and
    #: gets its cookie, only when a request modifies it.
    eager_new_sessions: bool = False
    #: Server-side stores keep ``sha256(session id)`` (64 hex digits) instead of the
    #: id, so a leaked dump, backup or session directory hands out no live session.
    hash_session_ids: bool = False

    @property
    def header_name(self) -> str:
        """The request/response header carrying the sid in header mode."""
        return self.session_name_in_http_header or self.cookie_name

    def replace(self, **changes: Any) -> ManagerConfig:
        """Return a copy with *changes* applied (keys as in :func:`build_config`)."""
        data = dataclasses.asdict(self)
        data.update(changes)
        return build_config(data)


#: How messages name a key: ``config key 'gclifetime' must be an integer, got str '3600'``.
_WHAT = "config key"

_BOOL = "bool"
_INT = "int"
_NUM = "number"
_STR = "str"
_ANY = "any"

#: The kind of value each field takes, read from the :class:`ManagerConfig`
#: annotations themselves (``same_site`` also takes beego's ints, normalised later).
_KINDS: dict[Any, str] = {bool: _BOOL, int: _INT, float: _NUM, str: _STR, Any: _ANY}
_FIELD_TYPES: dict[str, str] = {
    name: _ANY if name == "same_site" else _KINDS[hint]
    for name, hint in typing.get_type_hints(ManagerConfig).items()
    if name in {f.name for f in dataclasses.fields(ManagerConfig)}
}


_ALIASES: dict[str, str] = {normalize_key(f): f for f in _FIELD_TYPES}
_ALIASES.update(
    {
        "gclifetime": "gc_lifetime",
        "maxlifetime": "max_lifetime",
        "cookielifetime": "cookie_lifetime",
        "sessionidlength": "session_id_length",
        "sessionidprefix": "session_id_prefix",
        "enablesidinhttpheader": "enable_sid_in_http_header",
        "sessionnameinhttpheader": "session_name_in_http_header",
        "enablesidinurlquery": "enable_sid_in_url_query",
        "cookiesamesite": "same_site",
        "samesite": "same_site",
        "httponly": "http_only",
        "cookiedomain": "domain",
        "cookiepath": "path",
        "providername": "provider",
        "providertimeout": "provider_timeout",
        "keyprefix": "key_prefix",
    }
)
#: Accepted for beego compatibility; ids always come from the OS CSPRNG.
_IGNORED_WITH_WARNING = {"sessionidhashfunc", "sessionidhashkey"}


def _check_type(field: str, key: str, value: Any) -> Any:
    """*value* of *field* (given as *key*) as its annotation says; JSON types, so no strings for numbers."""
    kind = _FIELD_TYPES[field]
    if kind == _BOOL:
        return boolean(value, key, _WHAT, text=False)
    if kind == _INT:
        return integer(value, key, _WHAT, text=False)
    if kind == _NUM:
        return number(value, key, _WHAT, text=False)
    if kind == _STR:
        return string(value, key, _WHAT)
    return value


def _positional(args: tuple[Any, ...]) -> dict[str, Any]:
    """Map the seeds' positional forms onto keys."""
    if not args:
        return {}
    if len(args) == 1:
        first = args[0]
        if isinstance(first, ManagerConfig):
            return dataclasses.asdict(first)
        if isinstance(first, Mapping):
            return dict(first)
        if isinstance(first, str) and first.lstrip().startswith("{"):
            return json_object(first, "the session config string", key=None)
        if isinstance(first, str):
            return {"cookie_name": first}
        raise ConfigError(
            f"SessionManager's second argument must be a JSON string, a dict or a cookie name, "
            f"got {type(first).__name__}"
        )
    if len(args) > 7:
        raise ConfigError(
            f"SessionManager takes at most 8 positional arguments "
            f"(provider, cookie_name, max_lifetime, provider_config, secure, hash_func, hash_key, "
            f"cookie_lifetime), got {len(args) + 1}"
        )
    names = [
        "cookie_name",
        "max_lifetime",
        "provider_config",
        "secure",
        "sessionIDHashFunc",
        "sessionIDHashKey",
        "cookie_lifetime",
    ]
    out: dict[str, Any] = {}
    for name, value in zip(names, args):
        out[name] = value
    if "max_lifetime" in out:
        # beego's positional maxlifetime is both the data lifetime and the GC interval.
        out["gc_lifetime"] = out["max_lifetime"]
    return out


def build_config(*args: Any, **kwargs: Any) -> ManagerConfig:
    """Build a :class:`ManagerConfig` from any of the seeds' calling forms.

    ``build_config(provider, *rest, **kwargs)``: *provider* may also be a dict
    (``{"provider": "memory", ...}``) or a :class:`ManagerConfig`. Keyword
    arguments override what the positional forms give.

    :raises ConfigError: on a wrong type or an invalid value, naming the key.
    """
    raw: dict[str, Any] = {}
    rest = args
    if args:
        first = args[0]
        if isinstance(first, ManagerConfig):
            raw.update(dataclasses.asdict(first))
            rest = args[1:]
        elif isinstance(first, Mapping):
            raw.update(first)
            rest = args[1:]
        elif isinstance(first, str):
            raw["provider"] = first
            rest = args[1:]
        else:
            raise ConfigError(
                f"the provider name must be a string, got {type(first).__name__} {first!r}",
                key="provider",
            )
    raw.update(_positional(rest))
    raw.update(kwargs)
    return _from_mapping(raw)


def _unknown_key_message(key: str) -> str:
    """The warning for unknown *key*: the closest known key if one is close, else the list."""
    close = difflib.get_close_matches(normalize_key(key), list(_ALIASES), n=1, cutoff=0.75)
    if close:
        return f"unknown session config key {key!r} ignored; did you mean {_ALIASES[close[0]]!r}?"
    return f"unknown session config key {key!r} ignored (known keys: {', '.join(sorted(_FIELD_TYPES))})"


def _from_mapping(raw: Mapping[str, Any]) -> ManagerConfig:
    values: dict[str, Any] = {}
    seen_keys: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"config keys must be strings, got {key!r}")
        norm = normalize_key(key)
        if norm in _IGNORED_WITH_WARNING:
            if value not in (None, "", "sha1"):
                warnings.warn(
                    f"config key {key!r} is accepted for beego compatibility but ignored: "
                    "session ids always come from the OS CSPRNG",
                    UserWarning,
                    stacklevel=4,
                )
            continue
        if norm == "disablehttponly":
            values["http_only"] = not boolean(value, key, _WHAT, text=False)
            seen_keys["http_only"] = key
            continue
        field = _ALIASES.get(norm)
        if field is None:
            warnings.warn(_unknown_key_message(key), UserWarning, stacklevel=4)
            continue
        if value is None and field != "provider_config":
            continue  # JSON null means "default"
        values[field] = _check_type(field, key, value)
        seen_keys[field] = key

    def name(field: str) -> str:
        return seen_keys.get(field, field)

    if "max_lifetime" not in values and "gc_lifetime" in values:
        values["max_lifetime"] = values["gc_lifetime"]
    if values.get("provider_config") is None:
        values["provider_config"] = ""
    pc = values.get("provider_config", "")
    if not isinstance(pc, (str, Mapping)):
        raise ConfigError(
            f"config key {name('provider_config')!r} must be a string or a dict, got {type(pc).__name__}",
            key=name("provider_config"),
        )
    if isinstance(pc, Mapping):
        values["provider_config"] = dict(pc)

    same_site = values.get("same_site", "Lax")
    if isinstance(same_site, bool) or not isinstance(same_site, (str, int)):
        raise ConfigError(
            f"config key {name('same_site')!r} must be 'Lax', 'Strict', 'None' or a beego int 0-4, "
            f"got {same_site!r}",
            key=name("same_site"),
        )
    if isinstance(same_site, int):
        if same_site not in _BEEGO_SAME_SITE:
            raise ConfigError(
                f"config key {name('same_site')!r}: beego SameSite ints are 0-4, got {same_site}",
                key=name("same_site"),
            )
        same_site = _BEEGO_SAME_SITE[same_site]
    canon = SAME_SITE_VALUES.get(same_site.lower())
    if canon is None:
        raise ConfigError(
            f"config key {name('same_site')!r} must be 'Lax', 'Strict' or 'None', got {same_site!r}",
            key=name("same_site"),
        )
    values["same_site"] = canon

    cfg = ManagerConfig(**values)
    _validate(cfg, name)
    return cfg


def _validate(cfg: ManagerConfig, name: Any) -> None:
    def fail(field: str, msg: str) -> None:
        raise values_fail(_WHAT, name(field), msg)

    if not cfg.provider:
        fail("provider", "must name a provider, e.g. 'memory'")
    if not _COOKIE_NAME_RE.match(cfg.cookie_name):
        fail("cookie_name", f"must be a non-empty cookie token, got {cfg.cookie_name!r}")
    if cfg.gc_lifetime <= 0:
        fail("gc_lifetime", f"must be > 0 seconds, got {cfg.gc_lifetime}")
    if cfg.max_lifetime <= 0:
        fail("max_lifetime", f"must be > 0 seconds, got {cfg.max_lifetime}")
    if not 0 <= cfg.cookie_lifetime <= MAX_COOKIE_LIFETIME:
        fail(
            "cookie_lifetime",
            f"must be 0 (browser session) to {MAX_COOKIE_LIFETIME} seconds, got {cfg.cookie_lifetime}",
        )
    if not (_MIN_SID_BYTES <= cfg.session_id_length <= _MAX_SID_BYTES):
        fail(
            "session_id_length",
            f"must be between {_MIN_SID_BYTES} and {_MAX_SID_BYTES} random bytes, "
            f"got {cfg.session_id_length}",
        )
    if not _PREFIX_RE.match(cfg.session_id_prefix):
        fail("session_id_prefix", "may hold at most 32 characters of [A-Za-z0-9_-]")
    if cfg.provider_timeout <= 0:
        fail("provider_timeout", f"must be > 0 seconds, got {cfg.provider_timeout}")
    if not cfg.path.startswith("/") or any(c in cfg.path for c in ";\r\n"):
        fail("path", f"must start with '/' and hold no ';' or newline, got {cfg.path!r}")
    if any(c in cfg.domain for c in ";\r\n ,"):
        fail("domain", f"is not a valid cookie domain: {cfg.domain!r}")
    if cfg.same_site == "None" and not cfg.secure:
        warnings.warn(
            "same_site='None' without secure=True: browsers reject such cookies", UserWarning, stacklevel=5
        )
    if cfg.enable_sid_in_http_header and not _COOKIE_NAME_RE.match(cfg.header_name):
        fail("session_name_in_http_header", f"is not a valid header name: {cfg.header_name!r}")
