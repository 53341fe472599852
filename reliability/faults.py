"""The hook fault scenarios plug into: ``python -m reliability.stress --fault NAME``.

A scenario is a :class:`Fault` subclass registered under a name with
:func:`register_fault`. The stress driver calls, in order:

1. :meth:`Fault.before` once the store is set up and before the server
   processes start (start a private server, change the store's
   configuration in ``ctx.setup.config``);
2. :meth:`Fault.during` as a task beside the load, once every client runs:
   inject the fault (``kill -9``, ``SIGSTOP``, a full disk), wait, heal it,
   and :meth:`RunContext.mark` each step; the load stops when the run's
   request count or duration is reached *and* ``during`` has returned;
3. :meth:`Fault.after` once the load has stopped and the final reads are
   done (restore what ``before`` changed);
4. :meth:`Fault.summary` for the report (what was injected, how the
   service behaved: see :data:`SUMMARY_FIELDS`).

While a scenario runs, the model accepts the statuses in
:attr:`Fault.allowed_statuses` (say ``{503}``) and, if
:attr:`Fault.allow_transport_errors`, requests that got no answer at all
(an application process killed). Such a request's write is *unacknowledged*:
the checks never count on it, but a later read may show it, at any time, since
a store that hung may still apply it when it resumes (see
:mod:`reliability.model`). Everything else is checked as without a fault: no
acknowledged write lost, no stale read, no old id served, no 500.

Nothing but ``none`` is registered here; the fault scenarios live with their
tests and register themselves when imported.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model
    from .stores import StoreSetup
    from .stress import RunConfig, ServerProcess

__all__ = ["FAULTS", "SUMMARY_FIELDS", "Fault", "NoFault", "RunContext", "get_fault", "register_fault"]

#: What :meth:`Fault.summary` reports (the report's fault table has these columns).
SUMMARY_FIELDS = {
    "fault": "what was done, e.g. 'redis kill -9 under load, restart after 5 s'",
    "injected": "how many times",
    "outage_s": "seconds the store (or process) was unavailable",
    "status_503": "requests answered 503 during the run",
    "first_503_s": "seconds from the injection to the first 503 (slowest of the injections)",
    "recovery_s": "seconds from the store's return to the first 200",
    "survived": "True if the run held every invariant (set by the driver from the model)",
    "notes": "anything else worth a line in the report",
}


@dataclasses.dataclass
class RunContext:
    """What a fault scenario can see and touch during a run."""

    config: RunConfig
    setup: StoreSetup
    servers: list[ServerProcess]
    model: Model
    started: float = dataclasses.field(default_factory=time.monotonic)
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def elapsed(self) -> float:
        """Seconds since the load started."""
        return time.monotonic() - self.started

    def mark(self, event: str, **info: Any) -> None:
        """Record *event* (e.g. ``"kill"``, ``"restart"``) at the current time, for the report."""
        self.events.append({"t": round(self.elapsed(), 3), "event": event, **info})


class Fault:
    """A fault scenario (the base class does nothing: the ``none`` scenario)."""

    #: The name ``--fault`` takes.
    name = "none"
    #: One line for the report.
    description = "no fault injected"
    #: Statuses besides 200 that are not violations while this scenario runs.
    allowed_statuses: frozenset[int] = frozenset()
    #: Requests that get no answer at all are not violations.
    allow_transport_errors = False

    async def before(self, ctx: RunContext) -> None:
        """Before the server processes start."""

    async def during(self, ctx: RunContext) -> None:
        """Beside the load: inject, wait, heal."""

    async def after(self, ctx: RunContext) -> None:
        """After the load and the final reads."""

    def summary(self, ctx: RunContext) -> dict[str, Any]:
        """The report's row for this scenario (keys from :data:`SUMMARY_FIELDS`)."""
        return {"fault": self.description, "injected": 0}


class NoFault(Fault):
    """The default: a plain stress run."""


FaultFactory = Callable[[], Fault]

#: name -> factory of the scenario.
FAULTS: dict[str, FaultFactory] = {"none": NoFault}


def register_fault(name: str, factory: FaultFactory) -> None:
    """Make ``--fault NAME`` run the scenario *factory* builds; a name is registered once."""
    if name in FAULTS:
        raise ValueError(f"fault scenario {name!r} is already registered")
    FAULTS[name] = factory


def get_fault(name: str) -> Fault:
    """A fresh instance of the scenario registered as *name*."""
    try:
        return FAULTS[name]()
    except KeyError:
        raise ValueError(f"unknown fault scenario {name!r} (known: {', '.join(sorted(FAULTS))})") from None
