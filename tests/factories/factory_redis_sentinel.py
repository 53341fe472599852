"""Contract-suite factory for the redis_sentinel provider, and the test topology it runs on.

:class:`Topology` starts private processes on free loopback ports: a master
``redis-server``, one replica (``--replicaof``) and one or three sentinels
(``redis-server <conf> --sentinel``), all stopped by PID. The contract suite
shares one topology (:func:`shared_topology`), started on first use and
stopped when the test process exits; each test gets its own key prefix
``gstest:<unique>:`` and :func:`cleanup` deletes its keys on the master.

Without ``redis-server`` the tests fail under ``CI=true`` and are skipped
loudly elsewhere.
"""

from __future__ import annotations

import atexit
import contextlib
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from tests.support import fail_or_skip, free_port

CLIENT_SIDE = False
#: The topology is started by the factory itself, not an external server.
SERVER = None
MASTER_NAME = "mymaster"


def require_redis_server_binary() -> None:
    """Fail (CI) or skip loudly (elsewhere) unless ``redis-server`` is installed."""
    if shutil.which("redis-server") is None:
        fail_or_skip("redis-server binary not found (needed for the private sentinel topology)")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGKILL if the test process dies, so no server outlives it."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Topology:
    """A master, one replica and *sentinels* sentinels on free 127.0.0.1 ports."""

    def __init__(self, directory: pathlib.Path, sentinels: int = 1) -> None:
        self.directory = directory
        self.master_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        #: Port of the process :meth:`kill_master` killed (its exit is expected).
        self.killed: int | None = None

    # -------------------------------------------------------- processes

    def _spawn(self, port: int, args: list[str]) -> None:
        log = open(self.directory / f"{port}.log", "wb")  # noqa: SIM115 - closed with the process
        try:
            self.procs[port] = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        finally:
            log.close()

    def _redis(self, port: int, *extra: str) -> None:
        self._spawn(port, [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.directory), *extra,
        ])

    def _sentinel(self, port: int) -> None:
        conf = self.directory / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.directory}\n"
            "sentinel resolve-hostnames no\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 3000\n",
            encoding="utf-8",
        )
        self._spawn(port, ["redis-server", str(conf), "--sentinel"])

    def ask(self, port: int, *command: Any) -> Any:
        """Run one command on the process at *port* with a short-lived client."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def _wait(self, what: str, check: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except Exception as exc:  # not up yet
                last = exc
            for port, proc in self.procs.items():
                if proc.poll() is not None and port != self.killed:
                    log = (self.directory / f"{port}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{what}: process on port {port} exited:\n{log}")
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {what} (last error: {last!r})")

    def start(self) -> Topology:
        """Start everything and wait until the sentinels see the master and its replica."""
        require_redis_server_binary()
        try:
            self._redis(self.master_port)
            self._wait("the master", lambda: self.ask(self.master_port, "PING"))
            self._redis(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
            self._wait(
                "the replica to sync",
                lambda: self.ask(self.replica_port, "INFO", "replication").get("master_link_status") == "up",
            )
            for port in self.sentinel_ports:
                self._sentinel(port)
            others = len(self.sentinel_ports) - 1
            for port in self.sentinel_ports:
                self._wait(f"sentinel {port} to see master, replica and peers",
                           lambda port=port: self._sentinel_ready(port, others))
        except BaseException:
            self.stop()
            raise
        return self

    def _sentinel_ready(self, port: int, others: int) -> bool:
        master = self.ask(port, "SENTINEL MASTER", MASTER_NAME)
        replicas = self.ask(port, "SENTINEL SLAVES", MASTER_NAME)
        return (
            int(master["port"]) == self.master_port
            and master["num-other-sentinels"] >= others
            and any(int(r["port"]) == self.replica_port and not r["is_sdown"] for r in replicas)
        )

    def stop(self) -> None:
        """Stop every process by its PID (SIGTERM, then SIGKILL)."""
        procs, self.procs = self.procs, {}
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def kill_master(self) -> None:
        """SIGKILL the current master (no shutdown, no goodbye to clients or replicas)."""
        proc = self.procs[self.master_port]
        self.killed = self.master_port
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    # -------------------------------------------------------- views

    @property
    def sentinel_addrs(self) -> str:
        """``127.0.0.1:p1;127.0.0.1:p2``: beego's sentinel address list."""
        return ";".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def master_by_sentinel(self, port: int | None = None) -> tuple[str, int] | None:
        """``SENTINEL get-master-addr-by-name`` from one sentinel (the first by default)."""
        reply = self.ask(port or self.sentinel_ports[0], "SENTINEL GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        if not reply:
            return None
        host, found = reply
        return (host.decode() if isinstance(host, bytes) else str(host)), int(found)


_shared: Topology | None = None


def shared_topology() -> Topology:
    """The topology the contract suite (and the non-destructive tests) share; started once."""
    global _shared
    if _shared is None:
        directory = pathlib.Path(tempfile.mkdtemp(prefix="gosession-sentinel-"))
        topology = Topology(directory).start()
        _shared = topology

        def stop() -> None:
            topology.stop()
            shutil.rmtree(directory, ignore_errors=True)

        atexit.register(stop)
    return _shared


def prefix(unique: str) -> str:
    """The key prefix of the test identified by *unique*."""
    return f"gstest:{unique}:"


def config(tmp_path: pathlib.Path, unique: str) -> dict[str, Any]:
    # beego's comma form: sentinels, poolsize, password, dbnum, master name.
    topology = shared_topology()
    return {
        "provider": "redis_sentinel",
        "cookie_name": "sid",
        "provider_config": f"{topology.sentinel_addrs},16,,0,{MASTER_NAME}",
        "key_prefix": prefix(unique),
    }


async def cleanup(unique: str) -> None:
    if _shared is None:
        return
    from .factory_redis import delete_prefix

    await delete_prefix(prefix(unique), port=_shared.master_port)
