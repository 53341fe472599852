"""Fuzz every client-controlled input of a session request; check what must never happen.

A real server process (:mod:`reliability.app`) runs one provider with the sid
accepted from the cookie, a header (``X-Session-Id``) and the query string
(``?sid=``). Hypothesis builds the requests, byte by byte (CR, LF, NUL,
``..``, percent-encoding, non-ASCII, 100 kB values); each response is checked
by :meth:`Target.check`:

* never a 5xx (the one documented exception: a cookie-provider session over
  4096 bytes is ``500 Session Cookie Too Large``, never a dropped cookie);
* never an adopted id: a session served as existing has an id the server
  issued and that is still alive; a new session's id is fresh, appears
  nowhere in the request, and is not one issued before;
* never a header injection: every header line is ``token: value`` without a
  bare CR, LF or NUL, every header name is one the application sends, at
  most one ``Set-Cookie``, for the session cookie only, with a value of the
  session id's (or Fernet token's) alphabet and only known attributes;
* never a file outside the save path (file provider): the directory tree
  around the save path is unchanged, every file inside it has the provider's
  layout (``<c>/<c>/<id>``), and no path built from an input exists;
* what a request wrote is what the next request reads (values and keys up to
  100 kB, any string), and a tampered cookie-provider token gives either the
  authentic session (an equivalent encoding of the same token) or a fresh
  empty one.

:func:`run_campaign` runs every property on every provider and returns the
counts the report shows; ``tests/test_reliability_fuzz.py`` runs the same
properties under pytest. :func:`examples_per_property` sizes them
(``GOSESSION_FUZZ_EXAMPLES`` or ``GOSESSION_RELIABILITY_LONG=1`` raise it).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .httpclient import Response, raw_request
from .stores import PROVIDERS, StoreSetup, StoreUnavailableError, open_store

__all__ = [
    "PROPERTIES", "Target", "examples_per_property", "open_target", "run_campaign", "run_property",
]

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEADER_NAME = "X-Session-Id"
#: Header names the application may send (lowercase).
ALLOWED_HEADERS = frozenset({
    "server", "content-type", "date", "content-length", "etag", "set-cookie", "vary", "retry-after",
    "connection", "transfer-encoding", HEADER_NAME.lower(),
})
ALLOWED_COOKIE_ATTRS = frozenset({"path", "domain", "expires", "max-age", "httponly", "secure", "samesite"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SID = re.compile(r"[0-9a-f]{32}")
_FERNET_ALPHABET = re.compile(r"[A-Za-z0-9_=-]*")
#: Strings a path-traversal attempt is made of.
TRAVERSALS = (
    "..", "../", "../..", "../../etc/passwd", "..%2f..%2f", "%2e%2e%2f%2e%2e", "....//", "..\\..\\",
    "/etc/passwd", "/tmp/x", "./", "%00", "..;/", "%252e%252e%252f", "\u2025", "\uff0e\uff0e/",
)


def examples_per_property(default: int) -> int:
    """*default*, or ``GOSESSION_FUZZ_EXAMPLES``, or 10 × *default* with ``GOSESSION_RELIABILITY_LONG=1``."""
    explicit = os.environ.get("GOSESSION_FUZZ_EXAMPLES")
    if explicit:
        return max(1, int(explicit))
    if os.environ.get("GOSESSION_RELIABILITY_LONG", "").lower() in ("1", "true", "yes"):
        return default * 10
    return default


# ---------------------------------------------------------------- the server


class SyncServer:
    """A blocking wrapper around one ``python -m reliability.app`` process (stopped by PID)."""

    def __init__(self, spec: dict[str, Any], workdir: pathlib.Path, cwd: pathlib.Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.cwd = cwd
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        spec_path = self.workdir / "fuzz-server.json"
        spec_path.write_text(json.dumps(self.spec), encoding="utf-8")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        from .stress import _die_with_parent

        with open(self.workdir / "fuzz-server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reliability.app", f"@{spec_path}"],
                stdout=subprocess.PIPE, stderr=log, cwd=self.cwd, env=env, preexec_fn=_die_with_parent,
            )
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line.startswith(b"LISTENING "):
            self.stop()
            tail = (self.workdir / "fuzz-server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"fuzz server did not start: {line!r}\n{tail}")
        self.port = int(line.split()[1])

    def log_problems(self) -> list[str]:
        """Tracebacks and uncaught exceptions the server logged (each as its first lines)."""
        try:
            text = (self.workdir / "fuzz-server.log").read_text(errors="replace")
        except OSError:
            return []
        return [
            text[i:i + 600] for i in (m.start() for m in re.finditer(r"Traceback|Uncaught exception", text))
        ][:5]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


# ---------------------------------------------------------------- the target and its checks


class InvariantError(AssertionError):
    """A response broke an invariant (the message says which)."""


@dataclasses.dataclass
class Target:
    """One provider's fuzz server and what the checks know about it."""

    provider: str
    setup: StoreSetup
    server: SyncServer
    jail: pathlib.Path
    cookie_name: str
    #: Every session id the server issued (as a new session's id, or by regenerate).
    issued: set[str] = dataclasses.field(default_factory=set)
    #: sid -> the data the server must serve for it (server-side: what was written; cookie: too).
    live: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: cookie provider: sid -> the token that carries it.
    tokens: dict[str, str] = dataclasses.field(default_factory=dict)
    inputs: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    statuses: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    examples: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    failures: list[str] = dataclasses.field(default_factory=list)
    _tree: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    _existing: set[str] = dataclasses.field(default_factory=set)

    @property
    def client_side(self) -> bool:
        return self.setup.client_side

    @property
    def sid_shape(self) -> re.Pattern[str]:
        """The ids this manager issues: its prefix and ``session_id_length`` bytes of hex."""
        prefix = str(self.setup.config.get("session_id_prefix", ""))
        length = int(self.setup.config.get("session_id_length", 16))
        return re.compile(re.escape(prefix) + f"[0-9a-f]{{{2 * length}}}")

    @property
    def save_path(self) -> pathlib.Path | None:
        if self.provider != "file":
            return None
        return pathlib.Path(str(self.setup.config["provider_config"]))

    # ------------------------------------------------------------ requests

    def send(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes | None = None,
             ) -> Response | None:
        """Send one request made of exactly these bytes (plus Host, Content-Length, Connection: close)."""
        lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
        lines += [name + b": " + value for name, value in headers]
        if body is not None:
            lines.append(b"Content-Length: " + str(len(body)).encode())
        lines.append(b"Connection: close")
        data = b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
        resp = raw_request("127.0.0.1", self.server.port, data, timeout=30)
        self.statuses["no response" if resp is None else str(resp.status)] += 1
        if not self.server.alive():
            raise InvariantError("the server process died")
        return resp

    def op(self, op: str, *, cookie: str | None = None, args: dict[str, Any] | None = None,
           ) -> tuple[Response, dict[str, Any]]:
        """A well-formed request (JSON body) with *cookie*; its response and body (asserted 200)."""
        headers = [(b"Cookie", f"{self.cookie_name}={cookie}".encode())] if cookie else []
        headers.append((b"Content-Type", b"application/json"))
        resp = self.send("POST", f"/op/{op}".encode(), headers, json.dumps(args or {}).encode())
        if resp is None or resp.status != 200:
            raise InvariantError(f"well-formed {op} answered {None if resp is None else resp.status}")
        body = self.check(resp, b"", op=op)
        assert body is not None
        return resp, body

    def new_session(self, data: dict[str, str]) -> str:
        """Create a session holding *data* (through the handler); returns its id."""
        cookie: str | None = None
        sid = ""
        for key, value in data.items():
            resp, body = self.op("set", cookie=cookie, args={"k": key, "v": value})
            sid = body["sid"]
            for header in resp.get_all("Set-Cookie"):
                cookie = header.split(";")[0].partition("=")[2]
        if self.client_side and cookie:
            self.tokens[sid] = cookie
        return sid

    def cookie_for(self, sid: str) -> str:
        """The cookie value that carries session *sid*."""
        return self.tokens[sid] if self.client_side else sid

    # ------------------------------------------------------------ checks

    def check(self, resp: Response | None, request: bytes, *, op: str, malformed: bool = False,
              huge: bool = False, strict: bool = False) -> dict[str, Any] | None:
        """Check *resp* to *request* (see the module docstring); returns its JSON body if 200.

        *malformed*: the request itself breaks HTTP (raw CR/LF/NUL in a header or
        the target), so a 400 or a closed connection is a fine answer.
        *huge*: it sets a value the cookie provider cannot hold (a 500 "Session
        Cookie Too Large" is then the documented answer). *strict*: anything but
        200 is a failure (a well-formed request the application accepts).
        """
        if resp is None:
            if malformed:
                return None
            raise InvariantError("the server closed the connection without an answer")
        self._check_head(resp)
        if resp.status >= 500:
            if huge and self.client_side and resp.status == 500 and "Too Large" in resp.reason:
                if resp.get_all("Set-Cookie"):
                    raise InvariantError("the cookie-too-large 500 carries a Set-Cookie")
                return None
            raise InvariantError(f"status {resp.status} {resp.reason}")
        if resp.status != 200:
            if resp.get_all("Set-Cookie"):
                raise InvariantError(f"a {resp.status} answer sets a cookie")
            if strict:
                raise InvariantError(f"{resp.status} {resp.reason} for a request HTTP allows")
            return None
        body: dict[str, Any] = resp.json()
        self._check_ids(resp, body, request, op)
        return body

    def _check_head(self, resp: Response) -> None:
        raw = resp.raw_head
        bare = raw.replace(b"\r\n", b"")
        if b"\x00" in raw or b"\r" in bare or b"\n" in bare:
            raise InvariantError(f"a response header holds NUL or a bare CR/LF: {raw[:300]!r}")
        cookies = []
        for name, value in resp.headers:
            if not _TOKEN.fullmatch(name):
                raise InvariantError(f"response header name {name[:40]!r} is not a token")
            if name.lower() not in ALLOWED_HEADERS:
                raise InvariantError(f"unexpected response header {name[:40]!r}: {value[:80]!r}")
            if name.lower() == "set-cookie":
                cookies.append(value)
            if name.lower() == HEADER_NAME.lower() and value and not self.sid_shape.fullmatch(value):
                raise InvariantError(f"the sid header carries {value[:80]!r}")
        if len(cookies) > 1:
            raise InvariantError(f"{len(cookies)} Set-Cookie headers: {cookies}")
        for header in cookies:
            first, *attrs = header.split(";")
            name, _, value = first.partition("=")
            if name != self.cookie_name:
                raise InvariantError(f"Set-Cookie for another cookie: {header[:120]!r}")
            shape = _FERNET_ALPHABET if self.client_side else self.sid_shape
            if value and not shape.fullmatch(value):
                raise InvariantError(f"Set-Cookie value of an unexpected shape: {value[:120]!r}")
            for attr in attrs:
                key = attr.strip().partition("=")[0].lower()
                if key not in ALLOWED_COOKIE_ATTRS:
                    raise InvariantError(f"unexpected cookie attribute {attr[:60]!r} in {header[:200]!r}")

    def _check_ids(self, resp: Response, body: dict[str, Any], request: bytes, op: str) -> None:
        sid_in, sid_end, new = body["sid_in"], body["sid"], body["new"]
        decoded = urllib.parse.unquote_to_bytes(request)
        if new:
            if sid_in in self.issued:
                raise InvariantError(f"a new session got the issued id {sid_in[:8]}")
            if sid_in.encode() in request or sid_in.encode() in decoded:
                raise InvariantError(f"ADOPTED: the new session's id {sid_in!r} came from the request")
            if body["data"]:
                raise InvariantError(f"a new session came with data {sorted(body['data'])[:5]}")
        else:
            if sid_in not in self.live:
                raise InvariantError(f"served session {sid_in[:8]}, which the server never issued or ended")
            expected = self.live[sid_in]
            if body["data"] != expected:
                raise InvariantError(
                    f"session {sid_in[:8]} served {_short(body['data'])}, expected {_short(expected)}"
                )
        # What the request did to the session: the next checks expect it.
        data = dict(body["data"])
        cookie = None
        for header in resp.get_all("Set-Cookie"):
            cookie = header.split(";")[0].partition("=")[2]
        if op == "destroy":
            self.live.pop(sid_in, None)
            self.tokens.pop(sid_in, None)
            return
        if op == "set" and isinstance(body["result"], str):
            data[str(body["key"])] = body["result"]
        if op == "regen" and not new:
            self.live.pop(sid_in, None)
            self.tokens.pop(sid_in, None)
        stored = (op == "set") or (op == "regen" and not new)
        if stored:
            if sid_end in self.issued and sid_end != sid_in:
                raise InvariantError(f"regenerate gave the issued id {sid_end[:8]}")
            self.issued.add(sid_end)
            self.live[sid_end] = data
            if self.client_side and cookie:
                self.tokens[sid_end] = cookie
            elif not self.client_side and new and cookie != sid_end:
                raise InvariantError(f"a new session was stored without its cookie ({cookie!r})")
        sid_header = resp.header(HEADER_NAME)
        if sid_header and sid_header not in (sid_in, sid_end):
            raise InvariantError(f"the sid header names {sid_header[:8]}, not this session")
        if sid_header and sid_header not in self.live and not (new and op == "read"):
            raise InvariantError(f"the sid header names {sid_header[:8]}, which is not alive")

    # ------------------------------------------------------------ the file provider's tree

    def tree(self) -> dict[str, tuple[int, int]]:
        """Every path under the work directory but the save path and the server's files: (size, mtime)."""
        out: dict[str, tuple[int, int]] = {}
        save = self.save_path
        for dirpath, dirnames, filenames in os.walk(self.jail.parent):
            here = pathlib.Path(dirpath)
            dirnames[:] = [d for d in dirnames if save is None or here / d != save]
            for name in [*filenames, *dirnames]:
                if here == self.jail.parent and name.startswith("fuzz-server"):
                    continue  # the server's own log and spec
                path = here / name
                try:
                    info = path.lstat()
                except OSError:
                    continue
                out[str(path)] = (info.st_size if path.is_file() else 0, info.st_mtime_ns)
        return out

    def check_files(self, inputs: list[str]) -> None:
        """Nothing changed outside the save path; inside it, only the provider's layout."""
        save = self.save_path
        if save is None:
            return
        now = self.tree()
        if now != self._tree:
            added = sorted(set(now) - set(self._tree))[:5]
            changed = sorted(k for k in set(now) & set(self._tree) if now[k] != self._tree[k])[:5]
            removed = sorted(set(self._tree) - set(now))[:5]
            raise InvariantError(f"files outside the save path changed: +{added} ~{changed} -{removed}")
        from gosession_tornado.providers.file import valid_sid

        for dirpath, _, filenames in os.walk(save):
            rel = pathlib.Path(dirpath).relative_to(save)
            for name in filenames:
                parts = rel.parts
                if name.startswith("."):
                    continue  # the provider's temp files and locks are dot-files
                if len(parts) != 2 or not valid_sid(name) or parts != (name[0], name[1]):
                    raise InvariantError(f"a file at an unexpected place in the save path: {rel / name}")
        for path in self._input_paths(inputs):
            if path not in self._existing and os.path.lexists(path):
                raise InvariantError(f"a path built from the input was created outside the save path: {path}")

    def _input_paths(self, inputs: list[str]) -> list[str]:
        """Where a careless provider would put the session *inputs* name (outside the save path)."""
        save = self.save_path
        if save is None:
            return []
        out = []
        for text in inputs:
            if len(text) < 2 or "\x00" in text:
                continue
            path = os.path.normpath(f"{save}/{text[0]}/{text[1]}/{text}")
            if not path.startswith(f"{save}{os.sep}"):
                out.append(path)
        return out

    def before(self, inputs: list[str]) -> None:
        """Take the snapshot :meth:`check_files` compares with, before a request with *inputs*."""
        self._tree = self.tree()
        self._existing = {p for p in self._input_paths(inputs) if os.path.lexists(p)}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


# ---------------------------------------------------------------- inputs


def classify(text: str) -> list[str]:
    """The kinds of hostile input *text* is (for the report's counts)."""
    kinds = []
    if "\r" in text or "\n" in text:
        kinds.append("CR/LF")
    if "\x00" in text:
        kinds.append("NUL")
    if ".." in text or "/" in text or "\\" in text:
        kinds.append("path traversal")
    if "%" in text:
        kinds.append("percent-encoded")
    if any(ord(c) > 127 for c in text):
        kinds.append("non-ASCII")
    if _SID.fullmatch(text):
        kinds.append("well-formed unknown id")
    if len(text) > 4096:
        kinds.append("over 4 kB")
    return kinds or ["other"]


_ODD = st.sampled_from(
    ["\r", "\n", "\x00", ";", ",", "=", '"', " ", "\t", "%", "/", "\\", ".", "\u00e9", "\u2028"]
)
_TEXT = st.text(
    alphabet=st.one_of(st.characters(codec="utf-8", exclude_categories=["Cs"]), _ODD), max_size=80
)
_HEX = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)


def sid_strategy(target: Target) -> st.SearchStrategy[str]:
    """Strings a client might send as its session id: garbage, traversal, unknown ids, issued ids altered."""
    def altered(sid: str, how: int, extra: str) -> str:
        forms = [
            sid.upper(), sid[:-1], sid + extra, extra + sid, f'"{sid}"', f" {sid} ",
            sid[:16] + extra + sid[16:],
            urllib.parse.quote(sid, safe=""), "".join(f"%{ord(c):02x}" for c in sid), sid + "\x00",
            sid + "\r\n", f"{sid}; {target.cookie_name}=x",
        ]
        return forms[how % len(forms)]

    alive = st.sampled_from(sorted(target.live)) if target.live else st.just("0" * 32)
    prefix = str(target.setup.config.get("session_id_prefix", ""))
    hex_len = 2 * int(target.setup.config.get("session_id_length", 16))
    well_formed = st.text(alphabet="0123456789abcdef", min_size=hex_len, max_size=hex_len).map(
        lambda h: prefix + h
    )
    return st.one_of(
        _TEXT,
        _HEX,
        well_formed,
        st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=80),
        st.builds(lambda t, s: t + s, st.sampled_from(TRAVERSALS), _TEXT),
        st.builds(lambda s, t: s + t, _TEXT, st.sampled_from(TRAVERSALS)),
        st.builds(altered, alive, st.integers(0, 50), _TEXT.filter(bool)),
        st.builds(lambda c, n: c * n, st.sampled_from(["a", "0", "%", ".", "\u00e9"]),
                  st.integers(8000, 9000)),
    )


def _header_bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def _raw_form(value: str) -> bool:
    """True if *value* cannot be a header value (RFC 9110: no control characters but HTAB)."""
    return any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value)


def _bad_target(value: str) -> bool:
    """True if *value*, put raw into the request target, breaks the request line."""
    return any(ord(c) <= 32 or ord(c) == 127 or c == "#" for c in value)


# ---------------------------------------------------------------- properties


def prop_sid_inputs(target: Target, examples: int) -> None:
    """Ids in the cookie, the sid header and the query string, raw or percent-encoded."""

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(
        sid=sid_strategy(target),
        places=st.sets(st.sampled_from(["cookie", "header", "query", "query-raw"]), min_size=1),
        op=st.sampled_from(["read", "set", "regen", "destroy"]),
    )
    def run(sid: str, places: set[str], op: str) -> None:
        target.examples["sid inputs"] += 1
        for kind in classify(sid):
            target.inputs[kind] += 1
        headers: list[tuple[bytes, bytes]] = []
        path = f"/op/{op}".encode()
        malformed = False
        if "cookie" in places:
            headers.append((b"Cookie", f"{target.cookie_name}=".encode() + _header_bytes(sid)))
            malformed |= _raw_form(sid)
        if "header" in places:
            headers.append((HEADER_NAME.encode(), _header_bytes(sid)))
            malformed |= _raw_form(sid)
        query = [("k", "fz"), ("v", "fuzzed")] if op == "set" else []
        if "query-raw" in places:
            path += b"?" + target.cookie_name.encode() + b"=" + _header_bytes(sid)
            malformed |= _bad_target(sid)
            if query:
                path += b"&" + urllib.parse.urlencode(query).encode()
        elif "query" in places or query:
            if "query" in places:
                query.append((target.cookie_name, sid))
            path += b"?" + urllib.parse.urlencode(query, encoding="utf-8", errors="surrogatepass").encode()
        inputs = [sid, urllib.parse.unquote(sid)]
        target.before(inputs)
        request = path + b"\n" + b"\n".join(v for _, v in headers)
        # Tornado closes the connection, unanswered, when the head exceeds max_header_size (64 KiB).
        malformed |= len(request) + 200 > 65536
        resp = target.send("GET", path, headers)
        target.check(resp, request, op=op, malformed=malformed, strict=not malformed)
        target.check_files(inputs)
        if len(target.live) < 3:
            target.new_session({"a": "1"})

    run()


def prop_values(target: Target, examples: int) -> None:
    """Keys and values up to 100 kB, any string, set through the handler and read back."""
    big = st.builds(lambda c, n: c * n, st.sampled_from(["x", "\u00e9", "\x00", "\r\n", "..", "%2e", "🐢"]),
                    st.integers(1, 100_000))

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(key=st.one_of(_TEXT.filter(bool), big, st.sampled_from([*TRAVERSALS, "__gosession__", "_flash"])),
           value=st.one_of(_TEXT, big))
    def run(key: str, value: str) -> None:
        target.examples["values"] += 1
        for kind in {*classify(key), *classify(value)}:
            target.inputs[f"value: {kind}"] += 1
        if len(key) + len(value) >= 90_000:
            target.inputs["value: 100 kB"] += 1
        target.before([key])
        body = json.dumps({"k": key, "v": value}).encode()
        headers = [(b"Content-Type", b"application/json")]
        resp = target.send("POST", b"/op/set", headers, body)
        huge = len(key.encode()) + len(value.encode()) > 2500
        out = target.check(resp, b"", op="set", huge=huge)
        target.check_files([key])
        if out is None:
            if resp is not None and resp.status == 400 and key not in ("__gosession__",) and key != "_flash":
                raise InvariantError(f"set refused key {key[:40]!r} with 400 {resp.reason}")
            return
        cookie = target.cookie_for(out["sid"])
        _, back = target.op("read", cookie=cookie)
        if back["data"].get(key) != value:
            raise InvariantError(f"value of {key[:40]!r} did not round-trip ({len(value)} chars)")

    run()


def _b64_std(token: str) -> str:
    return token.replace("-", "+").replace("_", "/")


def prop_tokens(target: Target, examples: int) -> None:
    """cookie provider: tampered, truncated, re-encoded and foreign tokens of a real session."""
    if not target.client_side:
        return
    from cryptography.fernet import Fernet

    foreign = Fernet(Fernet.generate_key())

    def mutate(token: str, how: int, pos: int, extra: str) -> str:
        i = pos % max(1, len(token))
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        flipped = alphabet[(alphabet.index(token[i]) + 1) % 64] if token[i] in alphabet else "A"
        forms = [
            token[:i] + flipped + token[i + 1:],  # one character changed
            token[:i],  # truncated
            token + extra, extra + token,  # extended
            _b64_std(token),  # standard base64 alphabet
            token.rstrip("=") , token + "==",  # padding changed
            urllib.parse.quote(token, safe=""), "".join(f"%{ord(c):02X}" for c in token),  # percent-encoded
            f'"{token}"', token.lower(), token.upper(),
            base64.urlsafe_b64encode(base64.urlsafe_b64decode(token + "==")).decode(),  # re-encoded
            foreign.encrypt(base64.urlsafe_b64decode(token + "==")[:40]).decode(),  # another key
            token[i:] + token[:i],  # rotated
        ]
        return forms[how % len(forms)]

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(how=st.integers(0, 100), pos=st.integers(0, 10_000), extra=_TEXT.filter(bool),
           where=st.sampled_from(["cookie", "header", "query"]))
    def run(how: int, pos: int, extra: str, where: str) -> None:
        target.examples["tampered tokens"] += 1
        if len(target.live) < 2:
            target.new_session({"user": "ann", "n": "1"})
        sid = sorted(target.live)[pos % len(target.live)]
        token = target.tokens[sid]
        bad = mutate(token, how, pos, extra)
        target.inputs["tampered token"] += 1
        if where == "cookie":
            headers = [(b"Cookie", f"{target.cookie_name}=".encode() + _header_bytes(bad))]
            path = b"/op/read"
        elif where == "header":
            headers = [(HEADER_NAME.encode(), _header_bytes(bad))]
            path = b"/op/read"
        else:
            headers = []
            path = b"/op/read?" + urllib.parse.urlencode({target.cookie_name: bad}).encode()
        resp = target.send("GET", path, headers)
        body = target.check(resp, b"", op="read", malformed=_raw_form(bad))
        if body is None:
            return
        if not body["new"] and body["sid_in"] != sid:
            raise InvariantError(f"a token of session {sid[:8]} was served as {body['sid_in'][:8]}")

    run()


def prop_payloads(target: Target, examples: int) -> None:
    """cookie provider: authentic tokens (the real key) whose payload is anything msgpack can hold."""
    if not target.client_side:
        return
    import msgpack
    from cryptography.fernet import Fernet

    keys = target.setup.config["provider_config"]["keys"]
    fernet = Fernet(keys[0])
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
                     _TEXT, st.binary(max_size=40))
    payload = st.recursive(leaf, lambda c: st.one_of(st.lists(c, max_size=5),
                                                      st.dictionaries(_TEXT, c, max_size=5)), max_leaves=20)
    shaped = st.builds(
        lambda v, name, sid, life, data: [v, name, sid, life, data],
        st.one_of(st.just(1), leaf), st.one_of(st.just(""), leaf), st.one_of(_HEX, _TEXT, leaf),
        st.one_of(st.integers(-5, 10**6), leaf), st.one_of(st.dictionaries(_TEXT, leaf, max_size=4), payload),
    )

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(obj=st.one_of(payload, shaped))
    def run(obj: Any) -> None:
        target.examples["authentic odd payloads"] += 1
        target.inputs["odd payload"] += 1
        token = fernet.encrypt(msgpack.packb(obj, use_bin_type=True)).decode()
        headers = [(b"Cookie", f"{target.cookie_name}={token}".encode())]
        resp = target.send("GET", b"/op/read", headers)
        if resp is None:
            raise InvariantError("no answer to a well-formed request")
        target._check_head(resp)
        if resp.status >= 500:
            raise InvariantError(f"status {resp.status} for an authentic token with payload {_short(obj)}")

    run()


#: name -> property; each takes (target, examples).
PROPERTIES: dict[str, Callable[[Target, int], None]] = {
    "sid inputs": prop_sid_inputs,
    "values": prop_values,
    "tampered tokens": prop_tokens,
    "authentic odd payloads": prop_payloads,
}

#: Examples per property at CI size (before :func:`examples_per_property`).
DEFAULT_EXAMPLES = {"sid inputs": 300, "values": 25, "tampered tokens": 300, "authentic odd payloads": 150}


@contextlib.contextmanager
def open_target(
    provider: str, workdir: pathlib.Path, overrides: dict[str, Any] | None = None,
) -> Iterator[Target]:
    """The fuzz server of *provider* in *workdir* (sid from cookie, header and query).

    *overrides*: ``SessionManager`` settings to change (``session_id_prefix``, ...).

    :raises StoreUnavailableError: if the provider's store cannot be used here.
    """
    jail = workdir / "jail"
    jail.mkdir(parents=True, exist_ok=True)
    (jail / "canary.txt").write_text("must not change\n", encoding="utf-8")
    (workdir / "canary-outside").mkdir(exist_ok=True)
    setup = asyncio.run(open_store(provider, jail))
    try:
        config = dict(setup.config)
        config.update({
            "enable_sid_in_http_header": True, "session_name_in_http_header": HEADER_NAME,
            "enable_sid_in_url_query": True, **(overrides or {}),
        })
        setup.config = config
        server = SyncServer({"config": config, "imports": setup.imports}, workdir, jail)
        server.start()
        try:
            target = Target(provider, setup, server, jail, str(config.get("cookie_name", "gosessionid")))
            for i in range(3):
                target.new_session({"a": str(i)})
            yield target
        finally:
            server.stop()
    finally:
        asyncio.run(_await(setup.cleanup()))


async def _await(awaitable: Awaitable[None]) -> None:
    await awaitable


def run_property(target: Target, name: str, examples: int | None = None) -> None:
    """Run property *name* on *target* (raises on the first, shrunk, failure)."""
    n = examples if examples is not None else examples_per_property(DEFAULT_EXAMPLES[name])
    PROPERTIES[name](target, n)


def run_campaign(examples: int | None = None, providers: tuple[str, ...] = PROVIDERS,
                 workdir: pathlib.Path | None = None) -> list[dict[str, Any]]:
    """Every property on every provider; one result per provider (failures recorded, not raised)."""
    results = []
    for provider in providers:
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="gosession-fuzz-", dir=workdir))
        started = time.monotonic()
        result: dict[str, Any] = {"kind": "fuzz", "provider": provider}
        try:
            with open_target(provider, tmp) as target:
                for name in PROPERTIES:
                    try:
                        run_property(target, name, examples)
                    except Exception as exc:
                        notes = " | ".join(getattr(exc, "__notes__", []))
                        target.failures.append(
                            f"{name}: {type(exc).__name__}: {str(exc)[:1500]} | {notes[:1500]}"
                        )
                target.failures.extend(f"server log: {problem}" for problem in target.server.log_problems())
                result.update({
                    "examples": sum(target.examples.values()),
                    "by_property": dict(target.examples),
                    "inputs": dict(sorted(target.inputs.items())),
                    "statuses": dict(sorted(target.statuses.items())),
                    "requests": sum(target.statuses.values()),
                    "failures": target.failures,
                    "seconds": round(time.monotonic() - started, 1),
                    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                })
        except StoreUnavailableError as exc:
            result.update({"skipped": str(exc), "examples": 0, "failures": []})
        except Exception as exc:  # the server did not start: the provider fails, the others run
            result.update({"examples": 0, "failures": [f"setup: {type(exc).__name__}: {str(exc)[-1500:]}"]})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        results.append(result)
    return results
