"""The ``redis_cluster`` provider: the ``redis`` provider's hashes, spread over a Redis Cluster.

Needs the ``[redis]`` extra; the client is :class:`redis.asyncio.cluster.RedisCluster`.
Everything the ``redis`` provider does per session (one hash, delta releases in
one Lua script, TTL refreshed on access, batches pipelined) holds unchanged,
because every one of those commands touches a single key. What differs:

Keys and slots
    Session *sid* lives in the hash ``<key_prefix>{<sid>}``. The braces are a
    Redis Cluster *hash tag*: the slot is ``CRC16(sid) mod 16384``, so sessions
    spread evenly over the masters, and any helper key named
    ``<key_prefix>{<sid>}...`` lives in the same slot as the session. A
    ``key_prefix`` containing ``{`` or ``}`` is refused (it would change the tag).

Regenerate
    The old and the new id hash to different slots (usually on different
    nodes), so one ``RENAME`` or one script cannot span them: Redis refuses that
    with ``CROSSSLOT``, and beego's cluster provider failed there. This
    provider never sends a command with keys in two slots. It moves a session
    in three steps, each one an atomic script on one slot:

    1. on the old slot: ``RENAME <p>{old}`` to the hand-over key
       ``<p>{old}:regenerating:<new>`` (same slot) and give it a short TTL,
       returning its fields. From this instant the old id reads as missing, and
       a release for it is dropped, exactly as after the ``redis`` provider's
       ``RENAME``;
    2. on the new slot: write those fields to ``<p>{new}`` (unless it already
       exists: then this is a repeat of the same move and its data is returned)
       and set the session's TTL;
    3. on the old slot: delete the hand-over key.

    What holds: the old id stops serving data at step 1, before the new id
    exists, so the two are never live together; a failure before step 2
    completes (the new id's node down) renames the hand-over key back, so the
    call fails with :class:`~gosession_tornado.errors.ProviderUnavailableError`
    and the session stays usable under its old id; a failure of step 3 is only
    logged (the hand-over key expires by itself after
    :attr:`RedisClusterProvider.handover_ttl` seconds and is never read as a
    session). What a cluster cannot give: another process reading the old id
    between steps 1 and 2 sees no session (it gets a fresh one, as it would
    after the move), and a regenerate cut off by ``provider_timeout`` between
    the steps, or whose old node dies right after step 1, loses that session
    (neither id works; no data leaks).

Batching
    A drained batch is grouped by the node that owns each key, and every group
    is sent as **one pipeline to its node**; the groups go out concurrently. A
    batch of *n* messages therefore costs at most one round trip per master,
    not *n*. :attr:`RedisClusterProvider.round_trips` counts node pipelines.

Failure
    A node that is down or unreachable fails only the messages for sessions in
    its slots, with :class:`~gosession_tornado.errors.ProviderUnavailableError`
    (the mixin answers 503); sessions on the other masters keep working (if the
    servers run with ``cluster-require-full-coverage no`` or the dead master
    has a replica that takes over). After a node failure the slot map is
    fetched again in the background (at most once per second; no batch waits
    for it), so a promoted replica is found; scripts a restarted node forgot
    are loaded again (``NOSCRIPT`` retry). The refresh asks the node that
    failed last only after the others and takes at most 0.15 x ``provider_timeout``.

Per-node circuits (fail fast)
    Each node's pipeline of a batch may take at most :attr:`RedisClusterProvider.node_deadline`
    (0.3 x ``provider_timeout``, at least 0.1 s); the healthy nodes' results of
    the batch are never held longer than that. A node that misses it (it
    hangs: accepts connections, never answers), refuses the connection or
    drops it has its **circuit opened**: from then on every call for its slots
    fails at once with ``ProviderUnavailableError``, without touching the
    network, and the other masters' sessions are served as if nothing
    happened. In the background a probe waits first 0.25 s, then sends a
    ``PING`` on a connection of its own and waits up to
    :attr:`RedisClusterProvider.circuit_cap` (2 s) for the answer; a failed
    probe doubles the period (0.25, 0.5, 1, 2, 2 ... s). The first answer
    closes the circuit: a hung node that resumes answers the pending probe
    at once, so its sessions are served again within milliseconds; a
    restarted node within one period. The node's pooled connections are
    dropped then (a restarted node's are dead). A node that leaves the slot
    map (its replica was promoted) is no longer probed.

``provider_config`` forms: see :func:`parse_cluster_config`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from redis import exceptions as rexc
from redis.asyncio.cluster import ClusterNode, NodesManager, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..._log import get_logger
from ...errors import ConfigError, ProviderUnavailableError
from ...provider import Message, Regenerate, SessionData
from ...values import fail, join_host_port, normalize_key
from .config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    RedisConfig,
    _from_mapping,
    parse_addr,
    parse_forms,
    parse_redis_config,
)
from .provider import (
    _CHUNK,
    _LUA_META,
    _SCAN_COUNT,
    SCRIPTS,
    RedisProvider,
    _glob_escape,
    _Op,
    may_repeat,
)

__all__ = ["ClusterConfig", "NodeCircuit", "NodeHungError", "RedisClusterProvider", "parse_cluster_config"]

log = get_logger("gosession_tornado.redis_cluster")

_WHAT = "redis_cluster provider_config"
_ITEM = f"{_WHAT} item"

#: Seconds between two slot-map refreshes after node failures.
_REFRESH_INTERVAL = 1.0
#: Share of ``provider_timeout`` a slot-map refresh may take: a node that hangs (it accepts
#: connections but never answers) must not hold the batch past ``provider_timeout``.
_REFRESH_BUDGET = 0.15
#: redis-py >= 5.3 can ask the node that failed last only after the others.
_DEFERS_FAILED_NODE = "last_failed_node_name" in inspect.signature(NodesManager.initialize).parameters

#: Share of ``provider_timeout`` one node's pipeline may take before the node counts as hung
#: (its messages fail and its circuit opens); at least 0.1 s, at most 0.8 x ``provider_timeout``.
_NODE_DEADLINE = 0.3
#: Seconds a circuit stays open before its first probe; the period doubles after each failed
#: probe, up to :data:`_CIRCUIT_CAP`.
_CIRCUIT_FIRST = 0.25
#: Longest period between two probes of a node, and longest a probe waits for its PONG.
_CIRCUIT_CAP = 2.0


# ---------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Startup nodes plus the connection options shared by every node. Times in seconds."""

    #: ``(host, port)`` of each startup node; the client discovers the rest.
    nodes: tuple[tuple[str, int], ...] = ((DEFAULT_HOST, DEFAULT_PORT),)
    #: Password, pool size (per node), TLS, timeouts, key prefix ... (``host``/``port``/``db`` unused).
    options: RedisConfig = dataclasses.field(default_factory=RedisConfig)

    @property
    def location(self) -> str:
        """``cluster host:port,host:port`` for messages."""
        return "cluster " + ",".join(join_host_port(h, p) for h, p in self.nodes)


_NODE_ITEM = re.compile(r"^\s*(\[[^\]]*\]|[^\s:/@,;\[\]]*):\d+\s*$")
#: Normalized dict keys (lowercase, no ``_``/``-``) that name startup nodes.
_NODE_KEYS = ("addr", "address", "savepath", "conn", "host", "addrs", "startupnodes", "nodes")


def _parse_nodes(items: Sequence[Any], key: str, default_port: int | None = None) -> list[tuple[str, int]]:
    nodes: list[tuple[str, int]] = []
    for item in items:
        if not isinstance(item, str):
            raise fail(_ITEM, key, f"must list 'host:port' strings, got {type(item).__name__} {item!r}")
        text = item.strip()
        if not text:
            continue
        host, port, path = parse_addr(text, key)
        if path is not None:
            problem = f"names the socket {text!r}: Redis Cluster needs TCP 'host:port' nodes"
            raise fail(_ITEM, key, problem)
        if default_port is not None and not re.search(r"(^|\]|[^:\]]):\d+$", text):
            port = default_port
        nodes.append((host, port))
    return nodes


def _check(options: RedisConfig, nodes: list[tuple[str, int]]) -> ClusterConfig:
    if options.unix_socket_path:
        raise ConfigError(
            f"{_WHAT}: Redis Cluster needs TCP 'host:port' nodes, not a Unix socket", key="addr"
        )
    if options.db != 0:
        raise fail(_ITEM, "dbnum", f"is {options.db}: a Redis Cluster has only database 0")
    unique = tuple(dict.fromkeys(nodes)) or ((DEFAULT_HOST, DEFAULT_PORT),)
    return ClusterConfig(nodes=unique, options=options)


_DEFAULTS = RedisConfig()


def _from_urls(text: str) -> tuple[list[tuple[str, int]], RedisConfig]:
    urls = [u.strip() for u in re.split(r"[,;]", text) if u.strip()]
    nodes: list[tuple[str, int]] = []
    first: RedisConfig | None = None
    for url in urls:
        if not re.match(r"^rediss?://", url, re.IGNORECASE):
            raise ConfigError(
                f"{_WHAT}: every node of a URL list must be a redis:// or rediss:// URL, got {url!r}",
                key="url",
            )
        cfg = parse_redis_config(url)
        nodes.append((cfg.host, cfg.port))
        shared = dataclasses.replace(cfg, host=DEFAULT_HOST, port=DEFAULT_PORT)
        if first is None:
            first = shared
            continue
        # Options may be written on any URL (or all); two different values conflict.
        for field in dataclasses.fields(RedisConfig):
            value, have = getattr(shared, field.name), getattr(first, field.name)
            if value == have or value == getattr(_DEFAULTS, field.name):
                continue
            if have != getattr(_DEFAULTS, field.name):
                raise ConfigError(
                    f"{_WHAT}: the node URLs disagree on {field.name} ({url!r}); every "
                    "node of a cluster takes the same options",
                    key="url",
                )
            first = dataclasses.replace(first, **{field.name: value})
    assert first is not None
    return nodes, first


def _from_mapping_form(raw: Mapping[Any, Any]) -> ClusterConfig:
    rest: dict[str, Any] = {}
    node_values: list[tuple[str, Any]] = []
    url: Any = None
    port: Any = None
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{_WHAT} keys must be strings, got {key!r}")
        norm = normalize_key(key)
        if norm in _NODE_KEYS:
            node_values.append((key, value))
        elif norm == "url":
            url = value
        elif norm == "port":
            port = value
        else:
            rest[key] = value
    nodes: list[tuple[str, int]] = []
    base: RedisConfig | None = None
    if url is not None:
        if not isinstance(url, str):
            raise fail(_ITEM, "url", f"must be a redis:// URL string, got {url!r}")
        nodes, base = _from_urls(url)
    default_port: int | None = None
    if port is not None:
        default_port = _from_mapping({"port": port}).port
    for key, value in node_values:
        if isinstance(value, str):
            items: list[Any] = re.split(r"[,;]", value)
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            expected = "must be 'host:port;host:port' or a list of 'host:port'"
            raise fail(_ITEM, key, f"{expected}, got {type(value).__name__} {value!r}")
        nodes.extend(_parse_nodes(items, key, default_port))
    if default_port is not None and not node_values and not nodes:
        nodes = [(DEFAULT_HOST, default_port)]
    options = _from_mapping(rest, base)
    return _check(options, nodes)


def _from_url_form(text: str) -> ClusterConfig:
    nodes, options = _from_urls(text)
    return _check(options, nodes)


def _from_comma_form(text: str) -> ClusterConfig:
    items = text.split(",")
    first = items.pop(0)
    node_items = first.split(";")
    while items and _NODE_ITEM.match(items[0]):
        node_items.append(items.pop(0))
    nodes = _parse_nodes(node_items, "addr")
    # The remaining items are beego's positions 2.. (poolsize, password, dbnum, ...).
    options = parse_redis_config(",".join(["", *items])) if items else RedisConfig()
    return _check(options, nodes)


def parse_cluster_config(config: Any) -> ClusterConfig:
    """Parse the ``redis_cluster`` provider's ``provider_config``.

    Accepted forms (an empty config means the startup node ``127.0.0.1:6379``):

    * **beego's form** ``"host:port;host:port,poolsize,password,dbnum,idle_timeout,
      idle_check_frequency,max_retries"``: startup nodes separated by ``;`` in
      the first comma item, then the ``redis`` provider's positions.
    * **a comma list of nodes** ``"host:port,host:port"``, optionally followed by
      the same positions (``"h1:7000,h2:7001,50,secret"``): leading items of the
      shape ``host:port`` are nodes.
    * **redis:// URLs**, one per node, separated by ``,``
      (``"redis://:pw@h1:7000,redis://h2:7001"``); options (password, query
      parameters) written on any of them apply to every node, and two URLs
      that give one option different values are refused.
    * **a dict or JSON object** with ``startup_nodes`` / ``nodes`` / ``addrs`` /
      ``addr`` / ``save_path`` (a list of ``"host:port"`` or a string separated
      by ``,`` or ``;``), an optional ``port`` default, a ``url`` list, and the
      ``redis`` provider's other keys (``password``, ``poolsize``, ``ssl`` ...).

    ``poolsize`` is per node. ``dbnum`` must be 0 (a cluster has one database).

    :raises ConfigError: naming the bad item.
    """
    forms = '"host:port;host:port,poolsize,password", redis:// URLs or JSON'
    return parse_forms(
        config, _WHAT, forms, default=ClusterConfig, mapping=_from_mapping_form, url=_from_url_form,
        comma=_from_comma_form,
    )


# ---------------------------------------------------------------- scripts (EVAL: used rarely)

# KEYS[1] = old session key, KEYS[2] = hand-over key (same slot); ARGV[1] = hand-over TTL (s).
# Returns the flat HGETALL of the hand-over key, or nil if there is no session to move.
_TAKE = """
local old, handover = KEYS[1], KEYS[2]
if redis.call('EXISTS', old) == 1 then
  redis.call('RENAME', old, handover)
  redis.call('EXPIRE', handover, ARGV[1])
elseif redis.call('EXISTS', handover) == 0 then
  return false
end
return redis.call('HGETALL', handover)
"""

# KEYS[1] = new session key; ARGV[1] = default lifetime (s), then field/value pairs.
# Returns the flat HGETALL of the new key.
_PUT = f"""
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then
  local n = #ARGV
  local i = 2
  while i <= n do
    local j = math.min(i + {2 * _CHUNK - 1}, n)
    redis.call('HSET', key, unpack(ARGV, i, j))
    i = j + 1
  end
  if redis.call('HEXISTS', key, {_LUA_META}) == 0 then
    redis.call('HSET', key, {_LUA_META}, ARGV[1])
  end
end
local lifetime = redis.call('HGET', key, {_LUA_META}) or ARGV[1]
redis.call('EXPIRE', key, lifetime)
return redis.call('HGETALL', key)
"""

# KEYS[1] = old session key, KEYS[2] = hand-over key. Puts the session back under its old id.
_UNDO = f"""
local old, handover = KEYS[1], KEYS[2]
if redis.call('EXISTS', handover) == 1 and redis.call('EXISTS', old) == 0 then
  redis.call('RENAME', handover, old)
  local lifetime = redis.call('HGET', old, {_LUA_META})
  if lifetime then redis.call('EXPIRE', old, lifetime) end
  return 1
end
return 0
"""


def _command_key(args: Sequence[Any]) -> Any:
    """The key that routes one command (the first key of a script)."""
    name = str(args[0]).upper()
    if name in ("EVAL", "EVALSHA"):
        if int(args[2]) < 1:
            raise ValueError(f"{name} without keys cannot be routed in a cluster")
        return args[3]
    return args[1]


class NodeHungError(TimeoutError):
    """A node did not answer within the provider's per-node deadline (``node_deadline``)."""

    def __init__(self, node: str, deadline: float) -> None:
        super().__init__(f"no answer from {node} within {deadline:g} s")
        self.node = node


def _node_failed(exc: BaseException) -> bool:
    """True for an error that means the node itself is down or hung (its circuit opens).

    A refused or dropped connection, a timeout, a node still loading its data.
    Not a full connection pool (the node is fine, this process is busy) and
    not an error the node answered (``CLUSTERDOWN`` and the like).
    """
    if isinstance(exc, rexc.MaxConnectionsError):
        return False
    return isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError, TimeoutError, OSError))


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Done callback of an abandoned node pipeline: its outcome is not needed (and not logged)."""
    if not task.cancelled():
        task.exception()


class NodeCircuit:
    """The open circuit of one cluster node: its sessions fail at once while it exists.

    Made by the first failure of the node (a refused connection, or no
    answer within the provider's ``node_deadline``); removed when a probe
    (a ``PING`` on a connection of its own) is answered.
    """

    __slots__ = ("name", "node", "period", "probe", "probes", "reason", "since")

    def __init__(self, node: ClusterNode, reason: str) -> None:
        self.node = node
        self.name: str = node.name
        self.reason = reason
        self.since = time.monotonic()
        #: Seconds until the next probe (doubles after each failed one, up to the provider's cap).
        self.period = _CIRCUIT_FIRST
        self.probes = 0
        self.probe: asyncio.Task[None] | None = None


# ---------------------------------------------------------------- provider


class RedisClusterProvider(RedisProvider):
    """Sessions in a Redis Cluster: hash-tagged keys, per-node pipelines, CROSSSLOT-free regenerate.

    Storage, expiry and release semantics are those of
    :class:`~gosession_tornado.providers.redis.provider.RedisProvider`; see the module
    documentation for keys, regenerate, batching and failure behaviour.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cluster: RedisCluster | None = None
        self.cluster_config = ClusterConfig()
        #: Seconds a hand-over key of an interrupted regenerate lives (set from ``provider_timeout``).
        self.handover_ttl = 60
        self._stale = False
        self._next_refresh = 0.0
        #: Name (``host:port``) of the node that failed last; asked last when refreshing the slot map.
        self._last_failed: str | None = None
        #: The slot-map refresh running in the background (never awaited by a batch, except a retry).
        self._refresh_task: asyncio.Task[None] | None = None
        #: Open circuits, by node name (see :class:`NodeCircuit`).
        self._circuits: dict[str, NodeCircuit] = {}
        #: Seconds one node's pipeline may take before the node counts as hung (set at init).
        self.node_deadline = 1.5
        #: First open period of a circuit, and the cap of its doubling (seconds).
        self.circuit_first = _CIRCUIT_FIRST
        self.circuit_cap = _CIRCUIT_CAP
        #: Circuits opened since init, and calls failed at once because their node's circuit was open.
        self.circuit_trips = 0
        self.fast_failures = 0

    # ------------------------------------------------------------ setup

    def _key_tail(self, sid: str) -> str:
        """``{<sid>}``: the key is ``<key_prefix>{<sid>}``, the sid is the hash tag."""
        if "{" in sid or "}" in sid:
            raise ValueError(f"session id {sid[:40]!r} may not contain braces")
        return f"{{{sid}}}"

    def handover_key(self, old_sid: str, sid: str) -> str:
        """The key holding *old_sid*'s data while it moves to *sid* (the slot of *old_sid*)."""
        return f"{self.key(old_sid)}:regenerating:{sid}"

    def make_cluster_client(self, cfg: ClusterConfig, timeout: float) -> RedisCluster:
        """Build the cluster client. *timeout* is ``provider_timeout`` (s); every wait stays below it.

        ``poolsize`` bounds the connections per node. The client itself never
        retries (its retry would close every node's connections); the
        provider retries a failed node's commands ``max_retries`` times.
        """
        opts = cfg.options
        kwargs = {**self.connection_kwargs(opts, timeout), "retry": Retry(NoBackoff(), 0)}
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in cfg.nodes],
            require_full_coverage=False,
            max_connections=opts.poolsize,
            ssl=opts.ssl,
            **kwargs,
        )

    async def session_init(self, max_lifetime: int, config: Any) -> None:
        """Parse *config*, fetch the slot map and load the Lua scripts on every master.

        :raises ConfigError: for a bad config, a rejected password, or a server
            that is not in cluster mode.
        :raises ProviderUnavailableError: if no startup node can be reached.
        """
        self.max_lifetime = max_lifetime
        cfg = parse_cluster_config(config)
        prefix = self._checked_key_prefix(cfg.options.key_prefix, "redis_cluster", "cluster")
        if "{" in prefix or "}" in prefix:
            raise ConfigError(
                f"redis_cluster key_prefix {prefix!r} may not contain '{{' or '}}': the session id "
                "is the key's hash tag, and braces in the prefix would replace it",
                key="key_prefix",
            )
        self.key_prefix = prefix
        self.cluster_config = cfg
        host, port = cfg.nodes[0]
        self.redis_config = dataclasses.replace(cfg.options, host=host, port=port)
        timeout = self._timeout()
        self.handover_ttl = max(60, 2 * math.ceil(timeout))
        self.node_deadline = min(0.8 * timeout, max(_NODE_DEADLINE * timeout, 0.1))
        self._cluster = client = self.make_cluster_client(cfg, timeout)
        try:
            await client.initialize()
        except (rexc.RedisClusterException, rexc.RedisError, OSError) as exc:
            await self.session_close()
            raise self._init_error(exc) from None
        primaries = client.get_primaries()
        self.round_trips += len(primaries)
        results = await asyncio.gather(
            *(self._bounded(node, self._load_scripts(node)) for node in primaries), return_exceptions=True
        )
        failures = [(n, r) for n, r in zip(primaries, results) if isinstance(r, BaseException)]
        for _, error in failures:
            if isinstance(error, (rexc.AuthenticationError, rexc.AuthorizationError)):
                await self.session_close()
                raise self._init_error(error) from None
        if failures and len(failures) == len(primaries):
            await self.session_close()
            raise self._init_error(failures[0][1]) from None
        for node, error in failures:  # the others serve; this node's sessions fail until it is back
            log.warning("redis cluster node %s: loading the session scripts failed: %s", node.name, error)
            self._stale = True
            if _node_failed(error):
                self._trip(node, error)

    def _init_error(self, exc: BaseException) -> Exception:
        location = self.cluster_config.location
        chain: list[BaseException] = []
        cur: BaseException | None = exc
        while cur is not None and len(chain) < 5:
            chain.append(cur)
            cur = cur.__cause__ or cur.__context__
        text = " ".join(str(e) for e in chain)
        if any(isinstance(e, (rexc.AuthenticationError, rexc.AuthorizationError)) for e in chain) or (
            "WRONGPASS" in text or "NOAUTH" in text or "invalid password" in text.lower()
        ):
            return self._rejected_credentials(exc)
        if "cluster mode is not enabled" in text.lower() or "cluster support disabled" in text.lower():
            return ConfigError(
                f"redis at {location} is not a Redis Cluster (cluster-enabled no); use the "
                "'redis' provider for a single server, or list the cluster's nodes",
                key="addr",
            )
        return self._unavailable(exc)

    async def _load_scripts(self, node: ClusterNode) -> None:
        for script in SCRIPTS:
            await node.execute_command("SCRIPT LOAD", script.source)

    async def session_close(self) -> None:
        """Stop the probes and the slot-map refresh; close the cluster client and every node's connections."""
        tasks = [c.probe for c in self._circuits.values() if c.probe is not None]
        if self._refresh_task is not None:
            tasks.append(self._refresh_task)
        self._circuits.clear()
        self._refresh_task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        client, self._cluster = self._cluster, None
        if client is not None:
            await client.aclose()
        await super().session_close()

    # ------------------------------------------------------------ errors

    _down_hint = "are the cluster nodes running?"

    def _server(self) -> str:
        """``"redis cluster host:port,host:port"`` (the startup nodes), for messages."""
        return f"redis {self.cluster_config.location}"

    def _node_unavailable(self, node: str, exc: BaseException) -> ProviderUnavailableError:
        return ProviderUnavailableError(
            f"redis cluster node {node} is unavailable ({type(exc).__name__}: {exc}); sessions "
            "stored on it fail until it (or a replica) is back; the next request retries."
        )

    def _require_cluster(self) -> RedisCluster:
        if self._cluster is None:
            raise ProviderUnavailableError("the redis_cluster session provider is not connected (closed?)")
        return self._cluster

    # ------------------------------------------------------------ circuits

    @property
    def open_circuits(self) -> dict[str, dict[str, Any]]:
        """The nodes whose circuit is open now: name -> ``reason``, ``open_s``, ``period_s``, ``probes``."""
        now = time.monotonic()
        return {
            name: {"reason": c.reason, "open_s": round(now - c.since, 3), "period_s": c.period,
                   "probes": c.probes}
            for name, c in self._circuits.items()
        }

    def _trip(self, node: ClusterNode, exc: BaseException) -> None:
        """Open *node*'s circuit (if it is not open yet) and start probing it in the background."""
        self._stale = True
        self._last_failed = node.name
        if node.name in self._circuits or self._cluster is None:
            return
        circuit = NodeCircuit(node, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        circuit.period = self.circuit_first
        self._circuits[node.name] = circuit
        self.circuit_trips += 1
        log.warning(
            "redis cluster node %s failed (%s); its sessions fail at once until it answers a PING "
            "(first probe in %g s); the other masters are not affected",
            node.name, circuit.reason, circuit.period,
        )
        circuit.probe = asyncio.ensure_future(self._probe_loop(circuit))
        self._schedule_refresh()

    def _open_error(self, circuit: NodeCircuit) -> ProviderUnavailableError:
        self.fast_failures += 1
        age = time.monotonic() - circuit.since
        return ProviderUnavailableError(
            f"redis cluster node {circuit.name} is unavailable (it failed {age:.1f} s ago: "
            f"{circuit.reason}); its sessions fail at once until it answers again (probed every "
            f"{self.circuit_cap:g} s at most); sessions on the other masters are not affected."
        )

    async def _probe_loop(self, circuit: NodeCircuit) -> None:
        """Probe the node of an open *circuit* until it answers; then close the circuit.

        The circuit stays open for :attr:`circuit_first` seconds, then one
        ``PING`` goes to the node on a connection of its own, waiting up to
        :attr:`circuit_cap` seconds for the answer (a hung node that resumes
        answers it at once). A failed probe doubles the period (up to
        :attr:`circuit_cap`) before the next one; a probe that waited for its
        answer counts that wait as part of the period. A node that left the
        slot map (its replica was promoted) is forgotten instead.
        """
        wait = circuit.period
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(wait)
                started = loop.time()
                circuit.probes += 1
                if await self._probe(circuit.node):
                    await self._close_circuit(circuit)
                    return
                client = self._cluster
                if client is None:
                    return
                if circuit.name not in client.nodes_manager.nodes_cache:
                    log.info("redis cluster node %s left the slot map; no longer probed", circuit.name)
                    self._forget(circuit)
                    return
                self._stale = True  # its replica may have been promoted meanwhile
                self._schedule_refresh()
                circuit.period = min(circuit.period * 2, self.circuit_cap)
                wait = max(0.0, circuit.period - (loop.time() - started))
        except asyncio.CancelledError:
            self._forget(circuit)
            raise

    async def _probe(self, node: ClusterNode) -> bool:
        """True if *node* answers a ``PING`` on a new connection within :attr:`circuit_cap` seconds."""
        kwargs = dict(node.connection_kwargs)
        kwargs["socket_timeout"] = None  # bounded below, as a whole
        conn = node.connection_class(**kwargs)
        try:
            async with asyncio.timeout(max(self.circuit_cap, self.node_deadline)):
                connect: Any = conn.connect  # untyped in redis-py
                await connect()
                await conn.send_command("PING")
                await conn.read_response()
            return True
        except (TimeoutError, rexc.RedisError, OSError) as exc:
            log.debug("redis cluster node %s: probe failed: %s", node.name, exc)
            return False
        except Exception as exc:  # never let the probe loop die: the circuit would stay open
            log.warning("redis cluster node %s: probe failed unexpectedly: %r", node.name, exc)
            return False
        finally:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)

    async def _close_circuit(self, circuit: NodeCircuit) -> None:
        node = circuit.node
        # Its pooled connections may be dead (a restarted node): they reconnect on next use.
        drop = getattr(node, "disconnect_free_connections", None) or node.disconnect
        try:
            await asyncio.wait_for(drop(), self.node_deadline)
        except Exception as exc:  # pragma: no cover - closing sockets
            log.debug("redis cluster node %s: dropping its connections failed: %s", node.name, exc)
        self._forget(circuit)
        log.warning(
            "redis cluster node %s answers again after %.2f s (%d probes); its sessions are served again",
            circuit.name, time.monotonic() - circuit.since, circuit.probes,
        )

    def _forget(self, circuit: NodeCircuit) -> None:
        if self._circuits.get(circuit.name) is circuit:
            del self._circuits[circuit.name]

    async def _bounded(self, node: ClusterNode, work: Any) -> Any:
        """Await *work* (a coroutine for *node*) for at most :attr:`node_deadline` seconds.

        :raises NodeHungError: if the node did not answer in time.
        """
        try:
            async with asyncio.timeout(self.node_deadline):
                return await work
        except TimeoutError:
            raise NodeHungError(node.name, self.node_deadline) from None

    # ------------------------------------------------------------ round trips

    def _schedule_refresh(self) -> None:
        """Fetch the slot map again in the background after a node failure (at most once per second).

        No batch waits for it (only a retry does, see :meth:`_pipeline`): the
        sessions of a hung node already fail at once, and those of the other
        nodes go on with the map they have.
        """
        client = self._cluster
        if client is None or not self._stale:
            return
        if self._refresh_task is not None and not self._refresh_task.done():
            return
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + _REFRESH_INTERVAL
        self._refresh_task = asyncio.ensure_future(self._refresh_slots(client))

    async def _refresh_slots(self, client: RedisCluster) -> None:
        """Fetch the slot map, asking the node that failed last (or has an open circuit) last."""
        manager = client.nodes_manager
        failed = self._last_failed
        if failed is None or failed not in self._circuits:
            failed = next(iter(self._circuits), failed)
        kwargs: dict[str, Any] = {}
        if failed is not None and failed in manager.startup_nodes:
            manager.startup_nodes[failed] = manager.startup_nodes.pop(failed)  # asked last
            if _DEFERS_FAILED_NODE:
                kwargs["last_failed_node_name"] = failed
        try:
            # Bounded: a hung node asked for the map must not hold a retry past provider_timeout.
            await asyncio.wait_for(manager.initialize(**kwargs), _REFRESH_BUDGET * self._timeout())
            self._stale = False
        except Exception as exc:  # keep the old map; the next failure retries
            log.info("redis cluster: refreshing the slot map failed: %s", exc)

    async def _await_refresh(self) -> None:
        """Wait (bounded) for the background slot-map refresh, if one runs."""
        task = self._refresh_task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=_REFRESH_BUDGET * self._timeout())

    async def _load_everywhere(self, source: str) -> Any:
        """``SCRIPT LOAD`` on every master that answers; the sha, or the error if none did.

        A master whose circuit is open is skipped; one that does not answer
        within :attr:`node_deadline` has its circuit opened.
        """
        client = self._require_cluster()
        primaries = [n for n in client.get_primaries() if n.name not in self._circuits]
        self.round_trips += len(primaries)
        results = await asyncio.gather(
            *(self._bounded(node, node.execute_command("SCRIPT LOAD", source)) for node in primaries),
            return_exceptions=True,
        )
        for node, result in zip(primaries, results):
            if isinstance(result, BaseException) and _node_failed(result):
                self._trip(node, result)
        for result in results:
            if not isinstance(result, BaseException):
                return result
        self._stale = True
        self._schedule_refresh()
        return self._unavailable(results[0] if results else RuntimeError("no master answers"))

    async def _node_pipeline(self, client: RedisCluster, commands: Sequence[Sequence[Any]]) -> list[Any]:
        pipe = client.pipeline()
        for args in commands:
            pipe.execute_command(*args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def _run_groups(
        self, client: RedisCluster, groups: list[tuple[ClusterNode, list[int]]],
        commands: Sequence[Sequence[Any]],
    ) -> list[Any]:
        """One pipeline per node, concurrently, each cut off after :attr:`node_deadline`.

        Returns, per group, the node's replies or the exception that ended its
        pipeline (:class:`NodeHungError` when it ran out of time: the
        pipeline is cancelled, which closes its connection). The healthy
        nodes' results are never held longer than the slowest node's deadline.
        """
        deadline = self.node_deadline
        if len(groups) == 1:
            node, idx = groups[0]
            try:
                return [await self._bounded(node, self._node_pipeline(client, [commands[i] for i in idx]))]
            except Exception as exc:
                return [exc]
        tasks = [
            asyncio.ensure_future(self._node_pipeline(client, [commands[i] for i in idx]))
            for _, idx in groups
        ]
        try:
            _, pending = await asyncio.wait(tasks, timeout=deadline)
        except BaseException:  # the batch itself was cancelled: so is every node's pipeline
            for task in tasks:
                task.cancel()
                task.add_done_callback(_retrieve)
            raise
        out: list[Any] = []
        for (node, _), task in zip(groups, tasks):
            if task in pending:
                task.cancel()
                task.add_done_callback(_retrieve)
                out.append(NodeHungError(node.name, deadline))
            elif task.cancelled():  # pragma: no cover - nothing else cancels it
                out.append(NodeHungError(node.name, deadline))
            else:
                error = task.exception()
                out.append(error if error is not None else task.result())
        return out

    async def _pipeline(self, commands: Sequence[Sequence[Any]], packed: bytes | None = None) -> list[Any]:
        """Send *commands* as one pipeline per owning node, concurrently; errors come back in place.

        ``SCRIPT LOAD`` commands go to every master first. A node whose
        circuit is open fails its commands at once. A node that fails
        (connection refused, no answer within :attr:`node_deadline`, slot not
        covered) fails only its own commands, with
        :class:`ProviderUnavailableError`, and a refused connection or a
        timeout opens its circuit; its commands are re-sent ``max_retries``
        times after refreshing the slot map (not a save with an increment,
        which may have run already: see ``may_repeat``), unless the circuit
        is open. *packed* (the base class's ready-made bytes) is not used:
        redis-py packs each node's pipeline.
        """
        client = self._require_cluster()
        replies: list[Any] = [None] * len(commands)
        todo: list[int] = []
        for index, args in enumerate(commands):
            if str(args[0]).upper() == "SCRIPT LOAD":
                replies[index] = await self._load_everywhere(args[1])
            else:
                todo.append(index)
        circuits = self._circuits
        for attempt in range(1 + self.cluster_config.options.max_retries):
            if not todo:
                break
            if attempt:
                self._next_refresh = 0.0
                self._schedule_refresh()
                await self._await_refresh()
            elif self._stale:
                self._schedule_refresh()
            groups: dict[str, tuple[ClusterNode, list[int]]] = {}
            failed: list[int] = []
            for index in todo:
                try:
                    node = client.get_node_from_key(_command_key(commands[index]))
                    if node is None:
                        raise rexc.SlotNotCoveredError("no node serves this key's slot")
                except (rexc.RedisClusterException, rexc.RedisError) as exc:
                    self._stale = True
                    replies[index] = self._unavailable(exc)
                    failed.append(index)
                    continue
                if circuits:
                    circuit = circuits.get(node.name)
                    if circuit is not None:  # fails at once; not retried
                        replies[index] = self._open_error(circuit)
                        continue
                groups.setdefault(node.name, (node, []))[1].append(index)
            self.round_trips += len(groups)
            group_list = list(groups.values())
            results = await self._run_groups(client, group_list, commands) if group_list else []
            for (node, idx), result in zip(group_list, results):
                if isinstance(result, BaseException):
                    if not isinstance(result, Exception):
                        raise result  # cancellation and the like
                    self._stale = True
                    self._last_failed = node.name
                    if _node_failed(result):
                        self._trip(node, result)
                    error = self._node_unavailable(node.name, result)
                    for index in idx:
                        replies[index] = error
                    failed.extend(idx)
                    continue
                for index, reply in zip(idx, result):
                    if isinstance(reply, (rexc.ConnectionError, rexc.TimeoutError, rexc.ClusterDownError)):
                        self._stale = True
                        self._last_failed = node.name
                        if _node_failed(reply):
                            self._trip(node, reply)
                        replies[index] = self._node_unavailable(node.name, reply)
                        failed.append(index)
                    else:
                        replies[index] = reply
            if self._stale:
                self._schedule_refresh()
            # A command that may have run is sent again only if running it twice is harmless.
            todo = sorted(i for i in failed if may_repeat(commands[i]))
        return replies

    async def _one(self, args: tuple[Any, ...]) -> Any:
        """One command; its reply, or raises ProviderUnavailableError."""
        (reply,) = await self._pipeline([args])
        if isinstance(reply, ProviderUnavailableError):
            raise reply
        if isinstance(reply, BaseException):
            raise ProviderUnavailableError(f"{self._server()} refused a session command: {reply}")
        return reply

    # ------------------------------------------------------------ batching and verbs

    def build_op(self, message: Message) -> _Op | None:
        """As the base class, except that a regenerate runs on its own (it spans two slots)."""
        if isinstance(message, Regenerate):
            return None
        return super().build_op(message)

    async def run_ops(self, ops: Sequence[_Op]) -> list[Any]:
        """One command per op (the session script with that op alone), sent per node.

        A script may only take keys of one slot, so the base class's one script
        per batch cannot be used; :meth:`_pipeline` groups the commands by node.
        """
        return await self.run_ops_each(ops)

    async def session_regenerate(self, old_sid: str, sid: str) -> SessionData:
        """Move *old_sid*'s hash to *sid* across slots in three single-slot scripts (see the module docs).

        :raises ProviderUnavailableError: if a node involved fails before the
            data is under *sid*; the session then stays under *old_sid*.
        """
        old_key, new_key = self.key(old_sid), self.key(sid)
        handover = self.handover_key(old_sid, sid)
        lifetime = self._lifetime(self.max_lifetime)
        taken = await self._one(("EVAL", _TAKE, 2, old_key, handover, self.handover_ttl))
        fields: list[Any] = list(taken) if taken else []
        try:
            moved = await self._one(("EVAL", _PUT, 1, new_key, lifetime, *fields))
        except ProviderUnavailableError:
            if taken is not None:
                try:
                    await self._one(("EVAL", _UNDO, 2, old_key, handover))
                except ProviderUnavailableError as exc:
                    log.warning(
                        "redis cluster: regenerate failed and session %s… could not be put back: %s",
                        old_sid[:6], exc,
                    )
            raise
        if taken is not None:
            try:
                await self._one(("DEL", handover))
            except ProviderUnavailableError as exc:  # it expires by itself
                log.warning("redis cluster: hand-over key of session %s… not deleted: %s", sid[:6], exc)
        return self._regenerate_result(moved)

    async def session_all(self) -> int:
        """Session keys under the prefix on every master, counted with ``SCAN`` (never ``KEYS``).

        :raises ProviderUnavailableError: if a master does not answer (the count would be short).
        """
        client = self._require_cluster()
        if self._stale:
            self._schedule_refresh()
            await self._await_refresh()
        for circuit in self._circuits.values():
            if circuit.name in client.nodes_manager.nodes_cache:
                raise self._open_error(circuit)
        pattern = _glob_escape(self.key_prefix) + "{*}"

        async def count(node: ClusterNode) -> int:
            cursor: Any = 0
            total = 0
            while True:
                self.round_trips += 1
                try:
                    cursor, keys = await self._bounded(
                        node, node.execute_command("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT)
                    )
                except (rexc.RedisError, OSError, NodeHungError) as exc:
                    self._stale = True
                    if _node_failed(exc):
                        self._trip(node, exc)
                    raise self._node_unavailable(node.name, exc) from None
                total += len(keys)
                if int(cursor) == 0:
                    return total

        counts = await asyncio.gather(
            *(count(node) for node in client.get_primaries()), return_exceptions=True
        )
        total = 0
        for result in counts:
            if isinstance(result, BaseException):
                raise result
            total += result
        return total
