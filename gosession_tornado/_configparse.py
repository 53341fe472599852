"""Config-parsing helpers shared by the SQL providers' DSN parsers.

Each helper takes the provider name (*dialect*, ``"mysql"`` or
``"postgresql"``) that starts its error messages, and raises
:class:`~gosession_tornado.errors.ConfigError` whose ``key`` names the part
of the config that is wrong.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from .config import normalize_key
from .errors import ConfigError

__all__ = ["load_json_object", "split_mapping", "url_parts", "port_number", "as_int", "as_str", "host_port"]


def load_json_object(config: Any, dialect: str) -> Any:
    """*config* decoded from JSON if it is a string that starts with ``{``; else *config* itself."""
    if isinstance(config, str) and config.strip().startswith("{"):
        try:
            return json.loads(config)
        except ValueError as exc:
            raise ConfigError(
                f"{dialect} provider_config is not valid JSON: {exc}", key="provider_config"
            ) from None
    return config


def split_mapping(config: Mapping[Any, Any], dialect: str, on_base: Callable[[str], None]) -> dict[str, Any]:
    """The items of a dict config but ``dsn``/``url``, in order; those go to *on_base* as met."""
    rest: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise ConfigError(f"{dialect} config keys must be strings, got {key!r}", key="provider_config")
        if normalize_key(key) in ("dsn", "url"):
            if not isinstance(value, str):
                raise ConfigError(f"{dialect} config {key!r} must be a string", key=key)
            on_base(value)
        else:
            rest[key] = value
    return rest


def url_parts(url: str, dialect: str, *, port_key: str, path_key: str) -> dict[str, Any]:
    """``user``, ``password``, ``host`` (``None`` if absent), ``port``, ``database``, ``params`` of a URL.

    User, password and database are percent-decoded; the path must be ``/dbname``.
    """
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{dialect} URL has an invalid port", key=port_key) from None
    out: dict[str, Any] = {
        "user": urllib.parse.unquote(parts.username or ""),
        "password": urllib.parse.unquote(parts.password or ""),
        "host": parts.hostname,
        "port": port,
        "database": urllib.parse.unquote(parts.path.lstrip("/")),
    }
    if "/" in out["database"]:
        raise ConfigError(f"{dialect} URL: the path must be just '/dbname'", key=path_key)
    params: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        params[name] = value
    out["params"] = params
    return out


def port_number(dialect: str, key: str, value: Any) -> int:
    """*value* as a TCP port, 1-65535."""
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{dialect} config {key!r} must be a port number, got {value!r}", key=key) from None
    if isinstance(value, bool) or not 0 < port < 65536:
        raise ConfigError(f"{dialect} config {key!r} must be a port number 1-65535, got {value!r}", key=key)
    return port


def as_int(dialect: str, key: str, value: Any, *, minimum: int) -> int:
    """*value* as an integer >= *minimum* (a bool is refused)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{dialect} config {key!r} must be an integer, got {value!r}", key=key) from None
    if n < minimum:
        raise ConfigError(f"{dialect} config {key!r} must be >= {minimum}, got {n}", key=key)
    return n


def as_str(dialect: str, key: str, value: Any) -> str:
    """*value* if it is a string."""
    if not isinstance(value, str):
        raise ConfigError(f"{dialect} config {key!r} must be a string, got {type(value).__name__}", key=key)
    return value


def host_port(host: str, port: int) -> str:
    """``host:port`` for messages, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
