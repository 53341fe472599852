"""Contract-suite factory for the redis_cluster provider, and the test clusters themselves.

:class:`Cluster` runs private ``redis-server`` processes in cluster mode on
free loopback ports (3 masters, no replicas, no persistence), joined with
``redis-cli --cluster create``; they are stopped by PID. The shared cluster of
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
import socket
import subprocess
import tempfile
import time
from typing import Any

from reliability.private_servers import stop_process

CLIENT_SIDE = False


def _port_pair_free(port: int) -> bool:
    """True if *port* and its cluster-bus port (*port* + 10000) can be bound on 127.0.0.1."""
    for p in (port, port + 10000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def cluster_ports(n: int) -> list[int]:
    """*n* distinct free ports whose bus ports (+10000) are free as well."""
    from tests.conftest import free_port

    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port + 10000 <= 65535 and port not in ports and _port_pair_free(port):
            ports.append(port)
    return ports


class Cluster:
    """A private Redis Cluster: *masters* ``redis-server`` processes, stopped by PID."""

    def __init__(self, directory: pathlib.Path, masters: int = 3, node_timeout_ms: int = 2000) -> None:
        self.directory = directory
        self.ports = cluster_ports(masters)
        self.node_timeout_ms = node_timeout_ms
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def nodes(self) -> str:
        """``"127.0.0.1:P1,127.0.0.1:P2,..."``."""
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _spawn(self, port: int) -> None:
        self.procs[port] = subprocess.Popen(
            [
                "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.directory / f"nodes-{port}.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                # The live masters keep serving their slots while one is down.
                "--cluster-require-full-coverage", "no",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", str(self.directory), "--logfile", str(self.directory / f"redis-{port}.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _wait_answering(self, port: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                proc = self.procs.get(port)
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {port} exited ({proc.returncode})") from None
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {port} did not start")

    def cluster_info(self, port: int) -> dict[str, str]:
        """``CLUSTER INFO`` of one node, or ``{}`` if it does not answer."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True)
        try:
            info: Any = client.execute_command("CLUSTER INFO")
        except (redis.RedisError, OSError):
            return {}
        finally:
            client.close()
        if isinstance(info, dict):
            return {str(k): str(v) for k, v in info.items()}
        return dict(
            line.split(":", 1) for line in str(info).splitlines() if ":" in line
        )

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node reports ``cluster_state:ok`` with all slots assigned."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [self.cluster_info(p) for p in self.ports if p in self.procs]
            if infos and all(
                i.get("cluster_state") == "ok"
                and i.get("cluster_slots_ok") == "16384"
                and i.get("cluster_known_nodes") == str(len(self.ports))
                for i in infos
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"redis cluster on ports {self.ports} did not reach cluster_state:ok")

    def start(self) -> None:
        """Start the nodes, create the cluster (no replicas) and wait for ``cluster_state:ok``."""
        try:
            for port in self.ports:
                self._spawn(port)
            deadline = time.monotonic() + 20
            for port in self.ports:
                self._wait_answering(port, deadline)
            proc = subprocess.run(
                ["redis-cli", "--cluster", "create",
                 *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True, text=True, timeout=60, check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
                )
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def kill(self, port: int) -> None:
        """SIGKILL the node on *port* (no shutdown, no goodbye to the cluster)."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(10)

    def restart(self, port: int) -> None:
        """Start the node on *port* again (same node id and slots from its nodes.conf, no data)."""
        self._spawn(port)
        self._wait_answering(port, time.monotonic() + 20)
        self.wait_ok()

    def stop(self) -> None:
        """Stop every node by PID."""
        for port in list(self.procs):
            stop_process(self.procs.pop(port))


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
