"""The performance harness: wrk against one Tornado server per configuration, plus micro benchmarks.

    python3 bench/harness.py                  # everything (about 30 minutes): JSON + docs/performance.rst
    python3 bench/harness.py --quick          # seconds: a few configs, small sizes, output in a temp dir
    python3 bench/harness.py --configs bare,memory,naive-memory --concurrency 64 --rounds 3 --seconds 5
    python3 bench/harness.py --before /work/before   # the same, with another checkout of the library
    python3 bench/harness.py --list           # the configurations
    python3 bench/harness.py report RESULTS.json [--compare BEFORE.json]   # regenerate the docs page

HTTP part. For each round, for each configuration in turn (A B C ... A B C
...), a fresh server process (``bench/harness_server.py``) is started pinned
to core 0 (``taskset -c 0``), with ``--sessions`` (10,000) sessions of 10
small keys seeded in its store. A sanity phase sends one seeded cookie twice
and checks the counter (read-write: it went up by one from at least the
seeded value; read-only: it held the seeded value), so a configuration that
loses sessions fails instead of looking fast. Then wrk (``-t1``, pinned to
core 1) runs a 1 s warm-up and one measured run of ``--seconds`` per
concurrency level, each request carrying a random seeded cookie
(``bench/harness_wrk.lua``). Per run: requests/s, p50 and p99 latency (ms),
socket errors, non-2xx answers, "lost" answers (a 2xx whose counter is below
the seeded value), and the server's CPU time per request in microseconds
(utime + stime from ``/proc/<pid>/stat`` over the run, divided by the
requests). Each figure is also taken as a ratio to bare Tornado's requests/s
in the same round (and CPU µs/request minus bare's); the summary is the
median over rounds.

Micro part (``bench/harness_micro.py``, one fresh process per benchmark,
pinned to core 0): actor ask vs a bare ``asyncio.Queue`` round trip, session
work per request on memory, per-request counts of tasks/futures/timers, GC
pass time and longest event-loop stall, RSS of 100,000 sessions.

Stores are private to a run (``gsbench:<hex>:`` redis keys, ``gsbench_<hex>_*``
tables, a temporary directory, and for ``redis_cluster`` a private 3-master
Redis Cluster on free loopback ports, started on first use and stopped by PID)
and removed at the end. Only 127.0.0.1 is
contacted. Servers (or peers) that are not available are skipped with the
reason printed and recorded in the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import http.client
import json
import os
import pathlib
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER = HERE / "harness_server.py"
MICRO = HERE / "harness_micro.py"
LUA = HERE / "harness_wrk.lua"
SCRATCH = HERE / ".scratch"
RESULTS = HERE / "results"
DOCS_RST = ROOT / "docs" / "performance.rst"
DOCS_PNG = ROOT / "docs" / "_static" / "performance.png"
HOST = "127.0.0.1"
#: The seeded counter: a 2xx answer below it came from a session that was not found.
SEED_BASE = 1000
SERVER_CORE, WRK_CORE = "0", "1"

BACKENDS = ("memory", "file", "redis", "redis_cluster", "mysql", "postgresql", "cookie")
#: Which shared server each backend needs (redis_cluster: a private cluster the run starts).
NEEDS = {"redis": "redis", "mysql": "mysql", "postgresql": "postgresql"}
#: Peer packages, installed unpatched from PyPI into their own virtualenvs (plus their store client).
PEERS: dict[str, dict[str, Any]] = {
    "torndsession": {"packages": ["torndsession", "redis"], "backends": ("memory", "file", "redis"),
                     "imports": "import torndsession.sessionhandler, torndsession.driver"},
    "pycket": {"packages": ["pycket", "redis"], "backends": ("redis",),
               "imports": "import pycket.session, pycket.driver"},
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One server configuration: an implementation on a backend, with a read-write or read-only handler."""

    name: str
    impl: str  # bare | library | naive | torndsession | pycket
    backend: str  # "" for bare
    mode: str  # rw | ro
    default: bool
    description: str

    @property
    def store_key(self) -> str:
        """Configurations with the same key share one seeded store in a run (rw and ro of one impl)."""
        return f"{self.impl}-{self.backend}"


def _configs() -> dict[str, Config]:
    out: dict[str, Config] = {}

    def add(cfg: Config) -> None:
        out[cfg.name] = cfg

    add(Config("bare", "bare", "", "rw", True, "bare Tornado: a plain handler, no session"))
    for b in BACKENDS:
        add(Config(b, "library", b, "rw", True, f"the library, {b} provider, read-write handler"))
        add(Config(f"{b}-ro", "library", b, "ro", True, f"the library, {b} provider, read-only handler"))
    naive_what = {
        "memory": "a module-level dict + get_cookie/set_cookie",
        "file": "read a msgpack file / write a temp file + rename (no fsync, no lock)",
        "redis": "redis.asyncio GET + SET of a msgpack blob",
        "redis_cluster": "redis.asyncio.cluster.RedisCluster GET + SET of a msgpack blob",
        "mysql": "aiomysql SELECT + INSERT .. ON DUPLICATE KEY UPDATE",
        "postgresql": "asyncpg SELECT + INSERT .. ON CONFLICT DO UPDATE",
        "cookie": "Fernet(msgpack) by hand with cryptography",
    }
    for b in BACKENDS:
        add(Config(f"naive-{b}", "naive", b, "rw", True, f"naive hand-written code: {naive_what[b]}"))
        add(Config(f"naive-{b}-ro", "naive", b, "ro", False, f"naive {b}, read-only handler"))
    for peer, info in PEERS.items():
        for b in info["backends"]:
            add(Config(f"{peer}-{b}", peer, b, "rw", True, f"{peer} (PyPI, unpatched), its {b} store"))
            add(Config(f"{peer}-{b}-ro", peer, b, "ro", False, f"{peer} {b}, read-only handler"))
    return out


CONFIGS = _configs()
QUICK_CONFIGS = ("bare", "memory", "naive-memory", "redis")
MICRO_PARTS = ("ask", "work", "gc", "rss")


# ---------------------------------------------------------------- options


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The run's options; ``--quick`` fills in small defaults for what was not given."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 round x 1 s, -c1 and -c64, configs bare,memory,naive-memory,redis, "
                   "1,000 sessions, small micro sizes; output in a temp dir")
    p.add_argument("--configs", default=None,
                   help="comma-separated configuration names, 'default' or 'all' (see --list); "
                   "bare is always added")
    p.add_argument("--concurrency", default=None, help="wrk -c levels, comma-separated (default 1,64,256)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument("--seconds", type=int, default=None, help="seconds per measured wrk run (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of wrk warm-up per server (0: none)")
    p.add_argument("--sessions", type=int, default=None, help="seeded sessions per store (default 10000)")
    p.add_argument("--micro", default=None, help="micro benchmarks: 'all', 'none' or a subset of "
                   + ",".join(MICRO_PARTS))
    p.add_argument("--gc-sizes", default=None, help="live sessions per GC measurement "
                   "(default 10000,100000,1000000)")
    p.add_argument("--rss-sessions", type=int, default=None, help="sessions for the RSS measurement "
                   "(default 100000)")
    p.add_argument("--before", default=os.environ.get("GSBENCH_BEFORE") or None, metavar="PATH",
                   help="measure the library of another checkout: PATH goes first on PYTHONPATH of the "
                   "library servers and micro benchmarks (env GSBENCH_BEFORE)")
    p.add_argument("--label", default=None, help="name of this run in the JSON and the file name "
                   "(default: 'before' with --before, else 'main')")
    p.add_argument("--out-dir", default=None, help="write the JSON, the .rst and the .png here "
                   "(default: bench/results/ and, with --docs, docs/)")
    p.add_argument("--docs", action=argparse.BooleanOptionalAction, default=None,
                   help="regenerate docs/performance.rst and its chart (default: on for a full default run)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, cookie files)")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and wrk with taskset")
    p.add_argument("--list", action="store_true", help="list the configurations and exit")
    p.add_argument("--redis-port", type=int, default=int(os.environ.get("GOSESSION_REDIS_PORT", "6379")))
    p.add_argument("--mysql-port", type=int, default=int(os.environ.get("GOSESSION_MYSQL_PORT", "3306")))
    p.add_argument("--pg-port", type=int, default=int(os.environ.get("GOSESSION_PG_PORT", "5432")))
    a = p.parse_args(argv)
    q = a.quick
    explicit_configs = a.configs is not None
    if a.configs in (None, "default"):
        names = list(QUICK_CONFIGS) if q else [c.name for c in CONFIGS.values() if c.default]
    elif a.configs == "all":
        names = list(CONFIGS)
    else:
        names = [n.strip() for n in a.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {unknown}; see --list")
    a.config_names = ["bare", *(n for n in dict.fromkeys(names) if n != "bare")]
    a.levels = [int(x) for x in (a.concurrency or ("1,64" if q else "1,64,256")).split(",")]
    a.rounds = a.rounds or (1 if q else 3)
    a.seconds = a.seconds or (1 if q else 5)
    a.sessions = a.sessions or (1000 if q else 10000)
    micro = a.micro or "all"
    a.micro_parts = [] if micro == "none" else list(MICRO_PARTS) if micro == "all" else [
        m.strip() for m in micro.split(",") if m.strip()]
    bad = set(a.micro_parts) - set(MICRO_PARTS)
    if bad:
        p.error(f"unknown micro benchmark(s) {sorted(bad)}; choose from {', '.join(MICRO_PARTS)}")
    a.gc_sizes = [int(x) for x in (a.gc_sizes or ("1000,10000" if q else "10000,100000,1000000")).split(",")]
    a.rss_sessions = a.rss_sessions or (10000 if q else 100000)
    if a.before:
        a.before = str(pathlib.Path(a.before).resolve())
        if not (pathlib.Path(a.before) / "gosession_tornado" / "__init__.py").is_file():
            p.error(f"--before {a.before}: no gosession_tornado/ package there")
    a.label = a.label or ("before" if a.before else "main")
    if a.docs is None:
        a.docs = not q and not a.before and not explicit_configs and a.out_dir is None
    return a


# ---------------------------------------------------------------- machine facts


def _git(path: pathlib.Path, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def checkout_info(path: pathlib.Path) -> dict[str, Any]:
    """Commit, subject and whether ``gosession_tornado/`` has uncommitted changes, for *path*."""
    return {
        "path": str(path),
        "commit": _git(path, "rev-parse", "HEAD"),
        "subject": _git(path, "log", "-1", "--format=%s"),
        "library_dirty": bool(_git(path, "status", "--porcelain", "--", "gosession_tornado")),
    }


def machine_info() -> dict[str, Any]:
    """CPU model, cores, kernel, memory."""
    model = platform.processor() or "?"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(), "memory_gib": mem_gib,
            "hostname": socket.gethostname()}


def wrk_version() -> str:
    """``wrk -v``'s first line, or "" when wrk is missing."""
    if not shutil.which("wrk"):
        return ""
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].split(" Copyright")[0].strip() if text else "wrk"


# ---------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of process *pid* (all its threads), in seconds."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """VmRSS of process *pid* in MiB (0 if unknown)."""
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# ---------------------------------------------------------------- stores and peers


def port_answers(port: int) -> bool:
    """True if something accepts a TCP connection on 127.0.0.1:*port* within a second."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


class Run:
    """One harness run: its private store names, scratch directory, peer interpreters."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = secrets.token_hex(4)
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="gsbench-run-"))
        self.redis_prefix = f"gsbench:{self.tag}:"
        self.tables: set[str] = set()
        self.fernet_key = ""
        self.peer_python: dict[str, str] = {}
        self.peer_problem: dict[str, str] = {}
        self.peer_freeze: dict[str, list[str]] = {}
        self.server_ok: dict[str, bool] = {}
        #: The private Redis Cluster of the redis_cluster configurations (started on first use).
        self.cluster: Any = None
        self.cluster_problem: str | None = None

    def mysql_user(self) -> dict[str, Any]:
        return {"port": self.args.mysql_port, "user": os.environ.get("GOSESSION_MYSQL_USER", "root"),
                "password": os.environ.get("GOSESSION_MYSQL_PASSWORD", ""),
                "db": os.environ.get("GOSESSION_MYSQL_DB", "test")}

    def pg_user(self) -> dict[str, Any]:
        return {"port": self.args.pg_port, "user": os.environ.get("GOSESSION_PG_USER", "postgres"),
                "password": os.environ.get("GOSESSION_PG_PASSWORD", ""),
                "db": os.environ.get("GOSESSION_PG_DB", "test")}

    def store(self, cfg: Config) -> dict[str, Any]:
        """The backend parameters of *cfg* (shared by its rw and ro forms)."""
        short = {"library": "lib", "naive": "naive", "torndsession": "td", "pycket": "pk"}.get(cfg.impl, "x")
        if not self.fernet_key:
            from cryptography.fernet import Fernet

            self.fernet_key = Fernet.generate_key().decode("ascii")
        table = f"gsbench_{self.tag}_{short}"
        if cfg.backend in ("mysql", "postgresql"):
            self.tables.add(f"{cfg.backend}:{table}")
        return {
            "redis_port": self.args.redis_port,
            "redis_prefix": f"{self.redis_prefix}{short}:",
            "cluster_nodes": self.cluster.nodes if self.cluster is not None else "",
            "mysql": {**self.mysql_user(), "table": table},
            "pg": {**self.pg_user(), "table": table},
            "directory": str(self.dir / f"store-{cfg.store_key}"),
            "fernet_key": self.fernet_key,
            "secret": "gsbench-" + self.tag,
        }

    def unavailable(self, cfg: Config) -> str | None:
        """Why *cfg* cannot run here (server down, peer not installable), or None."""
        if cfg.backend == "redis_cluster":
            return self.ensure_cluster()
        server = NEEDS.get(cfg.backend)
        if server:
            port = {"redis": self.args.redis_port, "mysql": self.args.mysql_port,
                    "postgresql": self.args.pg_port}[server]
            if server not in self.server_ok:
                self.server_ok[server] = port_answers(port)
            if not self.server_ok[server]:
                return f"no {server} server answers on {HOST}:{port}"
        if cfg.impl in PEERS:
            self.ensure_peer(cfg.impl)
            return self.peer_problem.get(cfg.impl)
        return None

    def ensure_cluster(self) -> str | None:
        """Start (once) a private 3-master Redis Cluster on free loopback ports; why not, or None.

        The test suite's cluster (:class:`reliability.private_servers.PrivateRedisCluster`):
        no replicas, no persistence, stopped by PID in :meth:`cleanup`. Every round's
        servers of a redis_cluster configuration share it, each under its own key prefix.
        """
        if self.cluster is not None or self.cluster_problem is not None:
            return self.cluster_problem
        if not (shutil.which("redis-server") and shutil.which("redis-cli")):
            self.cluster_problem = "redis-server and redis-cli are needed to start a private Redis Cluster"
            return self.cluster_problem
        sys.path.insert(0, str(ROOT))
        from reliability.private_servers import PrivateRedisCluster

        directory = self.dir / "redis-cluster"
        directory.mkdir()
        cluster = PrivateRedisCluster(directory)
        try:
            cluster.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            self.cluster_problem = f"the private Redis Cluster did not start: {exc}"
            return self.cluster_problem
        self.cluster = cluster
        print(f"  private Redis Cluster on {cluster.nodes}", flush=True)
        return None

    def ensure_peer(self, peer: str) -> None:
        """Create (once) ``bench/.scratch/venv-<peer>`` with the peer from PyPI, unpatched."""
        if peer in self.peer_python or peer in self.peer_problem:
            return
        import tornado

        venv = SCRATCH / f"venv-{peer}"
        python = venv / "bin" / "python"
        wanted = [*PEERS[peer]["packages"], f"tornado=={tornado.version}"]
        marker = venv / "gsbench-requirements.txt"
        try:
            if not (python.exists() and marker.exists() and marker.read_text().split() == wanted):
                print(f"  creating {venv.relative_to(ROOT)}: pip install {' '.join(wanted)}", flush=True)
                base = getattr(sys, "_base_executable", sys.executable)
                subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True,
                               capture_output=True, text=True, timeout=300)
                subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                *wanted], check=True, capture_output=True, text=True, timeout=600)
                marker.write_text("\n".join(wanted) + "\n")
            check = subprocess.run([str(python), "-W", "error::SyntaxWarning", "-c", PEERS[peer]["imports"]],
                                   capture_output=True, text=True, timeout=60, check=False)
            if check.returncode:
                self.peer_problem[peer] = f"{peer} does not import: {check.stderr.strip()[-500:]}"
                return
            freeze = subprocess.run([str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
                                    capture_output=True, text=True, timeout=60, check=False)
            self.peer_freeze[peer] = freeze.stdout.split()
            self.peer_python[peer] = str(python)
        except subprocess.CalledProcessError as exc:
            self.peer_problem[peer] = (f"installing {peer} failed: "
                                       f"{(exc.stderr or exc.stdout or '').strip()[-500:]}")
        except (OSError, subprocess.SubprocessError) as exc:
            self.peer_problem[peer] = f"installing {peer} failed: {exc}"

    def python_for(self, cfg: Config) -> str:
        return self.peer_python[cfg.impl] if cfg.impl in PEERS else sys.executable

    def env_for(self, cfg: Config | None) -> dict[str, str]:
        """The environment of a server (or micro) process: ``--before`` goes first on PYTHONPATH."""
        env = dict(os.environ)
        if self.args.before and (cfg is None or cfg.impl == "library"):
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self.args.before, env.get("PYTHONPATH")) if p)
        return env

    def cleanup(self) -> None:
        """Delete the run's redis keys and tables, stop its Redis Cluster, remove its scratch directory."""
        import asyncio

        sys.path.insert(0, str(HERE))
        import _common

        async def clean() -> None:
            if self.server_ok.get("redis"):
                await _common.delete_redis_prefix(self.args.redis_port, self.redis_prefix)
            for entry in sorted(self.tables):
                backend, table = entry.split(":", 1)
                if backend == "mysql" and self.server_ok.get("mysql"):
                    await _common.drop_mysql_table(self.args.mysql_port, table)
                if backend == "postgresql" and self.server_ok.get("postgresql"):
                    await _common.drop_pg_table(self.args.pg_port, table)

        try:
            asyncio.run(clean())
        except Exception as exc:  # report, do not hide the results
            print(f"cleanup failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if self.cluster is not None:  # no persistence: its keys go with it
            self.cluster.stop()
            self.cluster = None
        if not self.args.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- one server


class ServerError(Exception):
    """A server did not come up or failed its sanity check."""


class Server:
    """A running ``harness_server.py`` process for one configuration."""

    def __init__(self, run: Run, cfg: Config, round_no: int) -> None:
        self.run, self.cfg = run, cfg
        tag = f"{cfg.name}-r{round_no}"
        self.cookies = run.dir / f"cookies-{cfg.store_key}.txt"
        self.ready_path = run.dir / f"ready-{tag}.json"
        self.log_path = run.dir / f"server-{tag}.log"
        spec = {
            "config": cfg.name, "impl": cfg.impl, "backend": cfg.backend, "mode": cfg.mode,
            "sessions": run.args.sessions, "seed_base": SEED_BASE, "cookies": str(self.cookies),
            "ready": str(self.ready_path), "store": run.store(cfg) if cfg.impl != "bare" else {},
        }
        spec_path = run.dir / f"spec-{tag}.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        cmd = [run.python_for(cfg), str(SERVER), str(spec_path)]
        if not run.args.no_pin and shutil.which("taskset"):
            cmd = ["taskset", "-c", SERVER_CORE, *cmd]
        self.log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=run.env_for(cfg), cwd=str(run.dir))
        self.ready: dict[str, Any] = {}

    def wait_ready(self, timeout: float = 900.0) -> dict[str, Any]:
        """The ready file's content once the server listens (seeding included)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_path.exists():
                self.ready = json.loads(self.ready_path.read_text())
                return self.ready
            if self.proc.poll() is not None:
                raise ServerError(f"server exited with status {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.05)
        raise ServerError(f"server not ready after {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        self.log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    def stop(self) -> None:
        """SIGTERM, wait up to 30 s, then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def first_cookie(self) -> str:
        if self.cfg.impl == "bare":
            return ""
        with open(self.cookies, encoding="ascii") as f:
            return f.readline().strip()

    def sanity(self) -> None:
        """Two requests on one seeded session; the counter must show the session was found and saved.

        :raises ServerError: on a non-2xx answer or a counter that is not what it should be.
        """
        line = self.first_cookie()
        name, _, value = line.partition("=")
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        bodies: list[str] = []
        try:
            for _ in range(2):
                conn.request("GET", "/", headers={"Cookie": f"{name}={value}"} if line else {})
                resp = conn.getresponse()
                body = resp.read().decode("utf-8", "replace")
                if not 200 <= resp.status < 300:
                    raise ServerError(
                        f"sanity: GET / answered {resp.status}: {body[:200]}\n{self.log_tail()}")
                for header in resp.headers.get_all("Set-Cookie") or []:
                    if line and header.startswith(name + "="):
                        value = header.split(";", 1)[0][len(name) + 1 :]
                bodies.append(body)
        finally:
            conn.close()
        if self.cfg.impl == "bare":
            return
        try:
            first, second = (int(b) for b in bodies)
        except ValueError:
            raise ServerError(f"sanity: bodies are not counters: {bodies!r}") from None
        if self.cfg.mode == "rw" and not (first > SEED_BASE and second == first + 1):
            raise ServerError(f"sanity: counter went {first} -> {second}; expected > {SEED_BASE} and +1 "
                              "(the seeded session was not found or not saved)")
        if self.cfg.mode == "ro" and not (first >= SEED_BASE and second == first):
            raise ServerError(f"sanity: read-only counter went {first} -> {second}; expected >= {SEED_BASE}, "
                              "unchanged")


def run_wrk(run: Run, server: Server, concurrency: int, seconds: int) -> dict[str, Any]:
    """One wrk run against *server*; its totals (from the Lua ``done()``) and the server's CPU and RSS."""
    check = -1 if server.cfg.impl == "bare" else SEED_BASE
    cookies = "" if server.cfg.impl == "bare" else str(server.cookies)
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "--timeout", "10s",
           "-s", str(LUA), f"http://{HOST}:{server.port}/", "--", cookies, "/", str(check)]
    if not run.args.no_pin and shutil.which("taskset"):
        cmd = ["taskset", "-c", WRK_CORE, *cmd]
    pid = server.proc.pid
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=False)
    cpu1, wall1 = cpu_seconds(pid), time.monotonic()
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith("GSBENCH ")]
    if proc.returncode or not found:
        raise ServerError(
            f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-500:]} {proc.stdout[-500:]}")
    w = json.loads(found[-1][len("GSBENCH "):])
    requests = int(w["requests"])
    secs = w["duration_us"] / 1e6
    errors = w["connect"] + w["read"] + w["write"] + w["timeout"] + w["non2xx"] + w["lost"]
    return {
        "requests": requests,
        "seconds": round(secs, 3),
        "rps": round(requests / secs, 1) if secs else 0.0,
        "p50_ms": w["p50_us"] / 1000, "p90_ms": w["p90_us"] / 1000, "p99_ms": w["p99_us"] / 1000,
        "max_ms": w["max_us"] / 1000,
        "socket_errors": w["connect"] + w["read"] + w["write"] + w["timeout"],
        "timeouts": w["timeout"],
        "non2xx": w["non2xx"],
        "lost": w["lost"],
        "cpu_us_per_req": round((cpu1 - cpu0) * 1e6 / requests, 1) if requests else None,
        # the share of core 0 the server got (near 1.0 when it is CPU-bound and undisturbed)
        "server_cpu_share": round((cpu1 - cpu0) / (wall1 - wall0), 2) if wall1 > wall0 else None,
        "server_rss_mib": round(rss_mib(pid), 1),
        **({"server_log_tail": server.log_tail(40)} if errors else {}),
    }


# ---------------------------------------------------------------- the HTTP part


def http_part(run: Run) -> dict[str, Any]:
    """Every round, every configuration, every level; the per-run rows and the summary."""
    args = run.args
    configs: dict[str, dict[str, Any]] = {}
    selected: list[Config] = []
    for name in args.config_names:
        cfg = CONFIGS[name]
        configs[name] = {"impl": cfg.impl, "backend": cfg.backend, "mode": cfg.mode,
                         "description": cfg.description, "status": "ok"}
        problem = run.unavailable(cfg)
        if problem:
            configs[name].update(status="skipped", reason=problem)
            print(f"{name}: skipped ({problem})", flush=True)
            continue
        selected.append(cfg)
    if not shutil.which("wrk"):
        reason = "wrk is not installed (apt-get install wrk; scripts/test.sh does it as root)"
        print(f"http: skipped ({reason})", flush=True)
        for c in selected:
            configs[c.name].update(status="skipped", reason=reason)
        return {"configs": configs, "runs": [], "summary": {}, "skipped": reason}
    rows: list[dict[str, Any]] = []
    failed: set[str] = set()
    for rnd in range(1, args.rounds + 1):
        for cfg in selected:
            if cfg.name in failed:
                continue
            label = f"round {rnd}/{args.rounds} {cfg.name}"
            server = Server(run, cfg, rnd)
            try:
                ready = server.wait_ready()
                configs[cfg.name].setdefault("versions", ready.get("versions", {}))
                server.sanity()
                if args.warmup:
                    run_wrk(run, server, max(args.levels), args.warmup)
                for level in args.levels:
                    r = run_wrk(run, server, level, args.seconds)
                    rows.append({"round": rnd, "config": cfg.name, "concurrency": level, **r})
                    errors = r["socket_errors"] + r["non2xx"] + r["lost"]
                    print(f"{label:<34} -c{level:<4} {r['rps']:>8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                          f"p99 {r['p99_ms']:7.2f} ms  cpu {r['cpu_us_per_req'] or 0:6.0f} us/req"
                          + (f"  ERRORS socket {r['socket_errors']} non-2xx {r['non2xx']} lost {r['lost']}"
                             if errors else ""), flush=True)
            except ServerError as exc:
                failed.add(cfg.name)
                configs[cfg.name].update(status="failed", reason=str(exc)[:2000])
                print(f"{label}: FAILED: {exc}", flush=True)
            finally:
                server.stop()
    return {"configs": configs, "runs": rows, "summary": summarize(rows, args.levels, configs)}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def summarize(rows: list[dict[str, Any]], levels: list[int], configs: dict[str, Any]) -> dict[str, Any]:
    """Per level and configuration, the median over rounds of each figure and of its same-round ratios."""
    by: dict[tuple[int, int, str], dict[str, Any]] = {(r["round"], r["concurrency"], r["config"]): r
                                                        for r in rows}
    out: dict[str, Any] = {}
    for level in levels:
        table: dict[str, Any] = {}
        names = list(dict.fromkeys(r["config"] for r in rows if r["concurrency"] == level))
        for name in names:
            mine = [r for r in rows if r["config"] == name and r["concurrency"] == level]
            ratio, over, vs_naive = [], [], []
            cfg = CONFIGS.get(name)
            naive = None
            if cfg and cfg.impl not in ("naive", "bare"):
                naive = f"naive-{cfg.backend}" + ("-ro" if cfg.mode == "ro" else "")
            for r in mine:
                bare = by.get((r["round"], level, "bare"))
                if bare and bare["rps"]:
                    ratio.append(r["rps"] / bare["rps"])
                    if r["cpu_us_per_req"] is not None and bare["cpu_us_per_req"] is not None:
                        over.append(r["cpu_us_per_req"] - bare["cpu_us_per_req"])
                peer = by.get((r["round"], level, naive)) if naive else None
                if peer and peer["rps"]:
                    vs_naive.append(r["rps"] / peer["rps"])
            table[name] = {
                "rounds": len(mine),
                "rps": _median([r["rps"] for r in mine]),
                "x_bare": _median(ratio),
                "x_naive": _median(vs_naive),
                "naive": naive if vs_naive else None,
                "p50_ms": _median([r["p50_ms"] for r in mine]),
                "p99_ms": _median([r["p99_ms"] for r in mine]),
                "cpu_us_per_req": _median(
                    [r["cpu_us_per_req"] for r in mine if r["cpu_us_per_req"] is not None]),
                "cpu_us_over_bare": _median(over),
                "cpu_share": _median([r["server_cpu_share"] for r in mine
                                      if r.get("server_cpu_share") is not None]),
                "socket_errors": sum(r["socket_errors"] for r in mine),
                "non2xx": sum(r["non2xx"] for r in mine),
                "lost": sum(r["lost"] for r in mine),
            }
        out[str(level)] = table
    return out


def print_summary(http: dict[str, Any], rounds: int) -> None:
    """The summary tables on stdout."""
    for level, table in http.get("summary", {}).items():
        print(f"\n-c{level}: median of {rounds} round(s); ratios to bare Tornado in the same round")
        print(f"{'configuration':<24} {'req/s':>8} {'x bare':>7} {'x naive':>8} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'CPU us/req':>10} {'over bare':>9} {'share':>5} {'errors':>7}")
        for name, s in table.items():
            xn = f"{s['x_naive']:.2f}" if s["x_naive"] is not None else "-"
            over = f"{s['cpu_us_over_bare']:+.0f}" if s["cpu_us_over_bare"] is not None else "-"
            errs = s["socket_errors"] + s["non2xx"] + s["lost"]
            print(f"{name:<24} {s['rps'] or 0:>8.0f} {s['x_bare'] or 0:>7.2f} {xn:>8} "
                  f"{s['p50_ms'] or 0:>7.2f} {s['p99_ms'] or 0:>7.2f} {s['cpu_us_per_req'] or 0:>10.0f} "
                  f"{over:>9} {s['cpu_share'] or 0:>5.2f} {errs:>7}")


# ---------------------------------------------------------------- micro benchmarks


def micro_part(run: Run) -> dict[str, Any]:
    """Each micro benchmark in its own fresh process (pinned to the server core); their JSON."""
    args = run.args
    q = args.quick
    plans: dict[str, list[str]] = {
        "ask": ["ask", "--calls", "2000" if q else "20000", "--reps", "3" if q else "7"],
        "work": ["work", "--requests", "500" if q else "5000", "--reps", "3" if q else "7",
                 "--sessions", str(min(args.sessions, 10000))],
        "gc": ["gc", "--sizes", ",".join(map(str, args.gc_sizes))],
        "rss": ["rss", "--sessions", str(args.rss_sessions)],
    }
    out: dict[str, Any] = {}
    for part in args.micro_parts:
        cmd = [sys.executable, str(MICRO), *plans[part]]
        if not args.no_pin and shutil.which("taskset"):
            cmd = ["taskset", "-c", SERVER_CORE, *cmd]
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=run.env_for(None), timeout=3600,
                              check=False)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith("GSMICRO ")]
        if proc.returncode or not found:
            out[part] = {"status": "failed", "reason": (proc.stderr or proc.stdout).strip()[-2000:]}
            print(f"micro {part}: FAILED\n{out[part]['reason']}", flush=True)
            continue
        out[part] = json.loads(found[-1][len("GSMICRO "):])
        out[part]["wall_s"] = round(time.monotonic() - started, 1)
        for line in proc.stdout.splitlines():
            if not line.startswith("GSMICRO "):
                print(line, flush=True)
    return out


# ---------------------------------------------------------------- main


def versions_here() -> dict[str, str]:
    """Versions of what the harness process itself sees (the project's virtualenv)."""
    import tornado

    out = {"python": platform.python_version(), "tornado": tornado.version}
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("msgpack", "redis", "aiomysql", "asyncpg", "cryptography", "matplotlib"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the harness (or ``report``); exit 1 if a configuration or micro benchmark failed."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        sys.path.insert(0, str(HERE))
        import harness_report

        return harness_report.main(argv[1:])
    args = parse_args(argv)
    if args.list:
        for cfg in CONFIGS.values():
            print(f"{cfg.name:<24} {'default' if cfg.default else '       '}  {cfg.description}")
        return 0
    started = datetime.datetime.now(datetime.UTC)
    run = Run(args)
    library_root = pathlib.Path(args.before) if args.before else ROOT
    meta = {
        "label": args.label,
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python3 bench/harness.py " + " ".join(argv),
        "quick": args.quick,
        "machine": machine_info(),
        "versions": versions_here(),
        "wrk": wrk_version(),
        "library_checkout": checkout_info(library_root),
        "harness_checkout": checkout_info(ROOT),
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "warmup_s": args.warmup,
                     "levels": args.levels, "sessions": args.sessions, "keys_per_session": 10,
                     "wrk_threads": 1, "pinned": not args.no_pin and bool(shutil.which("taskset")),
                     "server_core": SERVER_CORE, "wrk_core": WRK_CORE, "configs": args.config_names,
                     "micro": args.micro_parts, "gc_sizes": args.gc_sizes, "rss_sessions": args.rss_sessions},
    }
    print(f"harness: {args.label} library at {library_root} ({meta['library_checkout']['commit'][:10]}); "
          f"{args.rounds} round(s) x {args.seconds} s at -c{','.join(map(str, args.levels))}; "
          f"scratch {run.dir}", flush=True)
    results: dict[str, Any] = {"schema": 1, "meta": meta}
    try:
        results["http"] = http_part(run)
        meta["peers"] = {p: {"python": run.peer_python.get(p), "freeze": run.peer_freeze.get(p),
                             "problem": run.peer_problem.get(p)}
                         for p in PEERS if p in run.peer_python or p in run.peer_problem}
        results["micro"] = micro_part(run)
    finally:
        run.cleanup()
    meta["wall_s"] = round((datetime.datetime.now(datetime.UTC) - started).total_seconds(), 1)
    print_summary(results["http"], args.rounds)

    stamp = started.strftime("%Y%m%d-%H%M")
    if args.out_dir:
        out_dir = pathlib.Path(args.out_dir)
    elif args.quick:
        out_dir = pathlib.Path(tempfile.mkdtemp(prefix="gsbench-quick-"))
    else:
        out_dir = RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "results.json" if args.quick or args.out_dir else f"harness-{stamp}-{args.label}.json"
    json_path = out_dir / name
    sys.path.insert(0, str(HERE))
    import harness_report

    rst = png = None
    if args.docs:
        rst, png = DOCS_RST, DOCS_PNG
    elif args.quick or args.out_dir:
        rst, png = out_dir / "performance.rst", out_dir / "performance.png"
    if rst is not None and png is not None:
        harness_report.write(results, rst, png, json_name=_display(json_path))  # sets results["chart"]
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nresults: {json_path}", flush=True)
    if rst is not None and png is not None:
        chart = png if png.exists() else f"(not written: {results.get('chart')})"
        print(f"report: {rst}\nchart: {chart}")
    else:
        print("docs not regenerated (a partial run); to write them: python3 bench/harness.py report "
              f"{_display(json_path)} [--rst PATH --png PATH]")
    bad = [n for n, c in results["http"]["configs"].items() if c.get("status") == "failed"]
    bad += [f"micro {p}" for p, m in results["micro"].items() if m.get("status") == "failed"]
    if bad:
        print(f"FAILED: {', '.join(bad)}", flush=True)
    return 1 if bad else 0


def _display(path: pathlib.Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
