"""Private store servers for fault injection: Redis, MariaDB and PostgreSQL in temp dirs.

Each server runs on a free 127.0.0.1 port with its data in a directory of its
own, so that it can be killed, stopped and restarted without touching the
shared servers of the test suite. Every one is stopped by its PID (never by
name); the Redis and MariaDB processes also get ``SIGKILL`` if the process
that started them dies (``PR_SET_PDEATHSIG``), and a PostgreSQL is stopped
at interpreter exit if nobody did.

* :class:`PrivateRedis`: ``redis-server`` with ``appendonly yes`` and
  ``appendfsync always`` (every acknowledged write is on disk);
* :class:`PrivateMariaDB`: ``mariadb-install-db`` into the directory, then
  ``mariadbd --skip-grant-tables`` (as root: ``--user=root``), InnoDB with its
  default ``innodb_flush_log_at_trx_commit = 1``; database ``test``;
* :class:`PrivateRedisCluster`: three ``redis-server`` masters in cluster
  mode (no replicas, no persistence), for the ``redis_cluster`` provider's
  tests and the benchmark harness;
* :class:`PrivatePostgreSQL`: ``initdb`` as the unprivileged ``postgres`` user
  (when run as root: the directory is given to that user and every command
  runs through ``runuser``), ``pg_ctl start`` / ``stop -m immediate``,
  ``fsync = on``; database ``test``.

:func:`missing_binaries` names what is not installed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pathlib
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

__all__ = [
    "PrivateMariaDB", "PrivatePostgreSQL", "PrivateRedis", "PrivateRedisCluster", "PrivateServer",
    "free_port", "missing_binaries", "stop_process",
]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    root = pathlib.Path("/usr/lib/postgresql")
    if root.is_dir():
        for version in sorted(root.iterdir(), reverse=True):
            candidate = version / "bin" / name
            if candidate.exists():
                return str(candidate)
    return None


def missing_binaries(kind: str) -> list[str]:
    """The programs server *kind* (``redis``, ``mariadb``, ``postgresql``) needs that are not installed."""
    if kind == "redis":
        return [b for b in ("redis-server",) if shutil.which(b) is None]
    if kind == "mariadb":
        out = [b for b in ("mariadb-install-db",) if shutil.which(b) is None]
        if shutil.which("mariadbd") is None and not os.path.exists("/usr/sbin/mariadbd"):
            out.append("mariadbd")
        return out
    if kind == "postgresql":
        return [b for b in ("initdb", "pg_ctl") if _pg_bin(b) is None]
    raise ValueError(kind)


def stop_process(proc: subprocess.Popen[Any] | None, wait_s: float = 10) -> None:
    """Stop a child server by PID: ``SIGCONT`` (a stopped process cannot exit), ``SIGTERM``,
    and ``SIGKILL`` if it has not exited within *wait_s* seconds. Nothing if it is gone."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class PrivateServer:
    """What every private server offers: a port, a PID, kill / stop-signal / restart / stop."""

    name = "server"

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn(self, args: list[str], log_name: str) -> None:
        log = open(self.directory / log_name, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, cwd=self.directory
            )
        finally:
            log.close()

    def wait_answering(self, timeout: float = 60.0) -> None:
        """Wait until the port accepts connections (the process must not exit meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _answers(self.port):
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} on port {self.port} exited ({self.proc.returncode}): "
                                   f"{self.log_tail()}")
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} on port {self.port} did not start: {self.log_tail()}")

    def log_tail(self) -> str:
        parts = []
        for path in sorted(self.directory.glob("*.log")):
            with contextlib.suppress(OSError):
                parts.append(f"{path.name}: {path.read_text(errors='replace')[-1500:]}")
        return "\n".join(parts)

    def start(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Start again on the same port and data (after :meth:`kill`)."""
        self.start()

    def kill(self) -> None:
        """``SIGKILL``: no shutdown, nothing flushed that was not already."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def send_signal(self, sig: int) -> None:
        """Send *sig* (``SIGSTOP`` / ``SIGCONT``) to the server process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        """Stop by PID (:func:`stop_process`)."""
        stop_process(self.proc, 15)


class PrivateRedis(PrivateServer):
    """``redis-server`` with an append-only file fsync-ed on every write."""

    name = "redis-server"

    def start(self) -> None:
        self._spawn([
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
            "--logfile", "", "--protected-mode", "no",
        ], "redis.log")
        self._wait_ping()

    def _wait_ping(self, timeout: float = 30.0) -> None:
        import redis

        self.wait_answering(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # answering, then loading the AOF
            client: Any = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.02)
            finally:
                client.close()
        raise RuntimeError(f"redis-server on {self.port} does not answer PING: {self.log_tail()}")


class PrivateMariaDB(PrivateServer):
    """``mariadbd`` on a data directory of its own, no grant tables, database ``test``."""

    name = "mariadbd"

    def __init__(self, directory: pathlib.Path) -> None:
        super().__init__(directory)
        self.datadir = directory / "data"
        self.socket_path = directory / "mysqld.sock"

    @staticmethod
    def _mariadbd() -> str:
        return shutil.which("mariadbd") or "/usr/sbin/mariadbd"

    def install(self) -> None:
        proc = subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True, timeout=120, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")

    def start(self) -> None:
        if not self.datadir.exists():
            self.install()
        self._spawn([
            self._mariadbd(), "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket_path}",
            f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root", "--skip-grant-tables",
            "--skip-name-resolve", "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=1",
            f"--pid-file={self.directory / 'mariadbd.pid'}", f"--log-error={self.directory / 'mariadbd.log'}",
            "--max-connections=200",
        ], "mariadbd-out.log")
        self.wait_answering(60)
        self._sql_ready()

    def _sql_ready(self, timeout: float = 30.0) -> None:
        import pymysql

        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", autocommit=True,
                                       connect_timeout=2)
                try:
                    with conn.cursor() as cur:
                        cur.execute("CREATE DATABASE IF NOT EXISTS test")
                finally:
                    conn.close()
                return
            except pymysql.MySQLError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


class PrivatePostgreSQL(PrivateServer):
    """A PostgreSQL cluster made by ``initdb`` as an unprivileged user; ``pg_ctl`` starts and stops it."""

    name = "postgres"

    def __init__(self, directory: pathlib.Path) -> None:
        super().__init__(directory)
        self.datadir = directory / "data"
        self._runas: list[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            user = "postgres"
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                raise RuntimeError("running as root needs a 'postgres' user to run PostgreSQL") from None
            os.chown(directory, entry.pw_uid, entry.pw_gid)
            self._runas = ["runuser", "-u", user, "--"]
        self._started = False

    def _pg(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        binary = _pg_bin(args[0])
        if binary is None:
            raise RuntimeError(f"{args[0]} is not installed")
        return subprocess.run([*self._runas, binary, *args[1:]], capture_output=True, text=True,
                              timeout=timeout, check=False, cwd=self.directory)

    def start(self) -> None:
        if not self.datadir.exists():
            proc = self._pg("initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                            "--no-instructions")
            if proc.returncode != 0:
                raise RuntimeError(f"initdb failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        options = (f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=on "
                   "-c synchronous_commit=on -c shared_buffers=16MB -c max_connections=100")
        proc = self._pg("pg_ctl", "-D", str(self.datadir), "-l", str(self.directory / "postgres.log"),
                        "-o", options, "-w", "-t", "60", "start")
        if proc.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}"
                               f"{self.log_tail()}")
        if not self._started:
            self._started = True
            atexit.register(self.stop)
        self.wait_answering(30)
        self._create_database()

    def _create_database(self) -> None:
        import asyncio

        import asyncpg

        async def create() -> None:
            conn = await asyncpg.connect(host="127.0.0.1", port=self.port, user="postgres",
                                         database="postgres", ssl="disable", timeout=10)
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'test'"):
                    await conn.execute("CREATE DATABASE test")
            finally:
                await conn.close()

        asyncio.run(create())

    @property
    def pid(self) -> int:
        """The postmaster's PID (first line of ``postmaster.pid``)."""
        return int((self.datadir / "postmaster.pid").read_text().split()[0])

    def stop_immediate(self) -> None:
        """``pg_ctl stop -m immediate``: every process quits at once, no checkpoint (a crash, for WAL)."""
        proc = self._pg("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop", timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"pg_ctl stop -m immediate failed: {proc.stdout}{proc.stderr}")

    def kill(self) -> None:
        self.stop_immediate()

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self) -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        with contextlib.suppress(Exception):
            os.kill(self.pid, signal.SIGCONT)
        self._pg("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop", timeout=60)


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
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port + 10000 <= 65535 and port not in ports and _port_pair_free(port):
            ports.append(port)
    return ports


class PrivateRedisCluster:
    """A private Redis Cluster: *masters* ``redis-server`` processes (no replicas, no
    persistence, ``cluster-require-full-coverage no``), joined with
    ``redis-cli --cluster create`` and stopped by PID."""

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
            preexec_fn=_die_with_parent,
        )

    def _wait_answering(self, port: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            if _answers(port):
                return
            proc = self.procs.get(port)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {port} exited ({proc.returncode})")
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


def temp_dir(prefix: str) -> pathlib.Path:
    """A new directory under the system temp dir (world-traversable, so that ``postgres`` can reach it)."""
    return pathlib.Path(tempfile.mkdtemp(prefix=prefix))
