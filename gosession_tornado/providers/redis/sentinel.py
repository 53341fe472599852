"""The ``redis_sentinel`` provider: the ``redis`` provider, with the master found through Redis Sentinel.

Needs the ``[redis]`` extra (``redis>=5``, :mod:`redis.asyncio.sentinel`).
:class:`RedisSentinelProvider` subclasses
:class:`~gosession_tornado.providers.redis.provider.RedisProvider`, so storage layout,
Lua delta releases, TTL refresh on access, atomic regenerate and batches
(one script call each, over the provider's one connection) are exactly
those of the ``redis`` provider. Only the connection differs:

* Every command goes to the **current master** of the monitored service
  (``master_for``); nothing is read from replicas, so a read never sees a
  replica that lags behind a release.
* A new connection asks the sentinels (in order, the last one that answered
  first) for the master's address. A master that Sentinel considers down
  (``s_down``/``o_down``) is not used.
* After a failover, the connection to the old master fails on its next use
  (:class:`~gosession_tornado.errors.ProviderUnavailableError`, the mixin
  answers 503) and is replaced by a connection to the promoted replica on the
  call after that: the same manager works again with no restart. A demoted old
  master that answers ``READONLY`` is dropped the same way (the ``redis``
  provider closes its connection on any ``READONLY`` reply).
* Every wait stays below ``provider_timeout``: sentinel queries use
  0.3 × ``provider_timeout`` split over the sentinels, data connections the
  ``redis`` provider's limits.

``provider_config`` forms (every malformed item raises
:class:`~gosession_tornado.errors.ConfigError` naming it):

* **beego's comma form**::

      "addr1;addr2;...,poolsize,password,dbnum,master_name,idle_timeout,idle_check_frequency,max_retries"

  Sentinel addresses are separated by ``;`` (a missing port is 26379, an
  empty list is ``127.0.0.1:26379``); ``master_name`` defaults to
  ``"mymaster"`` as in beego; the other items are the ``redis`` provider's.
  ``password`` and ``dbnum`` apply to the data nodes (master), not the
  sentinels.

* **beego's JSON form** (v2): ``{"save_path": "h1:26379;h2:26379", "poolsize": 100,
  "password": "", "db_num": 0, "master_name": "mymaster", "idle_timeout": "30s",
  ...}``.

* **a dict** with the JSON keys, where ``sentinels`` (alias of ``save_path``)
  may also be a list of ``"host:port"`` strings or ``(host, port)`` pairs, plus
  ``sentinel_password``/``sentinel_username`` (sentinels with ``requirepass``),
  and the ``redis`` provider's ``key_prefix``, ``username``, ``ssl``,
  ``client_name``.

* **a URL**: ``redis+sentinel://[[user]:password@]h1:26379,h2:26379[/master_name[/db]][?query]``
  (``rediss+sentinel://`` for TLS to the data nodes); query parameters take
  the dict keys.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from ...errors import ConfigError, ProviderUnavailableError
from ...values import fail, integer, join_host_port, normalize_key, string
from .config import _ALIASES as _REDIS_ALIASES
from .config import RedisConfig, parse_addr, parse_forms, parse_redis_config
from .provider import RedisProvider

__all__ = [
    "RedisSentinelProvider",
    "SentinelConfig",
    "parse_sentinel_config",
    "DEFAULT_SENTINEL_PORT",
    "DEFAULT_MASTER_NAME",
]

DEFAULT_SENTINEL_PORT = 26379
#: beego's default ``MasterName``.
DEFAULT_MASTER_NAME = "mymaster"

_WHAT = "redis_sentinel provider_config"
_ITEM = f"{_WHAT} item"


@dataclasses.dataclass(frozen=True)
class SentinelConfig(RedisConfig):
    """A :class:`~gosession_tornado.providers.redis.config.RedisConfig` for the data nodes, and the sentinels.

    ``host``, ``port`` and ``unix_socket_path`` of the base class are unused:
    the master's address comes from the sentinels.
    """

    #: ``(host, port)`` of every sentinel, in the order they are asked.
    sentinels: tuple[tuple[str, int], ...] = (("127.0.0.1", DEFAULT_SENTINEL_PORT),)
    #: The monitored service (``sentinel monitor <master_name> ...``).
    master_name: str = DEFAULT_MASTER_NAME
    #: Username for the sentinels themselves (ACL in sentinel.conf); ``None``: none.
    sentinel_username: str | None = None
    #: Password of the sentinels themselves (``requirepass`` in sentinel.conf); ``None``: none.
    sentinel_password: str | None = None

    @property
    def sentinel_list(self) -> str:
        """``host:port,host:port`` of the sentinels, for messages."""
        return ",".join(join_host_port(h, p) for h, p in self.sentinels)

    @property
    def location(self) -> str:
        """The service and its sentinels, for messages."""
        return f"master {self.master_name!r} (sentinels {self.sentinel_list})"


def parse_sentinel_addr(addr: Any, key: str = "sentinels") -> tuple[str, int]:
    """``(host, port)`` of one sentinel; a missing port is 26379.

    :raises ConfigError: naming *key* for a malformed address or a socket path.
    """
    if isinstance(addr, (tuple, list)):
        if len(addr) != 2 or not isinstance(addr[0], str) or isinstance(addr[1], bool):
            raise fail(_ITEM, key, f"must hold 'host:port' strings or (host, port) pairs, got {addr!r}")
        addr = join_host_port(addr[0], integer(addr[1], key, _ITEM))
    if not isinstance(addr, str):
        raise fail(_ITEM, key, f"must hold 'host:port' strings, got {type(addr).__name__} {addr!r}")
    text = addr.strip()
    if text.startswith("/"):
        problem = f"must be TCP 'host:port' addresses (sentinels have no socket path), got {addr!r}"
        raise fail(_ITEM, key, problem)
    has_port = bool(re.search(r"\]:\d*$", text)) if text.startswith("[") else text.count(":") == 1
    if text and not has_port and not (text.count(":") > 1 and not text.startswith("[")):
        text = f"{text}:{DEFAULT_SENTINEL_PORT}"
    if not text:
        text = f"127.0.0.1:{DEFAULT_SENTINEL_PORT}"
    host, port, _ = parse_addr(text, key)
    return host, port


def _sentinels(value: Any, key: str) -> tuple[tuple[str, int], ...]:
    if value is None:
        items: list[Any] = []
    elif isinstance(value, str):
        items = [p for p in re.split(r"[;,]", value) if p.strip()]
    elif isinstance(value, (list, tuple)):
        if len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int):
            items = [value]  # one (host, port) pair
        else:
            items = list(value)
    else:
        raise fail(_ITEM, key, f"must be 'h1:26379;h2:26379' or a list, got {type(value).__name__} {value!r}")
    if not items:
        return ((("127.0.0.1", DEFAULT_SENTINEL_PORT)),)
    found: list[tuple[str, int]] = []
    for item in items:
        pair = parse_sentinel_addr(item, key)
        if pair not in found:
            found.append(pair)
    return tuple(found)


def _master_name(value: Any, key: str) -> str:
    if value is None or value == "":
        return DEFAULT_MASTER_NAME
    if not isinstance(value, str) or not re.fullmatch(r"[^\s]+", value):
        raise fail(_ITEM, key, f"must be a service name without spaces, like 'mymaster', got {value!r}")
    return value


_SENTINEL_KEYS: dict[str, str] = {
    "addr": "sentinels",
    "address": "sentinels",
    "savepath": "sentinels",
    "conn": "sentinels",
    "host": "sentinels",
    "sentinels": "sentinels",
    "sentineladdrs": "sentinels",
    "sentineladdr": "sentinels",
    "mastername": "master_name",
    "master": "master_name",
    "servicename": "master_name",
    "sentinelpassword": "sentinel_password",
    "sentinelusername": "sentinel_username",
    "url": "url",
}
_SENTINEL_FIELDS = frozenset(_SENTINEL_KEYS.values())
#: Keys of the redis provider that make no sense here.
_REFUSED = frozenset({"port", "path", "unixsocketpath"})


def _canonical(key: str) -> str:
    norm = normalize_key(key)
    return _SENTINEL_KEYS.get(norm) or _REDIS_ALIASES.get(norm) or norm


def _from_mapping(raw: Mapping[Any, Any]) -> SentinelConfig:
    values: dict[str, Any] = {}
    names: dict[str, str] = {}  # canonical field -> the key as written
    url: tuple[str, Any] | None = None
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{_WHAT} keys must be strings, got {key!r}", key="provider_config")
        if normalize_key(key) in _REFUSED:
            raise fail(
                _ITEM,
                key,
                "is not used: the master's address comes from the sentinels; give sentinel "
                "addresses as 'host:port' in 'sentinels' (or save_path)",
            )
        field = _canonical(key)
        if field == "url":
            url = (key, value)
            continue
        if field in names:
            raise fail(_ITEM, key, f"is given twice (also as {names[field]!r})")
        values[key] = value
        names[field] = key
    if url is not None:
        if not isinstance(url[1], str):
            raise fail(_ITEM, url[0], f"must be a redis+sentinel:// URL string, got {url[1]!r}")
        for key, value in _url_values(url[1]).items():
            if _canonical(key) not in names:  # the other keys are applied on top of the URL
                values[key] = value
                names[_canonical(key)] = key

    # The data-node options are the redis provider's, parsed (and checked) by it.
    rest = {k: v for k, v in values.items() if _canonical(k) not in _SENTINEL_FIELDS}
    data = parse_redis_config(rest) if rest else RedisConfig()
    cfg = SentinelConfig(**{f.name: getattr(data, f.name) for f in dataclasses.fields(RedisConfig)})
    changes: dict[str, Any] = {}
    if "sentinels" in names:
        changes["sentinels"] = _sentinels(values[names["sentinels"]], names["sentinels"])
    if "master_name" in names:
        changes["master_name"] = _master_name(values[names["master_name"]], names["master_name"])
    for field in ("sentinel_password", "sentinel_username"):
        if field in names:
            value = values[names[field]]
            changes[field] = None if value is None else string(value, names[field], _ITEM) or None
    return dataclasses.replace(cfg, **changes)


def _url_values(url: str) -> dict[str, Any]:
    """The dict-form items a ``redis+sentinel://`` URL stands for."""
    text = url.strip()
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    scheme = match.group(1).lower() if match else ""
    if scheme not in ("redis+sentinel", "rediss+sentinel"):
        raise fail(_ITEM, "url", f"scheme must be redis+sentinel:// or rediss+sentinel://, got {url!r}")
    try:
        # urlsplit cannot give several hosts' ports: take the netloc apart by hand.
        parts = urlsplit(text)
    except ValueError as exc:
        raise fail(_ITEM, "url", f"is not a valid URL: {exc}") from None
    netloc = parts.netloc
    values: dict[str, Any] = {}
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        if user:
            values["username"] = unquote(user)
        if password:
            values["password"] = unquote(password)
    values["sentinels"] = [h for h in netloc.split(",") if h]
    path = [unquote(p) for p in parts.path.split("/") if p]
    if len(path) > 2:
        raise fail(_ITEM, "url", f"path must be /master_name[/db], got {parts.path!r}")
    if path:
        values["master_name"] = path[0]
    if len(path) == 2:
        values["db"] = path[1]
    if scheme == "rediss+sentinel":
        values["ssl"] = True
    for qkey, qvalues in parse_qs(parts.query, keep_blank_values=True).items():
        if normalize_key(qkey) == "url":
            raise fail(_ITEM, "url", "may not contain another url= parameter")
        for known in [k for k in values if _canonical(k) == _canonical(qkey)]:
            del values[known]  # a query parameter overrides the URL's own part
        values[qkey] = qvalues[-1]
    return values


#: Positions of beego's comma form.
COMMA_ITEMS = (
    "addr", "poolsize", "password", "dbnum", "master_name",
    "idle_timeout", "idle_check_frequency", "max_retries",
)


def _from_comma(text: str) -> SentinelConfig:
    items = text.split(",")
    if len(items) > len(COMMA_ITEMS):
        raise ConfigError(
            f"{_WHAT} has {len(items)} comma-separated items, at most {len(COMMA_ITEMS)} "
            f"({','.join(COMMA_ITEMS)}); separate sentinel addresses with ';', and a password "
            "containing ',' needs the JSON, dict or URL form",
            key="provider_config",
        )
    raw = {k: v if k == "password" else v.strip() for k, v in zip(COMMA_ITEMS, items)}
    return _from_mapping(raw)


def parse_sentinel_config(config: Any) -> SentinelConfig:
    """Parse *config* (comma form, JSON, dict or URL; see the module docs).

    :raises ConfigError: naming the bad item.
    """
    forms = '"h1:26379;h2:26379,poolsize,password,dbnum,master_name", JSON or a redis+sentinel:// URL'
    return parse_forms(
        config, _WHAT, forms, default=SentinelConfig, mapping=_from_mapping, url=_from_url, comma=_from_comma
    )


def _from_url(url: str) -> SentinelConfig:
    return _from_mapping({"url": url})


class RedisSentinelProvider(RedisProvider):
    """Sessions in Redis hashes on the master that Redis Sentinel names; fails over by itself.

    Everything but the connection is :class:`~gosession_tornado.providers.redis.provider.RedisProvider`:
    this class overrides :meth:`parse_config` (the sentinel forms),
    :meth:`make_client` (``Sentinel(...).master_for(master_name)``),
    :meth:`session_init` (an unknown ``master_name`` is a ``ConfigError``) and
    :meth:`session_close` (also closes the sentinel connections).
    """

    def __init__(self) -> None:
        super().__init__()
        self._sentinel: Sentinel | None = None
        self.redis_config = SentinelConfig()

    def parse_config(self, config: Any) -> SentinelConfig:
        """Parse ``provider_config`` with :func:`parse_sentinel_config`."""
        return parse_sentinel_config(config)

    @property
    def sentinel_config(self) -> SentinelConfig:
        """The parsed configuration (a :class:`SentinelConfig`)."""
        cfg = self.redis_config
        assert isinstance(cfg, SentinelConfig)
        return cfg

    @staticmethod
    def _sentinel_timeout(cfg: SentinelConfig, timeout: float) -> float:
        """Seconds one sentinel may take: 0.3 × *timeout* shared by all of them."""
        return max(0.05, timeout * 0.3 / len(cfg.sentinels))

    def make_client(self, cfg: RedisConfig, timeout: float) -> aioredis.Redis:
        """A client on the service's current master. *timeout* is ``provider_timeout`` (s)."""
        if not isinstance(cfg, SentinelConfig):
            raise TypeError(f"{type(self).__name__}.make_client needs a SentinelConfig, got {cfg!r}")
        per_sentinel = self._sentinel_timeout(cfg, timeout)
        self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(cfg.sentinels),
            sentinel_kwargs={
                "socket_timeout": per_sentinel,
                "socket_connect_timeout": per_sentinel,
                "username": cfg.sentinel_username,
                "password": cfg.sentinel_password,
                "retry": Retry(NoBackoff(), 0),  # the next sentinel is the retry
            },
        )
        client: aioredis.Redis = self._sentinel.master_for(
            cfg.master_name,
            db=cfg.db,
            max_connections=cfg.poolsize,
            ssl=cfg.ssl,
            **self.connection_kwargs(cfg, timeout),
        )
        return client

    async def session_init(self, max_lifetime: int, config: Any) -> None:
        """Parse *config*, find the master through the sentinels, connect and load the scripts.

        :raises ConfigError: for a bad config, an unknown ``master_name``, a
            rejected password or a bad db number.
        :raises ProviderUnavailableError: if no sentinel answers or the master is down.
        """
        try:
            await super().session_init(max_lifetime, config)
        except ProviderUnavailableError:
            await self._check_master_name()
            raise

    async def _check_master_name(self) -> None:
        """Raise ``ConfigError`` if sentinels answered and none monitors ``master_name``."""
        cfg = self.sentinel_config
        per_sentinel = self._sentinel_timeout(cfg, self._timeout())
        answered = known = False
        for host, port in cfg.sentinels:
            client = aioredis.Redis(
                host=host, port=port, username=cfg.sentinel_username, password=cfg.sentinel_password,
                socket_timeout=per_sentinel, socket_connect_timeout=per_sentinel,
                retry=Retry(NoBackoff(), 0),
            )
            try:
                command: Any = client.execute_command
                reply = await command("SENTINEL GET-MASTER-ADDR-BY-NAME", cfg.master_name)
            except rexc.ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    continue
                raise ConfigError(
                    f"{join_host_port(host, port)} answers but is not a Redis Sentinel ({exc}); list the "
                    "sentinels' addresses (port 26379 by default), not the master's",
                    key="sentinels",
                ) from None
            except (rexc.RedisError, OSError):
                continue
            finally:
                await client.aclose()
            answered = True
            known = known or reply is not None
        if answered and not known:
            raise ConfigError(
                f"no sentinel at {cfg.sentinel_list} monitors a master named {cfg.master_name!r}; "
                "check master_name (5th item of beego's comma form)",
                key="master_name",
            )

    async def session_close(self) -> None:
        """Close the master client, its pool and the sentinel connections."""
        sentinel, self._sentinel = self._sentinel, None
        try:
            await super().session_close()
        finally:
            if sentinel is not None:
                await sentinel.aclose()

    def master_address(self) -> tuple[str, int] | None:
        """The master address the pool connects to now (``None`` before the first connection)."""
        client = self._client
        if client is None:
            return None
        address: Sequence[Any] | None = getattr(client.connection_pool, "master_address", None)
        if address is None:
            return None
        return str(address[0]), int(address[1])
