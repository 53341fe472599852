"""Faults under load: stores killed, hung and restarted; the file writer killed; a full or read-only disk.

Every store fault runs a **private** server (free loopback port, temp dir,
stopped by PID: ``reliability/private_servers.py``) under the model-checked
stress load (``reliability/stress.py``: 2 application processes, 64 clients,
16 sessions, ``provider_timeout = 1``), injects the fault after 1 s, heals it
and lets the load run on (``reliability/fault_scenarios.py``):

* Redis (``appendonly yes``, ``appendfsync always``): ``kill -9`` and restart;
  ``SIGSTOP`` for 3 s and ``SIGCONT``;
* MariaDB (``mariadb-install-db`` into a temp dir): ``kill -9`` and restart;
  ``SIGSTOP`` / ``SIGCONT``;
* PostgreSQL (``initdb`` as the ``postgres`` user): ``pg_ctl stop -m
  immediate`` and ``start``.

What each asserts: no acknowledged write lost, no stale read, no other
status than 200 and 503 (the model's checks; a write answered 503 is
unacknowledged), every 503 within ``provider_timeout`` + 0.5 s, the first
200 within 2 s of the store's return with the same application processes (no
restart), no request slower than ``provider_timeout`` + 1.5 s (no hang).

The file provider: a writer process ``SIGKILL``-ed 30 times mid-write, each
session file decoding and holding its last acknowledged save afterwards
(``reliability/file_faults.py``); the save directory on a private tmpfs made
read-only and then full under load: 503 with a generic body, the error in the
server log, nothing lost, every file decoding, recovery without restart.

``GOSESSION_RELIABILITY_RESULTS=DIR`` writes each run's result to *DIR* for
``python -m reliability.report``. A server or binary that is missing fails
under ``CI=true`` and is skipped loudly elsewhere.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from typing import Any

import pytest

from reliability.fault_scenarios import FAULT_STORES, PROVIDER_TIMEOUT, fault_run_config
from reliability.stores import StoreUnavailableError
from reliability.stress import describe, run, write_result

from .support import fail_or_skip

pytestmark = pytest.mark.slow


def _write(result: dict[str, Any]) -> None:
    out = os.environ.get("GOSESSION_RELIABILITY_RESULTS")
    if out:
        write_result(result, pathlib.Path(out))


async def _fault_run(store: str, fault: str, tmp_path: pathlib.Path, **overrides: Any) -> dict[str, Any]:
    try:
        result = await run(fault_run_config(store, fault, **overrides), tmp_path)
    except StoreUnavailableError as exc:
        fail_or_skip(str(exc))
    return result


STORE_FAULTS = [
    ("redis-aof", "store-kill"),
    ("redis-aof", "store-hang"),
    ("mysql-private", "store-kill"),
    ("mysql-private", "store-hang"),
    ("postgresql-private", "store-kill"),
]


@pytest.mark.parametrize(("store", "fault"), STORE_FAULTS)
async def test_store_fault_under_load(store: str, fault: str, tmp_path: pathlib.Path) -> None:
    result = await _fault_run(store, fault, tmp_path)
    result["store"] = store
    result["provider"] = FAULT_STORES[store][0]
    _write(result)
    summary = describe(result)
    f = result["fault"]
    fig = f["figures"]
    print(f"\n{summary}\n{f['notes']}")
    # Nothing acknowledged lost, no stale read, no 500: the model's checks.
    assert result["violations"] == {}, summary
    assert set(result["statuses"]) <= {"200", "503"}, summary
    c = result["counts"]
    assert c["acknowledged_writes"] >= 500 and c["final_reads"] >= 1, summary
    assert c.get("final_increments_in_store", 0) >= c.get("final_increments_acknowledged", 0), summary
    # The outage was seen, and answered in time.
    assert f["injected"] == 1 and f["status_503"] > 0, f
    assert fig["first_503_s"] is not None and fig["first_503_s"] <= PROVIDER_TIMEOUT + 0.5, f
    assert fig["slowest_503_s"] <= PROVIDER_TIMEOUT + 0.5, f
    # Recovery without a restart of the application; no request hung.
    assert fig["recovery_s"] is not None and fig["recovery_s"] <= 2.0, f
    assert fig["same_processes"], f
    assert fig["slowest_request_s"] <= PROVIDER_TIMEOUT + 1.5, f
    assert f["survived"], f


async def test_file_writer_killed_mid_write_30_times(tmp_path: pathlib.Path) -> None:
    from reliability.file_faults import writer_crash, writer_crash_result

    started = time.monotonic()
    fig = await writer_crash(tmp_path / "sessions", kills=30, sessions=4)
    result = writer_crash_result(fig)
    _write(result)
    print(f"\n{result['fault']['notes']} ({time.monotonic() - started:.1f} s)")
    assert fig["problems"] == [], fig["problems"][:10]
    assert fig["lost"] == [], fig["lost"][:10]
    assert fig["session_files"] == 4
    assert fig["acknowledged_saves"] >= 30 * 4  # every writer got saves acknowledged before its kill
    assert min(fig["last_acknowledged"]) >= 30


async def test_read_only_then_full_save_directory_under_load(tmp_path: pathlib.Path) -> None:
    import reliability.file_faults  # noqa: F401 - registers the store and the fault

    result = await _fault_run("file-tmpfs", "dir-readonly-full", tmp_path)
    result["store"] = "file-tmpfs"
    result["provider"] = "file"
    _write(result)
    summary = describe(result)
    f = result["fault"]
    fig = f["figures"]
    print(f"\n{summary}\n{f['notes']}")
    assert result["violations"] == {}, summary  # nothing acknowledged lost, nothing corrupt read
    assert set(result["statuses"]) <= {"200", "503"}, summary
    # While read-only and while full: a write gets a 503 with a generic body, the log says why.
    assert [p["during"] for p in fig["probes"]] == ["read-only", "full"], fig
    for probe in fig["probes"]:
        assert probe["status"] in (500, 503) and probe["leaks"] == [], probe
    assert fig["logged"]["read-only"] > 0 and fig["logged"]["full"] > 0, fig
    # Recovery when writable again, no corruption, no hang.
    assert f["recovery_s"] is not None and f["recovery_s"] <= 2.0, f
    assert fig["undecodable_files"] == [] and fig["session_files"] > 0, fig
    assert fig["slowest_request_s"] <= PROVIDER_TIMEOUT + 1.5, fig
    assert result["counts"]["final_reads"] >= 1, summary


# ---------------------------------------------------------------- a library bug the kill found


async def test_sql_take_never_returns_a_connection_released_meanwhile() -> None:
    """The PostgreSQL kill under load gave two 500s: a connection used after it went back to the pool.

    ``SQLBatchProvider._take`` pops connections from ``self._idle`` and, for
    one held too long, awaits ``_release`` (handing it back to the pool);
    ``_release_idle`` (run by a concurrent job of the same batch after a lost
    connection) swaps ``self._idle`` out and awaits ``_release`` for each
    connection in the list. Both work on the same list object, so ``_take``
    can pop and return a connection ``_release_idle`` is releasing: the batch
    then runs SQL on a connection the pool owns (and may hand to someone
    else), and terminating it after the next error raises asyncpg's
    ``InterfaceError: cannot call Connection.terminate(): connection has been
    released back to the pool``, which the mixin answers with a 500.
    """
    from gosession_tornado.providers.sql.postgresql import PostgreSQLProvider

    class Conn:
        def __init__(self, name: str) -> None:
            self.name = name
            self.released = False

        def is_closed(self) -> bool:
            return False

        def __repr__(self) -> str:
            return self.name

    provider = PostgreSQLProvider()

    async def release(conn: Any) -> None:
        conn.released = True
        await asyncio.sleep(0)  # asyncpg's Pool.release() awaits (it resets the connection)

    async def acquire() -> Any:
        return Conn("fresh")

    provider._release = release  # type: ignore[method-assign]
    provider._acquire = acquire  # type: ignore[method-assign]
    now = time.monotonic()
    held, stale = Conn("held"), Conn("stale")
    provider._idle = [(held, now), (stale, now - 3600)]  # the stale one is released by _take
    taken, _ = await asyncio.gather(provider._take(), provider._release_idle())
    assert not taken.released, f"_take() returned {taken!r}, which _release_idle() gave back to the pool"
