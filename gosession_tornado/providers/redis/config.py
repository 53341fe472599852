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
import json
import re
import warnings
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ...durations import go_duration_seconds
from ...errors import ConfigError

__all__ = [
    "RedisConfig",
    "parse_redis_config",
    "config_source",
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
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"{_WHAT} item {key!r} {message}", key=key)




def parse_duration(value: Any, key: str) -> float | None:
    """Seconds from a number of seconds, a numeric string or a Go duration (``"1m30s"``).

    ``None``, ``""`` and zero mean "not set" (``None``).

    :raises ConfigError: naming *key* for anything else or a negative value.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _fail(key, f"must be a number of seconds or a Go duration like '30s', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = go_duration_seconds(value)
        except ValueError:
            raise _fail(
                key, f"must be a number of seconds or a Go duration like '30s', got {value!r}"
            ) from None
    else:
        raise _fail(key, f"must be a number of seconds or a Go duration like '30s', got {value!r}")
    if seconds < 0 or seconds != seconds:  # negative or NaN
        raise _fail(key, f"must be >= 0 seconds, got {value!r}")
    return seconds or None


def _int(value: Any, key: str, *, default: int, minimum: int = 0) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise _fail(key, f"must be an integer, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise _fail(key, f"must be an integer, got {value!r}") from None
    if not isinstance(value, int):
        raise _fail(key, f"must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise _fail(key, f"must be >= {minimum}, got {value}")
    return value


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise _fail(key, f"must be true or false, got {value!r}")


def _str(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(key, f"must be a string, got {type(value).__name__} {value!r}")
    return value


def parse_addr(addr: Any, key: str = "addr") -> tuple[str, int, str | None]:
    """``(host, port, unix_socket_path)`` from ``"host:port"``, ``"host"``, ``":port"``,
    ``"[::1]:port"`` or ``"/path/to/socket"``; empty means ``127.0.0.1:6379``.

    :raises ConfigError: naming *key* for a malformed address or a port outside 1-65535.
    """
    if addr is None:
        return DEFAULT_HOST, DEFAULT_PORT, None
    if not isinstance(addr, str):
        raise _fail(key, f"must be a 'host:port' string, got {type(addr).__name__} {addr!r}")
    text = addr.strip()
    if not text:
        return DEFAULT_HOST, DEFAULT_PORT, None
    if text.startswith("/"):
        return DEFAULT_HOST, DEFAULT_PORT, text
    if any(c.isspace() for c in text) or "/" in text or "@" in text:
        raise _fail(key, f"must look like 'host:port', got {addr!r} (use a redis:// URL for more)")
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _fail(key, f"has an unclosed '[' in {addr!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise _fail(key, f"must look like '[ipv6]:port', got {addr!r}")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        raise _fail(key, f"is ambiguous: write an IPv6 address as '[{text}]:6379'")
    if not port_text:
        port = DEFAULT_PORT
    else:
        try:
            port = int(port_text)
        except ValueError:
            raise _fail(key, f"has a non-numeric port in {addr!r}") from None
        if not 1 <= port <= 65535:
            raise _fail(key, f"has port {port}, outside 1-65535")
    return host or DEFAULT_HOST, port, None


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


def _norm(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def _from_mapping(raw: Mapping[Any, Any], base: RedisConfig | None = None) -> RedisConfig:
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{_WHAT} keys must be strings, got {key!r}")
        field = _ALIASES.get(_norm(key))
        if field is None:
            warnings.warn(
                f"unknown {_WHAT} key {key!r} ignored (known: addr, poolsize, password, db_num, "
                "idle_timeout, idle_check_frequency, max_retries, key_prefix, username, ssl, "
                "client_name, url)",
                UserWarning,
                stacklevel=4,
            )
            continue
        if field in values:
            raise _fail(key, f"is given twice (also as {names[field]!r})")
        values[field] = value
        names[field] = key

    cfg = base or RedisConfig()
    if "url" in values:
        url = values.pop("url")
        if not isinstance(url, str):
            raise _fail(names["url"], f"must be a redis:// URL string, got {url!r}")
        cfg = _from_url(url)

    def name(field: str) -> str:
        return names.get(field, field)

    changes: dict[str, Any] = {}
    if "addr" in values:
        host, port, path = parse_addr(values["addr"], name("addr"))
        changes.update(host=host, port=port, unix_socket_path=path)
    if "port" in values:
        changes["port"] = _int(values["port"], name("port"), default=cfg.port, minimum=1)
        if changes["port"] > 65535:
            raise _fail(name("port"), f"must be 1-65535, got {changes['port']}")
    if "unix_socket_path" in values:
        changes["unix_socket_path"] = _str(values["unix_socket_path"], name("unix_socket_path")) or None
    if "poolsize" in values:
        # beego: an empty or zero pool size means MaxPoolSize.
        changes["poolsize"] = _int(values["poolsize"], name("poolsize"), default=0) or DEFAULT_POOLSIZE
    if "password" in values:
        changes["password"] = _str(values["password"], name("password")) or None
    if "username" in values:
        changes["username"] = _str(values["username"], name("username")) or None
    if "db" in values:
        changes["db"] = _int(values["db"], name("db"), default=0)
    if "idle_timeout" in values:
        changes["idle_timeout"] = parse_duration(values["idle_timeout"], name("idle_timeout"))
    if "idle_check_frequency" in values:
        changes["idle_check_frequency"] = parse_duration(
            values["idle_check_frequency"], name("idle_check_frequency")
        )
    if "max_retries" in values:
        changes["max_retries"] = _int(values["max_retries"], name("max_retries"), default=0)
    if "key_prefix" in values:
        changes["key_prefix"] = _str(values["key_prefix"], name("key_prefix"))
    if "ssl" in values:
        changes["ssl"] = _bool(values["ssl"], name("ssl"))
    if "client_name" in values:
        changes["client_name"] = _str(values["client_name"], name("client_name")) or None
    return dataclasses.replace(cfg, **changes)


def _from_url(url: str) -> RedisConfig:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise _fail("url", f"is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    query: dict[str, Any] = {}
    for qkey, qvalues in parse_qs(parts.query, keep_blank_values=True).items():
        query[qkey] = qvalues[-1]
    base: dict[str, Any] = {}
    if parts.username:
        base["username"] = unquote(parts.username)
    if parts.password:
        base["password"] = unquote(parts.password)
    if scheme == "unix":
        path = unquote(parts.path)
        if not path:
            raise _fail("url", f"unix:// URL needs a socket path, got {url!r}")
        cfg = RedisConfig(unix_socket_path=path)
    elif scheme in ("redis", "rediss"):
        host = parts.hostname or DEFAULT_HOST
        cfg = RedisConfig(host=host, port=port or DEFAULT_PORT, ssl=scheme == "rediss")
        db_path = unquote(parts.path).strip("/")
        if db_path:
            try:
                base["db"] = int(db_path)
            except ValueError:
                raise _fail("db", f"in the URL path must be an integer, got {db_path!r}") from None
    else:
        raise _fail("url", f"scheme must be redis://, rediss:// or unix://, got {url!r}")
    if "url" in {_norm(k) for k in query}:
        raise _fail("url", "may not contain another url= parameter")
    merged = {**base, **query}
    return _from_mapping(merged, cfg) if merged else cfg


def parse_redis_config(config: Any) -> RedisConfig:
    """Parse *config* (comma form, JSON, dict or URL; see the module docs).

    :raises ConfigError: naming the bad item.
    """
    if config is None:
        return RedisConfig()
    source = config_source(config, _WHAT, '"addr,poolsize,password,...", JSON or a redis:// URL')
    if not isinstance(source, str):
        return _from_mapping(source)
    if is_url(source):
        return _from_url(source)
    return _from_comma(source)


_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def config_source(config: Any, what: str, forms: str) -> Mapping[Any, Any] | str:
    """Sort a (non-``None``) ``provider_config`` into the mapping it holds or its string form.

    Shared by the ``redis``, ``redis_cluster`` and ``redis_sentinel`` parsers.
    A mapping is returned as it is, a string holding a JSON object as the
    decoded ``dict``; any other string comes back stripped, for the caller's
    URL form (see :func:`is_url`) or comma form. *what* names the config in
    messages (``"redis provider_config"``), *forms* lists its string forms.

    :raises ConfigError: (``key="provider_config"``) for another type, invalid
        JSON, or JSON that is not an object.
    """
    if isinstance(config, Mapping):
        return config
    if not isinstance(config, str):
        raise ConfigError(
            f"{what} must be a string ({forms}) or a dict, got {type(config).__name__}",
            key="provider_config",
        )
    text = config.strip()
    if not text.startswith("{"):
        return text
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} is not valid JSON: {exc}", key="provider_config") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} JSON must be an object", key="provider_config")
    return data


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
        host, port, path = parse_addr(raw.get("addr", ""), "addr")
        poolsize = _int(raw.get("poolsize", "").strip(), "poolsize", default=0) or DEFAULT_POOLSIZE
        password = raw.get("password") or None
        db = _int(raw.get("dbnum", "").strip(), "dbnum", default=0)
        idle_timeout = parse_duration(raw.get("idle_timeout", "").strip(), "idle_timeout")
        idle_check = parse_duration(raw.get("idle_check_frequency", "").strip(), "idle_check_frequency")
        retries = _int(raw.get("max_retries", "").strip(), "max_retries", default=0)
    except ConfigError as exc:
        if hint and exc.key in COMMA_ITEMS[3:]:
            raise ConfigError(f"{exc}{hint}", key=exc.key) from None
        raise
    return RedisConfig(
        host=host,
        port=port,
        unix_socket_path=path,
        password=password,
        db=db,
        poolsize=poolsize,
        idle_timeout=idle_timeout,
        idle_check_frequency=idle_check,
        max_retries=retries,
    )
