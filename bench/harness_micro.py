"""Micro benchmarks of ``bench/harness.py``, in-process; one benchmark per process.

    python3 bench/harness_micro.py ask  [--calls 20000] [--reps 7]
    python3 bench/harness_micro.py work [--requests 5000] [--reps 7] [--sessions 10000]
    python3 bench/harness_micro.py gc   [--sizes 10000,100000,1000000]
    python3 bench/harness_micro.py rss  [--sessions 100000] [--reference]

Each prints readable lines, then one line ``GSMICRO {json}`` for the harness.
Times are medians of interleaved repetitions (A B A B ...), in microseconds
per call or request unless a name says ms; every figure comes with the
baseline measured beside it in the same process, and the ratio. Only the
library's public API is used: ``SessionManager``, ``Provider`` and its
messages, ``gosession_tornado.actor.ActorRef``.

* ``ask``: ``ActorRef.ask(Read(sid))`` to a provider whose verbs do nothing,
  against a bare ``asyncio.Queue`` round trip (a consumer task takes
  ``(future, message)`` and sets the future's result), with 1 caller and with
  64 concurrent callers (time per call = wall time / calls).
* ``work``: a request's session work on the memory provider without HTTP:
  ``await manager.session_start(handler)``, ``session["n"] = 1``,
  ``await session.release(handler)``, on a real ``RequestHandler`` built on an
  ``HTTPServerRequest`` with a dummy connection and the Cookie header of a
  seeded session. Baseline: the naive dict code on the same kind of handler.
  Also counts, per request, what the event loop was asked to create
  (``loop.create_task``, ``loop.create_future``, ``loop.call_at`` (timers),
  counted by wrapping those methods on the running loop),
  the calls to ``asyncio.wait_for``/``shield``/``gather`` (counted by wrapping
  the ``asyncio`` module functions) and ``copy.deepcopy`` (cProfile: primitive
  calls = objects copied at the top, total calls = with recursion). Counted
  twice: for the session work alone, and for a whole request run through
  ``Application(request)`` with a dummy connection, bare handler vs a
  ``SessionMixin`` handler (so Tornado's own per-request task is in both).
* ``gc``: per size, a fresh manager on memory with that many live sessions, 1 %
  of them made with ``session.set_expiry(1)`` and then left to expire (the
  process sleeps 2.2 s); the time of one ``await manager.gc()`` and the longest
  event-loop stall during it, seen by a task that loops on ``asyncio.sleep(0)``.
  Baselines: one pass over a dict of the same size comparing a float per entry,
  and popping as many random keys as expired from a dict of the same size and
  shape (sid-like keys, ~140-byte values): the floor of dropping them.
* ``rss``: VmRSS growth (``/proc/self/status``) of this fresh process after
  creating the sessions (10 small keys each) through the public API, in MiB,
  and of a fresh process holding a plain dict of msgpack bytes of the same
  data (the reference, ``--reference``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import gc as pygc
import json
import pathlib
import pstats
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import tornado.httputil
import tornado.web

HOST = "127.0.0.1"


def seed_data(i: int) -> dict[str, Any]:
    """Ten small keys (as the HTTP part seeds them)."""
    return {"n": 1000, "user": f"user{i:06d}", "uid": i, "role": "member", "lang": "en", "theme": "dark",
            "cart": [1, 2, 3], "csrf": f"{i:032x}", "seen": 1700000000 + i, "admin": False}


def emit(name: str, result: dict[str, Any]) -> None:
    """The harness's line: ``GSMICRO {json}``."""
    print("GSMICRO " + json.dumps({"benchmark": name, **result}), flush=True)


def library_info() -> dict[str, str]:
    import gosession_tornado

    return {"library_version": getattr(gosession_tornado, "__version__", "?"),
            "library_file": str(pathlib.Path(gosession_tornado.__file__ or "").parent)}


# ---------------------------------------------------------------- handlers without a server


class _Done:
    """A connection stand-in whose writes complete at once (shared, already-done future)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        self.done.set_result(None)
        #: Settled by ``finish()``: the request is over (made beforehand, so nothing counts it).
        self.finished: asyncio.Future[None] = loop.create_future()
        self.chunks: list[bytes] = []

    def set_close_callback(self, callback: Any) -> None:
        pass

    def write_headers(
        self, start_line: Any, headers: Any, chunk: bytes | None = None
    ) -> asyncio.Future[None]:
        if chunk:
            self.chunks.append(chunk)
        return self.done

    def write(self, chunk: bytes) -> asyncio.Future[None]:
        self.chunks.append(chunk)
        return self.done

    def finish(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


def make_request(conn: Any, cookie: str | None) -> tornado.httputil.HTTPServerRequest:
    """A ``GET /`` request on the dummy connection *conn*, with *cookie* as its Cookie header."""
    headers = tornado.httputil.HTTPHeaders({"Host": HOST})
    if cookie is not None:
        headers["Cookie"] = cookie
    return tornado.httputil.HTTPServerRequest(
        start_line=tornado.httputil.RequestStartLine("GET", "/", "HTTP/1.1"), headers=headers,
        connection=conn)


def make_handler(app: tornado.web.Application, conn: Any, cookie: str | None) -> tornado.web.RequestHandler:
    return tornado.web.RequestHandler(app, make_request(conn, cookie))


async def new_session(manager: Any, app: tornado.web.Application, conn: Any, data: dict[str, Any],
                      expiry: int | None = None) -> str:
    """Create one session with *data* through the public API; its id."""
    handler = make_handler(app, conn, None)
    session = await manager.session_start(handler)
    for key, value in data.items():
        session[key] = value
    if expiry is not None:
        session.set_expiry(expiry)
    await session.release(handler)
    return str(session.session_id)


def memory_manager() -> Any:
    from gosession_tornado import SessionManager

    return SessionManager({"provider": "memory", "cookie_name": "sid", "gc_lifetime": 86400,
                           "max_lifetime": 86400, "provider_config": ""})


# ---------------------------------------------------------------- ask vs queue


async def bench_ask(calls: int, reps: int) -> dict[str, Any]:
    """Per-call µs of ``ActorRef.ask`` to a no-op provider and of a bare queue round trip (1, 64 callers)."""
    from gosession_tornado import Provider
    from gosession_tornado.actor import ActorRef
    from gosession_tornado.provider import Read

    class Noop(Provider):
        """Every verb does nothing."""

        async def session_init(self, max_lifetime: int, config: Any) -> None:
            return None

        async def session_read(self, sid: str) -> Any:
            return None

        async def session_exist(self, sid: str) -> bool:
            return False

        async def session_regenerate(self, old_sid: str, sid: str) -> Any:
            return {}

        async def session_destroy(self, sid: str) -> None:
            return None

        async def session_all(self) -> int:
            return 0

        async def session_gc(self) -> None:
            return None

        async def session_release(self, sid: str, changes: Any, expiry: int) -> None:
            return None

    loop = asyncio.get_running_loop()
    actor = ActorRef(Noop(), name="noop", timeout=5.0)
    await actor.start(3600, None)
    queue: asyncio.Queue[tuple[asyncio.Future[Any], Any]] = asyncio.Queue()

    async def consumer() -> None:
        while True:
            fut, _msg = await queue.get()
            if not fut.done():
                fut.set_result(None)

    consumer_task = loop.create_task(consumer())
    msg = Read("0" * 32)

    async def queue_call() -> None:
        fut = loop.create_future()
        queue.put_nowait((fut, msg))
        await fut

    async def ask_call() -> None:
        await actor.ask(msg)

    async def timed(call: Callable[[], Awaitable[None]], callers: int) -> float:
        per = max(1, calls // callers)

        async def worker() -> None:
            for _ in range(per):
                await call()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(callers)))
        return (time.perf_counter() - t0) / (per * callers) * 1e6

    for call in (queue_call, ask_call):  # warm up
        await timed(call, 1)
    samples: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(reps):
        for callers in (1, 64):
            samples[f"queue_{callers}"].append(await timed(queue_call, callers))
            samples[f"ask_{callers}"].append(await timed(ask_call, callers))
    consumer_task.cancel()
    await actor.close()
    med = {k: statistics.median(v) for k, v in samples.items()}
    out: dict[str, Any] = {"calls": calls, "reps": reps, **library_info()}
    for callers in (1, 64):
        ask_us, queue_us = med[f"ask_{callers}"], med[f"queue_{callers}"]
        out[f"c{callers}"] = {"ask_us": round(ask_us, 2), "queue_us": round(queue_us, 2),
                              "ratio": round(ask_us / queue_us, 2)}
        print(f"ask round trip, {callers:>2} caller(s): ask {ask_us:7.2f} us/call, "
              f"bare asyncio.Queue {queue_us:6.2f} us/call, ratio {ask_us / queue_us:.2f}x")
    return out


# ---------------------------------------------------------------- session work per request


@contextmanager
def counting(loop: asyncio.AbstractEventLoop) -> Iterator[collections.Counter[str]]:
    """Count the loop's create_task/create_future/call_at and asyncio.wait_for/shield/gather."""
    counts: collections.Counter[str] = collections.Counter()

    def wrap(owner: Any, name: str, key: str) -> Callable[[], None]:
        original = getattr(owner, name)
        had_own = name in vars(owner)

        def counted(*args: Any, **kwargs: Any) -> Any:
            counts[key] += 1
            return original(*args, **kwargs)

        setattr(owner, name, counted)

        def undo() -> None:
            if had_own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)

        return undo

    undo = [wrap(loop, "create_task", "tasks"), wrap(loop, "create_future", "futures"),
            wrap(loop, "call_at", "timers"),
            wrap(asyncio, "wait_for", "wait_for"), wrap(asyncio, "shield", "shield"),
            wrap(asyncio, "gather", "gather")]
    try:
        yield counts
    finally:
        for step in reversed(undo):
            step()


def deepcopy_calls(profile: cProfile.Profile) -> tuple[int, int]:
    """(primitive, total) calls of ``copy.deepcopy`` in *profile*."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    for (filename, _line, func), (cc, nc, *_rest) in stats.items():
        if func == "deepcopy" and filename.endswith("copy.py"):
            return int(cc), int(nc)
    return 0, 0


async def bench_work(requests: int, reps: int, sessions: int) -> dict[str, Any]:
    """µs per request of start + set + release on memory, beside the naive dict code; per-request counts."""
    from gosession_tornado import SessionMixin

    loop = asyncio.get_running_loop()
    conn = _Done()
    app = tornado.web.Application()
    manager = memory_manager()
    await manager.start()
    sids = [await new_session(manager, app, conn, seed_data(i)) for i in range(sessions)]
    naive_store = {sid: seed_data(i) for i, sid in enumerate(sids)}
    rng = random.Random(8)

    def handlers(n: int) -> list[tornado.web.RequestHandler]:
        return [make_handler(app, conn, f"sid={rng.choice(sids)}") for _ in range(n)]

    async def library(hs: list[tornado.web.RequestHandler]) -> None:
        for h in hs:
            session = await manager.session_start(h)
            session["n"] = 1
            await session.release(h)

    async def naive(hs: list[tornado.web.RequestHandler]) -> None:
        for h in hs:
            sid = h.get_cookie("sid")
            data = naive_store.get(sid) if sid else None
            if data is None:
                h.set_cookie("sid", "new")
                data = {}
            data["n"] = 1

    async def timed(fn: Callable[[list[tornado.web.RequestHandler]], Awaitable[None]]) -> float:
        hs = handlers(requests)
        t0 = time.perf_counter()
        await fn(hs)
        return (time.perf_counter() - t0) / requests * 1e6

    await timed(library)
    samples: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(reps):
        samples["library"].append(await timed(library))
        samples["naive"].append(await timed(naive))
    lib_us, naive_us = statistics.median(samples["library"]), statistics.median(samples["naive"])

    # per-request counts: the session work alone
    n_count = min(requests, 1000)
    hs = handlers(n_count)
    profile = cProfile.Profile()
    with counting(loop) as counts:
        profile.enable()
        await library(hs)
        profile.disable()
    prim, total = deepcopy_calls(profile)
    work_counts = {k: round(v / n_count, 2) for k, v in sorted(counts.items())}
    work_counts["deepcopy_top"] = round(prim / n_count, 2)
    work_counts["deepcopy_calls"] = round(total / n_count, 2)

    # per-request counts: a whole request through Application(request), bare vs SessionMixin
    class Bare(tornado.web.RequestHandler):
        def get(self) -> None:
            self.write("1")

    class WithSession(SessionMixin, tornado.web.RequestHandler):
        def get(self) -> None:
            self.session["n"] = self.session.get("n", 0) + 1
            self.write(str(self.session["n"]))

    whole: dict[str, dict[str, float]] = {}
    for name, handler_cls in (("bare", Bare), ("library", WithSession)):
        web = tornado.web.Application([("/", handler_cls)], session_manager=manager)

        def requests_on_own_connections(n: int) -> list[tuple[_Done, tornado.httputil.HTTPServerRequest]]:
            out = []
            for _ in range(n):
                c = _Done()
                out.append((c, make_request(c, f"sid={rng.choice(sids)}")))
            return out

        for c, r in requests_on_own_connections(10):  # warm up (imports, caches)
            web(r)
            await c.finished
        reqs = requests_on_own_connections(n_count)
        profile = cProfile.Profile()
        with counting(loop) as counts:
            profile.enable()
            for c, r in reqs:
                web(r)  # returns None for a handler that does not stream its body
                await c.finished
            profile.disable()
        prim, total = deepcopy_calls(profile)
        whole[name] = {k: round(v / n_count, 2) for k, v in sorted(counts.items())}
        whole[name]["deepcopy_top"] = round(prim / n_count, 2)
        whole[name]["deepcopy_calls"] = round(total / n_count, 2)
    await manager.close()
    print(f"session work per request (memory, start + set + release, no HTTP): {lib_us:.1f} us; "
          f"naive dict code {naive_us:.2f} us; ratio {lib_us / naive_us:.1f}x")
    print(f"  per request, session work alone: {work_counts}")
    print(f"  per whole request (Application(request)), bare handler: {whole['bare']}")
    print(f"  per whole request (Application(request)), SessionMixin:  {whole['library']}")
    return {"requests": requests, "reps": reps, "sessions": sessions, "library_us": round(lib_us, 2),
            "naive_us": round(naive_us, 3), "ratio": round(lib_us / naive_us, 1),
            "counts_work": work_counts, "counts_request": whole, **library_info()}


# ---------------------------------------------------------------- GC pass


async def bench_gc(sizes: list[int]) -> dict[str, Any]:
    """One measurement per size in this process, each with a fresh manager (sizes run in order)."""
    out: dict[str, Any] = {"sizes": {}, **library_info()}
    for size in sizes:
        out["sizes"][str(size)] = await gc_one(size)
    return out


def stored(manager: Any) -> int:
    """Records the memory provider holds, expired ones included (a private look, unlike
    ``get_active_sessions()``, which runs a GC pass first and would hide the one measured)."""
    return len(manager._actor.provider._records)


async def gc_one(size: int) -> dict[str, Any]:
    """GC pass time and longest loop stall with *size* live sessions, 1 % expired."""
    conn = _Done()
    app = tornado.web.Application()
    manager = memory_manager()
    await manager.start()
    t0 = time.perf_counter()
    expiring = max(1, size // 100)
    for i in range(size):
        await new_session(manager, app, conn, {"n": i}, expiry=1 if i % 100 == 0 else None)
    create_s = time.perf_counter() - t0
    await asyncio.sleep(2.2)
    before = stored(manager)
    stalls: list[float] = []
    running = True

    async def watch() -> None:
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0)
            now = time.perf_counter()
            stalls.append(now - last)
            last = now

    watcher = asyncio.get_running_loop().create_task(watch())
    await asyncio.sleep(0.01)
    stalls.clear()
    t0 = time.perf_counter()
    await manager.gc()
    gc_ms = (time.perf_counter() - t0) * 1000
    await asyncio.sleep(0.01)
    running = False
    await watcher
    after = stored(manager)
    await manager.close()
    pygc.collect()
    # baseline beside it: one pass over a dict of the same size, a float compare per entry
    expiries = {f"{i:032x}": float(i) for i in range(size)}
    t0 = time.perf_counter()
    expired = [k for k, v in expiries.items() if v < size / 100]
    scan_ms = (time.perf_counter() - t0) * 1000
    del expiries, expired
    pop_ms = dict_pop_floor(size, expiring)
    result = {"live": size, "expired": expiring, "active_before": before, "active_after": after,
              "gc_ms": round(gc_ms, 3), "max_stall_ms": round(max(stalls, default=0.0) * 1000, 3),
              "dict_scan_ms": round(scan_ms, 3), "ratio": round(gc_ms / scan_ms, 1) if scan_ms else None,
              "dict_pop_ms": round(pop_ms, 3), "create_s": round(create_s, 1)}
    print(f"GC pass, memory, {size:>8} live sessions ({expiring} expired): {gc_ms:8.2f} ms, "
          f"longest loop stall {result['max_stall_ms']:8.2f} ms; one dict scan of {size}: "
          f"{scan_ms:7.2f} ms; popping {expiring} random keys of a dict of {size}: {pop_ms:7.2f} ms; "
          f"active {before} -> {after}")
    return result


def dict_pop_floor(size: int, victims: int) -> float:
    """ms to pop *victims* random keys (and free their values) from a dict of *size*
    sid-like ``str`` keys -> ~140-byte ``bytes`` values, built one entry at a time as
    the store is: the least any GC that drops those sessions from a dict costs here
    (each pop is a few cache misses: the hash slot, the key, the value's memory)."""
    rng = random.Random(size)
    keys = [f"{rng.getrandbits(256):064x}" for _ in range(size)]
    store = {k: bytes(16) + rng.randbytes(124) for k in keys}
    drop = keys[:: max(1, size // victims)][:victims]
    rng.shuffle(drop)
    del keys
    pop = store.pop
    t0 = time.perf_counter()
    for k in drop:
        pop(k)
    ms = (time.perf_counter() - t0) * 1000
    del store, drop
    pygc.collect()
    return ms


# ---------------------------------------------------------------- RSS


def vm_rss_kib() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def rss_library(sessions: int) -> dict[str, Any]:
    conn = _Done()
    app = tornado.web.Application()
    manager = memory_manager()
    await manager.start()
    await new_session(manager, app, conn, seed_data(0))  # imports and first allocations
    pygc.collect()
    before = vm_rss_kib()
    for i in range(1, sessions + 1):
        await new_session(manager, app, conn, seed_data(i))
    pygc.collect()
    after = vm_rss_kib()
    active = await manager.get_active_sessions()
    await manager.close()
    return {"sessions": sessions, "active": active, "growth_mib": round((after - before) / 1024, 1),
            "bytes_per_session": round((after - before) * 1024 / sessions)}


def rss_reference(sessions: int) -> dict[str, Any]:
    import msgpack

    store: dict[str, bytes] = {}
    store["x"] = msgpack.packb(seed_data(0))
    pygc.collect()
    before = vm_rss_kib()
    for i in range(1, sessions + 1):
        store[f"{i:032x}"] = msgpack.packb(seed_data(i))
    pygc.collect()
    after = vm_rss_kib()
    return {"sessions": sessions, "growth_mib": round((after - before) / 1024, 1),
            "bytes_per_session": round((after - before) * 1024 / sessions)}


def bench_rss(sessions: int) -> dict[str, Any]:
    """Library (this process) and the reference (a fresh child process), each from a fresh start."""
    lib = asyncio.run(rss_library(sessions))
    child = subprocess.run([sys.executable, __file__, "rss", "--sessions", str(sessions), "--reference"],
                           capture_output=True, text=True, timeout=600, check=True)
    ref = json.loads([ln for ln in child.stdout.splitlines() if ln.startswith("GSMICRO ")][-1][8:])
    ref.pop("benchmark", None)
    ratio = round(lib["growth_mib"] / ref["growth_mib"], 2) if ref["growth_mib"] else None
    print(f"RSS growth, {sessions} memory sessions x 10 keys: {lib['growth_mib']} MiB "
          f"({lib['bytes_per_session']} B/session); dict of msgpack bytes: {ref['growth_mib']} MiB "
          f"({ref['bytes_per_session']} B/session); ratio {ratio}x")
    return {"library": lib, "reference": ref, "ratio": ratio, **library_info()}


# ---------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("benchmark", choices=["ask", "work", "gc", "rss"])
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--sessions", type=int, default=None)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.benchmark == "ask":
        emit("ask", asyncio.run(bench_ask(a.calls, a.reps)))
    elif a.benchmark == "work":
        emit("work", asyncio.run(bench_work(a.requests, a.reps, a.sessions or 10000)))
    elif a.benchmark == "gc":
        emit("gc", asyncio.run(bench_gc([int(s) for s in a.sizes.split(",")])))
    elif a.reference:
        emit("rss-reference", rss_reference(a.sessions or 100000))
    else:
        emit("rss", bench_rss(a.sessions or 100000))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
