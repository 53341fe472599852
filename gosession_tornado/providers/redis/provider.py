"""The ``redis`` provider: one Redis hash per session, written as deltas, expired by Redis.

Needs the ``[redis]`` extra (``redis>=5``, using :mod:`redis.asyncio`). The
registry imports this module lazily, so a missing client becomes an
:class:`~gosession_tornado.errors.UnknownProviderError` that names the extra.

Storage layout
    Session *sid* lives in the hash ``<key_prefix><sid>`` (``key_prefix``
    defaults to the manager's ``"gosession:"``). Each session key is one hash
    field: field ``codec.encode(key)``, value ``codec.encode(value)`` (msgpack
    bytes). The reserved field ``b"\\xc1lifetime"`` holds the session's idle
    lifetime in seconds; ``0xc1`` is a byte msgpack never emits first, so it can
    never collide with an encoded key, and it keeps an empty session's hash
    alive.

Expiry
    The key's TTL is the session's lifetime (``max_lifetime``, or the value of
    ``set_expiry``), in seconds. Every read (``HGETALL``) and every release
    resets it to the stored lifetime, in the same server-side script, so the
    timeout counts from the last access. Redis deletes idle sessions itself:
    :meth:`RedisProvider.session_gc` is a no-op, and an expired session is never
    served.

Atomicity
    Every operation is an op of one Lua script, :data:`SESSION_SCRIPT`. A
    release checks ``EXISTS`` (a destroyed or expired session is not
    resurrected unless the release creates it), clears the hash if the request
    called ``flush()``, then ``HDEL``\\s the deleted keys, ``HSET``\\s the set
    ones and the lifetime and sets the TTL. Only the request's own keys are
    written, so concurrent requests, in this process or in others, lose none
    of each other's keys. Regenerate moves the hash with ``RENAME`` (the old
    key is gone, a live target is never overwritten).

Batching
    :meth:`RedisProvider.handle_batch` sends every message the actor drained
    in one turn (reads, releases, exists, destroys, regenerates) as **one**
    ``EVALSHA`` of that script, whose ops run in message order: one command,
    one reply and one round trip for the whole batch, however large. Under
    concurrent load the batches grow, so throughput grows with concurrency;
    with nothing to batch a call is one command and one round trip.
    :attr:`RedisProvider.round_trips` counts the round trips.

Connection
    The provider owns **one dedicated connection**, made by the pool of the
    client :meth:`RedisProvider.make_client` builds (so the ``redis_sentinel``
    subclass gets one that follows the master). The actor runs one batch at a
    time, so nothing is checked out or back in per batch; commands are packed
    by the provider (:func:`_pack`) and the replies read with redis-py's
    parser (``hiredis`` when installed), without per-command response
    callbacks.

Failure
    A connection error becomes
    :class:`~gosession_tornado.errors.ProviderUnavailableError` (the mixin
    answers 503). Connecting times out at 0.4 x ``provider_timeout``; a batch
    that gets no answer (a hung server) is cancelled by the actor after
    ``provider_timeout``. Whatever interrupts a batch (an error, a reset, that
    cancellation) closes the connection, so a reply half read is never taken
    for the next batch's; the next batch connects again, so when Redis comes
    back the same manager works with no restart. A connection the server
    closed while idle is replaced before it is used. A script that a
    restarted server forgot is loaded again transparently (``NOSCRIPT``
    retry).

``provider_config`` forms are described in :mod:`gosession_tornado.providers.redis.config`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.connection import (
    AbstractConnection,
    BlockingConnectionPool,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff, ExponentialBackoff

from ... import codec
from ..._log import get_logger
from ...errors import ConfigError, ProviderUnavailableError
from ...provider import (
    GC,
    BatchVerbs,
    Changes,
    Message,
    Regenerate,
    Release,
    SessionData,
)
from .config import RedisConfig, parse_redis_config

__all__ = ["RedisProvider", "META_FIELD", "RedisScript"]

log = get_logger("gosession_tornado.redis")

#: Hash field holding the session's idle lifetime (seconds). ``0xc1`` never starts a msgpack value.
META_FIELD = b"\xc1lifetime"
_LUA_META = "'\\193lifetime'"  # the same bytes, as a Lua string literal

#: Fields per HSET/HDEL call inside the scripts (Lua's unpack() has a stack limit).
_CHUNK = 1000
#: Increments (and the values they change) are exact within +-2**53 in the script's Lua numbers.
_EXACT = 2**53
#: Keys SCAN is asked for per call in :meth:`RedisProvider.session_all`.
_SCAN_COUNT = 1000


@dataclasses.dataclass(frozen=True)
class RedisScript:
    """A Lua script called with ``EVALSHA``; :attr:`sha` is computed locally."""

    name: str
    source: str

    @functools.cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


# The one script every batch runs: the ops of a whole batch, in order, in one EVALSHA.
#
# KEYS holds the ops' keys in order; ARGV holds, for each op, its code and arguments:
#   R                      read: the session's fields and values without the lifetime field
#                          (an array), TTL reset to the stored lifetime; nil if missing
#   E                      exists: 1 or 0 (the TTL is not touched)
#   D                      destroy: DEL, the number of keys removed
#   G lifetime             regenerate (2 keys, old and new): RENAME old to new (never over a
#                          live new; an empty record if old is missing), TTL reset; the
#                          moved fields without the lifetime field
#   W create flushed lifetime ndel nset ninc <ndel fields> <nset field, value items>
#     <ninc field, delta items>
#                          release: 0 (dropped: missing and not create) or 1 (applied);
#                          an increment adds its delta to the msgpack int stored now (anything
#                          else counts as 0), exactly within +-2^53, else the op fails whole
# Returns one reply per op, in order; an op that fails (a key of the wrong type, say)
# answers its own error and the others go on.
SESSION_SCRIPT = RedisScript(
    "session",
    f"""
local META, CHUNK = {_LUA_META}, {_CHUNK}
local keys, argv = KEYS, ARGV

local function data_of(h)
  local data, n, lifetime = {{}}, 0, nil
  for i = 1, #h, 2 do
    if h[i] == META then
      lifetime = h[i + 1]
    else
      data[n + 1] = h[i]
      data[n + 2] = h[i + 1]
      n = n + 2
    end
  end
  return data, lifetime
end

local function read(key)
  local h = redis.call('HGETALL', key)
  if #h == 0 then return false end
  local data, lifetime = data_of(h)
  if lifetime then redis.call('EXPIRE', key, lifetime) end
  return data
end

local function chunked(cmd, key, t, first, last)
  local i = first
  while i <= last do
    local j = math.min(i + CHUNK - 1, last)
    redis.call(cmd, key, unpack(t, i, j))
    i = j + 1
  end
end

local EXACT = 9007199254740992  -- 2^53: integers beyond it are not exact in Lua

local function added(stored, delta)
  local current = 0
  local b = stored and string.byte(stored, 1)
  if b and (b <= 0x7f or b >= 0xe0 or (b >= 0xcc and b <= 0xd3)) then  -- a msgpack int
    local ok, n = pcall(cmsgpack.unpack, stored)
    if ok and type(n) == 'number' then current = n end
  end
  local sum = current + delta
  if math.abs(current) >= EXACT or math.abs(sum) >= EXACT then
    error('ERR an incremented session value must stay within +-2^53')
  end
  return cmsgpack.pack(sum)
end

local function release(key, b)
  local lifetime = argv[b + 2]
  local exists = redis.call('EXISTS', key) == 1
  if not exists and argv[b] ~= '1' then return 0 end
  local flushed = exists and argv[b + 1] == '1'
  local first, ndel, nset, ninc = b + 6, tonumber(argv[b + 3]), tonumber(argv[b + 4]), tonumber(argv[b + 5])
  local incs = {{}}
  local inc = first + ndel + nset
  for i = inc, inc + ninc - 1, 2 do  -- all computed before anything is written
    local stored = exists and not flushed and redis.call('HGET', key, argv[i])
    incs[#incs + 1] = argv[i]
    incs[#incs + 1] = added(stored, tonumber(argv[i + 1]))
  end
  if flushed then redis.call('DEL', key) end
  chunked('HDEL', key, argv, first, first + ndel - 1)
  redis.call('HSET', key, META, lifetime)
  chunked('HSET', key, argv, first + ndel, inc - 1)
  chunked('HSET', key, incs, 1, #incs)
  redis.call('EXPIRE', key, lifetime)
  return 1
end

local function regenerate(old, new, default)
  local old_exists = redis.call('EXISTS', old) == 1
  if redis.call('EXISTS', new) == 1 then
    if old_exists then return redis.error_reply('ERR regenerate target session id already exists') end
    -- a retried call that already moved the data: answer the same again
  elseif old_exists then
    redis.call('RENAME', old, new)
  else
    redis.call('HSET', new, META, default)
  end
  local data, lifetime = data_of(redis.call('HGETALL', new))
  redis.call('EXPIRE', new, lifetime or default)
  return data
end

local out, i, k, a, n = {{}}, 0, 1, 1, #argv
while a <= n do
  local op, ok, res = argv[a], nil, nil
  if op == 'R' then
    ok, res = pcall(read, keys[k])
    k, a = k + 1, a + 1
  elseif op == 'W' then
    ok, res = pcall(release, keys[k], a + 1)
    k, a = k + 1, a + 7 + tonumber(argv[a + 4]) + tonumber(argv[a + 5]) + tonumber(argv[a + 6])
  elseif op == 'E' then
    ok, res = pcall(redis.call, 'EXISTS', keys[k])
    k, a = k + 1, a + 1
  elseif op == 'D' then
    ok, res = pcall(redis.call, 'DEL', keys[k])
    k, a = k + 1, a + 1
  elseif op == 'G' then
    ok, res = pcall(regenerate, keys[k], keys[k + 1], argv[a + 1])
    k, a = k + 2, a + 2
  else
    return redis.error_reply('ERR unknown session op ' .. tostring(op))
  end
  if not ok then
    if type(res) == 'table' then res = res.err end
    res = redis.error_reply(tostring(res))
  end
  i = i + 1
  out[i] = res
end
return out
""",
)

SCRIPTS: tuple[RedisScript, ...] = (SESSION_SCRIPT,)


#: How an op's reply becomes its result (see :meth:`RedisProvider.finish_op`).
_NONE, _HASH, _BOOL, _MOVED = 0, 1, 2, 3


class _Op:
    """One message as one op of :data:`SESSION_SCRIPT`, and how its reply becomes the result."""

    __slots__ = ("argv", "keys", "kind", "result", "sid")

    def __init__(self, keys: tuple[str, ...], argv: list[bytes], result: int, kind: str, sid: str) -> None:
        #: The op's keys (``KEYS``) and its code and arguments (``ARGV``, all bytes).
        self.keys = keys
        self.argv = argv
        #: ``_NONE`` (answer ``None``), ``_HASH`` (session data or ``None``), ``_BOOL``,
        #: ``_MOVED`` (regenerated session data).
        self.result = result
        self.kind = kind
        self.sid = sid

    @property
    def args(self) -> tuple[Any, ...]:
        """The op alone, as one command: the script run with this one op (a cluster sends these)."""
        return ("EVALSHA", _SESSION_SHA, len(self.keys), *self.keys, *self.argv)


def _map_header(n: int) -> bytes:
    """The msgpack header of a map with *n* entries."""
    if n < 16:
        return bytes((0x80 | n,))
    if n < 0x10000:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")


class RedisProvider(BatchVerbs):
    """Sessions in Redis hashes, with server-side TTL and batches sent in one round trip.

    The verbs send their message as a batch of one: read is ``HGETALL`` +
    ``EXPIRE`` to the stored lifetime in one script (``None`` if missing),
    exist is ``EXISTS`` (no TTL refresh), regenerate is a ``RENAME`` in a
    script (old gone, TTL reset; an empty record if old is missing), destroy
    is ``DEL`` (a missing key is fine), release applies the changes
    atomically and sets the TTL to the expiry (see the module docs).

    The provider talks to Redis over **one dedicated connection** (made by
    the pool of the client :meth:`make_client` builds, then owned by the
    actor): a batch is written with one ``send`` and its replies are read
    back in order, with no pool checkout, pipeline object or response
    callbacks per batch. Subclasses (cluster, sentinel) may override
    :meth:`make_client`, :meth:`make_connection` and :meth:`key`; the
    cluster replaces the round trip itself (:meth:`_pipeline`).
    """

    inline_when_idle = True

    extra = "redis"

    def __init__(self) -> None:
        super().__init__()
        self._client: aioredis.Redis | None = None
        self._pool: BlockingConnectionPool | None = None
        #: The connection every batch goes over (``None`` before init and after close).
        self._conn: AbstractConnection | None = None
        self._backoff: AbstractBackoff = ExponentialBackoff(cap=0.5, base=0.01)
        self.redis_config: RedisConfig = RedisConfig()
        #: Prefix of every session key.
        self.key_prefix = "gosession:"
        #: Batches (and single commands) sent to Redis since init: the number of round trips.
        self.round_trips = 0
        #: A reply of the batch being answered was ``READONLY`` (see :meth:`_drop_connection`).
        self._read_only = False
        #: The last :meth:`_exchange` got as far as writing its commands.
        self._sent = False

    # ------------------------------------------------------------ setup

    def key(self, sid: str) -> str:
        """The Redis key of session *sid*: :attr:`key_prefix` followed by :meth:`_key_tail`."""
        if not isinstance(sid, str) or not sid:
            raise ValueError(f"session id must be a non-empty string, got {sid!r}")
        return self.key_prefix + self._key_tail(sid)

    def _key_tail(self, sid: str) -> str:
        """The part of a session key after the prefix: *sid* itself here (subclass hook).

        :raises ValueError: for a (non-empty) id the subclass's layout cannot hold.
        """
        return sid

    def _checked_key_prefix(
        self, configured: str | None, provider: str = "redis", keyspace: str = "database"
    ) -> str:
        """*configured* (from ``provider_config``), else the manager's ``key_prefix``.

        *provider* and *keyspace* only word the error.

        :raises ConfigError: (``key="key_prefix"``) if the prefix is empty or not a string.
        """
        prefix = configured
        if prefix is None:
            prefix = getattr(self.manager_config, "key_prefix", None) or "gosession:"
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError(
                f"{provider} key_prefix must be a non-empty string (an empty prefix would make "
                f"get_active_sessions count every key in the {keyspace})",
                key="key_prefix",
            )
        return prefix

    def _timeout(self) -> float:
        timeout = getattr(self.manager_config, "provider_timeout", None)
        return float(timeout) if timeout else 5.0

    def parse_config(self, config: Any) -> RedisConfig:
        """Parse ``provider_config``; subclasses may return a :class:`RedisConfig` subclass.

        :raises ConfigError: naming the bad item.
        """
        return parse_redis_config(config)

    @staticmethod
    def connection_kwargs(cfg: RedisConfig, timeout: float) -> dict[str, Any]:
        """Connection options every Redis-family client takes, from *cfg*.

        Credentials, client name, socket timeouts (0.8 and 0.4 x *timeout*, the
        ``provider_timeout`` in seconds), ``max_retries`` retries with a backoff
        capped at 0.1 x *timeout*, and a PING before reusing a connection idle
        longer than ``idle_timeout``. ``db``, pool and TLS are the caller's.
        """
        return {
            "username": cfg.username,
            "password": cfg.password,
            "socket_timeout": timeout * 0.8,
            "socket_connect_timeout": timeout * 0.4,
            "retry": Retry(ExponentialBackoff(cap=timeout * 0.1, base=0.01), cfg.max_retries),
            "client_name": cfg.client_name,
            "health_check_interval": math.ceil(cfg.idle_timeout) if cfg.idle_timeout else 0,
        }

    def make_client(self, cfg: RedisConfig, timeout: float) -> aioredis.Redis:
        """Build the client. *timeout* is ``provider_timeout`` (s); every wait stays below it."""
        kwargs: dict[str, Any] = {"db": cfg.db, **self.connection_kwargs(cfg, timeout)}
        connection_class: type[AbstractConnection]
        if cfg.unix_socket_path:
            connection_class = UnixDomainSocketConnection
            kwargs["path"] = cfg.unix_socket_path
        else:
            connection_class = SSLConnection if cfg.ssl else Connection
            kwargs["host"] = cfg.host
            kwargs["port"] = cfg.port
        self._pool = BlockingConnectionPool(
            max_connections=cfg.poolsize,
            timeout=timeout * 0.4,
            connection_class=connection_class,
            **kwargs,
        )
        return aioredis.Redis(connection_pool=self._pool)

    def make_connection(self, client: aioredis.Redis) -> AbstractConnection:
        """The provider's dedicated connection, made (not yet connected) by *client*'s pool.

        The actor runs one batch at a time, so one connection carries them all;
        it is never checked out of or back into the pool. It has no socket
        timeout: a batch is bounded by the actor, which cancels one that runs
        past ``provider_timeout`` (the connection is then closed, never
        reused with a reply half read). Connecting keeps its own timeout
        (0.4 x ``provider_timeout``). A sentinel-managed connection asks the
        sentinels for the master each time it connects.
        """
        pool: Any = client.connection_pool  # redis-py leaves make_connection untyped
        conn: AbstractConnection = pool.make_connection()
        # A socket timeout would make redis-py wrap every send in wait_for (a Task each).
        conn.socket_timeout = None
        return conn

    async def session_init(self, max_lifetime: int, config: Any) -> None:
        """Parse *config*, connect, and load the Lua scripts (which also checks the server).

        :raises ConfigError: for a bad config, a rejected password or a bad db number.
        :raises ProviderUnavailableError: if Redis cannot be reached.
        """
        self.max_lifetime = max_lifetime
        cfg = self.parse_config(config)
        self.key_prefix = self._checked_key_prefix(cfg.key_prefix)
        self.redis_config = cfg
        timeout = self._timeout()
        self._backoff = ExponentialBackoff(cap=timeout * 0.1, base=0.01)
        self._client = self.make_client(cfg, timeout)
        self._conn = self.make_connection(self._client)
        try:
            shas = await self._exchange([("SCRIPT LOAD", script.source) for script in SCRIPTS])
            for reply in shas:
                if isinstance(reply, BaseException):
                    raise reply
        except (rexc.AuthenticationError, rexc.AuthorizationError) as exc:
            await self.session_close()
            raise self._rejected_credentials(exc) from None
        except rexc.ResponseError as exc:
            await self.session_close()
            if "db index" in str(exc).lower():
                raise ConfigError(
                    f"redis at {cfg.location} has no database {cfg.db}: {exc}", key="dbnum"
                ) from None
            raise ProviderUnavailableError(f"redis at {cfg.location} refused to start: {exc}") from None
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            await self.session_close()
            raise self._unavailable(exc) from None
        except rexc.RedisError as exc:  # e.g. InvalidResponse: something else listens there
            await self.session_close()
            raise ProviderUnavailableError(
                f"redis at {cfg.location} did not answer like a Redis server ({type(exc).__name__}: "
                f"{exc}); check the address in provider_config"
            ) from None
        expected = [s.sha for s in SCRIPTS]
        got = [s.decode() if isinstance(s, bytes) else str(s) for s in shas]
        if got != expected:  # pragma: no cover - would mean a non-Redis server
            log.warning("redis script hashes differ from the local ones: %s != %s", got, expected)

    async def session_close(self) -> None:
        """Close the dedicated connection, the client and its pool."""
        conn, client, pool = self._conn, self._client, self._pool
        self._conn = self._client = self._pool = None
        if conn is not None:
            await _disconnect(conn)
        if client is not None:
            await client.aclose()
        if pool is not None:
            await pool.aclose()

    # ------------------------------------------------------------ errors

    #: What to check when the server does not answer, in :meth:`_unavailable`'s message.
    _down_hint = "is the server running?"

    def _server(self) -> str:
        """The server in messages: ``"redis at host:port"`` (subclass hook: the cluster lists its nodes)."""
        return f"redis at {self.redis_config.location}"

    def _unavailable(self, exc: BaseException) -> ProviderUnavailableError:
        return ProviderUnavailableError(
            f"{self._server()} is unavailable ({type(exc).__name__}: {exc}); "
            f"{self._down_hint} The next request retries."
        )

    def _refused(self, op: _Op, exc: BaseException) -> ProviderUnavailableError:
        if isinstance(exc, ProviderUnavailableError):  # already names the failed server or node
            return exc
        return ProviderUnavailableError(f"{self._server()} refused the {op.kind!r} of a session: {exc}")

    def _rejected_credentials(self, exc: BaseException) -> ConfigError:
        return ConfigError(
            f"{self._server()} rejected the credentials: {exc}; check the password "
            "(and username) in provider_config",
            key="password",
        )

    # ------------------------------------------------------------ encoding

    @staticmethod
    def decode_hash(reply: Any) -> SessionData:
        """Session data from a flat ``HGETALL`` reply, skipping the meta field.

        The fields and values are msgpack bytes, so the pairs put behind a map
        header are one msgpack map: one decode for the whole session. If that
        fails or finds fewer distinct keys than fields, the pairs are decoded
        one by one, which names the bad field.

        :raises ValueError: if a field or value is not a valid payload.
        """
        if not reply:
            return {}
        fields = reply[0::2]
        if META_FIELD in fields:
            at = 2 * fields.index(META_FIELD)
            reply = reply[:at] + reply[at + 2 :]
        n = len(reply) >> 1
        if not n:
            return {}
        try:
            data = codec.decode(_map_header(n) + b"".join(reply))
        except (ValueError, TypeError):
            data = None
        if type(data) is dict and len(data) == n and len(reply) == 2 * n:
            return data
        data = {}
        it = iter(reply)
        for field, value in zip(it, it):
            key = codec.decode(field)
            try:
                data[key] = codec.decode(value)
            except TypeError as exc:  # an unhashable decoded key
                raise ValueError(f"corrupt session field {field!r}: {exc}") from None
        return data

    @staticmethod
    def _lifetime(expiry: int) -> int:
        if isinstance(expiry, bool) or not isinstance(expiry, int):
            raise TypeError(f"session lifetime must be whole seconds, got {expiry!r}")
        return max(1, expiry)

    def _release_argv(self, changes: Changes, expiry: int) -> list[bytes]:
        """``W`` and its arguments (see :data:`SESSION_SCRIPT`): only the keys the request changed.

        Set values are the msgpack bytes the session made at ``set()`` time.
        """
        deleted = changes.deleted
        items = changes.encoded_items()
        increments = changes.increments
        argv: list[bytes] = [
            b"W",
            b"1" if changes.create else b"0",
            b"1" if changes.flushed else b"0",
            b"%d" % self._lifetime(expiry),
            b"%d" % len(deleted),
            b"%d" % (2 * len(items)),
            b"%d" % (2 * len(increments)),
        ]
        if deleted:
            argv += [codec.encode(k) for k in deleted]
        for pair in items:
            argv += pair
        for key, (field, delta) in increments.items():
            if type(delta) is not int or not -_EXACT < delta < _EXACT:
                raise TypeError(f"the redis store adds increments within +-2**53; {key!r} got {delta!r}")
            argv += (field, b"%d" % delta)
        return argv

    def _regenerate_result(self, reply: Any) -> SessionData:
        try:
            return self.decode_hash(reply)
        except ValueError as exc:
            log.warning("regenerated redis session is corrupt, starting empty: %s", exc)
            return {}

    def build_op(self, message: Message) -> _Op | None:
        """The :data:`SESSION_SCRIPT` op that answers *message*, or ``None`` if it is not batched.

        :raises TypeError: if a released value cannot be serialized.
        """
        kind = message.kind
        simple = _SID_OPS.get(kind)
        if simple is not None:  # read, exist, destroy: the session's id is all they carry
            sid = message.sid  # type: ignore[attr-defined]
            return _Op((self.key(sid),), simple[0], simple[1], kind, sid)
        if isinstance(message, Release):
            return _Op(
                (self.key(message.sid),),
                self._release_argv(message.changes, message.expiry),
                _NONE,
                message.kind,
                message.sid,
            )
        if isinstance(message, Regenerate):
            return _Op(
                (self.key(message.old_sid), self.key(message.sid)),
                [b"G", b"%d" % self._lifetime(self.max_lifetime)],
                _MOVED,
                message.kind,
                message.sid,
            )
        return None

    def finish_op(self, op: _Op, reply: Any) -> Any:
        """The result of *op* from its (successful) *reply*."""
        kind = op.result
        if kind == _HASH:
            if reply is None:
                return None
            try:
                return self.decode_hash(reply)
            except ValueError as exc:
                log.warning("redis session %s… is corrupt, treated as missing: %s", op.sid[:6], exc)
                return None
        if kind == _NONE:
            return None
        if kind == _BOOL:
            return bool(reply)
        return self._regenerate_result(reply)

    # ------------------------------------------------------------ round trips

    async def _exchange(self, commands: Sequence[Sequence[Any]], packed: bytes | None = None) -> list[Any]:
        """Write *commands* on the dedicated connection at once and read their replies: one round trip.

        A reply that is a Redis error comes back in place (its
        :class:`redis.exceptions.ResponseError`). Anything else that goes
        wrong (the connection refused, dropped or timed out, a malformed
        reply, or the actor cancelling a batch that ran past
        ``provider_timeout``) closes the connection before the error goes
        on: a reply half read is never taken for the next command's. The
        next call connects again.

        :raises redis.exceptions.RedisError: (or ``OSError``) as redis-py raises it.
        """
        conn = self._conn
        if conn is None:
            raise ProviderUnavailableError("the redis session provider is not connected (closed?)")
        if packed is None:
            packed = _pack(commands)
        self.round_trips += 1
        self._sent = False
        try:
            if conn.is_connected and _closed_by_peer(conn):
                await _disconnect(conn)  # idle and closed by the server (timeout, restart, CLIENT KILL)
            if not conn.is_connected:
                connect: Any = conn.connect  # untyped in redis-py
                await connect()  # (a sentinel-managed connection asks for the master here)
            self._sent = True  # from here on the server may run the commands
            await conn.send_packed_command(packed)
            read = conn.read_response
            replies: list[Any] = []
            for _ in range(len(commands)):
                try:
                    replies.append(await read())
                except rexc.ResponseError as exc:  # this command's error; the stream is intact
                    replies.append(exc)
            return replies
        except BaseException:
            await _disconnect(conn)
            raise

    async def _pipeline(self, commands: Sequence[Sequence[Any]], packed: bytes | None = None) -> list[Any]:
        """Send *commands* in one round trip; per-command errors come back in place.

        A connection failure is retried ``max_retries`` times (the batch is
        sent again on a new connection, after a short backoff), except for a
        batch that may have run already and must not run twice (an
        increment; see :func:`may_repeat`).

        :raises ProviderUnavailableError: if the connection failed or timed out.
        """
        retries = self.redis_config.max_retries
        failures = 0
        while True:
            try:
                return await self._exchange(commands, packed)
            except (rexc.AuthenticationError, rexc.AuthorizationError) as exc:
                raise self._unavailable(exc) from exc
            except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
                failures += 1
                if failures > retries or (self._sent and not all(map(may_repeat, commands))):
                    raise self._unavailable(exc) from exc
                await asyncio.sleep(self._backoff.compute(failures))
            except rexc.RedisError as exc:
                raise self._unavailable(exc) from exc

    async def _script_round_trip(self, commands: list[Sequence[Any]]) -> list[Any]:
        """:meth:`_pipeline`, loading the script again where a reply is ``NOSCRIPT``.

        A restarted server (or ``SCRIPT FLUSH``) forgets the script: it is loaded
        and the affected commands re-sent, in their order, in one more round trip.
        """
        replies = await self._pipeline(commands)
        missing = [i for i, r in enumerate(replies) if isinstance(r, rexc.NoScriptError)]
        if missing:
            again = await self._reload_and_resend([commands[i] for i in missing])
            for i, reply in zip(missing, again):
                replies[i] = reply
        return replies

    async def _reload_and_resend(self, commands: list[Sequence[Any]]) -> list[Any]:
        """``SCRIPT LOAD`` the scripts and send *commands* again, in one round trip; their replies."""
        log.info("redis forgot the session script (restart or SCRIPT FLUSH); loading it again")
        loads: list[Sequence[Any]] = [("SCRIPT LOAD", s.source) for s in SCRIPTS]
        again = await self._pipeline(loads + commands)
        return again[len(loads) :]

    def _outcomes(self, ops: Sequence[_Op], replies: Sequence[Any]) -> list[Any]:
        outcomes: list[Any] = []
        finish = self.finish_op
        for op, reply in zip(ops, replies):
            if isinstance(reply, BaseException):
                if isinstance(reply, rexc.ReadOnlyError):
                    self._read_only = True
                outcomes.append(self._refused(op, reply))
                continue
            try:
                outcomes.append(finish(op, reply))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def run_ops(self, ops: Sequence[_Op]) -> list[Any]:
        """Run *ops* as **one** ``EVALSHA`` of :data:`SESSION_SCRIPT`; one outcome per op.

        One command and one reply per batch, whatever its size: the ops run in
        order, atomically, and an op that fails answers its own error.
        A connection failure fails every op with ``ProviderUnavailableError``.
        """
        if not ops:
            return []
        keys: Sequence[str]
        argv: Sequence[bytes]
        if len(ops) == 1:
            keys, argv = ops[0].keys, ops[0].argv
        else:
            all_keys: list[str] = []
            all_argv: list[bytes] = []
            for op in ops:
                all_keys += op.keys
                all_argv += op.argv
            keys, argv = all_keys, all_argv
        command = ("EVALSHA", _SESSION_SHA, len(keys), *keys, *argv)
        (reply,) = await self._pipeline((command,), _pack_script(keys, argv))
        if isinstance(reply, rexc.NoScriptError):
            (reply,) = await self._reload_and_resend([command])
        if isinstance(reply, BaseException):  # the script as a whole failed (e.g. OOM)
            if isinstance(reply, rexc.ReadOnlyError):
                await self._drop_connection()
            return [self._refused(op, reply) for op in ops]
        if not isinstance(reply, list) or len(reply) != len(ops):
            error = self._unavailable(rexc.InvalidResponse(f"unexpected session script reply {reply!r:.80}"))
            return [error] * len(ops)
        outcomes = self._outcomes(ops, reply)
        if self._read_only:
            await self._drop_connection()
        return outcomes

    async def _drop_connection(self) -> None:
        """Close the connection after a ``READONLY`` reply; the next batch connects again.

        The server was demoted to a replica under a live connection (a
        failover; Redis keeps its clients then). A sentinel-managed
        connection asks the sentinels for the new master when it reconnects.
        """
        self._read_only = False
        conn = self._conn
        if conn is not None:
            log.warning("%s answers READONLY (now a replica?); reconnecting", self._server())
            await _disconnect(conn)

    async def run_ops_each(self, ops: Sequence[_Op]) -> list[Any]:
        """Run *ops* as one command each (:attr:`_Op.args`), all in one :meth:`_pipeline` call.

        For a Redis Cluster, where one script cannot take keys of different
        slots: each op is the script run with that op alone.
        """
        if not ops:
            return []
        replies = await self._script_round_trip([op.args for op in ops])
        unwrapped: list[Any] = []
        for reply in replies:
            if isinstance(reply, list) and len(reply) == 1:
                reply = reply[0]
            elif not isinstance(reply, BaseException):
                reply = rexc.InvalidResponse(f"unexpected session script reply {reply!r:.80}")
            unwrapped.append(reply)
        outcomes = self._outcomes(ops, unwrapped)
        self._read_only = False  # (a cluster client follows a failover by itself)
        return outcomes

    async def _run_one(self, message: Message) -> Any:
        """One message as a batch of one (the verbs come from :class:`BatchVerbs`)."""
        op = self.build_op(message)
        assert op is not None
        (outcome,) = await self.run_ops([op])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def handle_batch(self, messages: Sequence[Message]) -> list[Any]:
        """Answer every drained message; consecutive batchable ones share one round trip.

        Reads, releases, exists, destroys and regenerates are written at once
        on the dedicated connection and executed in message order. GC needs no
        command; ``All`` (a SCAN loop), init and close run on their own. Each
        message gets its own outcome: a bad value fails only its release.
        """
        build = self.build_op
        if len(messages) == 1:  # nothing to batch: straight to the one round trip
            message = messages[0]
            try:
                op = None if isinstance(message, GC) else build(message)
                if op is None:
                    return [None if isinstance(message, GC) else await self.dispatch(message)]
                return await self.run_ops((op,))
            except Exception as exc:
                return [exc]
        outcomes: list[Any] = [None] * len(messages)
        pending: list[int] = []
        ops: list[_Op] = []
        for index, message in enumerate(messages):
            if isinstance(message, GC):
                continue  # Redis expires keys itself; the outcome stays None
            try:
                op = build(message)
            except Exception as exc:  # e.g. an unserializable value: fails this message only
                outcomes[index] = exc
                continue
            if op is not None:
                pending.append(index)
                ops.append(op)
                continue
            await self._flush(pending, ops, outcomes)
            try:
                outcomes[index] = await self.dispatch(message)
            except Exception as exc:
                outcomes[index] = exc
        await self._flush(pending, ops, outcomes)
        return outcomes

    async def _flush(self, pending: list[int], ops: list[_Op], outcomes: list[Any]) -> None:
        """Run *ops* (the messages at *pending* positions) in one round trip; empty both lists."""
        if not ops:
            return
        try:
            results = await self.run_ops(ops)
        except Exception as exc:  # the round trip failed: every op in it fails
            results = [exc] * len(ops)
        for index, result in zip(pending, results):
            outcomes[index] = result
        pending.clear()
        ops.clear()

    # ------------------------------------------------------------ beego verbs

    async def session_gc(self) -> None:
        """No-op: Redis expires idle sessions through their TTL."""

    async def session_all(self) -> int:
        """Keys under the prefix, counted with ``SCAN`` (never ``KEYS``); one round trip per cursor step."""
        pattern = _glob_escape(self.key_prefix) + "*"
        cursor: Any = 0
        count = 0
        while True:
            (reply,) = await self._pipeline([("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT)])
            if isinstance(reply, BaseException):
                raise self._unavailable(reply)
            cursor, keys = reply
            count += len(keys)
            if int(cursor) == 0:
                return count


_SESSION_SHA = SESSION_SCRIPT.sha
_SESSION_SHA_BYTES = _SESSION_SHA.encode()
#: The op of each message that carries only a session id, by its ``kind``: (argv, how the reply is read).
_SID_OPS: dict[str, tuple[list[bytes], int]] = {
    "read": ([b"R"], _HASH),
    "exist": ([b"E"], _BOOL),
    "destroy": ([b"D"], _NONE),
}


def may_repeat(command: Sequence[Any]) -> bool:
    """False for a session-script command with an increment: it must not run twice.

    Used to decide whether a command that failed with a connection error (and
    so may have run) can be sent again: every other operation of the session
    script leaves the same state when repeated.
    """
    if len(command) < 4 or command[0] != "EVALSHA" or command[1] != _SESSION_SHA:
        return True
    argv = command[3 + int(command[2]) :]
    a = 0
    while a < len(argv):
        code = argv[a]
        if code == b"W":
            if int(argv[a + 6]):
                return False
            a += 7 + int(argv[a + 4]) + int(argv[a + 5])
        elif code == b"G":
            a += 2
        else:
            a += 1
    return True


def _pack(commands: Sequence[Sequence[Any]]) -> bytes:
    """*commands* in the Redis protocol (RESP arrays of bulk strings), as one buffer.

    Arguments are ``bytes``, ``str`` (UTF-8) or ``int``; a first argument
    with a space (``"SCRIPT LOAD"``) is two words, as redis-py splits it.
    Several times cheaper than redis-py's ``pack_commands``, which encodes
    each argument through its ``Encoder``.

    :raises TypeError: for an argument of another type.
    """
    out: list[bytes] = []
    put = out.append
    for args in commands:
        name = args[0]
        if type(name) is str and " " in name:
            args = (*name.split(), *args[1:])
        put(b"*%d\r\n" % len(args))
        for arg in args:
            kind = type(arg)
            if kind is str:
                arg = arg.encode()
            elif kind is int:
                arg = b"%d" % arg
            elif kind is not bytes:
                if not isinstance(arg, (bytes, bytearray, memoryview)):
                    raise TypeError(f"cannot send a {kind.__name__} to redis: {arg!r:.40}")
                arg = bytes(arg)
            put(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


def _pack_script(keys: Sequence[str], argv: Sequence[bytes]) -> bytes:
    """``EVALSHA`` of :data:`SESSION_SCRIPT` with *keys* and *argv*, packed as :func:`_pack` would."""
    out = [
        b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n" % (3 + len(keys) + len(argv), _SESSION_SHA_BYTES),
        b"$%d\r\n%d\r\n" % (len(str(len(keys))), len(keys)),
    ]
    put = out.append
    for key in keys:
        kb = key.encode()
        put(b"$%d\r\n%b\r\n" % (len(kb), kb))
    for arg in argv:
        put(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


def _closed_by_peer(conn: AbstractConnection) -> bool:
    """True if the server has closed *conn* while it sat idle (its stream saw EOF or a reset).

    Checked before each batch, as a pool checks a connection before handing
    it out, so a connection the server dropped between batches is replaced
    instead of failing the batch. (redis-py keeps the stream in ``_reader``;
    without it the check says False and such a batch fails once.)
    """
    reader = getattr(conn, "_reader", None)
    if not isinstance(reader, asyncio.StreamReader):
        return False
    return reader.at_eof() or reader.exception() is not None


async def _disconnect(conn: AbstractConnection) -> None:
    """Close *conn* (its parser state too); it connects again on its next use."""
    try:
        await conn.disconnect(nowait=True)
    except Exception as exc:  # pragma: no cover - closing a broken socket
        log.debug("redis: closing the connection failed: %s", exc)


def _glob_escape(text: str) -> str:
    """*text* with Redis glob metacharacters escaped, for ``SCAN MATCH``."""
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)
