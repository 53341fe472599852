"""Parsing of the ``redis`` provider's ``provider_config``, in every form beego and redis-py users write.

This module is pure parsing: it imports no Redis client, so it can be used
(and tested) without the ``[redis]`` extra. :func:`parse_redis_config` turns
any of these into one frozen :class:`RedisConfig`:

* **beego's comma form** (v1 and v2)::

      "addr,poolsize,password,dbnum,idle_timeout,idle_check_frequency,max_retries"

  Every item after ``addr`` is optional; an empty item takes the default:
  ``addr`` ``127.0.0.1:6379`` (``":6379"`` means 127.0.0.1 as in Go),
  ``poolsize`` 100 (``0`` also means 100, as in beego), ``password`` none,
  ``dbnum`` 0, ``idle_timeout`` and ``idle_check_frequency`` in **seconds**
  (or a Go duration such as ``"30s"``), ``max_retries`` 0. So the seed's
  ``",100,astaxie"`` is 127.0.0.1:6379, 100 connections, password
  ``astaxie``. A password containing ``,`` needs the JSON, dict or URL form.

* **beego's JSON form** (v2: ``{"save_path": ..., "poolsize": ..., "password": ...,
  "db_num": ..., "idle_timeout": "30s", "idle_check_frequency": "1m",
  "max_retries": ...}``); beego's cache spellings ``conn``/``dbNum`` and
  camelCase (``dbNum``, ``idleTimeout``, ``maxRetries``) are accepted too,
  because keys match case-insensitively with ``_``/``-`` ignored.

* **a dict** with the same keys as the JSON form, plus ``key_prefix``,
  ``username``, ``ssl``, ``client_name`` and ``url``.

* **a URL**: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://``
  (TLS) or ``unix:///path/to/redis.sock[?db=N]``; query parameters take the
  dict keys (``?poolsize=50&key_prefix=app:&idle_timeout=30``).

An ``addr`` that starts with ``/`` is a Unix socket path. ``key_prefix``
overrides the manager's ``key_prefix``. Anything malformed raises
:class:`~gosession_tornado.errors.ConfigError` whose ``key`` names the item
(``"poolsize"``, ``"dbnum"``, ...); an unknown key is ignored with a
:class:`UserWarning`, like unknown manager keys.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import unquote

from ...errors import ConfigError
from ...values import (
    aliased_items,
    boolean,
    fail,
    integer,
    join_host_port,
    json_object,
    normalize_key,
    seconds,
    split_host_port,
    string,
    url_parts,
)
from ...values import port as port_number

__all__ = [
    "RedisConfig",
    "parse_redis_config",
    "parse_forms",
    "is_url",
    "parse_addr",
    "parse_duration",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_POOLSIZE",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6379
#: beego's ``MaxPoolSize``.
DEFAULT_POOLSIZE = 100

_WHAT = "redis provider_config"
_ITEM = f"{_WHAT} item"

_C = TypeVar("_C")


@dataclasses.dataclass(frozen=True)
class RedisConfig:
    """Where and how to connect, after parsing. Times are in seconds."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: Unix socket path; when set, ``host``/``port`` are unused.
    unix_socket_path: str | None = None
    #: TLS (``rediss://`` or ``"ssl": true``).
    ssl: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0
    #: Most connections the pool opens (beego ``poolsize``).
    poolsize: int = DEFAULT_POOLSIZE
    #: Connections idle longer than this are checked with a PING before reuse; ``None``: never.
    idle_timeout: float | None = None
    #: Accepted for beego compatibility (go-redis reaper interval); unused by redis-py.
    idle_check_frequency: float | None = None
    #: Retries of a command after a connection error (0: fail at once).
    max_retries: int = 0
    #: Prefix of every session key; ``None``: use the manager's ``key_prefix``.
    key_prefix: str | None = None
    #: ``CLIENT SETNAME`` for the connections (visible in ``CLIENT LIST``).
    client_name: str | None = None

    @property
    def location(self) -> str:
        """``host:port`` or the socket path, for messages."""
        if self.unix_socket_path:
            return f"unix:{self.unix_socket_path}"
        return join_host_port(self.host, self.port)


def parse_duration(value: Any, key: str) -> float | None:
    """Seconds from a number of seconds, a numeric string or a Go duration (``"1m30s"``).

    ``None``, ``""`` and zero mean "not set" (``None``); anything else is read by
    :func:`gosession_tornado.values.seconds`.

    :raises ConfigError: naming *key* for anything else or a negative value.
    """
    if value is None or value == "":
        return None
    return seconds(value, key, _ITEM) or None


def _count(value: Any, key: str, *, default: int) -> int:
    """An integer >= 0; ``None`` or ``""`` (an empty comma item) is *default*."""
    if value is None or value == "":
        return default
    return integer(value, key, _ITEM, minimum=0)


def _text(value: Any, key: str) -> str | None:
    return None if value is None else string(value, key, _ITEM)


def parse_addr(addr: Any, key: str = "addr") -> tuple[str, int, str | None]:
    """``(host, port, unix_socket_path)`` from ``"host:port"``, ``"host"``, ``":port"``,
    ``"[::1]:port"`` or ``"/path/to/socket"``; empty means ``127.0.0.1:6379``.

    :raises ConfigError: naming *key* for a malformed address or a port outside 1-65535.
    """
    if addr is None:
        return DEFAULT_HOST, DEFAULT_PORT, None
    if not isinstance(addr, str):
        raise fail(_ITEM, key, f"must be a 'host:port' string, got {type(addr).__name__} {addr!r}")
    text = addr.strip()
    if not text:
        return DEFAULT_HOST, DEFAULT_PORT, None
    if text.startswith("/"):
        return DEFAULT_HOST, DEFAULT_PORT, text
    host, number = split_host_port(text, key, _ITEM, default_host=DEFAULT_HOST, default_port=DEFAULT_PORT)
    return host, number, None


# normalized key (lowercase, no '_'/'-') -> canonical field
_ALIASES: dict[str, str] = {
    "addr": "addr",
    "address": "addr",
    "savepath": "addr",
    "conn": "addr",
    "host": "addr",
    "port": "port",
    "poolsize": "poolsize",
    "pool": "poolsize",
    "maxconnections": "poolsize",
    "password": "password",
    "pass": "password",
    "username": "username",
    "user": "username",
    "dbnum": "db",
    "db": "db",
    "database": "db",
    "idletimeout": "idle_timeout",
    "idlecheckfrequency": "idle_check_frequency",
    "maxretries": "max_retries",
    "keyprefix": "key_prefix",
    "ssl": "ssl",
    "tls": "ssl",
    "clientname": "client_name",
    "url": "url",
    "unixsocketpath": "unix_socket_path",
    "path": "unix_socket_path",
}


_KNOWN = (
    "addr, poolsize, password, db_num, idle_timeout, idle_check_frequency, max_retries, key_prefix, "
    "username, ssl, client_name, url"
)


def _from_mapping(raw: Mapping[Any, Any], base: RedisConfig | None = None) -> RedisConfig:
    values, names = aliased_items(raw, _ALIASES, _WHAT, known=_KNOWN, stacklevel=5)
    cfg = base or RedisConfig()
    if "url" in values:
        url = values.pop("url")
        if not isinstance(url, str):
            raise fail(_ITEM, names["url"], f"must be a redis:// URL string, got {url!r}")
        cfg = _from_url(url)

    def name(field: str) -> str:
        return names.get(field, field)

    changes: dict[str, Any] = {}
    if "addr" in values:
        host, number, path = parse_addr(values["addr"], name("addr"))
        changes.update(host=host, port=number, unix_socket_path=path)
    if "port" in values:
        given = values["port"]
        empty = given is None or given == ""
        changes["port"] = cfg.port if empty else port_number(given, name("port"), _ITEM)
    if "unix_socket_path" in values:
        changes["unix_socket_path"] = _text(values["unix_socket_path"], name("unix_socket_path")) or None
    if "poolsize" in values:
        # beego: an empty or zero pool size means MaxPoolSize.
        changes["poolsize"] = _count(values["poolsize"], name("poolsize"), default=0) or DEFAULT_POOLSIZE
    if "password" in values:
        changes["password"] = _text(values["password"], name("password")) or None
    if "username" in values:
        changes["username"] = _text(values["username"], name("username")) or None
    if "db" in values:
        changes["db"] = _count(values["db"], name("db"), default=0)
    if "idle_timeout" in values:
        changes["idle_timeout"] = parse_duration(values["idle_timeout"], name("idle_timeout"))
    if "idle_check_frequency" in values:
        changes["idle_check_frequency"] = parse_duration(
            values["idle_check_frequency"], name("idle_check_frequency")
        )
    if "max_retries" in values:
        changes["max_retries"] = _count(values["max_retries"], name("max_retries"), default=0)
    if "key_prefix" in values:
        changes["key_prefix"] = _text(values["key_prefix"], name("key_prefix"))
    if "ssl" in values:
        changes["ssl"] = boolean(values["ssl"], name("ssl"), _ITEM)
    if "client_name" in values:
        changes["client_name"] = _text(values["client_name"], name("client_name")) or None
    return dataclasses.replace(cfg, **changes)


def _from_url(url: str) -> RedisConfig:
    parts = url_parts(url, f"{_ITEM} 'url'", key="url")
    base: dict[str, Any] = {}
    if parts.user:
        base["username"] = parts.user
    if parts.password:
        base["password"] = parts.password
    if parts.scheme == "unix":
        path = unquote(parts.path)
        if not path:
            raise fail(_ITEM, "url", f"unix:// URL needs a socket path, got {url!r}")
        cfg = RedisConfig(unix_socket_path=path)
    elif parts.scheme in ("redis", "rediss"):
        cfg = RedisConfig(
            host=parts.host or DEFAULT_HOST, port=parts.port or DEFAULT_PORT, ssl=parts.scheme == "rediss"
        )
        db_path = unquote(parts.path).strip("/")
        if db_path:
            base["db"] = integer(db_path, "db", _ITEM)
    else:
        raise fail(_ITEM, "url", f"scheme must be redis://, rediss:// or unix://, got {url!r}")
    if "url" in {normalize_key(k) for k in parts.params}:
        raise fail(_ITEM, "url", "may not contain another url= parameter")
    merged = {**base, **parts.params}
    return _from_mapping(merged, cfg) if merged else cfg


def parse_redis_config(config: Any) -> RedisConfig:
    """Parse *config* (comma form, JSON, dict or URL; see the module docs).

    :raises ConfigError: naming the bad item.
    """
    forms = '"addr,poolsize,password,...", JSON or a redis:// URL'
    return parse_forms(
        config, _WHAT, forms, default=RedisConfig, mapping=_from_mapping, url=_from_url, comma=_from_comma
    )


_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def parse_forms(
    config: Any,
    what: str,
    forms: str,
    *,
    default: Callable[[], _C],
    mapping: Callable[[Mapping[Any, Any]], _C],
    url: Callable[[str], _C],
    comma: Callable[[str], _C],
) -> _C:
    """Hand a ``provider_config`` to the parser of its form: the forms of every Redis-family provider.

    ``None`` or an empty string is *default*; a mapping, or a string holding a
    JSON object, goes to *mapping*; a string that starts with ``scheme://``
    (see :func:`is_url`) to *url*; any other string, stripped, to *comma*
    (beego's comma form). *what* names the config in messages (``"redis
    provider_config"``), *forms* lists its string forms.

    :raises ConfigError: (``key="provider_config"``) for another type, invalid
        JSON, or JSON that is not an object.
    """
    if config is None:
        return default()
    if isinstance(config, Mapping):
        return mapping(config)
    if not isinstance(config, str):
        raise ConfigError(
            f"{what} must be a string ({forms}) or a dict, got {type(config).__name__}",
            key="provider_config",
        )
    text = config.strip()
    if not text:
        return default()
    if text.startswith("{"):
        return mapping(json_object(text, what))
    if is_url(text):
        return url(text)
    return comma(text)


def is_url(text: str) -> bool:
    """Whether *text* starts with a ``scheme://`` (any scheme): the URL form of a config."""
    return _URL_SCHEME.match(text) is not None


#: Positions of beego's comma form.
COMMA_ITEMS = ("addr", "poolsize", "password", "dbnum", "idle_timeout", "idle_check_frequency", "max_retries")


def _from_comma(text: str) -> RedisConfig:
    items = text.split(",")
    if len(items) > len(COMMA_ITEMS):
        raise ConfigError(
            f"{_WHAT} has {len(items)} comma-separated items, at most {len(COMMA_ITEMS)} "
            f"({','.join(COMMA_ITEMS)}); a password containing ',' needs the JSON, dict or URL form",
            key="provider_config",
        )
    raw = dict(zip(COMMA_ITEMS, items))
    hint = " (a password containing ',' needs the JSON, dict or URL form)" if len(items) > 3 else ""
    try:
        host, number, path = parse_addr(raw.get("addr", ""), "addr")
        poolsize = _count(raw.get("poolsize", "").strip(), "poolsize", default=0) or DEFAULT_POOLSIZE
        password = raw.get("password") or None
        db = _count(raw.get("dbnum", "").strip(), "dbnum", default=0)
        idle_timeout = parse_duration(raw.get("idle_timeout", "").strip(), "idle_timeout")
        idle_check = parse_duration(raw.get("idle_check_frequency", "").strip(), "idle_check_frequency")
        retries = _count(raw.get("max_retries", "").strip(), "max_retries", default=0)
    except ConfigError as exc:
        if hint and exc.key in COMMA_ITEMS[3:]:
            raise ConfigError(f"{exc}{hint}", key=exc.key) from None
        raise
    return RedisConfig(
        host=host,
        port=number,
        unix_socket_path=path,
        password=password,
        db=db,
        poolsize=poolsize,
        idle_timeout=idle_timeout,
        idle_check_frequency=idle_check,
        max_retries=retries,
    )
