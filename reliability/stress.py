"""The model-checked stress run, its soak mode and the command line that writes the results.

One run: set up a provider's store (:mod:`reliability.stores`), start
``processes`` server processes (:mod:`reliability.app`) on it, and let
``clients`` concurrent clients run a random mix of ``set`` / ``del`` /
``read`` / ``incr`` / ``flash_add`` / ``flash_read`` / ``regen`` /
``destroy`` on ``sessions`` shared sessions, each request to a random
process over keep-alive connections. Every response is recorded in a
:class:`~reliability.model.Model` and checked (see its docstring). After the
load, every session is read once more (the *final reads*). Server-side
providers get two extra requests after each successful ``regen`` /
``destroy`` (a read and a write with the dead id: *probes*), which must be
served a fresh empty session.

The ``cookie`` provider can only promise what one client sees of its own
session (each response carries the whole session): there, each session has
one client, which sends the cookie it got last.

Command line (from the repository root)::

    python -m reliability.stress --provider redis                 # CI size, prints the result
    python -m reliability.stress --all --fuzz --report            # every provider + fuzz, then the report
    python -m reliability.stress --provider redis --minutes 5     # soak: requests, errors, p99, RSS/fds
    python -m reliability.stress --provider redis --fault NAME    # a fault scenario (reliability.faults)

Results go to ``reliability/results/`` (``--out``): ``stress-<provider>.json``,
``soak-<provider>.json``, ``fault-<name>-<provider>.json``; ``--report``
renders ``docs/reliability.rst`` from that directory (:mod:`reliability.report`).
The exit status is 1 if any run broke an invariant.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import random
import shutil
import signal
import sys
import tempfile
import time
import urllib.parse
from typing import Any

from .faults import Fault, RunContext, get_fault
from .httpclient import Connection
from .model import COUNTER_KEYS, REGISTER_KEYS, SERIAL_KINDS, Model, Op
from .stores import DEFAULT_PROCESSES, PROVIDERS, StoreSetup, StoreUnavailableError, open_store

__all__ = ["MIX", "RunConfig", "ServerProcess", "main", "run", "run_in"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = pathlib.Path(__file__).resolve().parent / "results"

#: Relative weights of the operations a client picks from.
MIX: dict[str, float] = {
    "read": 22, "set": 30, "del": 8, "incr": 22, "flash_add": 7, "flash_read": 5, "regen": 4, "destroy": 2,
}


@dataclasses.dataclass
class RunConfig:
    """One run's size and shape."""

    provider: str = "memory"
    #: Server processes (``None``: one for memory, three for the shared stores).
    processes: int | None = None
    clients: int = 64
    sessions: int = 8
    #: Stop after this many requests (probes included) ...
    requests: int | None = 6000
    #: ... or after this many seconds (soak); the first limit reached ends the load.
    seconds: float | None = None
    seed: int | None = None
    fault: str = "none"
    #: Soak: resource growth is measured from this many seconds into the run.
    warmup: float = 10.0
    #: Seconds between two samples of the server processes' RSS and fds.
    sample_every: float = 2.0
    #: Client-side timeout of one request (longer than the library's provider_timeout).
    request_timeout: float = 20.0
    #: Print a progress line per sample (soak on a terminal).
    progress: bool = False
    #: Seconds a session lives idle (``max_lifetime``; GC every quarter of it); ``None``: the
    #: provider's default (an hour). Soak runs use a short one, so that the sessions the run
    #: abandons expire and the store reaches a steady size.
    max_lifetime: int | None = None
    #: ``SessionManager`` settings to change for this run (``--set key=value``).
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def process_count(self) -> int:
        if self.processes is not None:
            return self.processes
        return DEFAULT_PROCESSES.get(self.provider, 2)


# ---------------------------------------------------------------- server processes


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the server gets SIGKILL if the driver dies, so none outlives a run."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ServerProcess:
    """One ``python -m reliability.app`` process (stopped by PID)."""

    def __init__(self, index: int, spec: dict[str, Any], workdir: pathlib.Path) -> None:
        self.index = index
        self.spec = spec
        self.workdir = workdir
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = workdir / f"server-{index}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60.0) -> None:
        """Start it and wait for ``LISTENING <port>``; started again, it listens on the same port."""
        spec_path = self.workdir / f"server-{self.index}.json"
        spec_path.write_text(json.dumps(self.spec), encoding="utf-8")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        log = open(self.log_path, "ab")  # noqa: SIM115, ASYNC230 - handed to the child, closed below
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "reliability.app", f"@{spec_path}",
                stdout=asyncio.subprocess.PIPE, stderr=log, cwd=self.workdir, env=env,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            line = b""
        if not line.startswith(b"LISTENING "):
            await self.stop()
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"server process {self.index} did not start: {line!r}\n{tail}")
        self.port = int(line.split()[1])
        self.spec = {**self.spec, "port": self.port}  # a restart (fault scenarios) keeps the port

    def rss_kb(self) -> int | None:
        """Resident set size (kB) from ``/proc``, or ``None``."""
        try:
            for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (OSError, ValueError, AssertionError):
            return None
        return None

    def fds(self) -> int | None:
        """Open file descriptors, or ``None``."""
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except (OSError, AssertionError):
            return None

    def send_signal(self, sig: int) -> None:
        """Send *sig* to the process (fault scenarios: SIGKILL, SIGSTOP, SIGCONT)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; waits for the exit."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


# ---------------------------------------------------------------- the load


class _Load:
    """The clients of one run and what they share."""

    def __init__(self, cfg: RunConfig, setup: StoreSetup, servers: list[ServerProcess], model: Model,
                 fault: Fault, ctx: RunContext) -> None:
        self.cfg = cfg
        self.setup = setup
        self.servers = servers
        self.model = model
        self.fault = fault
        self.ctx = ctx
        self.cookie_name = str(setup.config.get("cookie_name", "gosessionid"))
        self.rng = random.Random(cfg.seed)
        self.issued = 0
        self.deadline = time.monotonic() + cfg.seconds if cfg.seconds else None
        self.fault_done = asyncio.Event()
        self.kinds = list(MIX)
        self.weights = [MIX[k] for k in self.kinds]

    def budget_left(self) -> bool:
        if self.cfg.requests is not None and self.issued >= self.cfg.requests:
            return False
        return not (self.deadline is not None and time.monotonic() >= self.deadline)

    def running(self) -> bool:
        return self.budget_left() or not self.fault_done.is_set()

    async def send(self, conns: list[Connection], op: Op) -> None:
        """Send *op* to a random process and record the outcome in the model."""
        self.issued += 1
        params: dict[str, str] = {}
        if op.key is not None:
            params["k"] = op.key
        if op.value is not None:
            params["v"] = str(op.value)
        target = f"/op/{op.kind}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        headers = [("Cookie", f"{self.cookie_name}={op.cookie_sent}")] if op.cookie_sent else []
        conn = self.rng.choice(conns)
        self.model.mark_sent(op, time.monotonic())
        try:
            resp = await conn.request("GET", target, headers)
        except Exception as exc:
            self.model.complete(op, 0, None, [], None, time.monotonic(), error=f"{type(exc).__name__}: {exc}")
            return
        received = time.monotonic()
        body: dict[str, Any] | None = None
        if resp.status == 200:
            try:
                body = resp.json()
            except ValueError:
                self.model.complete(op, resp.status, None, [], None, received, error="undecodable body")
                return
        self.model.complete(op, resp.status, body, resp.get_all("Set-Cookie"), resp.header("Vary"), received)

    def _op(self, kind: str, slot: int, client: int) -> Op:
        key: str | None = None
        value: str | None = None
        seq = self.model._seq + 1
        if kind in ("set", "del"):
            key = self.rng.choice(REGISTER_KEYS)
        elif kind == "incr":
            key = self.rng.choice(COUNTER_KEYS)
        if kind == "set":
            value = f"s{slot}c{client}n{seq}"
        elif kind == "flash_add":
            value = f"f{slot}c{client}n{seq}"
        return self.model.prepare(kind, slot, client, key, value)

    async def client(self, index: int) -> None:
        conns = [Connection("127.0.0.1", s.port, timeout=self.cfg.request_timeout) for s in self.servers]
        rng = random.Random(self.rng.random())
        try:
            while self.running():
                if self.model.client_side:
                    slot = index % len(self.model.slots)  # one client per cookie session
                else:
                    slot = rng.randrange(len(self.model.slots))
                kind = rng.choices(self.kinds, self.weights)[0]
                if kind not in SERIAL_KINDS:
                    await self.send(conns, self._op(kind, slot, index))
                    continue
                async with self.model.slots[slot].mutex:
                    s = self.model.slots[slot]
                    if kind in ("regen", "destroy") and s.sid is None:
                        kind = "set"  # nothing to move or end: start a session instead
                    op = self._op(kind, slot, index)
                    await self.send(conns, op)
                    if kind in ("regen", "destroy") and op.ok and not self.model.client_side:
                        await self.probe(conns, op)
        finally:
            for conn in conns:
                conn.close()

    async def probe(self, conns: list[Connection], op: Op) -> None:
        """After a regenerate/destroy: a read and a write with the dead id must get a fresh session."""
        dead = op.sid_sent
        if dead is None or op.sid_in != dead:
            return
        for kind in ("read", "set"):
            value = f"p{op.slot}n{self.model._seq + 1}" if kind == "set" else None
            probe = self.model.prepare(kind, op.slot, op.client, "k0" if kind == "set" else None, value,
                                       sid=dead, probe=True)
            await self.send(conns, probe)

    async def final_reads(self) -> None:
        """One read of every session, once the load has stopped."""
        conns = [Connection("127.0.0.1", s.port, timeout=self.cfg.request_timeout) for s in self.servers]
        try:
            for slot in self.model.slots:
                if slot.sid is not None:
                    await self.send(conns, self.model.prepare("read", slot.index, -1, final=True))
        finally:
            for conn in conns:
                conn.close()

    async def sample(self, samples: list[dict[str, Any]]) -> None:
        """Every ``sample_every`` seconds, while the load runs: requests, each process's RSS and fds."""
        while self.budget_left() or not samples:
            samples.append({
                "t": round(self.ctx.elapsed(), 2),
                "requests": self.issued,
                "rss_kb": [s.rss_kb() for s in self.servers],
                "fds": [s.fds() for s in self.servers],
            })
            if self.cfg.progress:
                last = samples[-1]
                print(f"  t={last['t']:7.1f}s requests={last['requests']:>8} "
                      f"violations={sum(self.model.violations.values())} rss_kb={last['rss_kb']} "
                      f"fds={last['fds']}", flush=True)
            await asyncio.sleep(self.cfg.sample_every)


def _growth(samples: list[dict[str, Any]], warmup: float) -> dict[str, Any]:
    """RSS and fd change per process from the first sample after *warmup* to the last."""
    after = [s for s in samples if s["t"] >= warmup]
    if len(after) < 2:
        return {"measured": False, "reason": f"fewer than two samples after the {warmup:g} s warm-up"}
    first, last = after[0], after[-1]

    def delta(field: str) -> list[int | None]:
        return [
            (b - a) if a is not None and b is not None else None
            for a, b in zip(first[field], last[field])
        ]

    return {
        "measured": True, "from_s": first["t"], "to_s": last["t"],
        "rss_kb_start": first["rss_kb"], "rss_kb_end": last["rss_kb"], "rss_kb_delta": delta("rss_kb"),
        "fds_start": first["fds"], "fds_end": last["fds"], "fds_delta": delta("fds"),
    }


def _versions() -> dict[str, str]:
    import tornado

    import gosession_tornado

    return {
        "gosession_tornado": gosession_tornado.__version__, "tornado": tornado.version,
        "python": platform.python_version(),
    }


async def run(cfg: RunConfig, workdir: pathlib.Path) -> dict[str, Any]:
    """One run in *workdir*; returns its result (see :func:`main` for the file it goes to).

    :raises StoreUnavailableError: if the provider's store cannot be used here.
    """
    fault = get_fault(cfg.fault)
    setup = await open_store(cfg.provider, workdir)
    try:
        return await _run_on(cfg, setup, fault, workdir)
    finally:
        await setup.cleanup()


async def _run_on(cfg: RunConfig, setup: StoreSetup, fault: Fault, workdir: pathlib.Path) -> dict[str, Any]:
    if cfg.max_lifetime is not None:
        setup.config = {**setup.config, "max_lifetime": cfg.max_lifetime,
                        "gc_lifetime": max(1, cfg.max_lifetime // 4)}
    if cfg.overrides:
        setup.config = {**setup.config, **cfg.overrides}
    sessions = cfg.clients if setup.client_side else cfg.sessions
    model = Model(
        sessions, client_side=setup.client_side,
        cookie_name=str(setup.config.get("cookie_name", "gosessionid")),
        allowed_statuses=fault.allowed_statuses, allow_transport_errors=fault.allow_transport_errors,
        eager_new_sessions=bool(setup.config.get("eager_new_sessions")),
    )
    processes = cfg.process_count() if setup.shared else 1
    servers: list[ServerProcess] = []
    ctx = RunContext(cfg, setup, servers, model)
    await fault.before(ctx)
    try:
        spec = {"config": setup.config, "imports": setup.imports}
        servers.extend(ServerProcess(i, spec, workdir) for i in range(processes))
        await asyncio.gather(*(s.start() for s in servers))
        load = _Load(cfg, setup, servers, model, fault, ctx)
        samples: list[dict[str, Any]] = []
        ctx.started = time.monotonic()
        sampler = asyncio.ensure_future(load.sample(samples))

        async def fault_task() -> None:
            try:
                await fault.during(ctx)
            finally:
                load.fault_done.set()

        faulting = asyncio.ensure_future(fault_task())
        started = time.monotonic()
        await asyncio.gather(*(load.client(i) for i in range(cfg.clients)))
        load_seconds = time.monotonic() - started
        sampler.cancel()  # its samples were all taken under load (clients connected)
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await faulting
        await load.final_reads()
        model.finish()
        await fault.after(ctx)
    finally:
        await asyncio.gather(*(s.stop() for s in servers))
    summary = model.summary()
    result: dict[str, Any] = {
        "kind": "soak" if cfg.seconds else "stress",
        "provider": cfg.provider,
        "where": setup.where,
        "client_side": setup.client_side,
        "processes": processes,
        "clients": cfg.clients,
        "sessions": sessions,
        "seed": cfg.seed,
        "max_lifetime": cfg.max_lifetime,
        "overrides": cfg.overrides,
        "requests_target": cfg.requests,
        "seconds_target": cfg.seconds,
        "mix": MIX,
        "load_seconds": round(load_seconds, 2),
        "rps": round(summary["requests"] / load_seconds, 1) if load_seconds > 0 else 0.0,
        **summary,
        "resources": {"samples": samples, "growth": _growth(samples, cfg.warmup)},
        "fault": None,
        "versions": _versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
    }
    if cfg.fault != "none":
        result["kind"] = "fault"
        result["fault"] = {**fault.summary(ctx), "name": cfg.fault, "events": ctx.events,
                           "survived": not model.violations}
    return result


async def run_in(cfg: RunConfig, workdir: pathlib.Path | None = None) -> dict[str, Any]:
    """:func:`run` in *workdir*, or in a temporary directory that is removed afterwards."""
    if workdir is not None:
        return await run(cfg, workdir)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="gosession-reliability-"))
    try:
        return await run(cfg, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def result_name(result: dict[str, Any]) -> str:
    """The file a result is written to in the results directory."""
    if result.get("kind") == "fault" and result.get("fault"):
        return f"fault-{result['fault']['name']}-{result['provider']}.json"
    return f"{result['kind']}-{result['provider']}.json"


def write_result(result: dict[str, Any], out: pathlib.Path) -> pathlib.Path:
    """Write *result* as JSON into *out*; returns the file."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / result_name(result)
    path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path


def describe(result: dict[str, Any]) -> str:
    """A few lines for a terminal."""
    c = result.get("counts", {})
    lat = result.get("latency_ms", {})
    lines = [
        f"{result['provider']}: {result['requests']} requests, {result['clients']} clients, "
        f"{result['processes']} process(es), {result['load_seconds']} s ({result['rps']} req/s), "
        f"p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms",
        f"  statuses {result['statuses']}; acknowledged writes {c.get('acknowledged_writes', 0)}, "
        f"reads checked {c.get('reads_checked', 0)} ({c.get('key_reads_checked', 0)} key reads), "
        f"increments acknowledged {c.get('increments_acknowledged', 0)} (final reads: "
        f"{c.get('final_increments_acknowledged', 0)} acknowledged, "
        f"{c.get('final_increments_in_store', 0)} in store), regenerates {c.get('regenerates', 0)}, destroys "
        f"{c.get('destroys', 0)}, probes refused {c.get('probes_refused', 0)}",
        f"  violations: {result['violations'] or 'none'}",
    ]
    growth = result.get("resources", {}).get("growth", {})
    if result.get("kind") == "soak" and growth.get("measured"):
        lines.append(
            f"  after warm-up ({growth['from_s']}-{growth['to_s']} s): "
            f"RSS delta kB {growth['rss_kb_delta']}, "
            f"fd delta {growth['fds_delta']}"
        )
    for example in result.get("examples", [])[:5]:
        lines.append(f"  e.g. {example['kind']}: {example['detail']} {example['ops'][:2]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m reliability.stress``: see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m reliability.stress", description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--provider", action="append", choices=None, metavar="NAME",
                        help=f"provider (repeatable): {', '.join(PROVIDERS)}")
    parser.add_argument("--all", action="store_true", help="every provider")
    parser.add_argument("--requests", type=int, default=None, help="requests per run (default 6000)")
    parser.add_argument("--minutes", type=float, default=None, help="soak: run this long instead")
    parser.add_argument("--seconds", type=float, default=None, help="soak: run this long instead")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--fault", default="none", help="fault scenario (reliability.faults)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--warmup", type=float, default=None, help="soak warm-up seconds (default 20%%)")
    parser.add_argument("--max-lifetime", type=int, default=None,
                        help="session max_lifetime in seconds (soak default 20, else the provider's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a SessionManager setting for the run (JSON value, or a string), repeatable")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="results directory")
    parser.add_argument("--no-write", action="store_true", help="print only, write no result file")
    parser.add_argument("--fuzz", action="store_true", help="also run the fuzz campaign (reliability.fuzz)")
    parser.add_argument("--fuzz-examples", type=int, default=None, help="fuzz examples per property")
    parser.add_argument("--report", action="store_true", help="render docs/reliability.rst afterwards")
    args = parser.parse_args(argv)

    providers = list(PROVIDERS) if args.all else (args.provider or [])
    if not providers and not args.fuzz and not args.report:
        parser.error("give --provider NAME, --all, --fuzz or --report")
    seconds = args.seconds if args.seconds is not None else (args.minutes * 60 if args.minutes else None)
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(raw)
        except ValueError:
            overrides[key] = raw
    failed = False
    for provider in providers:
        cfg = RunConfig(
            provider=provider, processes=args.processes, clients=args.clients, sessions=args.sessions,
            requests=args.requests if args.requests is not None else (None if seconds else 6000),
            seconds=seconds, seed=args.seed, fault=args.fault,
            warmup=args.warmup if args.warmup is not None else (0.2 * seconds if seconds else 10.0),
            sample_every=min(5.0, seconds / 10) if seconds else 2.0,
            max_lifetime=args.max_lifetime if args.max_lifetime is not None else (20 if seconds else None),
            overrides=overrides,
            progress=bool(seconds) and sys.stdout.isatty(),
        )
        try:
            result = asyncio.run(run_in(cfg))
        except StoreUnavailableError as exc:
            print(f"{provider}: SKIPPED ({exc})", flush=True)
            if not args.no_write:
                write_result({"kind": "soak" if seconds else "stress", "provider": provider,
                              "skipped": str(exc)}, args.out)
            continue
        print(describe(result), flush=True)
        failed = failed or bool(result["violations"])
        if not args.no_write:
            print(f"  -> {write_result(result, args.out)}", flush=True)
    if args.fuzz:
        from .fuzz import run_campaign

        for fuzz_result in run_campaign(examples=args.fuzz_examples):
            print(f"fuzz {fuzz_result['provider']}: {fuzz_result['examples']} examples, "
                  f"failures: {fuzz_result['failures'] or 'none'}", flush=True)
            failed = failed or bool(fuzz_result["failures"])
            if not args.no_write:
                args.out.mkdir(parents=True, exist_ok=True)
                path = args.out / f"fuzz-{fuzz_result['provider']}.json"
                path.write_text(json.dumps(fuzz_result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if args.report:
        from .report import render_to

        print(f"report -> {render_to(args.out)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
