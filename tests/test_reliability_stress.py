"""Model-checked stress on every provider (reliability/stress.py, checked by reliability/model.py).

Per provider: a real Tornado application in three server processes (one for
``memory``) on the provider's store, 64 concurrent keep-alive clients on 8
shared sessions (one client per session for ``cookie``, all the cookie store
can promise), 6,000 requests of a random mix of set / del / read / incr /
flash_add / flash_read / regen / destroy, each request to a random process.
Every response is checked against the model: no acknowledged write lost, no
stale read, no lost increment, flashes read once, nothing served from an id
after its regenerate or destroy, no cross-talk, the header rules, only 200s.

The stores are the contract suite's (tests/factories), with a unique key
prefix or table per run, cleaned up afterwards. A server that cannot be
reached fails under ``CI=true`` and is skipped loudly elsewhere.

``GOSESSION_RELIABILITY_RESULTS=DIR`` writes each run's JSON to *DIR* (point
it at ``reliability/results`` and run ``python -m reliability.report`` to
regenerate docs/reliability.rst from the suite's own runs);
``GOSESSION_RELIABILITY_LONG=1`` runs 10x the requests.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from reliability.stores import PROVIDERS, StoreUnavailableError
from reliability.stress import RunConfig, describe, run, write_result

from .support import fail_or_skip

pytestmark = pytest.mark.slow

LONG = os.environ.get("GOSESSION_RELIABILITY_LONG", "").lower() in ("1", "true", "yes")
REQUESTS = 60_000 if LONG else 6_000


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_stress_holds_the_model(provider: str, tmp_path: pathlib.Path) -> None:
    cfg = RunConfig(provider=provider, requests=REQUESTS)
    try:
        result = await run(cfg, tmp_path)
    except StoreUnavailableError as exc:
        fail_or_skip(f"{provider}: {exc}")
    out = os.environ.get("GOSESSION_RELIABILITY_RESULTS")
    if out:
        write_result(result, pathlib.Path(out))
    summary = describe(result)
    assert result["violations"] == {}, summary
    assert result["statuses"] == {"200": result["requests"]}, summary
    # The run did what it claims (the mix is random: generous floors).
    c = result["counts"]
    assert result["requests"] >= REQUESTS
    assert c["acknowledged_writes"] >= REQUESTS // 5, summary
    assert c["reads_checked"] >= REQUESTS // 2, summary
    assert c["key_reads_checked"] >= 3 * REQUESTS, summary
    assert c["regenerates"] >= 20 and c["destroys"] >= 10, summary
    assert c["flashes_read"] >= 10, summary
    assert c["final_reads"] >= 1, summary
    assert c["lineage_end_reads"] >= c["destroys"], summary
    assert c.get("final_increments_in_store", 0) >= c.get("final_increments_acknowledged", 0), summary
    if result["client_side"]:
        assert result["sessions"] == result["clients"]  # one client per cookie session
    else:
        assert c["probes_refused"] >= 40, summary
        assert result["processes"] == (1 if provider == "memory" else 3)


#: Manager options the default runs leave alone, each a different code path.
OPTIONS = {
    "eager new sessions": {"eager_new_sessions": True},
    "hashed ids, sid header": {"hash_session_ids": True, "enable_sid_in_http_header": True},
}


@pytest.mark.parametrize("provider", ["memory", "redis"])
@pytest.mark.parametrize("options", sorted(OPTIONS))
async def test_stress_holds_the_model_with_other_options(
    provider: str, options: str, tmp_path: pathlib.Path
) -> None:
    """Contention on two sessions (48 clients), with manager options the default run does not set."""
    cfg = RunConfig(provider=provider, requests=2_000, clients=48, sessions=2, overrides=OPTIONS[options])
    try:
        result = await run(cfg, tmp_path)
    except StoreUnavailableError as exc:
        fail_or_skip(f"{provider}: {exc}")
    summary = describe(result)
    assert result["violations"] == {}, summary
    assert result["statuses"] == {"200": result["requests"]}, summary
    assert result["overrides"] == OPTIONS[options]
    assert result["counts"]["acknowledged_writes"] >= 400, summary
