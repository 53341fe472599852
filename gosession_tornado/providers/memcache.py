"""The ``memcache`` provider: one memcached item per session, written with ``gets`` + ``cas``.

Needs the ``[memcache]`` extra (``emcache``, an asyncio client whose protocol
parser is written in Cython). The registry imports this module lazily, so a
missing client becomes an :class:`~gosession_tornado.errors.UnknownProviderError`
that names the extra. Why emcache and not aiomcache, with the measured
figures, is on the provider's docs page (``docs/providers/memcache.rst``).

Configuration (``provider_config``)
    beego's form ``"127.0.0.1:11211"``, several servers
    ``"10.0.0.1:11211;10.0.0.2:11211"``, ``memcache://host:port`` URLs, a
    JSON object or a dict (``{"servers": [...], "key_prefix": ...,
    "max_connections": 8, "cas_retries": 32}``); see
    :func:`parse_memcache_config`. With several servers each session lives on
    exactly one, chosen by rendezvous (highest random weight) hashing of the
    session id (:meth:`MemcacheProvider.server_for`): the same id always goes
    to the same server, whatever order the servers are listed in, and adding
    or removing one server moves only the sessions that belong to it.

Storage layout
    Session *sid* is the item ``<key_prefix><sid>`` (``key_prefix`` defaults
    to the manager's ``"gosession:"``), flags 0, value
    ``codec.encode({"data": {...}, "lifetime": seconds})`` (msgpack, the same
    envelope as the SQL providers). Its memcached expiry time is the lifetime.

Expiry
    Every write sets the item's expiry to the session's lifetime (the
    ``expiry`` of the release, in seconds). A read is ``gat`` (get and touch)
    with ``max_lifetime``, so the timeout counts from the last access, reads
    included, in the same command as the read; a session whose own lifetime
    differs (``set_expiry``) is touched again with its stored lifetime in the
    same batch. memcached counts in whole seconds, so a session expires
    between lifetime - 1 and lifetime seconds after its last access: never
    late. Lifetimes over 30 days are sent as an absolute Unix time (memcached
    reads larger numbers that way), capped at 2038-01-19 (memcached keeps it
    in 32 bits). memcached drops expired items itself, so
    :meth:`MemcacheProvider.session_gc` is a no-op.

Deltas without lost updates
    A release reads the item with ``gets`` (its value and cas token), applies
    the request's :class:`~gosession_tornado.provider.Changes` (flush,
    deletions, increments, sets) to what is stored *now*, and writes it back
    with ``cas``, which fails if anyone changed the item in between; the
    provider then reads it again and re-applies, at most ``cas_retries``
    times, before failing the release with :class:`CasConflictError`. A
    missing item is created with ``add`` (which fails if another process
    created it first, so that one is read and merged instead), and only when
    the release may create the session; otherwise the release is dropped, so
    a destroyed or expired session is never resurrected. Increments add their
    delta to the stored value, so concurrent ``Session.incr`` calls never lose
    one, in one process or many.

Batching
    :meth:`MemcacheProvider.handle_batch` turns what the actor drained in one
    turn into, per server: one ``gat`` of every key read, one ``gets`` of
    every key released or checked (the two concurrently), then the writes
    (``cas``/``add``/``touch``/``delete``) in flight together over the
    server's connection pool. Several releases of one session in a batch are
    merged into one ``cas``. Servers are worked on concurrently, and a server
    that fails fails only the messages of its sessions. The messages of a
    batch keep their order per session: a read that follows a release of the
    same session in the batch sees that release.

Failures
    Every command has a deadline of 0.4 x ``provider_timeout`` (connecting
    too); a server that refuses, resets or does not answer fails its messages
    with :class:`~gosession_tornado.errors.ProviderUnavailableError` naming
    it. The server is then marked down: the next batch that needs it first
    checks it with a ``version`` command on a fresh connection (failing fast
    while it is still down) and, once it answers, builds a new client for it,
    so the manager recovers by itself when memcached is back. memcached keeps
    nothing across a restart, can evict sessions under memory pressure, and
    cannot count them: :meth:`MemcacheProvider.session_all` raises
    :class:`CannotCountError`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import parse_qs, unquote

import emcache

from .. import codec
from .._log import get_logger
from ..errors import ConfigError, ProviderUnavailableError, SessionError
from ..provider import (
    GC,
    BatchVerbs,
    Changes,
    Message,
    Release,
    SessionData,
)
from ..values import (
    aliased_items,
    fail,
    integer,
    join_host_port,
    json_object,
    normalize_key,
    split_host_port,
    string,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..config import ManagerConfig

__all__ = [
    "MemcacheProvider",
    "MemcacheConfig",
    "MemcacheServer",
    "parse_memcache_config",
    "CannotCountError",
    "CasConflictError",
    "TOMBSTONE",
    "DEFAULT_PORT",
]

log = get_logger("gosession_tornado.memcache")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11211
#: Connections per server (the most commands one batch has in flight on it).
DEFAULT_MAX_CONNECTIONS = 8
#: ``gets`` + ``cas`` rounds a release tries before :class:`CasConflictError`.
DEFAULT_CAS_RETRIES = 32
#: Longest key memcached accepts, in bytes.
MAX_KEY_LENGTH = 250
#: Longest session id a key must hold: the manager's ids (32-160 characters).
MAX_SID_LENGTH = 160
#: Relative expiry times above this many seconds (30 days) are read by memcached as Unix times.
MAX_RELATIVE_EXPTIME = 30 * 24 * 3600
#: The latest expiry time memcached can hold (a 32-bit signed Unix time: 2038-01-19 03:14:07 UTC).
MAX_EXPTIME = 2**31 - 1
#: Keys per multi-key command (memcached takes more; this bounds one line's size).
_MULTI_CHUNK = 256
#: Seconds a regenerated session's tombstone lives if deleting it fails.
_TOMBSTONE_SECONDS = 30

#: Value left under a regenerated session's old key until it is deleted: a byte
#: msgpack never emits first, so it can never be a session. Reads as missing.
TOMBSTONE = b"\xc1"

_WHAT = "memcache provider_config"
_ITEM = f"{_WHAT} item"

_T = TypeVar("_T")


class CannotCountError(SessionError, NotImplementedError):
    """``get_active_sessions()`` on the ``memcache`` provider: memcached cannot count sessions.

    memcached has no command that lists or counts the keys under a prefix
    (``stats`` counts every item of every application, expired ones
    included), so the provider cannot say how many sessions are live.
    ``await manager.stats()`` reports this message under
    ``active_sessions_error``.
    """


class CasConflictError(ProviderUnavailableError):
    """A release gave up after ``cas_retries`` compare-and-swap conflicts in a row.

    Other processes kept changing the same session between this provider's
    ``gets`` and its ``cas``. Nothing of this release was written; the
    request can be retried (the mixin answers 503, like any unavailable
    store). Raise ``cas_retries`` in ``provider_config`` if it happens under
    normal load.
    """


# ---------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class MemcacheServer:
    """One memcached server: a TCP ``host:port`` or a Unix socket ``path``."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: Unix socket path; when set, ``host`` and ``port`` are unused.
    path: str | None = None

    @property
    def name(self) -> str:
        """``host:port`` (IPv6 in brackets) or the socket path: shown in messages and hashed."""
        if self.path:
            return self.path
        return join_host_port(self.host, self.port)

    def address(self) -> emcache.MemcachedHostAddress | emcache.MemcachedUnixSocketPath:
        """The address as emcache takes it."""
        if self.path:
            return emcache.MemcachedUnixSocketPath(self.path)
        return emcache.MemcachedHostAddress(self.host, self.port)


@dataclasses.dataclass(frozen=True)
class MemcacheConfig:
    """The parsed ``provider_config`` of the ``memcache`` provider."""

    servers: tuple[MemcacheServer, ...] = (MemcacheServer(),)
    #: Prefix of every session key; ``None``: the manager's ``key_prefix``.
    key_prefix: str | None = None
    #: Most connections per server (commands of one batch in flight at once on it).
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: ``gets`` + ``cas`` rounds one release tries before :class:`CasConflictError`.
    cas_retries: int = DEFAULT_CAS_RETRIES


def _parse_server(text: str, key: str) -> MemcacheServer:
    """One server: ``host:port``, ``host``, ``:port``, ``[v6]:port``, ``/socket`` or a URL."""
    text = text.strip()
    if "://" in text:
        return _parse_url_server(text, key)
    if text.startswith("/"):
        return MemcacheServer(path=text)
    if not text:
        raise fail(_ITEM, key, "must list servers as 'host:port' separated by ';', got ''")
    host, port = split_host_port(text, key, _ITEM, default_host=DEFAULT_HOST, default_port=DEFAULT_PORT)
    return MemcacheServer(host, port)


def _parse_url_server(url: str, key: str) -> MemcacheServer:
    """A server from ``memcache://host[:port]`` (also ``memcached://``) or ``unix:///path``."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "unix":
        path = unquote(rest.split("?", 1)[0])
        if not path.startswith("/"):
            raise fail(_ITEM, key, f"unix:// URL needs an absolute socket path, got {url!r}")
        return MemcacheServer(path=path)
    if scheme not in ("memcache", "memcached"):
        raise fail(_ITEM, key, f"URL scheme must be memcache:// or unix://, got {url!r}")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    if not netloc:
        return MemcacheServer()
    return _parse_server(netloc, key)


def _split_servers(text: str, key: str) -> list[MemcacheServer]:
    """Servers from beego's ``"a:11211;b:11211"`` (``,`` works too; each may be a URL)."""
    items = [item.strip() for item in text.replace(",", ";").split(";")]
    items = [item for item in items if item]
    if not items:
        raise fail(_ITEM, key, "lists no server")
    return [_parse_server(item, key) for item in items]


# normalized key (lowercase, no '_'/'-') -> canonical field
_ALIASES: dict[str, str] = {
    "servers": "servers",
    "server": "servers",
    "savepath": "servers",
    "conn": "servers",
    "addr": "servers",
    "address": "servers",
    "addresses": "servers",
    "url": "servers",
    "keyprefix": "key_prefix",
    "prefix": "key_prefix",
    "maxconnections": "max_connections",
    "poolsize": "max_connections",
    "casretries": "cas_retries",
}


def _servers_from(value: Any, key: str) -> list[MemcacheServer]:
    if isinstance(value, str):
        return _split_servers(value, key)
    if isinstance(value, (list, tuple)):
        servers: list[MemcacheServer] = []
        for item in value:
            if not isinstance(item, str):
                raise fail(_ITEM, key, f"must list servers as strings, got {type(item).__name__} {item!r}")
            servers.extend(_split_servers(item, key))
        if not servers:
            raise fail(_ITEM, key, "lists no server")
        return servers
    raise fail(_ITEM, key, f"must be a string or a list of 'host:port' strings, got {type(value).__name__}")


def _from_mapping(raw: Mapping[Any, Any], base: MemcacheConfig) -> MemcacheConfig:
    known = "servers, key_prefix, max_connections, cas_retries"
    values, names = aliased_items(raw, _ALIASES, _WHAT, known=known, stacklevel=4)
    changes: dict[str, Any] = {}
    if "servers" in values:
        changes["servers"] = tuple(_servers_from(values["servers"], names["servers"]))
    if "key_prefix" in values:
        changes["key_prefix"] = string(values["key_prefix"], names["key_prefix"], _ITEM)
    if "max_connections" in values:
        given = values["max_connections"]
        changes["max_connections"] = integer(given, names["max_connections"], _ITEM, minimum=1)
    if "cas_retries" in values:
        changes["cas_retries"] = integer(values["cas_retries"], names["cas_retries"], _ITEM, minimum=0)
    return dataclasses.replace(base, **changes)


def _from_string(text: str) -> MemcacheConfig:
    """beego's ``"host:port;host:port"``, possibly with ``memcache://`` URLs and a query string."""
    query: dict[str, Any] = {}
    if "://" in text and "?" in text:
        text, _, query_text = text.partition("?")
        for qkey, qvalues in parse_qs(query_text, keep_blank_values=True).items():
            query[qkey] = qvalues[-1]
        if any(_ALIASES.get(normalize_key(k)) == "servers" for k in query):
            raise fail(_ITEM, "servers", "may not be given again in the URL's query string")
    if "://" in text and "," in text.split("://", 1)[1].split("/", 1)[0]:
        # memcache://a:11211,b:11211 : several hosts in one URL
        scheme, _, rest = text.partition("://")
        netloc, _, _ = rest.partition("/")
        text = ";".join(f"{scheme}://{host}" for host in netloc.split(","))
    cfg = MemcacheConfig(servers=tuple(_split_servers(text, "servers")))
    return _from_mapping(query, cfg) if query else cfg


def parse_memcache_config(config: Any) -> MemcacheConfig:
    """Parse the ``memcache`` provider's ``provider_config``.

    Accepted forms:

    * ``None`` or ``""``: one server at ``127.0.0.1:11211``;
    * beego's ``"127.0.0.1:11211"``, several servers separated by ``;``
      (``"10.0.0.1:11211;10.0.0.2:11211"``; ``,`` works too), each
      ``host:port``, ``host`` (port 11211), ``:port`` (127.0.0.1),
      ``[::1]:11211`` or a Unix socket path starting with ``/``;
    * URLs: ``memcache://host:port`` (``memcached://`` too), several hosts as
      ``memcache://a:11211,b:11211`` or several URLs separated by ``;``,
      ``unix:///path/to/memcached.sock``; a query string takes the dict keys
      (``memcache://cache:11211?key_prefix=app:&max_connections=4``);
    * a dict, or a string holding a JSON object, with ``servers`` (a string in
      any form above, or a list of them; aliases ``server``, ``save_path``,
      ``conn``, ``addr``, ``url``), ``key_prefix``, ``max_connections``
      (alias ``poolsize``; connections per server, default 8) and
      ``cas_retries`` (default 32). Keys match case-insensitively, ``_`` and
      ``-`` ignored; an unknown key is ignored with a :class:`UserWarning`.

    A server listed twice is an error.

    :raises ConfigError: whose ``key`` names the bad item (``"servers"``,
        ``"key_prefix"``, ``"max_connections"``, ``"cas_retries"``, or
        ``"provider_config"`` for a value of the wrong type).
    """
    if config is None:
        return MemcacheConfig()
    if isinstance(config, Mapping):
        cfg = _from_mapping(config, MemcacheConfig())
    elif isinstance(config, str):
        text = config.strip()
        if not text:
            return MemcacheConfig()
        if text.startswith("{"):
            cfg = _from_mapping(json_object(text, _WHAT), MemcacheConfig())
        else:
            cfg = _from_string(text)
    else:
        raise ConfigError(
            f"{_WHAT} must be a string ('host:port;host:port' or a memcache:// URL) or a dict, "
            f"got {type(config).__name__}",
            key="provider_config",
        )
    seen: set[str] = set()
    for server in cfg.servers:
        if server.name in seen:
            raise fail(_ITEM, "servers", f"lists {server.name} twice")
        seen.add(server.name)
    return cfg


def check_key_prefix(prefix: Any) -> str:
    """*prefix* if it can start a memcached key, else :class:`ConfigError` (``key="key_prefix"``).

    memcached keys are at most 250 bytes without whitespace or control
    characters; the prefix must leave room for a 160-character session id.
    """
    if not isinstance(prefix, str) or not prefix:
        raise ConfigError(
            "memcache key_prefix must be a non-empty string (it keeps session keys apart from "
            "the other keys in the cache)",
            key="key_prefix",
        )
    raw = prefix.encode("utf-8", "surrogatepass")
    if any(b <= 0x20 or b == 0x7F for b in raw):
        raise ConfigError(
            f"memcache key_prefix {prefix!r} may not contain spaces or control characters "
            "(memcached keys cannot)",
            key="key_prefix",
        )
    if len(raw) + MAX_SID_LENGTH > MAX_KEY_LENGTH:
        raise ConfigError(
            f"memcache key_prefix is {len(raw)} bytes: at most {MAX_KEY_LENGTH - MAX_SID_LENGTH} "
            f"(memcached keys are at most {MAX_KEY_LENGTH} bytes, session ids up to {MAX_SID_LENGTH})",
            key="key_prefix",
        )
    return prefix


# ---------------------------------------------------------------- servers


def _exptime(lifetime: int) -> int:
    """memcached's expiry time for *lifetime* seconds from now.

    Up to 30 days it is the number of seconds; above, a Unix time, which
    memcached keeps in 32 signed bits: a later one wraps around and expires
    the item at once, so it is capped at :data:`MAX_EXPTIME` (2038-01-19).
    """
    lifetime = max(1, int(lifetime))
    if lifetime <= MAX_RELATIVE_EXPTIME:
        return lifetime
    return min(int(time.time()) + lifetime, MAX_EXPTIME)


class _Server:
    """One memcached server: its emcache client, and whether it failed last time."""

    def __init__(self, spec: MemcacheServer, max_connections: int, timeout: float) -> None:
        self.spec = spec
        self.name = spec.name
        self.max_connections = max_connections
        #: Deadline of one command, and of connecting (seconds).
        self.timeout = timeout
        self.client: emcache.Client | None = None
        #: The last command failed for want of the server: check it before using it again.
        self.down = False
        #: Weight seed of rendezvous hashing.
        self.seed = spec.name.encode() + b"\0"

    async def probe(self) -> None:
        """Send ``version`` on a fresh connection and read the answer.

        :raises ProviderUnavailableError: if that fails within :attr:`timeout` seconds.
        """
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout):
                if self.spec.path:
                    reader, writer = await asyncio.open_unix_connection(self.spec.path)
                else:
                    reader, writer = await asyncio.open_connection(self.spec.host, self.spec.port)
                writer.write(b"version\r\n")
                line = await reader.readline()
            if not line:
                raise ConnectionResetError("the server closed the connection without answering")
            if not line.startswith(b"VERSION "):
                raise ProviderUnavailableError(
                    f"the server at memcached {self.name} does not speak memcached's protocol "
                    f"(answered {line[:40]!r} to 'version'); check provider_config"
                )
        except (OSError, TimeoutError, EOFError) as exc:
            raise self.unavailable(exc) from exc
        finally:
            if writer is not None:
                writer.close()

    async def ready(self) -> emcache.Client:
        """The client to send commands with; after a failure, only once the server answers again.

        :raises ProviderUnavailableError: if the server is (still) down.
        """
        client = self.client
        if client is not None and not self.down:
            return client
        if self.down:
            await self.probe()  # fails fast while the server is still down
            await self.close()
        self.client = await emcache.create_client(
            [self.spec.address()],
            timeout=self.timeout,
            connection_timeout=self.timeout,
            max_connections=self.max_connections,
            min_connections=1,
            purge_unhealthy_nodes=False,
        )
        self.down = False
        return self.client

    def unavailable(self, exc: BaseException) -> ProviderUnavailableError:
        """Mark the server down and say so, naming it."""
        self.down = True
        what = "did not answer in time" if isinstance(exc, TimeoutError) else f"failed: {exc!r:.120}"
        return ProviderUnavailableError(
            f"memcached at {self.name} is unreachable ({what}); the session store is unavailable, "
            "retry when memcached is back"
        )

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.close()
            except Exception as exc:  # pragma: no cover - closing a broken client
                log.debug("memcache: closing the client of %s failed: %s", self.name, exc)


#: Errors that mean a server could not be used (rather than a refused command).
_DOWN = (OSError, TimeoutError, RuntimeError, emcache.ClusterNoAvailableNodes)


# ---------------------------------------------------------------- batches


class _Group:
    """The messages of one batch segment on one session key (see :meth:`MemcacheProvider.handle_batch`)."""

    __slots__ = ("deletes", "key", "peeks", "reads", "sid", "writes")

    def __init__(self, sid: str, key: bytes) -> None:
        self.sid = sid
        self.key = key
        self.reads: list[int] = []
        self.peeks: list[int] = []
        self.writes: list[tuple[int, Release]] = []
        self.deletes: list[int] = []

    def accepts(self, kind: str) -> bool:
        """True if a message of *kind* may join without changing what the others see."""
        if self.writes:
            return kind == "write"
        if self.deletes:
            return kind == "delete"
        return kind in ("read", "peek")  # reads and exists only look


#: What a message does to its session's item, by the message's ``kind``; other kinds run alone.
_KINDS: dict[str, str] = {"read": "read", "exist": "peek", "release": "write", "destroy": "delete"}


def _chunks(keys: Sequence[bytes]) -> Iterable[Sequence[bytes]]:
    for i in range(0, len(keys), _MULTI_CHUNK):
        yield keys[i : i + _MULTI_CHUNK]


class MemcacheProvider(BatchVerbs):
    """Sessions in memcached items, written by compare-and-swap, batches as multi-key commands.

    The verbs send their message as a batch of one: read is ``gat`` (``None``
    if missing; the expiry is reset), exist is ``gets`` (no refresh),
    regenerate copies the item to the new key with ``add`` and retires the old
    one with ``cas`` then ``delete``, destroy is ``delete`` (a missing item is
    fine), release is the ``gets`` + ``cas`` loop (see the module docs). GC
    is a no-op and :meth:`session_all` raises :class:`CannotCountError`.

    Attributes useful to tests and dashboards: :attr:`commands` (memcached
    commands sent, one network round trip each) and :attr:`cas_conflicts`.
    """

    inline_when_idle = True

    extra = "memcache"

    def __init__(self) -> None:
        super().__init__()
        self.memcache_config = MemcacheConfig()
        #: Prefix of every session key.
        self.key_prefix = "gosession:"
        self._servers: list[_Server] = []
        #: memcached commands sent since init (each one round trip to one server).
        self.commands = 0
        #: ``cas``/``add`` attempts that lost a race and were retried.
        self.cas_conflicts = 0

    # ------------------------------------------------------------ setup

    @classmethod
    def configure_manager(cls, config: ManagerConfig) -> ManagerConfig:
        """Check ``provider_config`` and the key prefix when the manager is built (fail early)."""
        cfg = parse_memcache_config(config.provider_config)
        check_key_prefix(cfg.key_prefix if cfg.key_prefix is not None else config.key_prefix)
        return config

    def _timeout(self) -> float:
        """Deadline of one memcached command, seconds: 0.4 x ``provider_timeout``."""
        timeout = getattr(self.manager_config, "provider_timeout", None)
        return 0.4 * (float(timeout) if timeout else 5.0)

    async def session_init(self, max_lifetime: int, config: Any) -> None:
        """Parse *config*, check that every server answers ``version``, and build the clients.

        :raises ConfigError: for a bad ``provider_config`` or key prefix.
        :raises ProviderUnavailableError: naming a server that does not answer
            (``start()`` may be called again later).
        """
        cfg = parse_memcache_config(config)
        prefix = cfg.key_prefix
        if prefix is None:
            prefix = getattr(self.manager_config, "key_prefix", None) or "gosession:"
        self.key_prefix = check_key_prefix(prefix)
        self.memcache_config = cfg
        timeout = self._timeout()
        servers = [_Server(spec, cfg.max_connections, timeout) for spec in cfg.servers]
        await asyncio.gather(*(server.probe() for server in servers))
        for server in servers:
            await server.ready()
        self._servers = servers

    async def session_close(self) -> None:
        for server in self._servers:
            await server.close()

    # ------------------------------------------------------------ keys and servers

    def key(self, sid: str) -> bytes:
        """The memcached key of session *sid*: :attr:`key_prefix` + *sid*.

        :raises ValueError: for an id that cannot be part of a memcached key.
        """
        if not isinstance(sid, str) or not sid or not sid.isascii() or not sid.isprintable() or " " in sid:
            raise ValueError(f"session id {sid!r:.40} cannot be a memcached key")
        key = (self.key_prefix + sid).encode()
        if len(key) > MAX_KEY_LENGTH:
            raise ValueError(f"session key of {len(key)} bytes is over memcached's {MAX_KEY_LENGTH}")
        return key

    def server_for(self, sid: str) -> MemcacheServer:
        """The server that holds session *sid* (rendezvous hashing; stable across processes)."""
        return self._server_for(sid).spec

    def _server_for(self, sid: str) -> _Server:
        servers = self._servers
        if not servers:
            raise ProviderUnavailableError("the memcache session provider is not started (or closed)")
        if len(servers) == 1:
            return servers[0]
        raw = sid.encode()
        best, best_weight = servers[0], b""
        for server in servers:
            weight = hashlib.blake2b(server.seed + raw, digest_size=8).digest()
            if weight > best_weight:
                best, best_weight = server, weight
        return best

    # ------------------------------------------------------------ envelope

    def _decode(self, sid: str, value: bytes | None) -> tuple[SessionData, int] | None:
        """``(data, lifetime)`` of a stored item, or ``None`` if missing, retired or corrupt (logged)."""
        if value is None or value == TOMBSTONE:
            return None
        try:
            record = codec.decode(value)
            data = record["data"]
            lifetime = record.get("lifetime", self.max_lifetime)
            if not isinstance(data, dict) or isinstance(lifetime, bool) or not isinstance(lifetime, int):
                raise ValueError("unexpected record layout")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("memcache session %s…: undecodable item treated as missing: %s", sid[:6], exc)
            return None
        return data, lifetime

    @staticmethod
    def _encode(data: SessionData, lifetime: int) -> bytes:
        return codec.encode({"data": data, "lifetime": lifetime})

    # ------------------------------------------------------------ commands

    async def _command(self, server: _Server, call: Awaitable[_T]) -> _T:
        """Await one emcache command on *server*; a connection failure marks it down.

        :raises ProviderUnavailableError: if the server failed or timed out.
        :raises emcache.CommandError: as emcache raises it, for a refused command.
        """
        self.commands += 1
        try:
            return await call
        except _DOWN as exc:
            raise server.unavailable(exc) from exc

    async def _gather(self, calls: Sequence[Awaitable[_T]]) -> list[_T | BaseException]:
        """Await *calls* concurrently; each outcome is its result or its exception."""
        if len(calls) == 1:
            try:
                return [await calls[0]]
            except Exception as exc:
                return [exc]
        results: list[_T | BaseException] = await asyncio.gather(*calls, return_exceptions=True)
        for result in results:  # a cancellation of the batch goes on up
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        return results

    async def _fetch(
        self, server: _Server, client: emcache.Client, keys: Sequence[bytes], touch: int | None
    ) -> dict[bytes, emcache.Item]:
        """``gets`` (or ``gat`` with expiry *touch*) of *keys* on *server*: one command per chunk."""
        found: dict[bytes, emcache.Item] = {}
        for chunk in _chunks(keys):
            if touch is None:
                found.update(await self._command(server, client.gets_many(chunk)))
            else:
                # emcache's Client base class annotates gats_many as Optional[Item]; it returns a dict
                touched = await self._command(server, client.gats_many(touch, chunk))
                found.update(cast("dict[bytes, emcache.Item]", touched))
        return found

    # ------------------------------------------------------------ batches

    async def _run_one(self, message: Message) -> Any:
        (outcome,) = await self.handle_batch([message])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def handle_batch(self, messages: Sequence[Message]) -> list[Any]:
        """Answer every drained message; reads, exists, releases and destroys share commands.

        The batch is cut into segments in which no session has both a
        writing message (release, destroy) and any other kind; each segment
        runs as multi-key commands per server (see the module docs), so the
        messages keep their order per session. Regenerate, ``All`` and the
        lifecycle messages run alone, in order. Each message gets its own
        outcome: a value that cannot be serialized fails only its release, a
        server that is down only the messages of its sessions.
        """
        outcomes: list[Any] = [None] * len(messages)
        groups: dict[str, _Group] = {}
        for index, message in enumerate(messages):
            if isinstance(message, GC):
                continue  # memcached expires items itself
            kind = _KINDS.get(message.kind)
            if kind is None:
                await self._run_segment(groups, outcomes)
                try:
                    outcomes[index] = await self._alone(message)
                except Exception as exc:
                    outcomes[index] = exc
                continue
            sid: str = getattr(message, "sid", "")
            try:
                key = self.key(sid)
                if isinstance(message, Release):
                    message.changes.encoded_items()  # raises TypeError if a value cannot be stored
            except (ValueError, TypeError) as exc:
                outcomes[index] = exc
                continue
            group = groups.get(sid)
            if group is not None and not group.accepts(kind):
                await self._run_segment(groups, outcomes)
                group = None
            if group is None:
                group = groups[sid] = _Group(sid, key)
            if kind == "read":
                group.reads.append(index)
            elif kind == "peek":
                group.peeks.append(index)
            elif isinstance(message, Release):
                group.writes.append((index, message))
            else:
                group.deletes.append(index)
        await self._run_segment(groups, outcomes)
        return outcomes

    async def _alone(self, message: Message) -> Any:
        """A message that runs on its own: regenerate, ``All``, init, close."""
        return await self.dispatch(message)

    async def _run_segment(self, groups: dict[str, _Group], outcomes: list[Any]) -> None:
        """Run the *groups* of one segment (then empty it): per server, all servers concurrently."""
        if not groups:
            return
        by_server: dict[_Server, list[_Group]] = {}
        try:
            for group in groups.values():
                by_server.setdefault(self._server_for(group.sid), []).append(group)
        except ProviderUnavailableError as exc:
            for group in groups.values():
                self._fail_group(group, exc, outcomes)
            groups.clear()
            return
        groups.clear()
        runs = list(by_server.items())
        results = await self._gather([self._run_on_server(server, batch, outcomes) for server, batch in runs])
        for (server, batch), result in zip(runs, results):
            if isinstance(result, BaseException):  # a bug, not a store error: never report success
                log.error("memcache: a batch on %s failed unexpectedly", server.name, exc_info=result)
                for group in batch:
                    self._fail_group(group, result, outcomes)

    @staticmethod
    def _fail_group(group: _Group, exc: BaseException, outcomes: list[Any]) -> None:
        for index in group.reads + group.peeks + group.deletes:
            outcomes[index] = exc
        for index, _ in group.writes:
            outcomes[index] = exc

    async def _run_on_server(self, server: _Server, groups: list[_Group], outcomes: list[Any]) -> None:
        """One segment's groups that live on *server*; every error lands in *outcomes*."""
        try:
            client = await server.ready()
        except Exception as exc:
            for group in groups:
                self._fail_group(group, exc, outcomes)
            return
        read_keys = [g.key for g in groups if g.reads]
        fetch_keys = [g.key for g in groups if g.peeks or g.writes]
        calls: list[Awaitable[dict[bytes, emcache.Item]]] = []
        if read_keys:
            calls.append(self._fetch(server, client, read_keys, _exptime(self.max_lifetime)))
        if fetch_keys:
            calls.append(self._fetch(server, client, fetch_keys, None))
        fetched = await self._gather(calls)
        read_items = fetched.pop(0) if read_keys else {}
        peek_items = fetched.pop(0) if fetch_keys else {}

        # the second step's commands, each with the groups whose outcomes it settles
        second: list[tuple[Awaitable[None], list[_Group]]] = []
        for group in groups:
            if group.reads:
                if isinstance(read_items, BaseException):
                    for index in group.reads:
                        outcomes[index] = read_items
                else:
                    lifetime = self._answer_reads(group, read_items.get(group.key), outcomes)
                    if lifetime is not None:  # gat set max_lifetime: touch it back to its own
                        second.append((self._retouch(server, client, group, lifetime, outcomes), [group]))
            if group.peeks:
                for index in group.peeks:
                    if isinstance(peek_items, BaseException):
                        outcomes[index] = peek_items
                    else:
                        item = peek_items.get(group.key)
                        value = item.value if item is not None else None
                        outcomes[index] = self._decode(group.sid, value) is not None
            if group.deletes:
                second.append((self._delete(server, client, group, outcomes), [group]))
        writes = [g for g in groups if g.writes]
        if writes:
            if isinstance(peek_items, BaseException):
                for group in writes:
                    self._fail_group(group, peek_items, outcomes)
            else:
                second.append((self._write(server, client, writes, peek_items, outcomes), writes))
        if second:
            results = await self._gather([call for call, _ in second])
            for (_, affected), result in zip(second, results):
                if isinstance(result, BaseException):  # a bug, not a store error: never report success
                    log.error("memcache: a command on %s failed unexpectedly", server.name, exc_info=result)
                    for group in affected:
                        self._fail_group(group, result, outcomes)

    def _answer_reads(self, group: _Group, item: emcache.Item | None, outcomes: list[Any]) -> int | None:
        """Set the reads' outcomes; the session's lifetime if it is not ``max_lifetime``, else ``None``."""
        decoded = self._decode(group.sid, item.value if item is not None else None)
        if decoded is None:
            for index in group.reads:
                outcomes[index] = None
            return None
        data, lifetime = decoded
        outcomes[group.reads[0]] = data
        for index in group.reads[1:]:  # each caller gets a dict of its own
            again = self._decode(group.sid, item.value if item is not None else None)
            outcomes[index] = again[0] if again is not None else None
        return None if lifetime == self.max_lifetime else lifetime

    async def _retouch(
        self, server: _Server, client: emcache.Client, group: _Group, lifetime: int, outcomes: list[Any]
    ) -> None:
        """``touch`` a read session back to its own *lifetime* (``gat`` set ``max_lifetime``)."""
        try:
            await self._command(server, client.touch(group.key, _exptime(lifetime)))
        except emcache.NotFoundCommandError:
            pass  # destroyed meanwhile: the read stays what it was
        except Exception as exc:
            for index in group.reads:
                outcomes[index] = exc

    async def _delete(
        self, server: _Server, client: emcache.Client, group: _Group, outcomes: list[Any]
    ) -> None:
        try:
            await self._command(server, client.delete(group.key))
        except emcache.NotFoundCommandError:
            pass  # already gone: fine
        except Exception as exc:
            for index in group.deletes:
                outcomes[index] = exc

    async def _write(
        self,
        server: _Server,
        client: emcache.Client,
        groups: list[_Group],
        items: dict[bytes, emcache.Item],
        outcomes: list[Any],
    ) -> None:
        """The ``cas`` loop for every released session of a segment on *server*.

        Each round computes every pending session's new value from the item
        last fetched and sends the ``cas``/``add``/``touch`` writes together;
        the sessions whose write lost a race are fetched again (one ``gets``)
        for the next round, after a short random pause, at most
        ``cas_retries`` times.
        """
        pending = groups
        retries = self.memcache_config.cas_retries
        attempt = 0
        while True:
            writes: list[Awaitable[bool]] = []
            waiting: list[_Group] = []
            for group in pending:
                write = self._write_one(server, client, group, items.get(group.key), outcomes)
                if write is not None:
                    writes.append(write)
                    waiting.append(group)
            results = await self._gather(writes)
            lost: list[_Group] = []
            for group, result in zip(waiting, results):
                if result is True:
                    for index, _ in group.writes:
                        outcomes[index] = None
                elif result is False:
                    lost.append(group)
                else:
                    self._fail_group(group, result, outcomes)
            if not lost:
                return
            self.cas_conflicts += len(lost)
            attempt += 1
            if attempt > retries:
                for group in lost:
                    self._fail_group(
                        group,
                        CasConflictError(
                            f"memcache session {group.sid[:6]}…: gave up after {retries} retries, other "
                            "processes kept changing it between gets and cas (raise cas_retries if this "
                            "is normal load); nothing was written"
                        ),
                        outcomes,
                    )
                return
            await asyncio.sleep(random.uniform(0, 0.001 * min(attempt, 10)))  # jitter, not security
            try:
                items = await self._fetch(server, client, [g.key for g in lost], None)
            except Exception as exc:
                for group in lost:
                    self._fail_group(group, exc, outcomes)
                return
            pending = lost

    def _write_one(
        self,
        server: _Server,
        client: emcache.Client,
        group: _Group,
        item: emcache.Item | None,
        outcomes: list[Any],
    ) -> Awaitable[bool] | None:
        """The write that applies *group*'s releases to *item*, or ``None`` if there is none.

        The releases apply in order to the stored data: one that may not
        create the session is dropped while it is missing. The write answers
        True (stored), False (lost a race: fetch and try again), or raises.
        """
        current = self._decode(group.sid, item.value if item is not None else None)
        data: SessionData | None = None
        lifetime = 0
        if current is not None:
            data, lifetime = current
        stored_lifetime = lifetime
        changed = False
        for _, release in group.writes:
            changes: Changes = release.changes
            if data is None:
                if not changes.create:
                    continue  # destroyed or expired meanwhile: never resurrect it
                data = {}
                changed = True
            if not changes.empty:
                changes.apply(data)
                changed = True
            lifetime = release.expiry
        if data is None:  # every release was dropped
            for index, _ in group.writes:
                outcomes[index] = None
            return None
        exptime = _exptime(lifetime)
        if item is not None and item.cas is not None and not changed and lifetime == stored_lifetime:
            return self._touch_write(server, client, group.key, exptime)
        try:
            value = self._encode(data, lifetime)
        except TypeError as exc:
            self._fail_group(group, exc, outcomes)
            return None
        if item is None or item.cas is None:
            return self._store(server, client.add(group.key, value, exptime=exptime), group.sid)
        return self._store(server, client.cas(group.key, value, item.cas, exptime=exptime), group.sid)

    async def _touch_write(self, server: _Server, client: emcache.Client, key: bytes, exptime: int) -> bool:
        """A release that changes nothing: only the expiry; a vanished item is fetched again."""
        try:
            await self._command(server, client.touch(key, exptime))
        except emcache.NotFoundCommandError:
            return False
        return True

    async def _store(self, server: _Server, call: Awaitable[None], sid: str) -> bool:
        """``cas`` or ``add``: True if stored, False if it lost a race (changed, created or gone)."""
        try:
            await self._command(server, call)
        except emcache.NotStoredStorageCommandError:  # cas: EXISTS; add: NOT_STORED
            return False
        except emcache.StorageCommandError as exc:
            if "NOT_FOUND" in str(exc):  # cas on an item deleted or expired meanwhile
                return False
            raise SessionError(
                f"memcached at {server.name} refused to store session {sid[:6]}… ({exc}); a session "
                "over memcached's item size limit (-I, 1 MiB by default) is refused: store less in it"
            ) from None
        return True

    # ------------------------------------------------------------ beego verbs

    async def session_regenerate(self, old_sid: str, sid: str) -> SessionData:
        """Move *old_sid*'s item to *sid*; *old_sid* stops existing.

        ``gets`` the old item, ``add``\\s its value under the new key (a live
        new key is an error, unless the old one is gone: then the call is a
        retry that already moved it), then retires the old key with ``cas``
        (so an update that landed on it meanwhile is copied again first) and
        deletes it. Not atomic: see the docs page. A missing old session gives
        a new empty one.

        :raises ProviderUnavailableError: if a server is down.
        :raises SessionError: if *sid* already names a live session.
        """
        old_key, new_key = self.key(old_sid), self.key(sid)
        old_server, new_server = self._server_for(old_sid), self._server_for(sid)
        old_client = await old_server.ready()
        new_client = await new_server.ready()
        retries = self.memcache_config.cas_retries
        for attempt in range(retries + 1):
            item = await self._command(old_server, old_client.gets(old_key))
            current = self._decode(old_sid, item.value if item is not None else None)
            if current is None or item is None or item.cas is None:
                return await self._regenerate_missing(new_server, new_client, sid, new_key)
            data, lifetime = current
            exptime = _exptime(lifetime)
            if attempt == 0:
                try:
                    await self._command(new_server, new_client.add(new_key, item.value, exptime=exptime))
                except emcache.NotStoredStorageCommandError:
                    raise SessionError(
                        "regenerate: the new session id already names a live session"
                    ) from None
            else:  # the new key is ours since the add: bring it up to date
                await self._command(new_server, new_client.set(new_key, item.value, exptime=exptime))
            if await self._store(
                old_server,
                old_client.cas(old_key, TOMBSTONE, item.cas, exptime=_TOMBSTONE_SECONDS),
                old_sid,
            ):
                try:
                    await self._command(old_server, old_client.delete(old_key))
                except Exception as exc:  # the tombstone reads as missing and expires anyway
                    log.debug("memcache: deleting a regenerated session's old key failed: %s", exc)
                return data
            self.cas_conflicts += 1
        raise CasConflictError(
            f"memcache regenerate of session {old_sid[:6]}…: gave up after {retries} retries, other "
            "processes kept changing it"
        )

    async def _regenerate_missing(
        self, server: _Server, client: emcache.Client, sid: str, key: bytes
    ) -> SessionData:
        """Regenerate of a missing old session: an empty new one, or what a finished move left."""
        exptime = _exptime(self.max_lifetime)
        try:
            await self._command(server, client.add(key, self._encode({}, self.max_lifetime), exptime=exptime))
        except emcache.NotStoredStorageCommandError:
            item = await self._command(server, client.get(key))  # a retried call that already moved it
            current = self._decode(sid, item.value if item is not None else None)
            return current[0] if current is not None else {}
        return {}

    async def session_all(self) -> int:
        """memcached cannot count sessions.

        :raises CannotCountError: always (a :class:`~gosession_tornado.errors.SessionError`).
        """
        raise CannotCountError(
            "memcached cannot count sessions: it has no command that lists or counts the keys under "
            "a prefix, so get_active_sessions() is not available with the memcache provider (its "
            "'curr_items' stat counts every item in the cache, not live sessions)"
        )

    async def session_gc(self) -> None:
        """No-op: memcached drops expired items itself."""
