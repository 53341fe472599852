"""The value parsers every configuration of the package shares.

The manager's configuration (:mod:`gosession_tornado.config`) and each
provider's ``provider_config`` parser read their values through these
functions, so a value means the same everywhere: an integer is ``10``,
``10.0`` or ``"10"`` and never ``10.9``, ``"10.9"`` or ``True``; a length of
time is a number of seconds or a Go duration; a port is an integer 1-65535.

Every parser takes the value, the *key* it was given under (as the user
spelled it) and *what*, the words that name the configuration in messages
(``"config key"``, ``"redis provider_config item"``, ``"mysql config"``).
Every problem raises :class:`~gosession_tornado.errors.ConfigError` whose
``key`` is *key* and whose message reads ``<what> '<key>' <problem>``, the
problem said one way everywhere: ``must be an integer, got float 10.9``.

Parsers with a ``text`` flag also accept the value written as a string, as
the text forms give every value (DSNs, URLs, beego's comma form, and the
dicts that follow them); ``text=False`` is for typed values (the manager's
keys, JSON), where ``"3600"`` for a number is a mistake.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError

__all__ = [
    "normalize_key",
    "fail",
    "integer",
    "number",
    "boolean",
    "string",
    "seconds",
    "port",
    "split_host_port",
    "join_host_port",
    "URLParts",
    "url_parts",
    "json_object",
    "aliased_items",
]


def normalize_key(key: str) -> str:
    """*key* as it is matched: lowercase, without ``_``, ``-`` or whitespace.

    ``"cookieLifeTime"``, ``"cookie_lifetime"`` and ``"COOKIE-LIFETIME"`` all
    give ``"cookielifetime"``.
    """
    return re.sub(r"[_\-\s]", "", key).lower()


def fail(what: str, key: str, problem: str) -> ConfigError:
    """The :class:`ConfigError` ``<what> '<key>' <problem>`` whose ``key`` is *key*."""
    return ConfigError(f"{what} {key!r} {problem}", key=key)


def _got(value: Any) -> str:
    return f"got {type(value).__name__} {value!r}"


def _read(value: Any, text: bool, parse: Callable[[str], float]) -> float | None:
    """*value* if it is an ``int`` or a ``float`` (never a ``bool``); with *text*, *parse*
    of a string (stripped); else, or if *parse* raises :class:`ValueError`, ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if text and isinstance(value, str):
        try:
            return parse(value.strip())
        except ValueError:
            return None
    return None


def integer(
    value: Any, key: str, what: str, *, minimum: int | None = None, maximum: int | None = None,
    text: bool = True,
) -> int:
    """*value* as an integer (a count, or a number of seconds or bytes where the key says so).

    Accepted: an ``int``, a ``float`` with no fractional part (``10.0``)
    and, with *text*, a string holding an integer (``"10"``, ``" -1 "``).
    Refused: ``True``/``False``, ``10.9``, ``"10.9"``, anything else; a
    value below *minimum* or above *maximum*.
    """
    found = _read(value, text, int)
    if found is None or (isinstance(found, float) and not found.is_integer()):
        raise fail(what, key, f"must be an integer, {_got(value)}")
    n = int(found)
    if minimum is not None and n < minimum:
        raise fail(what, key, f"must be >= {minimum}, got {n}")
    if maximum is not None and n > maximum:
        raise fail(what, key, f"must be <= {maximum}, got {n}")
    return n


def number(value: Any, key: str, what: str, *, text: bool = True) -> float:
    """*value* as a finite real number (in the unit the key says, seconds for a timeout).

    Accepted: an ``int`` or a ``float`` and, with *text*, a string holding
    one (``"2.5"``). Refused: ``True``/``False``, NaN, infinities, anything else.
    """
    found = _read(value, text, float)
    if found is None:
        raise fail(what, key, f"must be a number, {_got(value)}")
    if not math.isfinite(found):
        raise fail(what, key, f"must be a finite number, got {value!r}")
    return float(found)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def boolean(value: Any, key: str, what: str, *, text: bool = True) -> bool:
    """*value* as a boolean.

    Accepted: ``True``/``False`` and, with *text*, ``"true"``, ``"yes"``,
    ``"on"``, ``"1"`` or ``"false"``, ``"no"``, ``"off"``, ``"0"`` (any
    case). Refused: anything else, the integers ``1`` and ``0`` included.
    """
    if isinstance(value, bool):
        return value
    word = value.strip().lower() if text and isinstance(value, str) else None
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise fail(what, key, f"must be a boolean (true or false), {_got(value)}")


def string(value: Any, key: str, what: str) -> str:
    """*value* if it is a string."""
    if not isinstance(value, str):
        raise fail(what, key, f"must be a string, {_got(value)}")
    return value


_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float:
    """Seconds in *text*, a number or a Go duration; :class:`ValueError` if it is neither."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        if not text:
            raise
    pos = 0
    total = 0.0
    while pos < len(text):
        match = _DURATION_RE.match(text, pos)
        if match is None:
            raise ValueError(f"{text!r} is not a duration") from None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total


def seconds(value: Any, key: str, what: str) -> float:
    """*value* as a length of time in seconds: finite and >= 0.

    Accepted: a number of seconds (``int`` or ``float``), or a string
    holding one (``"2.5"``) or a Go duration: numbers with the units ``h``,
    ``m``, ``s``, ``ms``, ``us`` (``µs``) or ``ns``, written together
    (``"1m30s"`` is 90.0, ``"500ms"`` 0.5, ``"1h"`` 3600.0). Refused:
    ``True``/``False``, a negative length (``-1``; ``"-1s"``), NaN, an
    infinity, spaces inside (``"5 s"``), unknown units (``"1d"``), anything else.
    """
    length = _read(value, True, _duration)
    if length is None:
        raise fail(what, key, f"must be a number of seconds or a Go duration like '30s', {_got(value)}")
    if not 0 <= length < math.inf:
        raise fail(what, key, f"must be a finite number of seconds >= 0, got {value!r}")
    return float(length)


def port(value: Any, key: str, what: str, *, text: bool = True) -> int:
    """*value* as a TCP port: an integer (as :func:`integer` reads it) 1-65535."""
    n = integer(value, key, what, text=text)
    if not 1 <= n <= 65535:
        raise fail(what, key, f"must be a port number 1-65535, got {n}")
    return n


def split_host_port(
    text: str, key: str, what: str, *, default_host: str, default_port: int,
    port_key: str | None = None, bare_ipv6: bool = False,
) -> tuple[str, int]:
    """``(host, port)`` of ``"host:port"``, ``"host"``, ``":port"``, ``"[v6]:port"`` or ``"[v6]"``.

    A missing host or port takes *default_host* / *default_port*. An IPv6
    address with a port must be in brackets; without them a text with
    several ``:`` is refused as ambiguous, unless *bare_ipv6* (then it is a
    host without a port, as Go's MySQL driver reads it). Whitespace, ``/``
    and ``@`` are refused. A bad port is reported under *port_key*
    (default: *key*).
    """
    if any(c.isspace() for c in text) or "/" in text or "@" in text:
        raise fail(what, key, f"must look like 'host:port', got {text!r}")
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise fail(what, key, f"has an unclosed '[' in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise fail(what, key, f"must look like '[ipv6]:port', got {text!r}")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1 and not bare_ipv6:
        raise fail(what, key, f"is ambiguous: write an IPv6 address as '[{text}]:{default_port}'")
    if not port_text:
        return host or default_host, default_port
    try:
        number = port(port_text, port_key or key, what)
    except ConfigError:
        problem = f"has port {port_text!r} in {text!r}, not a number 1-65535"
        raise fail(what, port_key or key, problem) from None
    return host or default_host, number


def join_host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets (``[::1]:6379``): for messages and node names."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclasses.dataclass(frozen=True)
class URLParts:
    """The parts of a connection URL, as :func:`url_parts` found them."""

    #: Lowercase (``"redis"``, ``"postgresql"``).
    scheme: str
    #: Percent-decoded; ``""`` when the URL has none.
    user: str
    #: Percent-decoded; ``""`` when the URL has none.
    password: str = dataclasses.field(repr=False)
    #: Lowercase, IPv6 without brackets, not decoded; ``None`` when the URL has none.
    host: str | None
    #: ``None`` when the URL has none.
    port: int | None
    #: As written (not decoded), with its leading ``/`` (``"/dbname"``); ``""`` when the URL has none.
    path: str
    #: The query string's parameters, decoded; blank values kept, the last of a repeated name wins.
    params: dict[str, str]


def url_parts(url: str, what: str, *, key: str, port_key: str | None = None) -> URLParts:
    """The :class:`URLParts` of ``scheme://[user[:password]@]host[:port][/path][?query]``.

    *what* names the URL in messages (``"mysql URL"``, ``"redis provider_config
    item 'url'"``); they never hold the URL itself, which may hold a password.

    :raises ConfigError: under *key* if the URL cannot be split (an unclosed
        ``[``), under *port_key* (default: *key*) if its port is not a number
        0-65535.
    """
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError as exc:
        raise ConfigError(f"{what} is not a valid URL: {exc}", key=key) from None
    try:
        number = parts.port
    except ValueError as exc:
        raise ConfigError(f"{what} has an invalid port: {exc}", key=port_key or key) from None
    return URLParts(
        scheme=parts.scheme.lower(),
        user=urllib.parse.unquote(parts.username or ""),
        password=urllib.parse.unquote(parts.password or ""),
        host=parts.hostname,
        port=number,
        path=parts.path,
        params=dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True)),
    )


def json_object(text: str, what: str, key: str | None = "provider_config") -> dict[str, Any]:
    """The object *text* holds in JSON (``'{"poolsize": 10}'``).

    :raises ConfigError: (``key`` *key*) for invalid JSON, or JSON that is
        not an object.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{what} is not valid JSON: {exc}", key=key) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a JSON object, got {type(data).__name__}", key=key)
    return data


def aliased_items(
    raw: Mapping[Any, Any], aliases: Mapping[str, str], config: str, *, known: str, stacklevel: int = 1
) -> tuple[dict[str, Any], dict[str, str]]:
    """The items of a dict config by field: ``({field: value}, {field: key as written})``.

    A key matches the field that *aliases* (normalized key -> field, see
    :func:`normalize_key`) gives it. A key that matches none is ignored with
    a :class:`UserWarning` (``unknown <config> key 'colour' ignored (known:
    <known>)``) at *stacklevel* counted from the caller. *config* names the
    configuration (``"memcache provider_config"``).

    :raises ConfigError: for a key that is not a string (``key``
        ``"provider_config"``), or two keys of one field.
    """
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{config} keys must be strings, got {key!r}", key="provider_config")
        field = aliases.get(normalize_key(key))
        if field is None:
            message = f"unknown {config} key {key!r} ignored (known: {known})"
            warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)
            continue
        if field in values:
            raise fail(f"{config} item", key, f"is given twice (also as {names[field]!r})")
        values[field] = value
        names[field] = key
    return values, names
