"""The benchmarks in bench/ run: each exits 0 and prints its ratio lines.

Every bench runs with ``--quick`` as a subprocess. What is checked is the
shape of the output: a row per concurrency level (or per HTTP case) with a
ratio against the baseline measured in the same run, the counter column for
the providers that count round trips or statements, and a printed skip reason
(not a failure) for a server that does not answer. The value of a ratio is
never asserted: timing belongs to the benchmarks, not to the test suite.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

from .conftest import IN_CI, MYSQL, POSTGRESQL, REDIS, free_port, require_server, server_answers

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"
SERVERS = {"redis": REDIS, "mysql": MYSQL, "postgresql": POSTGRESQL}

#: ``  16    120   7070   4.27x   0.133`` (level, ops, ops/s, ratio, counter per op or n/a)
LEVEL_ROW = re.compile(r"^\s*(1|16|256)\s+(\d+)\s+(\d+)\s+(\d+\.\d\d)x\s+(\d+\.\d{3}|n/a)$")
#: ``memory   985   3283   0.65x   1.15   2.22`` (case, requests, req/s, ratio, p50 ms, p99 ms)
HTTP_ROW = re.compile(r"^(\w+)\s+(\d+)\s+(\d+)\s+(\d+\.\d\d)x\s+(\d+\.\d\d)\s+(\d+\.\d\d)$")


def run_bench(script: str, *args: str) -> str:
    """Run ``bench/<script> *args``; assert it exits 0; return its stdout."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True, text=True, timeout=180, check=False,
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


def check_http(output: str, expect_rows: set[str], expect_skips: set[str]) -> None:
    rows = {m.group(1): m for m in map(HTTP_ROW.match, output.splitlines()) if m}
    assert set(rows) == expect_rows, f"expected ratio rows for {sorted(expect_rows)}:\n{output}"
    assert rows["baseline"].group(4) == "1.00"
    assert all(int(m.group(2)) > 0 for m in rows.values()), output
    for case in expect_skips:
        skip_line = re.search(rf"^{case}: skipped \(.+\)$", output, re.MULTILINE)
        assert skip_line, f"no skip line for {case}:\n{output}"


def test_run_all_quick_runs_every_bench_and_prints_ratios() -> None:
    out = run_bench("run_all.py", "--quick")
    batching, _, http = out.partition("### bench_http.py")
    assert "### bench_batching.py --quick" in batching and http, out

    found = sections(batching)
    assert list(found) == ["redis", "mysql", "postgresql", "file"], batching
    check_levels("file", found["file"], counts=False)
    up = {name for name in SERVERS if server_up(name)}
    for name in SERVERS:
        if name in up:
            check_levels(name, found[name], counts=True)
        else:
            assert any(line.startswith(f"{name}: skipped (") for line in found[name]), found[name]

    check_http(http, {"baseline", "memory", "cookie", *up}, set(SERVERS) - up)


def test_an_unreachable_server_is_skipped_with_its_reason() -> None:
    closed = str(free_port())
    out = run_bench("bench_batching.py", "--quick", "--providers", "redis,file", "--redis-port", closed)
    found = sections(out)
    assert found["redis"][0] == f"redis: skipped (no redis server answers on 127.0.0.1:{closed})"
    check_levels("file", found["file"], counts=False)

    out = run_bench("bench_http.py", "--quick", "--cases", "postgresql,memory", "--pg-port", closed)
    check_http(out, {"baseline", "memory"}, {"postgresql"})
    assert f"no postgresql server answers on 127.0.0.1:{closed}" in out


def test_redis_only_bench_prints_round_trips_per_level() -> None:
    require_server(REDIS)
    out = run_bench("bench_redis_batching.py", "--quick", "--port", str(REDIS[2]))
    check_levels("redis", out.splitlines(), counts=True)
