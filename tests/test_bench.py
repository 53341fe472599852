"""The benchmarks in bench/ run: each exits 0 and prints its ratio lines.

Every bench runs with ``--quick`` as a subprocess. What is checked is the
shape of the output: a row per concurrency level with a ratio against the
baseline measured in the same run, the counter column for the providers that
count round trips or statements, and a printed skip reason (not a failure)
for a server that does not answer. The performance harness
(``bench/harness.py --quick``, run by ``run_all.py --quick``) must exit 0 and
write its JSON (every key the docs page is made from), the ``.rst`` page and
the PNG chart. The value of a ratio is never asserted: timing belongs to the
benchmarks, not to the test suite.

The harness needs ``wrk`` (``scripts/test.sh`` installs Debian's package) and
matplotlib (the ``test`` extra): without them the test fails under
``CI=true`` and is skipped loudly elsewhere, like a missing server.
``GSBENCH_BEFORE=PATH`` in the environment makes the harness measure the
library of another checkout (its server processes get PATH first on
``PYTHONPATH``).
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys
from typing import Any

import pytest

from .conftest import IN_CI, MYSQL, POSTGRESQL, REDIS, fail_or_skip, free_port, require_server, server_answers

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"
SERVERS = {"redis": REDIS, "mysql": MYSQL, "postgresql": POSTGRESQL}

#: ``  16    120   7070   4.27x   0.133`` (level, ops, ops/s, ratio, counter per op or n/a)
LEVEL_ROW = re.compile(r"^\s*(1|16|256)\s+(\d+)\s+(\d+)\s+(\d+\.\d\d)x\s+(\d+\.\d{3}|n/a)$")
#: What the harness's summary holds per level and configuration.
SUMMARY_KEYS = {
    "rounds", "rps", "x_bare", "x_naive", "naive", "p50_ms", "p99_ms", "cpu_us_per_req", "cpu_us_over_bare",
    "cpu_share", "socket_errors", "non2xx", "lost",
}
#: The harness's --quick configurations (redis skipped, with its reason, if the server is down).
QUICK_CONFIGS = {"bare", "memory", "naive-memory", "redis"}


def run_bench(script: str, *args: str, timeout: float = 180) -> str:
    """Run ``bench/<script> *args``; assert it exits 0; return its stdout."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert proc.returncode == 0, f"{script} {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def sections(output: str) -> dict[str, list[str]]:
    """The lines under each ``== name ==`` header of a batching run."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        header = re.fullmatch(r"== (\w+) ==", line)
        if header:
            current = found.setdefault(header.group(1), [])
        elif current is not None:
            current.append(line)
    return found


def server_up(name: str) -> bool:
    """True if *name*'s server answers; under CI=true a missing server fails the test."""
    _, host, port = SERVERS[name]
    if server_answers(host, port):
        return True
    if IN_CI:
        pytest.fail(f"{name} server at {host}:{port} is not reachable (CI=true: servers are required)")
    return False


def check_levels(name: str, lines: list[str], counts: bool) -> None:
    rows = [m for m in map(LEVEL_ROW.match, lines) if m]
    assert [int(m.group(1)) for m in rows] == [1, 16, 256], f"{name}: no ratio row per level in {lines}"
    assert rows[0].group(4) == "1.00", f"{name}: concurrency 1 is the baseline, so its ratio is 1.00x"
    assert all(int(m.group(2)) > 0 for m in rows), f"{name}: a level completed no operation: {lines}"
    per_op = [m.group(5) for m in rows]
    if counts:
        assert "n/a" not in per_op, f"{name} counts round trips/statements, but printed {per_op}"
    else:
        assert per_op == ["n/a"] * 3


def require_harness_tools() -> None:
    """wrk and matplotlib must be there (CI: fail; elsewhere: skip loudly)."""
    if shutil.which("wrk") is None:
        fail_or_skip("wrk is not installed (scripts/test.sh installs Debian's wrk as root)")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        fail_or_skip("matplotlib is not installed (pip install -e '.[test]')")


def harness_outputs(output: str) -> tuple[dict[str, Any], pathlib.Path, pathlib.Path, pathlib.Path]:
    """The JSON, and the JSON/.rst/.png paths, that a harness run printed."""
    found = {m.group(1): pathlib.Path(m.group(2))
             for m in re.finditer(r"^(results|report|chart): (\S+)$", output, re.MULTILINE)}
    assert set(found) == {"results", "report", "chart"}, f"no output paths printed:\n{output}"
    return json.loads(found["results"].read_text()), found["results"], found["report"], found["chart"]


def check_harness(output: str, up: set[str]) -> None:
    """The harness's --quick JSON has every key the docs page needs; the page and the chart exist."""
    results, json_path, rst, png = harness_outputs(output)
    try:
        meta = results["meta"]
        assert results["schema"] == 1 and meta["quick"] is True
        assert meta["machine"]["cpu"] and meta["machine"]["cores"] >= 1, meta["machine"]
        assert {"python", "tornado"} <= set(meta["versions"]) and meta["wrk"], meta
        assert re.fullmatch(r"[0-9a-f]{40}", meta["library_checkout"]["commit"]), meta["library_checkout"]
        assert meta["settings"]["levels"] == [1, 64] and meta["settings"]["rounds"] == 1

        http = results["http"]
        expected = {"bare", "memory", "naive-memory"} | ({"redis"} if "redis" in up else set())
        assert {n for n, c in http["configs"].items() if c["status"] == "ok"} == expected, http["configs"]
        if "redis" not in up:
            assert http["configs"]["redis"]["status"] == "skipped", http["configs"]["redis"]
        assert set(http["summary"]) == {"1", "64"}
        for level, table in http["summary"].items():
            assert set(table) == expected, (level, table)
            for name, row in table.items():
                assert set(row) == SUMMARY_KEYS, (level, name, row)
                assert row["rps"] > 0 and row["x_bare"] > 0 and row["cpu_us_per_req"] is not None, row
            assert table["bare"]["x_bare"] == 1.0 and table["bare"]["cpu_us_over_bare"] == 0
            assert table["memory"]["naive"] == "naive-memory" and table["memory"]["x_naive"] > 0
        assert {(r["config"], r["concurrency"]) for r in http["runs"]} == {
            (n, c) for n in expected for c in (1, 64)}

        micro = results["micro"]
        assert set(micro) == {"ask", "work", "gc", "rss"}, micro
        for callers in ("c1", "c64"):
            assert {"ask_us", "queue_us", "ratio"} <= set(micro["ask"][callers])
        assert micro["work"]["library_us"] > 0 and micro["work"]["naive_us"] > 0
        for counts in (micro["work"]["counts_work"], *micro["work"]["counts_request"].values()):
            assert {"deepcopy_top", "deepcopy_calls"} <= set(counts), counts
        assert set(micro["gc"]["sizes"]) == {"1000", "10000"}
        for g in micro["gc"]["sizes"].values():
            assert {"gc_ms", "max_stall_ms", "dict_scan_ms", "dict_pop_ms", "expired"} <= set(g), g
        assert micro["rss"]["library"]["growth_mib"] > 0 and micro["rss"]["reference"]["growth_mib"] > 0

        assert results["chart"] is None, results["chart"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        page = rst.read_text()
        assert page.startswith("Performance\n===") and f".. image:: {png.name}" in page, page[:500]
        assert ".. list-table:: -c64" in page and "Memory provider GC pass" in page
    finally:
        shutil.rmtree(json_path.parent, ignore_errors=True)


def test_run_all_quick_runs_every_bench_and_prints_ratios() -> None:
    up = {name for name in SERVERS if server_up(name)}
    require_harness_tools()
    out = run_bench("run_all.py", "--quick", timeout=600)
    batching, _, harness = out.partition("### harness.py")
    assert "### bench_batching.py --quick" in batching and harness, out

    found = sections(batching)
    assert list(found) == ["redis", "mysql", "postgresql", "file"], batching
    check_levels("file", found["file"], counts=False)
    for name in SERVERS:
        if name in up:
            check_levels(name, found[name], counts=True)
        else:
            assert any(line.startswith(f"{name}: skipped (") for line in found[name]), found[name]

    check_harness(harness, up)


def test_an_unreachable_server_is_skipped_with_its_reason(tmp_path: pathlib.Path) -> None:
    closed = str(free_port())
    out = run_bench("bench_batching.py", "--quick", "--providers", "redis,file", "--redis-port", closed)
    found = sections(out)
    assert found["redis"][0] == f"redis: skipped (no redis server answers on 127.0.0.1:{closed})"
    check_levels("file", found["file"], counts=False)

    out = run_bench("harness.py", "--quick", "--configs", "postgresql,naive-postgresql", "--micro", "none",
                    "--pg-port", closed, "--out-dir", str(tmp_path))
    reason = f"no postgresql server answers on 127.0.0.1:{closed}"
    assert f"postgresql: skipped ({reason})" in out and f"naive-postgresql: skipped ({reason})" in out, out
    results = json.loads((tmp_path / "results.json").read_text())
    configs = results["http"]["configs"]
    assert configs["postgresql"] == {**configs["postgresql"], "status": "skipped", "reason": reason}
    assert configs["naive-postgresql"]["status"] == "skipped"
    if shutil.which("wrk"):
        assert configs["bare"]["status"] == "ok" and set(results["http"]["summary"]["64"]) == {"bare"}
    assert (tmp_path / "performance.rst").is_file()


def test_harness_lists_its_configurations() -> None:
    out = run_bench("harness.py", "--list")
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    backends = ("memory", "file", "redis", "redis_cluster", "mysql", "postgresql", "cookie")
    assert {"bare", *backends, *(f"{b}-ro" for b in backends), *(f"naive-{b}" for b in backends),
            "torndsession-memory", "torndsession-file", "torndsession-redis", "pycket-redis"} <= names
    listed = re.search(r"^redis_cluster\s+default\s+the library, redis_cluster provider", out, re.MULTILINE)
    assert listed, out


def test_harness_measures_redis_cluster_on_a_private_cluster(tmp_path: pathlib.Path) -> None:
    """The harness starts its own 3-master Redis Cluster, serves from it, and stops it by PID."""
    require_harness_tools()
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        fail_or_skip("redis-server and redis-cli are not installed (apt-get install redis-server)")
    configs = "redis_cluster,redis_cluster-ro,naive-redis_cluster"
    out = run_bench("harness.py", "--quick", "--configs", configs, "--micro", "none", "--concurrency", "16",
                    "--out-dir", str(tmp_path), timeout=300)
    nodes = re.search(r"private Redis Cluster on (\S+)", out)
    assert nodes, out
    results = json.loads((tmp_path / "results.json").read_text())
    for name in configs.split(","):
        assert results["http"]["configs"][name]["status"] == "ok", results["http"]["configs"][name]
    rows = [r for r in results["http"]["runs"] if "redis_cluster" in r["config"]]
    assert len(rows) == 3, rows
    assert all(r["rps"] > 0 and r["socket_errors"] == r["non2xx"] == r["lost"] == 0 for r in rows), rows
    for node in nodes.group(1).split(","):  # stopped with the run
        host, port = node.rsplit(":", 1)
        assert not server_answers(host, int(port)), f"cluster node {node} still answers"


def test_redis_only_bench_prints_round_trips_per_level() -> None:
    require_server(REDIS)
    out = run_bench("bench_redis_batching.py", "--quick", "--port", str(REDIS[2]))
    check_levels("redis", out.splitlines(), counts=True)
