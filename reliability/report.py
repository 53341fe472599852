"""Render ``docs/reliability.rst`` from the JSON results of the reliability runs.

    python -m reliability.report [RESULTS_DIR] [--out FILE] [--check]

Reads every ``*.json`` in *RESULTS_DIR* (default ``reliability/results``):
``stress-<provider>.json`` and ``soak-<provider>.json`` (from
:mod:`reliability.stress`), ``fuzz-<provider>.json`` (from
:mod:`reliability.fuzz`) and ``fault-<scenario>-<provider>.json`` (fault
scenarios run with ``--fault``), and writes the page. The output depends on
nothing but those files, so ``--check`` can tell whether the page in the
repository is what its results make (the test suite does so): the page is
never edited by hand.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections import Counter
from collections.abc import Iterable
from typing import Any

from .faults import SUMMARY_FIELDS
from .stores import PROVIDERS

__all__ = ["DOC", "load_results", "render", "render_to"]

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "reliability.rst"

#: Violation kinds the model reports, in the order of the evidence table.
VIOLATION_KINDS = (
    "lost update", "stale read", "future read", "lost increment", "phantom increment", "old id served",
    "session vanished", "cross-talk", "adopted id", "reused id", "flash", "flash read twice", "header",
)


def load_results(directory: pathlib.Path) -> list[dict[str, Any]]:
    """Every result in *directory*, sorted by kind and provider order."""
    order = {name: i for i, name in enumerate(PROVIDERS)}
    results = []
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "kind" in data and "provider" in data:
            data["_file"] = path.name
            results.append(data)
    return sorted(results, key=lambda r: (r["kind"], order.get(r["provider"], 99), r["_file"]))


def _table(header: list[str], rows: Iterable[list[Any]], widths: str | None = None) -> list[str]:
    """A ``list-table`` directive."""
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append(f"   :widths: {widths}")
    lines.append("")
    for row in [header, *rows]:
        first = True
        for cell in row:
            text = str(cell).replace("\n", " ") if cell not in (None, "") else "--"
            lines.append(f"   {'* -' if first else '  -'} {text}")
            first = False
    lines.append("")
    return lines


def _n(value: Any) -> str:
    """An integer with thin grouping (1,234)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def _violations(result: dict[str, Any]) -> str:
    found = result.get("violations") or {}
    if not found:
        return "0"
    return ", ".join(f"{kind}: {count}" for kind, count in sorted(found.items()))


def _section(title: str, char: str = "-") -> list[str]:
    return [title, char * len(title), ""]


# ---------------------------------------------------------------- prose

INTRO = """\
This page is the project's proof that sessions are not lost, mixed up or
forged under concurrency, hostile input and failure, on every provider. It
is regenerated from the runs' JSON results (``reliability/results/``) by
``python -m reliability.report``; the same runs are part of the test suite
(``tests/test_reliability_*.py``), at the sizes given below, on every change.
"""

THREAT_MODEL = """\
What an attacker controls: every byte of every request. The session id in the
cookie, in the sid header (``enable_sid_in_http_header``) and in the query
string (``enable_sid_in_url_query``); the cookie provider's token; the keys
and values an application lets a user put into the session (through its
handlers). What the attacker is after, and what must hold against it:

* **Fixation**: making the server adopt an id the attacker chose. A session is
  served as existing only under an id the server issued and has not ended; a
  new session's id is fresh from the CSPRNG and never one the request named.
* **Hijack or forgery**: guessing an id, or changing a cookie-provider token.
  Ids are 128 bits from the OS CSPRNG; a token that is not authentic under
  the configured keys gives a fresh, empty session.
* **Reading another user's data** (cross-talk): a response shows only the data
  of the session it was served under.
* **Header injection**: CR, LF or NUL in an id or value never reaches a
  response header; a response carries at most one ``Set-Cookie``, for the
  session cookie, with an id- or token-shaped value.
* **Path traversal** (``file`` provider): no id, however built (``..``,
  ``/``, percent-encoded, NUL), touches a path outside the save path.
* **Crashing the server**: no input gives a 5xx or an uncaught exception; the
  one documented 500 is a cookie-provider session over 4096 bytes
  (``Session Cookie Too Large``), never a silently dropped cookie.

What the honest user's own concurrency must not break (several tabs, XHRs and
retries, served by several processes): no acknowledged write lost, no stale
read of an acknowledged write, increments never lost, flashes read once,
nothing served from an id after ``session_regenerate_id`` or
``session_destroy`` answered. What the infrastructure may do (stores killed,
hung or full, application processes killed) is the fault section's subject.

Out of scope: an attacker with access to the store (Redis, SQL, the session
directory) or to the cookie keys; a network attacker when the site does not
use TLS and ``secure`` cookies; timing side channels; denial of service by
volume (rate limiting belongs in front of the application).
"""

HOW_CHECKED = """\
A run starts a real Tornado application (``reliability/app.py``) in several
processes on one store, and many concurrent clients (keep-alive connections,
each request to a random process) run a random mix of ``set``, ``del``,
``read``, ``incr``, ``flash_add``, ``flash_read``, ``regen`` and ``destroy``
on a few shared sessions. Every response reports the id it was served under,
whether that session was new, and the session's data as loaded, so every
request is also a read of every key. The history is checked against a model
(``reliability/model.py``):

* **Per key, read by read** (linearizability checked per read): the value a
  request sees must come from a write of that session that was sent before
  the request was answered and was not certainly overwritten by then, that
  is, no other write of the key, *acknowledged* (answered 200) before the
  request was sent, was itself sent after that write was answered. "Absent"
  needs a delete that qualifies the same way, or no acknowledged write at
  all. A value no request of that session wrote is cross-talk.
* **Counters**: at least every ``incr`` acknowledged before the read was sent,
  at most every ``incr`` sent before it was answered.
* **Flashes**: the ``flash_*`` requests of a session are serialised (the list
  is one key, and one key is last-writer-wins by contract), and each
  ``flash_read`` returns exactly the flashes added since the previous one; no
  flash is read twice.
* **Ids**: after the response of a ``regen`` or ``destroy`` arrived, a read
  and a write with the dead id (probes) must be served a fresh, empty
  session; a new session's id is never one seen before; a live session is
  never missing.
* **Headers**: ``Vary: Cookie`` on every response that used the session; a
  cookie with the first write of a new session, none on a read; the new id
  after ``regen``, the expired cookie after ``destroy``.

A write whose request failed, or overlapped a ``regen`` / ``destroy`` of its
id (a late save of a dead id is dropped, by design), is *unacknowledged*: a
read may or may not show it, at any later time. Deliberately broken providers
(a whole-record save, a dropped save, a stale read cache, an increment saved
as a set, a regenerate that keeps the old id, a destroy that deletes nothing,
a read that serves another session, a read that takes an unknown id for an
empty session) are each caught by this check
(``tests/test_reliability_model.py``), so a clean run means something.
"""

COOKIE_LIMITS = """\
The ``cookie`` provider keeps the whole session in the cookie, encrypted and
authenticated. That makes it stateless, and it cannot promise:

* **Concurrency.** Each response carries the whole session; when two tabs
  change different keys at once, the browser keeps the cookie of the response
  that arrived last and the other change is lost. The stress run gives each
  cookie session a single client, which is all it can promise (and there it
  keeps every write and increment).
* **Revocation.** ``session_destroy`` and ``session_regenerate_id`` expire or
  replace the browser's cookie, but a copy of an old cookie stays valid until
  its lifetime ends (or its key is retired from ``keys``): the server keeps
  nothing to revoke. The old-id probes are therefore not run on it.
* **Size.** An encoded session over 4096 bytes cannot be sent: the request
  fails with ``500 Session Cookie Too Large`` instead of losing data silently.
* **Secrecy of the keys.** Anyone with a key can mint any session; the fuzz
  sends authentic tokens with arbitrary payloads only to show they never
  cause a 500.
"""

MEMCACHED_LIMITS = """\
memcached is a cache (see :doc:`providers/memcache`). The stress run holds
for it, because its saves use ``gets`` / ``cas`` and its sessions fit in
memory, but memcached cannot promise:

* **Eviction.** A full memcached evicts the least recently used items, live
  sessions included, without an error: the user gets a fresh session. Nothing
  wrong is served, but the session is gone.
* **Persistence.** A restart or crash loses every session on that server.
* **A count.** ``get_active_sessions()`` raises ``CannotCountError``.
"""

AMBIGUOUS_503 = """\
When a store hangs (a ``SIGSTOP``, a stalled disk, a network partition), a
save already sent to it waits until ``provider_timeout`` (5 s) runs out and
the request is answered ``503 Session Store Unavailable``. The store has
not refused that save: it may still sit in the store's socket buffer or be
half-way through, and **the store may apply it when it resumes**. A 503 to a
request that wrote therefore means "unknown", not "not saved". The model
treats such a write so: it never counts on it, and accepts a later read that
shows it at any time. For an application this means:

* retrying an idempotent change (``session["cart"] = items``) after a 503 is
  safe;
* retrying a non-idempotent one (``session.incr("n")``, appending a flash)
  may apply it twice: re-read the session first, or make the action
  idempotent (a request id stored with the change). The library's own
  retries never re-send a save that carries an increment that may have run.

A 5xx the *handler* causes (an exception, ``send_error(500)``) is different:
then no session change is sent at all (see :doc:`lifecycle`).
"""


# ---------------------------------------------------------------- sections


def _load_section(stress: list[dict[str, Any]]) -> list[str]:
    lines = _section("Load held, and nothing lost")
    ran = [r for r in stress if not r.get("skipped")]
    if not ran:
        return [*lines, "No stress result is recorded yet.", ""]
    first = ran[0]
    target = first.get("requests_target") or first["requests"]
    lines += [
        f"Each provider ran {_n(target)} requests (a few more: the clients finish the requests "
        f"in flight), {first['clients']} concurrent clients on {first.get('sessions')} shared "
        "sessions, each request to a random one of the server processes (one client per "
        "session for ``cookie``; one process for ``memory``, whose sessions live in it). The mix, "
        "in percent of the requests: "
        + ", ".join(f"``{k}`` {v}" for k, v in first.get("mix", {}).items())
        + "; after each ``regen`` and ``destroy``, two probes with the dead id.",
        "",
    ]
    rows = []
    for r in stress:
        if r.get("skipped"):
            rows.append([f"``{r['provider']}``", "not run", r["skipped"], "", "", "", "", "", ""])
            continue
        c = r.get("counts", {})
        lat = r.get("latency_ms", {})
        rows.append([
            f"``{r['provider']}``",
            f"{r['processes']} × {r['clients']} → {r['sessions']}",
            _n(r["requests"]),
            f"{_n(r['rps'])}",
            f"{lat.get('p50')} / {lat.get('p99')}",
            _n(c.get("acknowledged_writes", 0)),
            f"{_n(c.get('reads_checked', 0))} ({_n(c.get('key_reads_checked', 0))})",
            f"{_n(c.get('regenerates', 0))} / {_n(c.get('destroys', 0))} / {_n(c.get('probes_refused', 0))}",
            _violations(r),
        ])
    lines += _table(
        ["provider", "processes × clients → sessions", "requests", "req/s", "p50 / p99 ms",
         "acknowledged writes", "reads checked (key reads)", "regen / destroy / dead-id probes refused",
         "violations"],
        rows, "12 12 9 8 10 10 12 14 13",
    )
    total = Counter[str]()
    requests = 0
    statuses = Counter[str]()
    for r in ran:
        total.update(r.get("counts", {}))
        requests += int(r["requests"])
        statuses.update({k: int(v) for k, v in r.get("statuses", {}).items()})
    found = Counter[str]()
    for r in ran:
        found.update(r.get("violations") or {})
    lines += _section("The evidence", "~")
    lines += [
        f"Over the {len(ran)} providers: {_n(requests)} requests, "
        + ", ".join(f"{_n(v)} answered {k}" for k, v in sorted(statuses.items())) + "; "
        f"{_n(total['acknowledged_writes'])} acknowledged writes and "
        f"{_n(total['unacknowledged_writes'])} unacknowledged ones (overlapping a ``regen`` / "
        f"``destroy`` of their id); {_n(total['reads_checked'])} responses checked as reads, "
        f"{_n(total['key_reads_checked'])} key by key, each against every acknowledged write "
        "before it.",
        "",
    ]
    lines += _table(
        ["violation", "found"],
        [[kind, _n(found.get(kind, 0))] for kind in VIOLATION_KINDS]
        + [[kind, _n(n)] for kind, n in sorted(found.items()) if kind not in VIOLATION_KINDS],
        "40 20",
    )
    lines += [
        f"Every session's last read (its ``destroy``, or the final read after the load; "
        f"{_n(total['lineage_end_reads'])} sessions) was checked like any other: "
        f"{_n(total['end_keys_verified'])} keys showed their last acknowledged value and the "
        f"counters held all {_n(total['end_increments_verified'])} increments acknowledged before "
        f"it. Increments in all: {_n(total['increments_acknowledged'])} acknowledged and "
        f"{_n(total['increments_unacknowledged'])} unacknowledged; on the sessions alive at the end "
        f"the final reads found {_n(total['final_increments_in_store'])} in the stores for "
        f"{_n(total['final_increments_acknowledged'])} acknowledged (and "
        f"{_n(total['final_increments_unacknowledged'])} unacknowledged). Flashes: "
        f"{_n(total['flashes_added'])} added, {_n(total['flashes_read'])} read, none twice. "
        f"{_n(total['regenerates'])} regenerates and {_n(total['destroys'])} destroys, after each "
        f"of which the dead id was refused ({_n(total['probes_refused'])} probes); "
        f"{_n(total['orphans'])} requests that raced a ``regen`` / ``destroy`` or lost the race "
        "to create a session were served fresh, empty sessions.",
        "",
    ]
    return lines


def _fault_section(faults: list[dict[str, Any]]) -> list[str]:
    lines = _section("Faults injected and survived")
    lines += [
        "Fault scenarios plug into the stress run (``--fault NAME``, see "
        "``reliability/faults.py``): the same load and the same checks, with 503s allowed "
        "while the fault lasts and the writes they answered counted as unacknowledged. "
        "Columns: " + "; ".join(f"*{k}*: {v}" for k, v in SUMMARY_FIELDS.items()) + ".",
        "",
    ]
    if not faults:
        return [*lines, "No fault scenario has recorded a result yet.", ""]
    rows = []
    for r in faults:
        f = r.get("fault") or {}
        rows.append([
            f"``{f.get('name', '?')}``", f"``{r['provider']}``", f.get("fault", ""), _n(f.get("injected", 0)),
            f.get("outage_s"), _n(f.get("status_503", r.get("statuses", {}).get("503", 0))),
            f.get("first_503_s"), f.get("recovery_s"), _n(r.get("requests", 0)), _violations(r),
            "yes" if f.get("survived") else "**no**",
        ])
    lines += _table(
        ["scenario", "provider", "fault", "injected", "outage s", "503s", "first 503 s", "recovery s",
         "requests", "violations", "survived"],
        rows,
    )
    notes = [(r.get("fault") or {}).get("notes") for r in faults]
    lines += [f"* {n}" for n in notes if n]
    if any(notes):
        lines.append("")
    return lines


def _fuzz_section(fuzz: list[dict[str, Any]]) -> list[str]:
    lines = _section("Bad inputs tried")
    ran = [r for r in fuzz if not r.get("skipped")]
    lines += [
        "Hypothesis (``reliability/fuzz.py``) builds requests byte by byte against a server that "
        "accepts the id from the cookie, a header and the query string; each response is checked "
        "for what must never happen (see `Threat model`_), and the ``file`` provider's "
        "surroundings are compared before and after every request.",
        "",
    ]
    if not ran:
        return [*lines, "No fuzz result is recorded yet.", ""]
    properties: list[str] = []
    for r in ran:
        for name in r.get("by_property", {}):
            if name not in properties:
                properties.append(name)
    rows = []
    for r in fuzz:
        if r.get("skipped"):
            rows.append([f"``{r['provider']}``", *["--"] * len(properties), "not run", r["skipped"]])
            continue
        statuses = ", ".join(f"{k}: {_n(v)}" for k, v in sorted(r.get("statuses", {}).items()))
        rows.append([
            f"``{r['provider']}``", *[_n(r.get("by_property", {}).get(p, 0)) for p in properties],
            f"{_n(r.get('requests', 0))} ({statuses})", _n(len(r.get("failures", []))),
        ])
    lines += _table(["provider", *properties, "requests (statuses)", "failures"], rows)
    inputs = Counter[str]()
    for r in ran:
        inputs.update(r.get("inputs", {}))
    total = sum(int(r.get("examples", 0)) for r in ran)
    lines += [
        f"{_n(total)} examples in all. A 400 is Tornado refusing a request HTTP does not allow "
        "(a control character in a header, a head over 64 KiB), or the application refusing the "
        "reserved key; \"no response\" is Tornado closing such a connection unanswered; the 500s "
        "are the cookie provider's documented ``Session Cookie Too Large``. What the inputs held "
        "(an input may count under several kinds):",
        "",
    ]
    lines += _table(["kind of input", "examples"], [[k, _n(v)] for k, v in sorted(inputs.items())], "60 20")
    failures = [f"``{r['provider']}``: {f}" for r in ran for f in r.get("failures", [])]
    if failures:
        lines += ["Failures:", ""] + [f"* {f[:400]}" for f in failures] + [""]
    return lines


def _soak_section(soak: list[dict[str, Any]]) -> list[str]:
    lines = _section("Soak")
    lines += [
        "The stress run, for minutes instead of requests "
        "(``python -m reliability.stress --provider NAME --minutes N``): requests, errors, latency, "
        "and the resident memory and open descriptors of each server process, from the end of "
        "the warm-up (by default the first 20 % of the run) to the last sample under load. Sessions live "
        "20 s idle in a soak run (``--max-lifetime``), so the sessions the run abandons (dead-id "
        "probes, lost creation races) expire and the store, which for ``memory`` is the process "
        "itself, stops growing. Not part of the test suite.",
        "",
    ]
    ran = [r for r in soak if not r.get("skipped")]
    if not ran:
        return [*lines, "No soak result is recorded yet.", ""]
    rows = []
    for r in ran:
        g = r.get("resources", {}).get("growth", {})
        errors = sum(int(v) for k, v in r.get("statuses", {}).items() if k != "200")
        measured = bool(g.get("measured"))
        rss = ", ".join(
            f"{_n(a)} → {_n(b)} ({b - a:+,})"
            for a, b in zip(g.get("rss_kb_start", []), g.get("rss_kb_end", []))
            if a is not None and b is not None
        ) if measured else ""
        fds = ", ".join(
            f"{a} → {b}" for a, b in zip(g.get("fds_start", []), g.get("fds_end", []))
            if a is not None and b is not None
        ) if measured else ""
        rows.append([
            f"``{r['provider']}``",
            f"{r['load_seconds'] / 60:.1f} (warm-up {g.get('from_s', '?')} s)",
            f"{r['processes']} × {r['clients']}",
            _n(r["requests"]), _n(errors), f"{r['latency_ms']['p50']} / {r['latency_ms']['p99']}",
            f"{rss} kB" if rss else "", fds, _violations(r),
        ])
    lines += _table(
        ["provider", "minutes", "processes × clients", "requests", "errors", "p50 / p99 ms",
         "RSS kB per process, end of warm-up → end", "open fds per process", "violations"],
        rows,
    )
    return lines


def render(directory: pathlib.Path = RESULTS) -> str:
    """The page for the results in *directory*."""
    results = load_results(directory)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_kind.setdefault(r["kind"], []).append(r)
    dated = [r for r in results if r.get("date")]
    versions = dated[-1].get("versions", {}) if dated else {}
    dates = sorted({r["date"] for r in dated})
    lines = [
        ".. This page is generated by ``python -m reliability.report`` (reliability/report.py) from",
        "   reliability/results/*.json: do not edit it, run the suite and regenerate it.",
        "",
        "Reliability",
        "===========",
        "",
        INTRO,
    ]
    if dates:
        cpus = dated[-1].get("cpus")
        lines += [
            f"Recorded {dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else "")
            + f" on a {cpus}-CPU machine, gosession-tornado {versions.get('gosession_tornado', '?')}, "
            f"Tornado {versions.get('tornado', '?')}, Python {versions.get('python', '?')}.",
            "",
        ]
    lines += [".. contents::", "   :local:", ""]
    lines += [*_section("Threat model"), THREAT_MODEL]
    lines += [*_section("How the stress run is checked"), HOW_CHECKED]
    lines += _load_section(by_kind.get("stress", []))
    lines += _fault_section(by_kind.get("fault", []))
    lines += _fuzz_section(by_kind.get("fuzz", []))
    lines += _soak_section(by_kind.get("soak", []))
    lines += [*_section("What a cookie store cannot promise"), COOKIE_LIMITS]
    lines += [*_section("What memcached cannot promise"), MEMCACHED_LIMITS]
    lines += [*_section("A 503 during a hang is ambiguous"), AMBIGUOUS_503]
    lines += _section("Running it")
    lines += [
        ".. code-block:: sh",
        "",
        "   # what the test suite runs (tests/test_reliability_*.py)",
        "   .venv/bin/python -m pytest tests/test_reliability_stress.py \\",
        "       tests/test_reliability_fuzz.py",
        "   # every provider and the fuzz campaign, writing reliability/results/,",
        "   # then this page",
        "   .venv/bin/python -m reliability.stress --all --fuzz --report",
        "   # a soak run, by hand",
        "   .venv/bin/python -m reliability.stress --provider redis --minutes 5 \\",
        "       --clients 32 --report",
        "   # more fuzz examples (10x), in the suite or the campaign",
        "   GOSESSION_RELIABILITY_LONG=1 .venv/bin/python -m pytest \\",
        "       tests/test_reliability_fuzz.py",
        "",
    ]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip("\n") + "\n"


def render_to(directory: pathlib.Path = RESULTS, out: pathlib.Path = DOC) -> pathlib.Path:
    """Write the page for *directory*'s results to *out*; returns *out*."""
    out.write_text(render(directory), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m reliability.report``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m reliability.report", description=__doc__)
    parser.add_argument("results", nargs="?", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--out", type=pathlib.Path, default=DOC)
    parser.add_argument("--check", action="store_true", help="exit 1 if --out differs from the rendering")
    args = parser.parse_args(argv)
    text = render(args.results)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is not what {args.results} renders: run python -m reliability.report",
                  file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
