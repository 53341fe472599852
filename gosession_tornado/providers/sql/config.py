"""The ``provider_config`` forms the two SQL providers share, read one way.

A config is a DSN or URL string, a string holding a JSON object, or a dict.
A dict may hold a ``dsn`` or ``url`` key, read first so that its other keys
override what the DSN says (of several, the last one counts), and a dict of
run-time parameters (``variables`` for MySQL, ``server_settings`` for
PostgreSQL). :func:`read_config` walks any of these forms and hands every
setting to the provider's :class:`Dialect`, which says what its DSNs look
like, which keys it knows and how each value is read (with
:mod:`gosession_tornado.values`). Pure parsing: no driver is imported.

Every problem raises :class:`~gosession_tornado.errors.ConfigError` with a
message naming the part of the config at fault (and ``key`` naming it).
Passwords never appear in messages, nor in the settings' ``repr``.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from ...errors import ConfigError
from ...values import fail, json_object, normalize_key, string, url_parts

__all__ = ["Dialect", "read_config", "url_settings", "check_table", "check_pool"]

#: A value parser: ``(value, key as written, what) -> value``, raising :class:`ConfigError`.
Parser = Callable[[Any, str, str], Any]


@dataclasses.dataclass(frozen=True)
class Dialect:
    """What one SQL provider's configuration forms are made of."""

    #: Provider name, as messages say it (``"mysql"``).
    name: str
    #: Normalized key (see :func:`~gosession_tornado.values.normalize_key`) -> settings field.
    aliases: Mapping[str, str]
    #: Settings field -> its parser; a field not listed takes a string.
    parsers: Mapping[str, Parser]
    #: Normalized names of DSN/URL parameters accepted and ignored (the driver's own options).
    ignored: frozenset[str]
    #: Normalized dict keys that hold a dict of run-time parameters.
    parameter_keys: frozenset[str]
    #: A run-time parameter ``(name, value)`` -> ``(name, text sent to the server)``.
    parameter: Callable[[str, Any], tuple[str, str]]
    #: A DSN or URL -> ``(settings it names directly, its parameters as written)``.
    read_text: Callable[[str], tuple[dict[str, Any], dict[str, str]]]
    #: Example configs, for the message about an empty ``provider_config``.
    example: str
    #: The string forms, for the message about a config of the wrong type.
    forms: str
    #: The dict keys, for the message about an unknown key.
    known: str

    @property
    def config(self) -> str:
        """How messages name the whole configuration (``"mysql provider_config"``)."""
        return f"{self.name} provider_config"

    @property
    def item(self) -> str:
        """How messages name one of its items, before the key (``"mysql provider_config item"``)."""
        return f"{self.config} item"


def read_config(config: Any, dialect: Dialect) -> tuple[dict[str, Any], dict[str, str]]:
    """``(settings fields, run-time parameters)`` of *config*, in any of the forms.

    :raises ConfigError: for a config of the wrong type, an empty one, a key
        the dialect does not know, or a value its parser refuses.
    """
    fields: dict[str, Any] = {}
    parameters: dict[str, str] = {}
    if isinstance(config, str) and config.strip().startswith("{"):
        config = json_object(config.strip(), dialect.config)
    if isinstance(config, str):
        text = config.strip()
        if not text:
            raise ConfigError(
                f"the {dialect.name} provider needs provider_config: {dialect.example}", key="provider_config"
            )
        _read_text(dialect, text, fields, parameters)
    elif isinstance(config, Mapping):
        base: str | None = None
        rest: dict[str, Any] = {}
        for key, value in config.items():
            if not isinstance(key, str):
                message = f"{dialect.config} keys must be strings, got {key!r}"
                raise ConfigError(message, key="provider_config")
            if normalize_key(key) in ("dsn", "url"):
                base = string(value, key, dialect.item)
            else:
                rest[key] = value
        if base is not None:
            _read_text(dialect, base.strip(), fields, parameters)
        for key, value in rest.items():
            if normalize_key(key) in dialect.parameter_keys:
                if not isinstance(value, Mapping):
                    raise fail(dialect.item, key, f"must be a dict, got {type(value).__name__}")
                for name, item in value.items():
                    pname, text = dialect.parameter(str(name), item)
                    parameters[pname] = text
            elif value is not None:
                _apply(dialect, key, value, fields, parameters, from_text=False)
    else:
        raise ConfigError(
            f"{dialect.config} must be {dialect.forms} or a dict, got {type(config).__name__}",
            key="provider_config",
        )
    return fields, parameters


def _read_text(dialect: Dialect, text: str, fields: dict[str, Any], parameters: dict[str, str]) -> None:
    direct, raw = dialect.read_text(text)
    fields.update((field, value) for field, value in direct.items() if value is not None)
    for key, value in raw.items():
        _apply(dialect, key, value, fields, parameters, from_text=True)


def _apply(
    dialect: Dialect, key: str, value: Any, fields: dict[str, Any], parameters: dict[str, str], *,
    from_text: bool,
) -> None:
    """Set one setting from a DSN or URL parameter (*from_text*) or a dict key."""
    norm = normalize_key(key)
    field = dialect.aliases.get(norm)
    if field is not None:
        parse: Parser = dialect.parsers.get(field, string)
        fields[field] = parse(value, key, dialect.item)
    elif not from_text:
        raise ConfigError(f"unknown {dialect.config} key {key!r} (known: {dialect.known})", key=key)
    elif norm not in dialect.ignored:
        name, text = dialect.parameter(key, value)
        parameters[name] = text


def url_settings(url: str, name: str, *, port_key: str, path_key: str) -> dict[str, Any]:
    """``user``, ``password``, ``host`` (``None`` if absent), ``port``, ``database`` and ``params`` of a URL.

    User, password and database are percent-decoded; the path must be
    ``/dbname``. *name* is the provider's; a bad port is reported under
    *port_key*, a bad path under *path_key*.
    """
    parts = url_parts(url, f"{name} URL", key="provider_config", port_key=port_key)
    database = urllib.parse.unquote(parts.path.lstrip("/"))
    if "/" in database:
        raise ConfigError(f"{name} URL: the path must be just '/dbname'", key=path_key)
    return {
        "user": parts.user,
        "password": parts.password,
        "host": parts.host,
        "port": parts.port,
        "database": database,
        "params": parts.params,
    }


def check_table(name: str, table: str, longest: int) -> None:
    """Refuse a *table* name that is not a plain identifier of at most *longest* characters."""
    if re.fullmatch(rf"[A-Za-z_][A-Za-z0-9_]{{0,{longest - 1}}}", table) is None:
        raise ConfigError(
            f"{name} table name {table!r} must be a plain identifier: a letter or '_' and then up to "
            f"{longest - 1} letters, digits or '_'",
            key="table",
        )


def check_pool(name: str, smallest: tuple[str, int], largest: tuple[str, int]) -> None:
    """Refuse a pool whose least connections (``(field, n)``) exceed its most."""
    (low_name, low), (high_name, high) = smallest, largest
    if low > high:
        raise ConfigError(
            f"{name} pool {low_name} ({low}) must not exceed {high_name} ({high})", key=low_name
        )
