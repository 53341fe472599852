"""docs/reliability.rst is generated: it is exactly what reliability/results renders.

``python -m reliability.stress --all --fuzz --report`` (or the suite with
``GOSESSION_RELIABILITY_RESULTS=reliability/results`` followed by
``python -m reliability.report``) writes the results and the page; a page
edited by hand, or results changed without regenerating it, fail here. The
Sphinx build of the page (warnings as errors) is tests/test_docs.py's.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from reliability.report import DOC, RESULTS, load_results, main, render
from reliability.stores import PROVIDERS

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_page_is_what_the_committed_results_render() -> None:
    assert DOC.read_text(encoding="utf-8") == render(RESULTS), (
        "docs/reliability.rst is not what reliability/results renders: run python -m reliability.report"
    )
    index = (ROOT / "docs" / "index.rst").read_text(encoding="utf-8")
    assert "\n   reliability\n" in index, "docs/index.rst's toctree must list the reliability page"


def test_the_committed_results_cover_every_provider_and_hold() -> None:
    results = {(r["kind"], r["provider"]): r for r in load_results(RESULTS)}
    for provider in PROVIDERS:
        stress = results[("stress", provider)]
        assert not stress.get("skipped"), stress
        assert stress["violations"] == {} and stress["requests"] >= 6000, provider
        fuzz = results[("fuzz", provider)]
        assert not fuzz.get("skipped") and fuzz["failures"] == [] and fuzz["examples"] >= 300, provider
    for provider in ("memory", "redis"):
        soak = results[("soak", provider)]
        assert soak["violations"] == {} and soak["load_seconds"] >= 60, provider
        assert soak["resources"]["growth"]["measured"], provider


def _write(directory: pathlib.Path, name: str, data: dict[str, Any]) -> None:
    (directory / name).write_text(json.dumps(data), encoding="utf-8")


def test_the_renderer_shows_skips_faults_soak_and_failures(tmp_path: pathlib.Path) -> None:
    base = json.loads((RESULTS / "stress-redis.json").read_text(encoding="utf-8"))
    _write(tmp_path, "stress-redis.json", base)
    _write(tmp_path, "stress-mysql.json", {"kind": "stress", "provider": "mysql", "skipped": "server down"})
    fault = {**base, "kind": "fault", "violations": {"lost update": 2}, "fault": {
        "name": "redis-kill", "fault": "redis kill -9 under load", "injected": 3, "outage_s": 5.1,
        "status_503": 120, "first_503_s": 0.01, "recovery_s": 0.08, "survived": False, "notes": "a note",
    }}
    _write(tmp_path, "fault-redis-kill-redis.json", fault)
    soak = {**base, "kind": "soak", "load_seconds": 300.0}
    soak["resources"] = {"growth": {"measured": True, "from_s": 60.0, "to_s": 300.0,
                                    "rss_kb_start": [50000], "rss_kb_end": [50100],
                                    "fds_start": [20], "fds_end": [20]}}
    _write(tmp_path, "soak-redis.json", soak)
    _write(tmp_path, "fuzz-memory.json", {
        "kind": "fuzz", "provider": "memory", "examples": 10, "by_property": {"sid inputs": 10},
        "inputs": {"NUL": 3}, "statuses": {"200": 9, "400": 1}, "requests": 10,
        "failures": ["sid inputs: status 500"],
    })
    text = render(tmp_path)
    assert "``mysql``\n     - not run\n     - server down" in text
    assert "``redis-kill``" in text and "redis kill -9 under load" in text and "**no**" in text
    assert "lost update: 2" in text and "* a note" in text
    assert "5.0 (warm-up 60.0 s)" in text and "50,000 → 50,100 (+100)" in text and "20 → 20" in text
    assert "* ``memory``: sid inputs: status 500" in text
    assert "No fault scenario has recorded a result yet." not in text
    empty = tmp_path / "empty"
    empty.mkdir()
    text = render(empty)
    for line in ("No stress result is recorded yet.", "No fault scenario has recorded a result yet.",
                 "No fuzz result is recorded yet.", "No soak result is recorded yet."):
        assert line in text


def test_report_command_writes_and_checks(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "page.rst"
    assert main([str(RESULTS), "--out", str(out), "--check"]) == 1  # missing
    assert main([str(RESULTS), "--out", str(out)]) == 0
    assert main([str(RESULTS), "--out", str(out), "--check"]) == 0
    out.write_text(out.read_text() + "hand edit\n")
    assert main([str(RESULTS), "--out", str(out), "--check"]) == 1
