"""MySQL/MariaDB connection settings from the config forms the ``mysql`` provider takes.

:func:`parse_mysql_config` turns any of these into one :class:`MySQLSettings`:

* the **Go DSN** of go-sql-driver/mysql, as in beego's README::

      user:pass@tcp(127.0.0.1:3306)/dbname?param=value
      user@unix(/run/mysqld/mysqld.sock)/dbname
      /dbname                          (defaults: tcp(127.0.0.1:3306), no user)

  parsed like the Go driver does it: the *last* ``/`` separates the address
  part from the database, the *last* ``@`` before it separates the
  credentials, the *first* ``:`` in the credentials separates user and
  password (so passwords may hold ``@``, ``:`` and ``/`` unescaped);
* a **URL**: ``mysql://user:pass@host:port/dbname?param=value`` (also
  ``mariadb://`` and ``mysql+aiomysql://``); user and password are
  percent-decoded; ``?unix_socket=/path`` selects a socket;
* a **dict** (or a JSON object string) with the keys of
  :class:`MySQLSettings` (``host``, ``port``, ``user``, ``password``,
  ``database`` …), optionally a ``dsn``/``url`` key whose values the other keys
  override, and ``variables`` (a dict of system variables).

Parameters (DSN/URL query, dict keys; names match case-insensitively, with
or without underscores):

* ``table``: session table name (default ``session``, beego's); a plain identifier.
* ``timeout`` / ``connect_timeout``: TCP connect timeout, a Go duration
  (``"3s"``, ``"500ms"``) or seconds.
* ``charset`` (default ``utf8mb4``), ``minsize`` (1), ``maxsize`` / ``pool_size``
  (10), ``pool_recycle`` (3600 s; -1 = never): passed to :func:`aiomysql.create_pool`.
* ``tls`` / ``ssl``: ``false`` (default), ``true`` (verify the certificate),
  ``skip-verify``, ``preferred``; as in the Go driver.
* Go-driver options that have no meaning here (``parseTime``, ``loc``,
  ``readTimeout`` …, see :data:`IGNORED_GO_PARAMS`): accepted and ignored.
* anything else: a system variable set on every connection, as the Go driver
  does (``?sql_mode=%27TRADITIONAL%27`` becomes ``SET sql_mode='TRADITIONAL'``);
  the name must be an identifier and the value a number, a word or a
  single-quoted string.

:mod:`~gosession_tornado.providers.sql.config` walks these forms (the same
for PostgreSQL) and says how a bad one is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import urllib.parse
from typing import Any

from ...errors import ConfigError
from ...values import fail, integer, join_host_port, normalize_key, port, seconds, split_host_port
from .config import Dialect, check_pool, check_table, read_config, url_settings

__all__ = [
    "MySQLSettings",
    "parse_mysql_config",
    "parse_go_dsn",
    "IGNORED_GO_PARAMS",
    "DEFAULT_TABLE",
]

#: beego's table name.
DEFAULT_TABLE = "session"

#: go-sql-driver/mysql DSN parameters accepted and ignored (normalized names).
IGNORED_GO_PARAMS = frozenset(
    normalize_key(k)
    for k in (
        "parseTime", "loc", "columnsWithAlias", "clientFoundRows", "interpolateParams",
        "multiStatements", "rejectReadOnly", "allowNativePasswords", "allowAllFiles",
        "allowOldPasswords", "allowCleartextPasswords", "allowFallbackToPlaintext",
        "checkConnLiveness", "maxAllowedPacket", "serverPubKey", "collation",
        "readTimeout", "writeTimeout", "connectionAttributes", "timeTruncate",
    )
)

#: Variables the provider manages itself; setting them would break its guarantees.
_RESERVED_VARIABLES = frozenset(
    {"autocommit", "txisolation", "transactionisolation", "txreadonly", "transactionreadonly"}
)

_VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}\Z")
_VAR_VALUE_RE = re.compile(r"^(?:[A-Za-z0-9_.+\-]+|'[^'\\]*')\Z")
_TLS_MODES = {"false": "false", "": "false", "0": "false", "true": "true", "1": "true",
              "skip-verify": "skip-verify", "skipverify": "skip-verify", "preferred": "preferred"}


@dataclasses.dataclass(frozen=True)
class MySQLSettings:
    """Where and how the ``mysql`` provider connects. Times are in seconds."""

    host: str = "127.0.0.1"
    port: int = 3306
    #: Path of a Unix socket; when set, host and port are not used.
    unix_socket: str | None = None
    user: str = ""
    password: str = dataclasses.field(default="", repr=False)
    database: str = ""
    #: Session table (a plain identifier; quoted with backticks in SQL).
    table: str = DEFAULT_TABLE
    charset: str = "utf8mb4"
    #: TCP connect timeout; ``None``: derived from the manager's ``provider_timeout``.
    connect_timeout: float | None = None
    minsize: int = 1
    maxsize: int = 10
    #: Seconds after which an idle pooled connection is reopened; -1 = never.
    pool_recycle: float = 3600.0
    #: ``"false"``, ``"true"``, ``"skip-verify"`` or ``"preferred"``.
    tls: str = "false"
    #: System variables set on every connection: ``((name, sql_literal), ...)``.
    variables: tuple[tuple[str, str], ...] = ()

    @property
    def where(self) -> str:
        """``host:port`` or the socket path, for messages."""
        if self.unix_socket:
            return f"unix:{self.unix_socket}"
        return join_host_port(self.host, self.port)


def parse_go_dsn(dsn: str) -> dict[str, Any]:
    """Split a go-sql-driver DSN into raw settings (strings; params undecoded into a dict).

    ``[user[:password]@][net[(addr)]]/dbname[?param1=value1&...]``. Returns a dict
    with ``user``, ``password``, ``host``/``port`` or ``unix_socket``,
    ``database`` and ``params`` (``{name: value}``, percent-decoded).

    :raises ConfigError: if the DSN is malformed.
    """
    slash = dsn.rfind("/")
    # A '/' inside the query string (e.g. an unescaped time zone) is not the db separator;
    # the query starts at the first '?' after the address (or the credentials).
    anchor = dsn.rfind(")")
    if anchor == -1:
        anchor = dsn.rfind("@")
    qmark = dsn.find("?", anchor + 1)
    if qmark != -1 and slash > qmark:
        slash = dsn.rfind("/", 0, qmark)
    if slash == -1:
        raise ConfigError(
            "mysql DSN has no '/' before the database name; expected "
            "'user:pass@tcp(host:port)/dbname?param=value'",
            key="provider_config",
        )
    out: dict[str, Any] = {"user": "", "password": ""}
    head, tail = dsn[:slash], dsn[slash + 1 :]
    at = head.rfind("@")
    if at != -1:
        cred, head = head[:at], head[at + 1 :]
        user, sep, password = cred.partition(":")
        out["user"] = user
        out["password"] = password if sep else ""
    net, addr = head, ""
    paren = head.find("(")
    if paren != -1:
        if not head.endswith(")"):
            raise ConfigError(
                "mysql DSN: the address must be closed with ')' right before '/dbname', "
                "e.g. tcp(127.0.0.1:3306)/dbname",
                key="provider_config",
            )
        net, addr = head[:paren], head[paren + 1 : -1]
    net = net or "tcp"
    if net in ("tcp", "tcp4", "tcp6"):
        host, port = _split_host_port(addr or "127.0.0.1:3306")
        out["host"], out["port"] = host, port
    elif net == "unix":
        out["unix_socket"] = addr or "/tmp/mysql.sock"
    else:
        raise ConfigError(
            f"mysql DSN: unsupported protocol {net!r}; use tcp(host:port) or unix(/path/to/socket)",
            key="provider_config",
        )
    dbname, _, query = tail.partition("?")
    out["database"] = urllib.parse.unquote(dbname)
    params: dict[str, str] = {}
    if query:
        for part in query.split("&"):
            if not part:
                continue
            name, eq, value = part.partition("=")
            if not eq:
                raise ConfigError(f"mysql DSN parameter {name!r} has no '=value'", key=name)
            params[urllib.parse.unquote_plus(name)] = urllib.parse.unquote_plus(value)
    out["params"] = params
    return out


def _split_host_port(addr: str) -> tuple[str, int]:
    """``(host, port)`` of a DSN's ``tcp(addr)``; a bare IPv6 address is a host, as in Go's driver."""
    return split_host_port(
        addr, "provider_config", "mysql DSN", default_host="127.0.0.1", default_port=3306,
        port_key="port", bare_ipv6=True,
    )


def _variable(name: str, value: Any) -> tuple[str, str]:
    """A system variable set on every connection: ``(name, its SQL literal)``."""
    norm = normalize_key(name)
    if norm in _RESERVED_VARIABLES:
        raise ConfigError(
            f"mysql provider_config: system variable {name!r} is managed by the session provider and "
            "may not be set",
            key=name,
        )
    if not _VAR_NAME_RE.match(name):
        raise ConfigError(f"mysql provider_config: {name!r} is not a valid system variable name", key=name)
    if isinstance(value, bool):
        text = "ON" if value else "OFF"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, str):
        text = value
    else:
        raise ConfigError(
            f"mysql provider_config: value of system variable {name!r} must be a scalar", key=name
        )
    if not _VAR_VALUE_RE.match(text):
        raise ConfigError(
            f"mysql provider_config: value {text!r} of system variable {name!r} must be a number, a word "
            "or a single-quoted string without quotes or backslashes inside",
            key=name,
        )
    return name, text


def _pool_recycle(value: Any, key: str, what: str) -> float:
    """Seconds after which an idle pooled connection is reopened; ``-1``: never."""
    return -1.0 if str(value).strip() == "-1" else seconds(value, key, what)


def _tls(value: Any, key: str, what: str) -> str:
    """The Go driver's ``tls`` modes: ``false``, ``true``, ``skip-verify``, ``preferred``."""
    text = str(value).strip().lower() if not isinstance(value, bool) else str(value).lower()
    mode = _TLS_MODES.get(text)
    if mode is None:
        raise fail(what, key, f"must be false, true, skip-verify or preferred, got {value!r}")
    return mode


def _from_string(text: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``(settings, parameters)`` of a Go DSN or a ``mysql://`` URL."""
    lowered = text.lower()
    if lowered.startswith(("mysql://", "mariadb://", "mysql+aiomysql://", "mysql+pymysql://")):
        raw = url_settings(text, "mysql", port_key="provider_config", path_key="provider_config")
        raw["host"] = raw["host"] or "127.0.0.1"
    elif "://" in text.split("?", 1)[0].split("@")[-1]:
        scheme = text.split("://", 1)[0]
        raise ConfigError(
            f"mysql provider_config: unsupported URL scheme {scheme!r}; use mysql://user:pass@host:port/db",
            key="provider_config",
        )
    else:
        raw = parse_go_dsn(text)
    params: dict[str, str] = raw.pop("params")
    return raw, params


_DIALECT = Dialect(
    name="mysql",
    aliases={
        "host": "host", "hostname": "host", "addr": "host",
        "port": "port",
        "unixsocket": "unix_socket", "socket": "unix_socket",
        "user": "user", "username": "user",
        "password": "password", "passwd": "password",
        "database": "database", "db": "database", "dbname": "database",
        "table": "table", "tablename": "table",
        "charset": "charset",
        "timeout": "connect_timeout", "connecttimeout": "connect_timeout",
        "minsize": "minsize", "poolminsize": "minsize",
        "maxsize": "maxsize", "poolsize": "maxsize", "poolmaxsize": "maxsize",
        "poolrecycle": "pool_recycle",
        "tls": "tls", "ssl": "tls",
    },
    parsers={
        "port": port,
        "minsize": functools.partial(integer, minimum=0),
        "maxsize": functools.partial(integer, minimum=1),
        "connect_timeout": seconds,
        "pool_recycle": _pool_recycle,
        "tls": _tls,
    },
    ignored=IGNORED_GO_PARAMS,
    parameter_keys=frozenset({"variables"}),
    parameter=_variable,
    read_text=_from_string,
    example="a DSN like 'user:pass@tcp(127.0.0.1:3306)/dbname' or a mysql:// URL",
    forms="a DSN string, a mysql:// URL",
    known=(
        "dsn, url, host, port, unix_socket, user, password, database, table, charset, connect_timeout, "
        "minsize, maxsize, pool_recycle, tls, variables"
    ),
)


def parse_mysql_config(config: Any) -> MySQLSettings:
    """Build :class:`MySQLSettings` from a Go DSN, a ``mysql://`` URL, a dict or a JSON object string.

    :raises ConfigError: for a malformed or incomplete config; the message says
        which part is wrong.
    """
    fields, variables = read_config(config, _DIALECT)
    settings = MySQLSettings(**fields, variables=tuple(sorted(variables.items())))
    _validate(settings)
    return settings


def _validate(s: MySQLSettings) -> None:
    if not s.database:
        raise ConfigError(
            "mysql provider_config names no database; add it after the '/': "
            "'user:pass@tcp(127.0.0.1:3306)/dbname'",
            key="provider_config",
        )
    check_table("mysql", s.table, 64)
    if not re.match(r"^[A-Za-z0-9_]{1,32}\Z", s.charset):
        raise ConfigError(f"mysql charset {s.charset!r} is not a charset name", key="charset")
    check_pool("mysql", ("minsize", s.minsize), ("maxsize", s.maxsize))
    if s.unix_socket is not None and not s.unix_socket:
        raise ConfigError("mysql unix socket path is empty", key="unix_socket")
