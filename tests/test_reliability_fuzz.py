"""Fuzz of every client-controlled input, per provider (reliability/fuzz.py).

Hypothesis builds requests byte by byte (ids in the cookie, the sid header and
the query string, raw and percent-encoded, with CR, LF, NUL, ``..`` and
non-ASCII; keys and values up to 100 kB set through a handler; tampered,
truncated, re-encoded and foreign cookie-provider tokens; authentic tokens
with arbitrary payloads) against a real server process, and checks every
response: never a 5xx (but the cookie provider's documented ``Session Cookie
Too Large``), never an adopted id, never a header injection or an extra
``Set-Cookie``, never a file outside the file provider's save path, and what
was written reads back. The server's log must hold no traceback.

Example counts are bounded (``reliability.fuzz.DEFAULT_EXAMPLES``);
``GOSESSION_FUZZ_EXAMPLES=N`` sets them, ``GOSESSION_RELIABILITY_LONG=1``
multiplies them by 10. ``GOSESSION_RELIABILITY_RESULTS=DIR`` writes each
provider's counts to *DIR* for the report.

The checks themselves are tested too: crafted responses (an injected header,
two cookies, an adopted id) and a provider that serves unknown ids must fail.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator

import pytest

from reliability.fuzz import (
    DEFAULT_EXAMPLES,
    PROPERTIES,
    InvariantError,
    Target,
    examples_per_property,
    open_target,
    run_property,
)
from reliability.httpclient import Response, parse_head
from reliability.stores import PROVIDERS, StoreUnavailableError

from .reliability_mutants import mutant_store
from .support import fail_or_skip

pytestmark = pytest.mark.slow


@pytest.fixture(params=PROVIDERS)
def target(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Target]:
    """The fuzz server of each provider."""
    try:
        with open_target(request.param, tmp_path) as t:
            yield t
    except StoreUnavailableError as exc:
        fail_or_skip(f"{request.param}: {exc}")


def test_fuzz_every_input(target: Target) -> None:
    for name in PROPERTIES:
        run_property(target, name)
    assert target.server.log_problems() == []
    expected = {name: examples_per_property(n) for name, n in DEFAULT_EXAMPLES.items()}
    if not target.client_side:
        del expected["tampered tokens"], expected["authentic odd payloads"]
    for name, n in expected.items():
        assert target.examples[name] >= n, (name, dict(target.examples))
    assert not target.failures
    out = os.environ.get("GOSESSION_RELIABILITY_RESULTS")
    if out:
        path = pathlib.Path(out) / f"fuzz-{target.provider}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "kind": "fuzz", "provider": target.provider, "examples": sum(target.examples.values()),
            "by_property": dict(target.examples), "inputs": dict(sorted(target.inputs.items())),
            "statuses": dict(sorted(target.statuses.items())), "requests": sum(target.statuses.values()),
            "failures": [],
        }, indent=1, sort_keys=True) + "\n", encoding="utf-8")


@pytest.mark.parametrize("provider", ["file", "redis", "cookie"])
def test_fuzz_ids_of_another_shape(provider: str, tmp_path: pathlib.Path) -> None:
    """A prefix, 20-byte ids and hashed store keys: the same properties hold."""
    overrides = {"session_id_prefix": "app-", "session_id_length": 20, "hash_session_ids": True}
    try:
        with open_target(provider, tmp_path, overrides) as t:
            for name in PROPERTIES:
                run_property(t, name, examples_per_property(60))
            assert t.server.log_problems() == []
            assert all(sid.startswith("app-") and len(sid) == 44 for sid in t.live)
    except StoreUnavailableError as exc:
        fail_or_skip(f"{provider}: {exc}")


# ---------------------------------------------------------------- the checks fail when they must


def _response(head: bytes, body: bytes = b"") -> Response:
    status, reason, headers = parse_head(head)
    return Response(status, reason, headers, body, head)


@pytest.fixture
def memory_target(tmp_path: pathlib.Path) -> Iterator[Target]:
    with open_target("memory", tmp_path) as t:
        yield t


def test_the_checks_catch_injected_headers_and_extra_cookies(memory_target: Target) -> None:
    t = memory_target
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nVary: Cookie"
    body = json.dumps({"sid_in": "a" * 32, "new": True, "data": {}, "sid": "a" * 32, "key": None,
                       "result": None}).encode()
    assert t.check(_response(ok, body), b"", op="read") is not None
    bad = {
        b"X-Injected: 1": "unexpected response header",
        b"Set-Cookie: sid=" + b"b" * 32 + b"\r\nSet-Cookie: sid=" + b"c" * 32: "2 Set-Cookie",
        b"Set-Cookie: admin=1": "another cookie",
        b"Set-Cookie: sid=../../x": "unexpected shape",
        b"Set-Cookie: sid=" + b"b" * 32 + b"; Evil=1": "unexpected cookie attribute",
        b"X-Session-Id: x\rInjected: 1": "bare CR/LF",
    }
    for extra, message in bad.items():
        with pytest.raises(InvariantError, match=message):
            t.check(_response(ok + b"\r\n" + extra, body), b"", op="read")
    with pytest.raises(InvariantError, match="status 500"):
        t.check(_response(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0"), b"", op="read")


def test_the_checks_catch_adopted_and_unknown_ids(memory_target: Target) -> None:
    t = memory_target
    chosen = "d" * 32
    ok = b"HTTP/1.1 200 OK\r\nVary: Cookie"
    adopted = json.dumps({"sid_in": chosen, "new": True, "data": {}, "sid": chosen, "key": None,
                          "result": None}).encode()
    with pytest.raises(InvariantError, match="ADOPTED"):
        t.check(_response(ok, adopted), b"Cookie: sid=" + chosen.encode(), op="read")
    served = json.dumps({"sid_in": chosen, "new": False, "data": {}, "sid": chosen, "key": None,
                         "result": None}).encode()
    with pytest.raises(InvariantError, match="never issued"):
        t.check(_response(ok, served), b"", op="read")
    issued = next(iter(t.live))
    wrong = json.dumps({"sid_in": issued, "new": False, "data": {"not": "this"}, "sid": issued, "key": None,
                        "result": None}).encode()
    with pytest.raises(InvariantError, match="expected"):
        t.check(_response(ok, wrong), b"", op="read")


def test_the_file_checks_catch_a_write_outside_the_save_path(tmp_path: pathlib.Path) -> None:
    try:
        with open_target("file", tmp_path) as t:
            t.before(["../../escaped"])
            t.check_files(["../../escaped"])  # nothing happened: fine
            save = t.save_path
            assert save is not None
            t.before(["../../escaped"])
            (save.parent / "escaped").write_text("x")  # what a traversal would leave
            with pytest.raises(InvariantError, match="outside the save path"):
                t.check_files(["../../escaped"])
            t.before([])
            (save / "stray").write_text("x")
            with pytest.raises(InvariantError, match="unexpected place"):
                t.check_files([])
    except StoreUnavailableError as exc:  # pragma: no cover - the file store is always there
        fail_or_skip(str(exc))


def test_a_provider_that_serves_unknown_ids_is_caught(tmp_path: pathlib.Path) -> None:
    """``read_any`` (an unknown id reads as an empty session) makes the manager adopt ids."""
    name = mutant_store("read_any", where="a store that reads any id")
    with open_target(name, tmp_path) as t, pytest.raises(InvariantError, match=r"never issued|ADOPTED"):
        run_property(t, "sid inputs", 200)


def test_examples_per_property_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GOSESSION_FUZZ_EXAMPLES", raising=False)
    monkeypatch.delenv("GOSESSION_RELIABILITY_LONG", raising=False)
    assert examples_per_property(30) == 30
    monkeypatch.setenv("GOSESSION_RELIABILITY_LONG", "1")
    assert examples_per_property(30) == 300
    monkeypatch.setenv("GOSESSION_FUZZ_EXAMPLES", "7")
    assert examples_per_property(30) == 7
