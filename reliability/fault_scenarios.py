"""Store faults under the model-checked load: killed, hung and restarted Redis, MariaDB, PostgreSQL.

Importing this module registers, with :mod:`reliability.stores` and
:mod:`reliability.faults`:

stores (each a private server started for the run, on a free port, in a temp dir)
    ``redis-aof`` (the ``redis`` provider on a ``redis-server`` with
    ``appendonly yes`` / ``appendfsync always``), ``mysql-private`` (the
    ``mysql`` provider on a MariaDB made by ``mariadb-install-db``) and
    ``postgresql-private`` (the ``postgresql`` provider on a cluster made by
    ``initdb`` as the ``postgres`` user); ``provider_timeout`` is 1 s;
fault scenarios
    ``store-kill``: the store's server ``SIGKILL``-ed under load (PostgreSQL:
    ``pg_ctl stop -m immediate``), restarted on the same data after
    :attr:`StoreKill.outage` seconds; ``store-hang``: ``SIGSTOP``, then
    ``SIGCONT`` after :attr:`StoreHang.outage` seconds.

The load is the stress driver's (:mod:`reliability.stress`): every response
is checked by the model, with 503s allowed while the fault lasts, so "no
acknowledged write lost" is the model's "no lost update, no stale read, no
lost increment" (a write answered 503 is unacknowledged: it may or may not
have been applied). On top, each scenario records every request's timing and
status and reports: the 503s and how fast they came (``first_503_s``, and the
slowest 503), the recovery (``recovery_s``: the first 200 after the store
answers again), the slowest request of the run (no hang) and whether the
application processes are the ones that started (no restart).

Command line (registers the scenarios, then runs :func:`reliability.stress.main`)::

    python -m reliability.fault_scenarios --provider redis-aof --fault store-kill
    python -m reliability.fault_scenarios --provider file-tmpfs --fault dir-readonly-full
"""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
import shutil
import signal
import sys
import time
from typing import Any

from .faults import FAULTS, Fault, RunContext, register_fault
from .model import Model, Op
from .private_servers import (
    PrivateMariaDB,
    PrivatePostgreSQL,
    PrivateRedis,
    PrivateServer,
    missing_binaries,
    temp_dir,
)
from .stores import STORES, StoreSetup, StoreUnavailableError, register_store

__all__ = [
    "FAULT_STORES", "PROVIDER_TIMEOUT", "StoreFault", "StoreHang", "StoreKill", "Timeline",
    "fault_run_config",
]

#: ``provider_timeout`` (seconds) of the fault runs: small, so that hangs are quick to test.
PROVIDER_TIMEOUT = 1.0

#: store name -> (provider, server kind).
FAULT_STORES = {
    "redis-aof": ("redis", "redis"),
    "mysql-private": ("mysql", "mariadb"),
    "postgresql-private": ("postgresql", "postgresql"),
}


# ---------------------------------------------------------------- stores


_WHERE = {
    "redis": "a private redis-server (appendonly yes, appendfsync always)",
    "mariadb": "a private MariaDB (mariadb-install-db into a temp dir; InnoDB, log flushed at each commit)",
    "postgresql": "a private PostgreSQL (initdb as the postgres user; fsync on)",
}


def _config(provider: str, server: PrivateServer, unique: str) -> dict[str, Any]:
    base: dict[str, Any] = {"provider": provider, "cookie_name": "sid", "provider_timeout": PROVIDER_TIMEOUT}
    if provider == "redis":
        base["provider_config"] = f"127.0.0.1:{server.port},16,"
        base["key_prefix"] = f"gstest:{unique}:"
    elif provider == "mysql":
        base["provider_config"] = f"root@tcp(127.0.0.1:{server.port})/test?table=session_{unique}"
    else:
        base["provider_config"] = (f"user=postgres host=127.0.0.1 port={server.port} dbname=test "
                                   f"sslmode=disable table=session_{unique}")
    return base


def _opener(name: str) -> Any:
    provider, kind = FAULT_STORES[name]

    async def open_it(workdir: pathlib.Path, unique: str) -> StoreSetup:
        missing = missing_binaries(kind)
        if missing:
            raise StoreUnavailableError(f"{name}: {', '.join(missing)} not installed")
        directory = temp_dir(f"gosession-{name}-")
        server: PrivateServer
        if kind == "redis":
            server = PrivateRedis(directory)
        elif kind == "mariadb":
            server = PrivateMariaDB(directory)
        else:
            server = PrivatePostgreSQL(directory)
        try:
            await asyncio.to_thread(server.start)
        except Exception as exc:
            await asyncio.to_thread(server.stop)
            shutil.rmtree(directory, ignore_errors=True)
            raise StoreUnavailableError(f"{name}: the private server did not start: {exc}") from exc

        async def cleanup() -> None:
            await asyncio.to_thread(server.stop)
            shutil.rmtree(directory, ignore_errors=True)

        return StoreSetup(
            provider=provider, config=_config(provider, server, unique), client_side=False, shared=True,
            where=_WHERE[kind], cleanup=cleanup,
            details={"unique": unique, "server": server, "directory": str(directory)},
        )

    return open_it


for _name in FAULT_STORES:
    if _name not in STORES:
        register_store(_name, _opener(_name))


# ---------------------------------------------------------------- the timeline of a run


@dataclasses.dataclass
class Timeline:
    """Every request's (sent, received, status) of a run, as the model completed them."""

    sent: list[float] = dataclasses.field(default_factory=list)
    received: list[float] = dataclasses.field(default_factory=list)
    status: list[int] = dataclasses.field(default_factory=list)

    def attach(self, model: Model) -> None:
        """Record every request *model* completes (wraps its ``complete``; the checks are unchanged)."""
        complete = model.complete

        def recording(op: Op, status: int, body: Any, set_cookies: list[str], vary: str | None,
                      received: float, error: str | None = None) -> None:
            self.sent.append(op.sent)
            self.received.append(received)
            self.status.append(0 if error is not None else status)
            complete(op, status, body, set_cookies, vary, received, error)

        model.complete = recording  # type: ignore[method-assign]

    def between(self, lo: float, hi: float) -> list[int]:
        return [i for i, s in enumerate(self.sent) if lo <= s < hi]


class StoreFault(Fault):
    """Inject a store fault beside the load, then heal it; measure what the clients saw."""

    allowed_statuses = frozenset({503})
    #: Seconds of load before the fault, of the fault, and after the store is back.
    warmup = 1.0
    outage = 2.5
    settle = 2.0
    injected_times = 1

    def __init__(self) -> None:
        self.timeline = Timeline()
        self.t_inject: list[float] = []
        self.t_healed: list[float] = []
        self.pids: list[int] = []
        #: The application processes that started the run all still ran at its end (no restart).
        self.same_processes = False
        self.server_name = "store"

    def server(self, ctx: RunContext) -> PrivateServer:
        server = ctx.setup.details.get("server")
        if not isinstance(server, PrivateServer):
            raise RuntimeError(f"fault {self.name!r} needs a private store (one of {sorted(FAULT_STORES)})")
        return server

    async def before(self, ctx: RunContext) -> None:
        self.server_name = self.server(ctx).name
        ctx.setup.config = {**ctx.setup.config, "provider_timeout": PROVIDER_TIMEOUT}
        self.timeline.attach(ctx.model)
        ctx.mark("before")

    async def inject(self, server: PrivateServer) -> None:
        raise NotImplementedError

    async def heal(self, server: PrivateServer) -> None:
        raise NotImplementedError

    async def during(self, ctx: RunContext) -> None:
        server = self.server(ctx)
        self.pids = [s.pid for s in ctx.servers]
        await asyncio.sleep(self.warmup)
        for _ in range(self.injected_times):
            self.t_inject.append(time.monotonic())
            await self.inject(server)
            ctx.mark("inject", what=self.name)
            await asyncio.sleep(self.outage)
            await self.heal(server)
            self.t_healed.append(time.monotonic())
            ctx.mark("healed")
            await asyncio.sleep(self.settle)
        self.same_processes = [s.pid for s in ctx.servers] == self.pids and all(
            s.proc is not None and s.proc.returncode is None for s in ctx.servers
        )

    def figures(self, ctx: RunContext) -> dict[str, Any]:
        """The measured outage behaviour (see the module docstring)."""
        tl = self.timeline
        first_503: list[float] = []
        recovery: list[float] = []
        worst_503 = 0.0
        n503 = 0
        for start, healed in zip(self.t_inject, self.t_healed):
            # the 503s answered from the fault on (requests in flight then included)
            during = [i for i, r in enumerate(tl.received) if tl.status[i] == 503
                      and start <= r < healed + self.settle]
            n503 += len(during)
            if during:
                first_503.append(min(tl.received[i] for i in during) - start)
                worst_503 = max(worst_503, max(tl.received[i] - tl.sent[i] for i in during))
            oks = [tl.received[i] for i in tl.between(healed, healed + 60) if tl.status[i] == 200]
            recovery.append(min(oks) - healed if oks else float("inf"))
        statuses = set(tl.status)
        latencies = [r - s for s, r in zip(tl.sent, tl.received)]
        return {
            "status_503": n503,
            "first_503_s": round(max(first_503), 3) if first_503 else None,
            "slowest_503_s": round(worst_503, 3),
            "recovery_s": round(max(recovery), 3) if recovery else None,
            "slowest_request_s": round(max(latencies, default=0.0), 3),
            "statuses": sorted(statuses),
            "same_processes": self.same_processes,
            "provider_timeout": PROVIDER_TIMEOUT,
        }

    def summary(self, ctx: RunContext) -> dict[str, Any]:
        fig = self.figures(ctx)
        outage = [round(h - i, 2) for i, h in zip(self.t_inject, self.t_healed)]
        violations = dict(ctx.model.violations)
        acked = ctx.model.counts.get("acknowledged_writes", 0)
        kept = (f"{acked} acknowledged writes, none lost" if not violations
                else f"{acked} acknowledged writes; violations: {violations}")
        notes = (
            f"{ctx.setup.provider} on {ctx.setup.where}, {self.describe()}: {fig['status_503']} requests "
            f"answered 503, the first {fig['first_503_s']} s after the fault, none slower than "
            f"{fig['slowest_503_s']} s (provider_timeout {PROVIDER_TIMEOUT:g} s); first 200 "
            f"{fig['recovery_s']} s after the store answered again, same application processes "
            f"({'yes' if fig['same_processes'] else 'NO'}); slowest request of the run "
            f"{fig['slowest_request_s']} s; {kept}."
        )
        return {
            "fault": self.describe(), "injected": len(self.t_inject), "outage_s": max(outage, default=0.0),
            "status_503": fig["status_503"], "first_503_s": fig["first_503_s"],
            "recovery_s": fig["recovery_s"], "notes": notes, "figures": fig,
        }

    def describe(self) -> str:
        return self.description


class StoreKill(StoreFault):
    """``SIGKILL`` of the store's server under load (PostgreSQL: ``stop -m immediate``), then a restart."""

    name = "store-kill"
    description = "store server killed under load (kill -9; PostgreSQL: pg_ctl stop -m immediate), restarted"

    async def inject(self, server: PrivateServer) -> None:
        await asyncio.to_thread(server.kill)

    async def heal(self, server: PrivateServer) -> None:
        await asyncio.to_thread(server.restart)

    def describe(self) -> str:
        how = "pg_ctl stop -m immediate" if self.server_name == "postgres" else "kill -9"
        return f"{self.server_name} {how} under load, restarted on its data after {self.outage:g} s"


class StoreHang(StoreFault):
    """``SIGSTOP`` of the store's server under load, ``SIGCONT`` after :attr:`outage` seconds."""

    name = "store-hang"
    description = "store server SIGSTOPped under load, then SIGCONT"
    outage = 3.0

    async def inject(self, server: PrivateServer) -> None:
        server.send_signal(signal.SIGSTOP)

    async def heal(self, server: PrivateServer) -> None:
        server.send_signal(signal.SIGCONT)

    def describe(self) -> str:
        return f"{self.server_name} SIGSTOPped under load for {self.outage:g} s, then SIGCONT"


for _fault in (StoreKill, StoreHang):
    if _fault.name not in FAULTS:
        register_fault(_fault.name, _fault)


def fault_run_config(store: str, fault: str, **overrides: Any) -> Any:
    """The stress driver's :class:`~reliability.stress.RunConfig` of a fault run on *store*.

    Two server processes, 64 clients on 16 sessions; the load runs as long as
    the scenario (its request budget is small), so a run lasts warm-up +
    outage + settle seconds.
    """
    from .stress import RunConfig

    values: dict[str, Any] = {"provider": store, "processes": 2, "clients": 64, "sessions": 16,
                              "requests": 500, "fault": fault, "request_timeout": 15.0}
    values.update(overrides)
    return RunConfig(**values)


def main(argv: list[str] | None = None) -> int:
    """``python -m reliability.fault_scenarios``: the stress command line, with these scenarios registered."""
    from . import file_faults  # noqa: F401 - registers file-tmpfs and dir-readonly-full
    from .stress import main as stress_main

    return stress_main(argv)


if __name__ == "__main__":
    sys.exit(main())
