"""The stress model catches what it must: synthetic histories, broken providers, the fault hook.

A stress run that reports no violation is only worth something if the
checker would have reported one. Three layers show it does:

* hand-written histories, one rule each (a stale read, a lost increment, an
  old id served, cross-talk, a flash read twice, a missing ``Vary``), next to
  the legal histories that look alike (a concurrent write, a failed write
  that shows up later);
* the whole stress run against deliberately broken providers
  (``tests/reliability_mutants.py``): each bug is reported as the violation
  it must cause;
* the fault hook: a scenario registered with ``register_fault`` runs beside
  the load and its events and summary land in the result.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import secrets
from typing import Any

import pytest

from reliability import stress
from reliability.faults import FAULTS, Fault, RunContext, register_fault
from reliability.model import Model, Op
from reliability.stress import RunConfig, run_in

from .reliability_mutants import BUGS, mutant_store


def _sid() -> str:
    return secrets.token_hex(16)


class History:
    """Builds a history on a :class:`Model` with explicit times (seconds).

    A response's data defaults to what the requests so far left in the
    session (right for a history whose requests do not overlap); a test
    gives it explicitly where it matters.
    """

    def __init__(self, model: Model | None = None) -> None:
        self.model = model or Model(1)
        self.state: dict[str, Any] = {}

    def _apply(self, kind: str, key: str | None, value: Any, result: Any) -> None:
        if kind == "set" and key is not None:
            self.state[key] = value
        elif kind == "del" and key is not None:
            self.state.pop(key, None)
        elif kind == "incr" and key is not None:
            self.state[key] = result
        elif kind == "flash_add":
            self.state["_flash"] = result
        elif kind == "flash_read":
            self.state.pop("_flash", None)
        elif kind == "destroy":
            self.state.clear()

    def op(
        self, kind: str, t0: float, t1: float, *, key: str | None = None, value: Any = None,
        data: dict[str, Any] | None = None, status: int = 200, new: bool = False, sid_in: str | None = None,
        result: Any = None, cookies: list[str] | None = None, vary: str | None = "Cookie",
        probe_sid: str | None = None, final: bool = False, client: int = 0,
    ) -> Op:
        m = self.model
        op = m.prepare(kind, 0, client, key, value, sid=probe_sid, probe=probe_sid is not None, final=final)
        m.mark_sent(op, t0)
        if status != 200:
            m.complete(op, status, None, [], None, t1)
            return op
        served = sid_in or op.sid_sent or _sid()
        if op.sid_sent is None and sid_in is None:
            new = True
        end = served
        if kind == "regen":
            end = result = result or _sid()
            cookies = [f"sid={end}; Path=/"] if cookies is None else cookies
        if kind == "set":
            result = value
        if new and kind in ("set", "del", "incr", "flash_add") and cookies is None:
            cookies = [f"sid={served}; Path=/"]
        if kind == "destroy" and cookies is None:
            cookies = ["sid=; Path=/; Max-Age=0"]
            end = _sid()
        if data is None:
            data = {} if new else dict(self.state)
        body = {"sid_in": served, "new": new, "data": data, "sid": end, "key": key, "result": result}
        m.complete(op, 200, body, cookies or [], vary, t1)
        if not new or probe_sid is None:
            self._apply(kind, key, value, result)
        return op

    def born(self, key: str = "k0", value: str = "v0") -> Op:
        """The session's first write, 0.0-0.1."""
        return self.op("set", 0.0, 0.1, key=key, value=value)

    def check(self) -> dict[str, int]:
        self.model.finish()
        return dict(self.model.violations)


def test_an_acknowledged_write_is_visible_to_every_later_read() -> None:
    h = History()
    h.born()
    h.op("set", 1.0, 2.0, key="k1", value="a")
    h.op("read", 3.0, 4.0, data={"k0": "v0", "k1": "a"})
    assert h.check() == {}

    h = History()
    h.born()
    h.op("set", 1.0, 2.0, key="k1", value="a")
    h.op("read", 3.0, 4.0, data={"k0": "v0"})  # k1 missing: lost or not yet visible
    assert h.check() == {"stale read": 1}


def test_a_write_concurrent_with_the_read_may_or_may_not_show() -> None:
    for seen in ({"k0": "v0"}, {"k0": "v0", "k1": "a"}):
        h = History()
        h.born()
        h.op("set", 1.0, 3.0, key="k1", value="a")
        h.op("read", 2.0, 4.0, data=seen)
        assert h.check() == {}, seen


def test_an_overwritten_value_is_a_stale_read_and_at_the_end_a_lost_update() -> None:
    h = History()
    h.born()
    h.op("set", 1.0, 2.0, key="k1", value="a")
    h.op("set", 3.0, 4.0, key="k1", value="b")
    h.op("read", 5.0, 6.0, data={"k0": "v0", "k1": "a"})
    h.op("read", 7.0, 8.0, data={"k0": "v0", "k1": "a"}, final=True)
    assert h.check() == {"stale read": 1, "lost update": 1}


def test_same_key_writes_that_overlap_are_last_writer_wins_either_way() -> None:
    for winner in ("a", "b"):
        h = History()
        h.born()
        h.op("set", 1.0, 3.0, key="k1", value="a")
        h.op("set", 2.0, 4.0, key="k1", value="b", client=1)
        h.op("read", 5.0, 6.0, data={"k0": "v0", "k1": winner})
        assert h.check() == {}, winner


def test_a_deleted_key_reads_absent_and_a_value_nobody_wrote_is_cross_talk() -> None:
    h = History()
    h.born()
    h.op("del", 1.0, 2.0, key="k0")
    h.op("read", 3.0, 4.0, data={})
    assert h.check() == {}

    h = History()
    h.born()
    h.op("read", 1.0, 2.0, data={"k0": "v0", "k2": "someone else's"})
    assert h.check() == {"cross-talk": 1}


def test_increments_are_bounded_by_what_was_acknowledged_and_what_was_sent() -> None:
    def history(seen: int) -> dict[str, int]:
        h = History()
        h.born()
        h.op("incr", 1.0, 2.0, key="c0", result=1, data={"k0": "v0"})
        h.op("incr", 1.5, 2.5, key="c0", result=2, client=1, data={"k0": "v0"})
        h.op("incr", 3.0, 6.0, key="c0", result=3, data={"k0": "v0", "c0": 2})  # concurrent with the read
        h.op("read", 4.0, 5.0, data={"k0": "v0", "c0": seen})
        return h.check()

    assert history(2) == {}
    assert history(3) == {}
    assert history(1) == {"lost increment": 1}
    assert history(4) == {"phantom increment": 1}


def test_a_failed_write_may_show_up_at_any_later_time() -> None:
    for seen in ({"k0": "v0"}, {"k0": "v0", "k1": "a"}):
        h = History(Model(1, allowed_statuses=frozenset({503})))
        h.born()
        h.op("set", 1.0, 2.0, key="k1", value="a", status=503)  # the store may apply it when it resumes
        h.op("read", 30.0, 31.0, data=seen)
        assert h.check() == {}, seen


def test_a_failed_flash_add_may_show_up_later_too() -> None:
    # Seen in a store-hang run: a flash_add answered 503 while Redis was stopped and
    # was applied when it resumed; a later read showed the flash. Not cross-talk.
    for seen in ({"k0": "v0"}, {"k0": "v0", "_flash": ["f1"]}):
        h = History(Model(1, allowed_statuses=frozenset({503})))
        h.born()
        h.op("flash_add", 1.0, 2.0, value="f1", status=503)
        h.op("read", 30.0, 31.0, data=seen)
        assert h.check() == {}, seen
    # A flash nobody of this session added still is.
    h = History()
    h.born()
    h.op("read", 30.0, 31.0, data={"k0": "v0", "_flash": ["f9"]})
    assert h.check() == {"cross-talk": 1}


def test_a_status_the_scenario_does_not_allow_is_a_violation() -> None:
    h = History()
    h.born()
    h.op("set", 1.0, 2.0, key="k1", value="a", status=500)
    assert h.check() == {"status 500": 1}


def test_nothing_is_served_from_an_id_after_its_regenerate_or_destroy() -> None:
    for kind in ("regen", "destroy"):
        h = History()
        born = h.born()
        h.op(kind, 1.0, 2.0, data={"k0": "v0"})
        dead = born.sid_in
        assert dead is not None
        h.op("read", 3.0, 4.0, probe_sid=dead, new=True, sid_in=_sid())  # refused: fine
        h.op("read", 5.0, 6.0, probe_sid=dead, sid_in=dead, data={"k0": "v0"})  # served: not fine
        assert h.check() == {"old id served": 1}, kind


def test_regenerate_carries_the_data_and_a_write_racing_it_may_be_dropped() -> None:
    for seen in ({"k0": "v0"}, {"k0": "v0", "k1": "a"}):
        h = History()
        h.born()
        h.op("set", 1.0, 2.5, key="k1", value="a")  # overlaps the regenerate
        h.op("regen", 2.0, 3.0, data={"k0": "v0"})
        h.op("read", 4.0, 5.0, data=seen)
        assert h.check() == {}, seen
    h = History()
    h.born()
    h.op("set", 1.0, 1.5, key="k1", value="a")  # answered before the regenerate was sent
    h.op("regen", 2.0, 3.0, data={"k0": "v0", "k1": "a"})
    h.op("read", 4.0, 5.0, data={"k0": "v0"})
    assert h.check() == {"stale read": 1}


def test_new_sessions_are_empty_fresh_and_never_the_id_sent() -> None:
    h = History()
    born = h.born()
    h.op("read", 1.0, 2.0, probe_sid=_sid(), new=True, sid_in=born.sid_in)
    h.op("read", 3.0, 4.0, probe_sid=_sid(), new=True, sid_in=_sid(), data={"k0": "v0"})
    stranger = _sid()
    h.op("read", 5.0, 6.0, probe_sid=stranger, new=True, sid_in=stranger)
    assert h.check() == {"reused id": 1, "cross-talk": 1, "adopted id": 1}


def test_a_live_session_that_is_not_found_vanished() -> None:
    h = History()
    h.born()
    h.op("read", 1.0, 2.0, new=True, sid_in=_sid())
    assert h.check() == {"session vanished": 1}


def test_flashes_are_read_once_and_in_order() -> None:
    h = History()
    h.born()
    h.op("flash_add", 1.0, 2.0, value="f1", result=["f1"])
    h.op("flash_add", 3.0, 4.0, value="f2", result=["f1", "f2"])
    h.op("flash_read", 5.0, 6.0, result=["f1", "f2"], data={"k0": "v0", "_flash": ["f1", "f2"]})
    h.op("flash_read", 7.0, 8.0, result=[], data={"k0": "v0"})
    assert h.check() == {}

    h = History()
    h.born()
    h.op("flash_add", 1.0, 2.0, value="f1", result=["f1"])
    h.op("flash_read", 3.0, 4.0, result=["f1"], data={"k0": "v0", "_flash": ["f1"]})
    h.op("flash_read", 5.0, 6.0, result=["f1"], data={"k0": "v0", "_flash": ["f1"]})
    found = h.check()
    assert found["flash read twice"] == 1
    assert found["flash"] == 1


def test_headers_vary_and_cookies() -> None:
    h = History()
    h.born()
    h.op("read", 1.0, 2.0, data={"k0": "v0"}, vary=None)
    h.op("read", 3.0, 4.0, data={"k0": "v0"}, cookies=["sid=x; Path=/", "other=y"])
    found = h.check()
    assert found == {"header": 4}  # no Vary; two Set-Cookie; another cookie; a cookie on a read
    examples = {e["detail"] for e in h.model.examples}
    assert any("Vary" in d for d in examples)
    assert any("2 Set-Cookie" in d for d in examples)


# ---------------------------------------------------------------- broken providers


@pytest.mark.parametrize("bug", sorted(BUGS))
async def test_the_model_catches_a_broken_provider(bug: str, tmp_path: pathlib.Path) -> None:
    cfg = RunConfig(provider=mutant_store(bug), requests=1500, clients=32, seed=11)
    result = await run_in(cfg, tmp_path)
    assert result["violations"].get(BUGS[bug], 0) > 0, (
        f"the {bug!r} bug should show as {BUGS[bug]!r}: {stress.describe(result)}"
    )


async def test_the_unbroken_dict_store_passes(tmp_path: pathlib.Path) -> None:
    """The mutants' base (tests/support.py's DictStore) is correct: the same run finds nothing."""
    name = mutant_store("none", name="dictstore-correct", where="the correct dict store")
    result = await run_in(RunConfig(provider=name, requests=1500, clients=32, seed=11), tmp_path)
    assert result["violations"] == {}, stress.describe(result)
    assert result["counts"]["acknowledged_writes"] > 300


# ---------------------------------------------------------------- the fault hook


class RestartFault(Fault):
    """Kills the one application process mid-load and starts it again on the same port."""

    name = "test-restart"
    description = "the application process killed and restarted (the hook's own test)"
    allow_transport_errors = True
    ports: list[int] = []

    async def during(self, ctx: RunContext) -> None:
        server = ctx.servers[0]
        await asyncio.sleep(0.3)
        RestartFault.ports.append(server.port)
        server.send_signal(9)
        ctx.mark("kill")
        assert server.proc is not None
        await server.proc.wait()
        await server.start()
        RestartFault.ports.append(server.port)
        ctx.mark("restart")
        await asyncio.sleep(0.3)

    def summary(self, ctx: RunContext) -> dict[str, Any]:
        return {"fault": self.description, "injected": 1}


class MarkingFault(Fault):
    """A scenario that injects nothing: it marks events and checks what it is given."""

    name = "test-marks"
    description = "nothing injected (the hook's own test)"
    allowed_statuses = frozenset({503})
    seen: dict[str, Any] = {}

    async def before(self, ctx: RunContext) -> None:
        MarkingFault.seen["before_servers"] = len(ctx.servers)
        ctx.mark("before")

    async def during(self, ctx: RunContext) -> None:
        MarkingFault.seen["during_servers"] = [s.pid for s in ctx.servers]
        ctx.mark("inject", target="nothing")
        await asyncio.sleep(0.3)
        ctx.mark("heal")

    async def after(self, ctx: RunContext) -> None:
        MarkingFault.seen["requests_after"] = sum(ctx.model.by_kind.values())

    def summary(self, ctx: RunContext) -> dict[str, Any]:
        return {"fault": self.description, "injected": 1, "outage_s": 0.0, "notes": "hook test"}


async def test_a_fault_scenario_runs_beside_the_load(tmp_path: pathlib.Path) -> None:
    if "test-marks" not in FAULTS:
        register_fault("test-marks", MarkingFault)
    with pytest.raises(ValueError, match="already registered"):
        register_fault("test-marks", MarkingFault)
    result = await run_in(RunConfig(provider="memory", requests=50, clients=4, fault="test-marks"), tmp_path)
    assert MarkingFault.seen["before_servers"] == 0  # before() runs before the processes start
    assert len(MarkingFault.seen["during_servers"]) == 1
    assert MarkingFault.seen["requests_after"] >= 50
    assert result["kind"] == "fault"
    fault = result["fault"]
    assert fault["name"] == "test-marks" and fault["survived"] is True and fault["injected"] == 1
    assert [e["event"] for e in fault["events"]] == ["before", "inject", "heal"]
    assert stress.result_name(result) == "fault-test-marks-memory.json"


async def test_a_fault_scenario_can_restart_an_application_process(tmp_path: pathlib.Path) -> None:
    """file provider (its sessions outlive the process): kill -9 the one process, start it again on
    its port; clients reconnect, and the model holds (requests without an answer are allowed)."""
    if "test-restart" not in FAULTS:
        register_fault("test-restart", RestartFault)
    cfg = RunConfig(provider="file", processes=1, requests=600, clients=8, fault="test-restart")
    result = await run_in(cfg, tmp_path)
    assert RestartFault.ports[0] == RestartFault.ports[1]
    assert result["fault"]["survived"], stress.describe(result)
    assert result["violations"] == {}, stress.describe(result)
    assert result["statuses"]["200"] >= 600 - result["counts"].get("transport_errors", 0)


def test_command_line_writes_a_result_and_soak_measures_growth(tmp_path: pathlib.Path) -> None:
    args = ["--provider", "memory", "--requests", "300", "--clients", "8", "--out", str(tmp_path)]
    assert stress.main(args) == 0
    written = json.loads((tmp_path / "stress-memory.json").read_text())
    assert written["requests"] >= 300 and written["violations"] == {}
    assert stress.main(["--provider", "memory", "--seconds", "3", "--clients", "4", "--warmup", "0.5",
                        "--out", str(tmp_path)]) == 0
    soak = json.loads((tmp_path / "soak-memory.json").read_text())
    assert soak["kind"] == "soak" and soak["load_seconds"] >= 3
    growth = soak["resources"]["growth"]
    assert growth["measured"], growth
    assert len(growth["rss_kb_delta"]) == 1 and len(growth["fds_delta"]) == 1
