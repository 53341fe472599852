"""PostgreSQL connection settings from the config forms the ``postgresql`` provider takes.

:func:`parse_postgresql_config` turns any of these into one :class:`PostgreSQLSettings`:

* beego's **key=value DSN** (libpq's conninfo, as lib/pq reads it)::

      user=postgres password= host=127.0.0.1 port=5432 dbname=test sslmode=disable
      host=/run/postgresql dbname=app user=web table=web_sessions
      password='it''s here' dbname=app     -- or 'it\\'s': quotes and backslash escapes

  Pairs are separated by whitespace; a value is single-quoted when it holds
  spaces. An empty value may be written ``password=`` (as beego's docs do)
  or ``password=''``;
* a **URL**: ``postgresql://user:pass@host:port/dbname?param=value`` (also
  ``postgres://``, as lib/pq accepts it); user, password and database are
  percent-decoded; ``?host=/run/postgresql`` selects a Unix socket directory;
* a **dict** (or a JSON object string) with the fields of
  :class:`PostgreSQLSettings` (``host``, ``port``, ``user``, ``password``,
  ``database``/``dbname`` …), optionally a ``dsn``/``url`` key whose values
  the other keys override, and ``server_settings`` (a dict of run-time
  parameters).

Parameters (DSN pairs, URL query, dict keys; names match case-insensitively,
with or without underscores):

* ``table``: session table name (default ``session``, beego's); a plain identifier.
* ``connect_timeout``: seconds (libpq) or a Go duration (``"500ms"``); kept
  below the manager's ``provider_timeout``.
* ``sslmode``: ``disable``, ``allow``, ``prefer`` (default, as libpq),
  ``require``, ``verify-ca``, ``verify-full``.
* ``min_size`` (1), ``max_size`` / ``pool_size`` (10),
  ``max_inactive_lifetime`` (300 s; 0 = never): the asyncpg pool.
* ``application_name`` (default ``gosession-tornado``).
* libpq/lib/pq options that have no meaning here (``fallback_application_name``,
  ``keepalives*``, ``target_session_attrs`` …, see :data:`IGNORED_LIBPQ_PARAMS`):
  accepted and ignored.
* anything else: a run-time parameter sent at connection start, as lib/pq
  does (``search_path=app``, ``statement_timeout=5000``); the name must be an
  identifier (``.`` allowed). An unknown parameter is a ``ConfigError`` when
  the provider starts.

The forms are read as the MySQL provider's are, by
:func:`~gosession_tornado.providers.sql.config.read_config`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import urllib.parse
from typing import Any

from ...errors import ConfigError
from ...values import fail, integer, join_host_port, normalize_key, port, seconds, string
from .config import Dialect, check_pool, check_table, read_config, url_settings

__all__ = [
    "PostgreSQLSettings",
    "parse_postgresql_config",
    "parse_keyword_dsn",
    "IGNORED_LIBPQ_PARAMS",
    "SSL_MODES",
    "DEFAULT_TABLE",
]

#: beego's table name.
DEFAULT_TABLE = "session"

#: libpq's sslmode values (asyncpg takes them as they are).
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

#: libpq / lib/pq connection options accepted and ignored (normalized names).
IGNORED_LIBPQ_PARAMS = frozenset(
    normalize_key(k)
    for k in (
        "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
        "keepalives_count", "tcp_user_timeout", "target_session_attrs", "load_balance_hosts",
        "gssencmode", "krbsrvname", "gsslib", "requirepeer", "replication", "channel_binding",
        "sslcompression", "binary_parameters", "disable_prepared_binary_result", "client_encoding",
        "datestyle", "passfile", "service", "ssl_min_protocol_version", "ssl_max_protocol_version",
    )
)

_PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,62}\Z")
# Sent by the provider itself; the config may not override them.
_RESERVED_PARAMS = frozenset(normalize_key(k) for k in ("TimeZone", "lock_timeout"))


@dataclasses.dataclass(frozen=True)
class PostgreSQLSettings:
    """Everything the provider needs to open its asyncpg pool; lengths of time in seconds."""

    #: Host name or IP address, or a Unix socket directory (a path starting with ``/``).
    host: str = "127.0.0.1"
    port: int = 5432
    #: Empty: the operating-system user, as libpq does.
    user: str = ""
    password: str = dataclasses.field(default="", repr=False)
    #: Empty: the user name, as libpq does.
    database: str = ""
    table: str = DEFAULT_TABLE
    sslmode: str = "prefer"
    #: Connect timeout; ``None``: derived from the manager's ``provider_timeout``.
    connect_timeout: float | None = None
    min_size: int = 1
    max_size: int = 10
    #: Seconds after which an idle pooled connection is closed; 0 = never.
    max_inactive_lifetime: float = 300.0
    application_name: str = "gosession-tornado"
    #: Run-time parameters sent at connection start: ``((name, value), ...)``.
    server_settings: tuple[tuple[str, str], ...] = ()

    @property
    def where(self) -> str:
        """``host:port`` or the socket directory, for messages."""
        if self.host.startswith("/"):
            return f"unix:{self.host}"
        return join_host_port(self.host, self.port)


# ---------------------------------------------------------------- key=value DSN


def parse_keyword_dsn(text: str) -> dict[str, str]:
    """Split a libpq ``key=value`` connection string into ``{key: value}``.

    Whitespace separates pairs and may surround ``=``; a value is either a
    run of non-space characters (``\\`` escapes the next one) or a
    single-quoted string (``\\'`` or ``''`` for a quote, ``\\\\`` for a
    backslash). ``key=`` followed by whitespace and another ``key=...`` is an
    empty value, as in beego's ``"user=postgres password= host=127.0.0.1"``.

    :raises ConfigError: for a key without ``=`` or an unterminated quote.
    """
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return out
        start = i
        while i < n and not text[i].isspace() and text[i] != "=":
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if i >= n or text[i] != "=":
            raise ConfigError(
                f"postgresql DSN: missing '=' after {key!r}; expected 'key=value' pairs such as "
                "'user=postgres password=secret host=127.0.0.1 port=5432 dbname=app sslmode=disable'",
                key=key or "provider_config",
            )
        i += 1
        spaced = i < n and text[i].isspace()
        while i < n and text[i].isspace():
            i += 1
        if i >= n or (spaced and _starts_pair(text, i)):
            out[key] = ""  # "password= host=..." : an empty value
            continue
        value: list[str] = []
        if text[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise ConfigError(f"postgresql DSN: unterminated quoted value of {key!r}", key=key)
                ch = text[i]
                if ch == "\\" and i + 1 < n:
                    value.append(text[i + 1])
                    i += 2
                elif ch == "'" and i + 1 < n and text[i + 1] == "'":
                    value.append("'")
                    i += 2
                elif ch == "'":
                    i += 1
                    break
                else:
                    value.append(ch)
                    i += 1
        else:
            while i < n and not text[i].isspace():
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(text[i])
                i += 1
        out[key] = "".join(value)


_PAIR_START_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\s*=")


def _starts_pair(text: str, pos: int) -> bool:
    return _PAIR_START_RE.match(text, pos) is not None


# ---------------------------------------------------------------- URL


def _parse_url(url: str) -> dict[str, Any]:
    netloc = urllib.parse.urlsplit(url).netloc.rpartition("@")[2]
    if "," in netloc:
        raise ConfigError(
            "postgresql URL names several hosts; the session provider connects to one",
            key="host",
        )
    out = url_settings(url, "postgresql", port_key="port", path_key="database")
    out["host"] = urllib.parse.unquote(out["host"] or "") or None
    return out


# ---------------------------------------------------------------- settings


def _server_setting(name: str, value: Any) -> tuple[str, str]:
    """A run-time parameter sent at connection start: ``(name, its text)``."""
    if normalize_key(name) in _RESERVED_PARAMS:
        raise ConfigError(
            f"postgresql provider_config: run-time parameter {name!r} is managed by the session provider",
            key=name,
        )
    if not _PARAM_NAME_RE.match(name):
        raise ConfigError(
            f"postgresql provider_config: {name!r} is not a valid run-time parameter name", key=name
        )
    if isinstance(value, bool):
        return name, "on" if value else "off"
    if isinstance(value, (int, float, str)):
        return name, str(value)
    raise ConfigError(
        f"postgresql provider_config: value of run-time parameter {name!r} must be a scalar", key=name
    )


def _sslmode(value: Any, key: str, what: str) -> str:
    """libpq's ``sslmode`` (see :data:`SSL_MODES`); ``True``/``False`` mean ``require``/``disable``."""
    bool_mode = "require" if value else "disable"
    mode = bool_mode if isinstance(value, bool) else str(value).strip().lower()
    if mode not in SSL_MODES:
        raise fail(what, key, f"must be one of {', '.join(SSL_MODES)}, got {value!r}")
    return mode


def _host(value: Any, key: str, what: str) -> str:
    """One host name or address, or a socket directory."""
    host = string(value, key, what)
    if "," in host:
        raise fail(what, key, "names several hosts; the session provider connects to one")
    return host


def _from_string(text: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``(direct values, parameters)`` of a URL or key=value DSN."""
    lowered = text.lower()
    if lowered.startswith(("postgresql://", "postgres://")):
        raw = _parse_url(text)
        params = raw.pop("params")
        return {k: v for k, v in raw.items() if v not in (None, "")}, params
    if "://" in text.split(None, 1)[0]:
        scheme = text.split("://", 1)[0]
        raise ConfigError(
            f"postgresql provider_config: unsupported URL scheme {scheme!r}; use "
            "postgresql://user:pass@host:port/dbname or 'key=value' pairs",
            key="provider_config",
        )
    return {}, parse_keyword_dsn(text)


_DIALECT = Dialect(
    name="postgresql",
    aliases={
        "host": "host", "hostaddr": "host", "hostname": "host", "addr": "host",
        "port": "port",
        "user": "user", "username": "user",
        "password": "password", "passwd": "password",
        "dbname": "database", "database": "database", "db": "database",
        "table": "table", "tablename": "table",
        "sslmode": "sslmode", "ssl": "sslmode",
        "connecttimeout": "connect_timeout", "timeout": "connect_timeout",
        "minsize": "min_size", "poolminsize": "min_size",
        "maxsize": "max_size", "poolsize": "max_size", "poolmaxsize": "max_size",
        "maxinactivelifetime": "max_inactive_lifetime",
        "maxinactiveconnectionlifetime": "max_inactive_lifetime",
        "applicationname": "application_name",
    },
    parsers={
        "host": _host,
        "port": port,
        "min_size": functools.partial(integer, minimum=0),
        "max_size": functools.partial(integer, minimum=1),
        "connect_timeout": seconds,
        "max_inactive_lifetime": seconds,
        "sslmode": _sslmode,
    },
    ignored=IGNORED_LIBPQ_PARAMS,
    parameter_keys=frozenset({"serversettings", "options"}),
    parameter=_server_setting,
    read_text=_from_string,
    example=(
        "a DSN like 'user=postgres password=secret host=127.0.0.1 port=5432 dbname=app sslmode=disable' "
        "or a postgresql:// URL"
    ),
    forms="a 'key=value' DSN, a postgresql:// URL",
    known=(
        "dsn, url, host, port, user, password, database, table, sslmode, connect_timeout, min_size, "
        "max_size, max_inactive_lifetime, application_name, server_settings"
    ),
)


def parse_postgresql_config(config: Any) -> PostgreSQLSettings:
    """Build :class:`PostgreSQLSettings` from a key=value DSN, a URL, a dict or a JSON object string.

    :raises ConfigError: for a malformed config; the message and the error's
        ``key`` name the part that is wrong.
    """
    fields, settings = read_config(config, _DIALECT)
    result = PostgreSQLSettings(**fields, server_settings=tuple(sorted(settings.items())))
    _validate(result)
    return result


def _validate(s: PostgreSQLSettings) -> None:
    check_table("postgresql", s.table, 63)
    if not s.host:
        raise ConfigError("postgresql host is empty", key="host")
    check_pool("postgresql", ("min_size", s.min_size), ("max_size", s.max_size))
