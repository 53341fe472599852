"""Contract-suite factory for the redis_cluster provider, and the test clusters themselves.

:class:`Cluster` (:class:`reliability.private_servers.PrivateRedisCluster`,
shared with the reliability suite and the benchmark harness) runs private
``redis-server`` processes in cluster mode on free loopback ports (3 masters,
no replicas, no persistence), joined with ``redis-cli --cluster create``; they
are stopped by PID. The shared cluster of
the test session starts lazily on the first use of :data:`SERVER` (the
contract suite reads it through ``require_server``) or :func:`shared_cluster`,
and is stopped at interpreter exit. Without ``redis-server``, ``SERVER`` names
a closed port, so ``require_server`` fails under ``CI=true`` and skips loudly
elsewhere.

Each test gets its own key prefix ``gstest:<unique>:``; :func:`cleanup`
deletes every key under it on every master.
"""

from __future__ import annotations

import atexit
import pathlib
import shutil
import subprocess
import tempfile
from typing import Any

from reliability.private_servers import PrivateRedisCluster

CLIENT_SIDE = False


Cluster = PrivateRedisCluster


_shared: Cluster | None = None
_shared_error: str | None = None
_shared_dir: str | None = None


def _stop_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None
    if _shared_dir is not None:
        shutil.rmtree(_shared_dir, ignore_errors=True)


def shared_cluster() -> Cluster | None:
    """The session's shared cluster, started on first use; ``None`` if it cannot run here."""
    global _shared, _shared_error, _shared_dir
    if _shared is not None or _shared_error is not None:
        return _shared
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        _shared_error = "redis-server/redis-cli not installed"
        return None
    _shared_dir = tempfile.mkdtemp(prefix="gosession-cluster-")
    atexit.register(_stop_shared)
    cluster = Cluster(pathlib.Path(_shared_dir))
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        _shared_error = str(exc)
        return None
    _shared = cluster
    return _shared


def __getattr__(name: str) -> Any:
    # SERVER is computed on first access: it starts the shared cluster.
    if name == "SERVER":
        cluster = shared_cluster()
        if cluster is None:
            # Port 1 is closed: require_server fails under CI=true and skips loudly elsewhere.
            return (f"redis cluster ({_shared_error})", "127.0.0.1", 1)
        return ("redis cluster", "127.0.0.1", cluster.ports[0])
    raise AttributeError(name)


def prefix(unique: str) -> str:
    """The key prefix of the test identified by *unique*."""
    return f"gstest:{unique}:"


def config(tmp_path: pathlib.Path, unique: str) -> dict[str, Any]:
    cluster = shared_cluster()
    nodes = cluster.nodes if cluster is not None else "127.0.0.1:1"
    # A comma list of startup nodes then beego's poolsize; the prefix through the manager.
    return {
        "provider": "redis_cluster",
        "cookie_name": "sid",
        "provider_config": f"{nodes},16",
        "key_prefix": prefix(unique),
    }


async def delete_prefix(key_prefix: str, ports: list[int]) -> int:
    """Delete every key under *key_prefix* on each master (SCAN + single-key DEL)."""
    import redis.asyncio as aioredis

    deleted = 0
    pattern = "".join("\\" + c if c in "\\*?[]" else c for c in key_prefix) + "*"
    for port in ports:
        client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        try:
            keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
            if keys:
                async with client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.delete(key)
                    deleted += sum(int(n) for n in await pipe.execute())
        except (aioredis.RedisError, OSError):
            pass  # a node that is down holds nothing anymore (no persistence)
        finally:
            await client.aclose()
    return deleted


async def cleanup(unique: str) -> None:
    if _shared is not None:
        await delete_prefix(prefix(unique), _shared.ports)
