"""The model a stress run is checked against: a recorded history, online and offline checks.

Vocabulary
----------

*slot*
    One "user" of the run: a cookie jar shared by every client that works on
    it (several browser tabs). Its jar holds the current session id (for the
    cookie provider: the cookie itself).
*lineage*
    The life of one slot's session, from the request that created it (its
    first write) through any number of ``regenerate``\\ s (the data moves to a
    new id, the lineage goes on) to its ``destroy``. Every request sent with
    one of the lineage's ids and served under that id (the response says so)
    belongs to it. A request whose id was dead by the time it was read is
    served a new session: an *orphan*, checked on its own.
*op*
    One request: kind, key, the value it wrote, the id it sent, when it was
    sent and when its response had been read (client clock,
    ``time.monotonic``), the status, and the server's answer (the id it was
    served under, whether that session was new, the session's data as loaded,
    the result).

Every response shows the session's data as loaded, so every request is a
*read* of every key, besides whatever it writes. Writes are ``set`` (a unique
value), ``del`` and ``flash_read`` (absent), ``flash_add`` (the new flash list,
unique because each flash is) and ``incr`` (counters).

What is checked
---------------

Online, as each response arrives (:meth:`Model.complete`):

* nothing is served from an id after the response of its ``regenerate`` or
  ``destroy`` was received (*old id served*);
* a session the run did not end is still there (*session vanished*);
* a new session is empty and has an id never seen before, never one a client
  sent (*cross-talk* / *adopted id*);
* headers: at most one ``Set-Cookie``, for the session cookie only; a new
  session gets its cookie with its first write and not on a read; a
  ``regenerate`` sends the new id, a ``destroy`` the expired cookie;
  ``Vary: Cookie`` on every response that used the session;
* statuses: 200, unless the fault scenario allows others (503 during an outage).

Offline, per lineage once it has ended and its last request is answered
(:meth:`Model._check_lineage`), for every read *R* and every key *k*:

* registers (``set`` / ``del``): let *M* be the latest send time of the writes
  of *k* that were **acknowledged** (200, and answered before any
  ``regenerate`` / ``destroy`` of their id was sent) **before R was sent**.
  The value *R* shows must come from a write of this lineage sent before *R*'s
  response and not answered before *M* (otherwise it was overwritten for
  sure: a *stale read*); "absent" needs a delete meeting the same condition,
  or no such acknowledged write at all. A value no write of this lineage
  produced is *cross-talk*. This is linearizability checked read by read
  (each read against the real-time order of the writes), which is what the
  library promises per key: last-writer-wins, and no acknowledged write
  invisible to a later request;
* counters (``incr``): at least the acknowledged increments answered before
  *R* was sent (else a *lost increment*), at most every increment sent
  before *R*'s response (else a *phantom increment*);
* flashes: ``flash_add`` / ``flash_read`` of a slot are serialised (like
  ``regenerate`` / ``destroy``; the flash list is one key, and concurrent
  changes of one key are last-writer-wins by contract), so each
  ``flash_read`` must return exactly the flashes added since the last one, in
  order, and no flash is ever read twice.

A write whose request failed (a 5xx, a timeout) or overlapped a
``regenerate`` / ``destroy`` of its id may or may not have been applied: it
never counts as acknowledged, but a read may show it (and, for a failed
request, at any later time: a store that hung may apply the write when it
resumes). The final read of every slot, after the load stopped, is checked by
the same rules; what it shows is the *nothing lost* evidence of the report.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import math
from typing import Any

__all__ = [
    "ABSENT", "COUNTER_KEYS", "FLASH_KEY", "INF", "Lineage", "Model", "Op", "REGISTER_KEYS", "Slot",
    "WRITE_KINDS",
]

INF = math.inf
#: The key flashes live under (the library's default).
FLASH_KEY = "_flash"
#: Keys written by ``set`` / ``del``.
REGISTER_KEYS = ("k0", "k1", "k2", "k3")
#: Keys written by ``incr``.
COUNTER_KEYS = ("c0", "c1")
#: Operations that modify the session (and so create a new one).
WRITE_KINDS = frozenset({"set", "del", "incr", "flash_add"})
#: Operations serialised per slot (the slot's mutex).
SERIAL_KINDS = frozenset({"regen", "destroy", "flash_add", "flash_read"})
#: How many violations are kept with their details.
MAX_EXAMPLES = 40


class _Absent:
    """The value of a key that is not in the session."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


@dataclasses.dataclass(eq=False)
class Op:
    """One request of the history (see the module docstring)."""

    seq: int
    kind: str
    slot: int
    client: int
    key: str | None = None
    value: Any = None
    #: The session id the request carried (``None``: no cookie).
    sid_sent: str | None = None
    #: The cookie value sent (the sid, or the cookie provider's token).
    cookie_sent: str | None = None
    #: The slot's jar version when sent (births race on it).
    jar_version: int = 0
    #: A request deliberately sent with an id the run killed.
    probe: bool = False
    #: The final read of a slot, after the load.
    final: bool = False
    sent: float = 0.0
    received: float = INF
    status: int = 0
    error: str | None = None
    sid_in: str | None = None
    new: bool | None = None
    data: dict[str, Any] | None = None
    sid_out: str | None = None
    result: Any = None
    lineage: Lineage | None = None
    #: Acknowledged: 200 and answered before its id's regenerate/destroy was sent.
    definite: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def done(self) -> float:
        """When its effect is known to have happened by: its response, or never (failed)."""
        return self.received if self.ok else INF

    def brief(self) -> dict[str, Any]:
        """A short, JSON-able description for violation reports."""
        return {
            "seq": self.seq, "kind": self.kind, "slot": self.slot, "client": self.client, "key": self.key,
            "value": _short(self.value), "sid_sent": _sid(self.sid_sent), "sid_in": _sid(self.sid_in),
            "status": self.status, "sent": round(self.sent, 6),
            "received": None if self.received == INF else round(self.received, 6),
        }


def _sid(sid: str | None) -> str | None:
    return None if sid is None else sid[:8]


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 60 else text[:57] + "..."


class Lineage:
    """One session of a slot, from creation through regenerates to destroy."""

    def __init__(self, ident: int, slot: int, sid: str, born: Op) -> None:
        self.ident = ident
        self.slot = slot
        self.sids = [sid]
        #: sid -> send time of the regenerate/destroy that ends it.
        self.dying: dict[str, float] = {}
        self.ops: list[Op] = [born]
        self.ended = False
        #: A regenerate/destroy failed: which id is alive is unknown from then on.
        self.uncertain = False
        self.inflight = 0
        self.checked = False


@dataclasses.dataclass
class Slot:
    """One user: the jar (id and cookie) its clients share, its lineage, its mutex."""

    index: int
    cookie: str | None = None
    sid: str | None = None
    version: int = 0
    lineage: Lineage | None = None
    mutex: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


class Model:
    """The recorded history of one run and its checks (see the module docstring).

    *client_side*: the cookie provider (the jar holds the whole session; one
    client per slot). *allowed_statuses*: non-200 statuses that are not
    violations (a fault scenario's 503s). *cookie_name*: the session cookie.
    *allow_transport_errors*: requests without an answer are not violations.
    *eager_new_sessions*: the manager's option of that name (beego's behaviour): a
    new session is stored, and gets its cookie, even by a read.
    """

    def __init__(
        self, slots: int, *, client_side: bool = False, cookie_name: str = "sid",
        allowed_statuses: frozenset[int] = frozenset(), allow_transport_errors: bool = False,
        eager_new_sessions: bool = False,
    ) -> None:
        self.client_side = client_side
        self.eager = eager_new_sessions
        self.cookie_name = cookie_name
        self.allowed_statuses = allowed_statuses
        self.allow_transport_errors = allow_transport_errors
        self.slots = [Slot(i) for i in range(slots)]
        self._seq = 0
        self._lineages = 0
        self._by_sid: dict[str, Lineage] = {}
        #: sid -> when the response that ended it was received.
        self._dead: dict[str, float] = {}
        self._known_sids: set[str] = set()
        self._flashes_read: set[Any] = set()
        self.open_lineages: set[Lineage] = set()
        self.violations: collections.Counter[str] = collections.Counter()
        self.examples: list[dict[str, Any]] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.by_kind: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []

    # ------------------------------------------------------------ recording

    def violation(self, kind: str, detail: str, *ops: Op) -> None:
        """Record a violation of *kind* (with an example while there are few)."""
        self.violations[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"kind": kind, "detail": detail, "ops": [op.brief() for op in ops]})

    def prepare(
        self, kind: str, slot: int, client: int, key: str | None = None, value: Any = None,
        *, sid: str | None = None, probe: bool = False, final: bool = False,
    ) -> Op:
        """A new op on *slot*, carrying the slot's current id (or *sid*, for a probe)."""
        s = self.slots[slot]
        self._seq += 1
        op = Op(self._seq, kind, slot, client, key, value, probe=probe, final=final, jar_version=s.version)
        if probe:
            op.sid_sent = op.cookie_sent = sid
        else:
            op.sid_sent, op.cookie_sent = s.sid, s.cookie
        lineage = self._by_sid.get(op.sid_sent) if op.sid_sent is not None else None
        if lineage is not None:
            lineage.inflight += 1
            op.lineage = lineage
        return op

    def mark_sent(self, op: Op, when: float) -> None:
        """*op*'s request is about to be written at *when* (``time.monotonic``)."""
        op.sent = when
        if op.kind in ("regen", "destroy") and op.lineage is not None and op.sid_sent is not None:
            op.lineage.dying.setdefault(op.sid_sent, when)

    def complete(
        self, op: Op, status: int, body: dict[str, Any] | None, set_cookies: list[str],
        vary: str | None, received: float, error: str | None = None,
    ) -> None:
        """Record *op*'s outcome and run the online checks; may end or start lineages."""
        op.received = received
        op.status = status
        op.error = error
        self.by_kind[op.kind] += 1
        self.statuses[str(status) if error is None else "transport error"] += 1
        if error is None:
            self.latencies.append(received - op.sent)
        sent_lineage = op.lineage
        op.lineage = None
        try:
            if not op.ok:
                self._failed(op, sent_lineage)
            else:
                assert body is not None
                op.sid_in, op.new, op.data = body["sid_in"], bool(body["new"]), body["data"]
                op.sid_out, op.result = body["sid"], body["result"]
                self._check_headers(op, set_cookies, vary)
                self._served(op, sent_lineage, set_cookies)
        finally:
            if sent_lineage is not None:
                sent_lineage.inflight -= 1
                self._maybe_check(sent_lineage)

    def _failed(self, op: Op, lineage: Lineage | None) -> None:
        if op.error is not None:
            self.counts["transport_errors"] += 1
            if not self.allow_transport_errors:
                self.violation("transport error", f"{op.error}", op)
        elif op.status not in self.allowed_statuses:
            self.violation(f"status {op.status}", f"unexpected status {op.status}", op)
        if lineage is not None and not lineage.checked:
            lineage.ops.append(op)  # a write that may have been applied
            op.lineage = lineage
            if op.kind in ("regen", "destroy") and not op.probe:
                self._abandon(op.slot, lineage)
        if op.kind in ("flash_add", "flash_read") and lineage is not None:
            lineage.uncertain = True

    def _abandon(self, slot: int, lineage: Lineage) -> None:
        """A regenerate/destroy failed: the slot starts over with no session."""
        lineage.uncertain = True
        lineage.ended = True
        s = self.slots[slot]
        if s.lineage is lineage:
            s.cookie = s.sid = None
            s.lineage = None
            s.version += 1

    def _served(self, op: Op, sent_lineage: Lineage | None, set_cookies: list[str]) -> None:
        s = self.slots[op.slot]
        sid_in = op.sid_in
        assert sid_in is not None
        if op.sid_sent is not None and sid_in == op.sid_sent:
            if op.new:
                self.violation("adopted id", "a new session took the id the client sent", op)
                return
            lineage = self._by_sid.get(sid_in)
            dead_at = self._dead.get(sid_in)
            if dead_at is not None and op.sent > dead_at:
                self.violation(
                    "old id served", "served under an id whose regenerate/destroy had been answered", op
                )
            if lineage is None:
                return
            op.lineage = lineage
            lineage.ops.append(op)
            if self.client_side:
                self._update_cookie(s, op, set_cookies)
            if op.kind == "regen":
                self._regenerated(s, lineage, op)
            elif op.kind == "destroy":
                self._destroyed(s, lineage, op)
            return
        # A new session: the id sent (if any) was dead, unknown or malformed by the time it was read.
        if not op.new:
            self.violation("cross-talk", "served another existing session than the one sent", op)
            return
        if op.data:
            self.violation("cross-talk", f"a new session came with data {sorted(op.data)[:5]}", op)
        if sid_in in self._known_sids:
            self.violation("reused id", "a new session got an id issued before", op)
        self._known_sids.add(sid_in)
        if op.sid_sent is not None and not op.probe:
            lineage = self._by_sid.get(op.sid_sent)
            dying = lineage.dying.get(op.sid_sent) if lineage is not None else None
            if lineage is not None and not lineage.uncertain and (dying is None or op.received < dying):
                self.violation("session vanished", "a live session was not found", op)
        if op.probe:
            self.counts["probes_refused"] += 1
        if op.kind in WRITE_KINDS and op.sid_sent is None and op.jar_version == s.version:
            self._born(s, op, set_cookies)
        else:
            self.counts["orphans"] += 1

    def _born(self, s: Slot, op: Op, set_cookies: list[str]) -> None:
        assert op.sid_in is not None
        self._lineages += 1
        lineage = Lineage(self._lineages, s.index, op.sid_in, op)
        op.lineage = lineage
        self._by_sid[op.sid_in] = lineage
        self.open_lineages.add(lineage)
        s.lineage = lineage
        s.sid = op.sid_in
        s.cookie = op.sid_in
        if self.client_side:
            self._update_cookie(s, op, set_cookies)
        s.version += 1
        self.counts["lineages"] += 1

    def _update_cookie(self, s: Slot, op: Op, set_cookies: list[str]) -> None:
        for header in set_cookies:
            name, value, attrs = parse_set_cookie(header)
            if name == self.cookie_name:
                s.cookie = None if attrs.get("max-age") == "0" or not value else value

    def _regenerated(self, s: Slot, lineage: Lineage, op: Op) -> None:
        new = op.result
        old = op.sid_sent
        assert old is not None
        if not isinstance(new, str) or new == old or new in self._known_sids:
            self.violation("reused id", f"regenerate gave a new id that is not fresh: {str(new)[:8]}", op)
            self._abandon(s.index, lineage)
            return
        self._known_sids.add(new)
        self._dead[old] = op.received
        lineage.sids.append(new)
        self._by_sid[new] = lineage
        s.sid = new
        if not self.client_side:
            s.cookie = new
        s.version += 1
        self.counts["regenerates"] += 1

    def _destroyed(self, s: Slot, lineage: Lineage, op: Op) -> None:
        assert op.sid_sent is not None
        self._dead[op.sid_sent] = op.received
        lineage.ended = True
        s.cookie = s.sid = None
        s.lineage = None
        s.version += 1
        self.counts["destroys"] += 1

    # ------------------------------------------------------------ headers

    def _check_headers(self, op: Op, set_cookies: list[str], vary: str | None) -> None:
        if vary is None or "cookie" not in {t.strip().lower() for t in vary.split(",")}:
            self.violation("header", f"no Vary: Cookie on a response that used the session ({vary!r})", op)
        if len(set_cookies) > 1:
            self.violation("header", f"{len(set_cookies)} Set-Cookie headers", op)
        cookies = [parse_set_cookie(h) for h in set_cookies]
        for name, _, _ in cookies:
            if name != self.cookie_name:
                self.violation("header", f"Set-Cookie for an unexpected cookie {name[:20]!r}", op)
        mine = [(v, a) for n, v, a in cookies if n == self.cookie_name]
        expired = bool(mine) and (mine[-1][1].get("max-age") == "0" or not mine[-1][0])
        served = op.sid_sent is not None and op.sid_in == op.sid_sent and not op.new
        if op.kind == "destroy":
            if served and not expired:
                self.violation("header", "destroy did not expire the cookie", op)
            elif mine and not expired:
                self.violation("header", "destroy sent a live cookie", op)
            return
        if self.client_side:
            if (op.kind in WRITE_KINDS or op.kind == "regen") and (not mine or expired):
                self.violation("header", "a write to a cookie session sent no cookie", op)
            return
        if op.kind == "regen" and served:
            if not mine or mine[-1][0] != op.result:
                self.violation("header", "regenerate did not send the new id", op)
        elif op.new and (op.kind in WRITE_KINDS or self.eager):
            if not mine or mine[-1][0] != op.sid_in:
                self.violation("header", "the first write of a new session sent no cookie with its id", op)
        elif mine:
            self.violation("header", "a cookie was sent although no session was created or moved", op)

    # ------------------------------------------------------------ offline checks

    def _maybe_check(self, lineage: Lineage) -> None:
        if lineage.ended and lineage.inflight == 0 and not lineage.checked:
            self._check_lineage(lineage)

    def finish(self) -> None:
        """Check every lineage not checked yet (call once the load has stopped)."""
        for lineage in list(self.open_lineages):
            lineage.ended = True
            self._maybe_check(lineage)

    def _check_lineage(self, lineage: Lineage) -> None:
        lineage.checked = True
        self.open_lineages.discard(lineage)
        for sid in lineage.sids:  # later requests with these ids are probes or orphans
            if self._by_sid.get(sid) is lineage:
                del self._by_sid[sid]
        ops = sorted(lineage.ops, key=lambda o: o.sent)
        lineage.ops = []
        for op in ops:
            dying = lineage.dying.get(op.sid_sent or "", INF) if op.kind not in ("regen", "destroy") else INF
            op.definite = op.ok and op.received < dying
        writes: dict[str, list[tuple[Op, Any]]] = collections.defaultdict(list)
        incrs: dict[str, list[Op]] = collections.defaultdict(list)
        for op in ops:
            if op.kind == "set" and op.key is not None:
                writes[op.key].append((op, ("v", op.value)))
            elif op.kind == "del" and op.key is not None:
                writes[op.key].append((op, ABSENT))
            elif op.kind == "flash_add" and op.ok:
                writes[FLASH_KEY].append((op, ("v", _freeze(op.result))))
            elif op.kind == "flash_read":
                writes[FLASH_KEY].append((op, ABSENT))
            elif op.kind == "incr" and op.key is not None:
                incrs[op.key].append(op)
        registers = {k: _Register(w) for k, w in writes.items()}
        # A failed flash_add has no known value (no register) but may have been applied
        # (a store that hung applies it when it resumes): its key is not cross-talk.
        maybe_written = {FLASH_KEY} if any(op.kind == "flash_add" for op in ops) else set()
        counters = {k: _Counter(v) for k, v in incrs.items()}
        flash_known = not lineage.uncertain and not any(
            op.kind in ("flash_add", "flash_read") and not op.ok for op in ops
        )
        for op in ops:
            if op.kind in WRITE_KINDS:
                self.counts["acknowledged_writes" if op.definite else "unacknowledged_writes"] += 1
            if not op.ok or op.data is None:
                continue
            self.counts["reads_checked"] += 1
            for key in op.data:
                if key not in registers and key not in counters and key not in maybe_written:
                    self.violation("cross-talk", f"key {key[:20]!r} holds a value no request of this "
                                   "session wrote", op)
            for key, register in registers.items():
                if key == FLASH_KEY and not flash_known:
                    continue
                self._check_register(register, op, key)
            for key, counter in counters.items():
                self._check_counter(counter, op, key)
        if flash_known:
            self._check_flashes(ops)
        for counter in counters.values():
            self.counts["increments_acknowledged"] += sum(1 for op in counter.ops if op.definite)
            self.counts["increments_unacknowledged"] += sum(1 for op in counter.ops if not op.definite)
        self._end_evidence(ops, registers, counters)
        if any(op.final for op in ops):
            self._final_evidence(ops, counters)

    def _check_register(self, register: _Register, r: Op, key: str) -> None:
        assert r.data is not None
        raw = r.data.get(key, ABSENT)
        token = ABSENT if raw is ABSENT else ("v", _freeze(raw))
        self.counts["key_reads_checked"] += 1
        floor = register.floor(r.sent)
        if token is ABSENT:
            if floor == -INF or register.absent_possible(r, floor):
                return
            kind = "lost update" if r.final else "stale read"
            self.violation(kind, f"{key} absent although an acknowledged write preceded the read", r,
                           *register.latest_before(r.sent))
            return
        w = register.by_token.get(token)
        if w is None or w is r:
            self.violation("cross-talk", f"{key}={_short(raw)} was written by no request of this session", r)
            return
        if w.sent >= r.received:
            self.violation("future read", f"{key} shows a value sent after the read was answered", r, w)
        elif w.done < floor:
            kind = "lost update" if r.final else "stale read"
            self.violation(kind, f"{key} shows an overwritten value", r, w, *register.latest_before(r.sent))

    def _check_counter(self, counter: _Counter, r: Op, key: str) -> None:
        assert r.data is not None
        value = r.data.get(key, 0)
        self.counts["key_reads_checked"] += 1
        lo, hi = counter.bounds(r)
        if not isinstance(value, int) or value < lo:
            self.violation("lost increment", f"{key}={value!r}, but {lo} increments were acknowledged", r)
        elif value > hi:
            self.violation("phantom increment", f"{key}={value}, at most {hi} increments were sent", r)

    def _check_flashes(self, ops: list[Op]) -> None:
        pending: list[Any] = []
        for op in ops:
            if not op.ok:
                continue
            if op.kind == "flash_add":
                self.counts["flashes_added"] += 1
                expected = [*pending, op.value]
                if op.result != expected:
                    self.violation("flash", f"flashes {_short(op.result)}, expected {_short(expected)}", op)
                pending = list(op.result) if isinstance(op.result, list) else expected
            elif op.kind == "flash_read":
                got = op.result if isinstance(op.result, list) else []
                if got != pending:
                    self.violation("flash", f"flashes read {_short(got)}, expected {_short(pending)}", op)
                for value in got:
                    frozen = _freeze(value)
                    if frozen in self._flashes_read:
                        self.violation("flash read twice", f"flash {_short(value)} read again", op)
                    self._flashes_read.add(frozen)
                self.counts["flashes_read"] += len(got)
                pending = []

    def _end_evidence(self, ops: list[Op], registers: dict[str, _Register],
                      counters: dict[str, _Counter]) -> None:
        """What the lineage's last read (its destroy, or the final read) confirmed."""
        reads = [op for op in ops if op.ok and op.data is not None]
        if not reads:
            return
        r = max(reads, key=lambda op: op.sent)
        self.counts["lineage_end_reads"] += 1
        for key, register in registers.items():
            if key != FLASH_KEY and register.floor(r.sent) > -INF:
                self.counts["end_keys_verified"] += 1  # its last acknowledged value was checked
        for counter in counters.values():
            self.counts["end_increments_verified"] += counter.bounds(r)[0]

    def _final_evidence(self, ops: list[Op], counters: dict[str, _Counter]) -> None:
        """The final read's counters, for the sessions alive when the load stopped."""
        final = [op for op in ops if op.final and op.ok and op.data is not None]
        if not final:
            return
        r = final[-1]
        assert r.data is not None
        self.counts["final_reads"] += 1
        for key, counter in counters.items():
            self.counts["final_increments_acknowledged"] += sum(1 for op in counter.ops if op.definite)
            self.counts["final_increments_unacknowledged"] += sum(1 for op in counter.ops if not op.definite)
            value = r.data.get(key, 0)
            self.counts["final_increments_in_store"] += value if isinstance(value, int) else 0

    # ------------------------------------------------------------ summary

    def summary(self) -> dict[str, Any]:
        """The JSON-able outcome: counts, statuses, violations (with examples), latency."""
        lat = sorted(self.latencies)
        return {
            "requests": sum(self.by_kind.values()),
            "by_kind": dict(sorted(self.by_kind.items())),
            "statuses": dict(sorted(self.statuses.items())),
            "counts": dict(sorted(self.counts.items())),
            "violations": dict(sorted(self.violations.items())),
            "examples": self.examples,
            "latency_ms": latency_summary(lat),
        }


def latency_summary(sorted_seconds: list[float]) -> dict[str, float]:
    """p50 / p99 / max in milliseconds of an ascending list of durations in seconds."""
    if not sorted_seconds:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}

    def pct(p: float) -> float:
        i = min(len(sorted_seconds) - 1, max(0, math.ceil(p * len(sorted_seconds)) - 1))
        return round(sorted_seconds[i] * 1000, 2)

    return {"p50": pct(0.50), "p99": pct(0.99), "max": round(sorted_seconds[-1] * 1000, 2)}


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def parse_set_cookie(header: str) -> tuple[str, str, dict[str, str]]:
    """``(name, value, {lowercased attribute: value})`` of one ``Set-Cookie`` header.

    Written out because Python 3.11's ``SimpleCookie`` drops headers with
    attributes it does not know (``Partitioned``). The tests use it too.
    """
    first, *rest = header.split(";")
    name, _, value = first.strip().partition("=")
    attrs: dict[str, str] = {}
    for part in rest:
        key, _, val = part.strip().partition("=")
        attrs[key.lower()] = val
    return name, value, attrs


class _Register:
    """The writes of one key of one lineage, indexed for the per-read check."""

    def __init__(self, writes: list[tuple[Op, Any]]) -> None:
        self.writes = writes
        self.by_token: dict[Any, Op] = {}
        for op, token in writes:
            if token is not ABSENT:
                self.by_token[token] = op
        acked = sorted((op for op, _ in writes if op.definite), key=lambda o: o.received)
        self._acked = acked
        self._acked_received = [op.received for op in acked]
        self._prefix_max_sent: list[float] = []
        best = -INF
        for op in acked:
            best = max(best, op.sent)
            self._prefix_max_sent.append(best)
        self._deletes = [op for op, token in writes if token is ABSENT]

    def floor(self, before: float) -> float:
        """Latest send time of the acknowledged writes answered before *before* (-inf: none).

        A reader's own write is never among them: it is answered after the reader was sent.
        """
        i = bisect.bisect_left(self._acked_received, before)
        return self._prefix_max_sent[i - 1] if i else -INF

    def absent_possible(self, reader: Op, floor: float) -> bool:
        """True if a delete could be the latest write *reader* sees."""
        return any(
            d is not reader and d.sent < reader.received and d.done >= floor for d in self._deletes
        )

    def latest_before(self, before: float) -> list[Op]:
        """The last acknowledged write answered before *before* (for the report), if any."""
        i = bisect.bisect_left(self._acked_received, before)
        return [self._acked[i - 1]] if i else []


class _Counter:
    """The increments of one counter of one lineage, indexed for the per-read bounds."""

    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops
        self._acked_received = sorted(op.received for op in ops if op.definite)
        self._sent = sorted(op.sent for op in ops)

    def bounds(self, reader: Op) -> tuple[int, int]:
        """(acknowledged before *reader* was sent, sent before its response), *reader*'s own excluded."""
        lo = bisect.bisect_left(self._acked_received, reader.sent)
        hi = bisect.bisect_left(self._sent, reader.received)
        if any(op is reader for op in self.ops):
            hi -= 1
        return lo, hi
