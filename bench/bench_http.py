"""End to end through Tornado: requests/s with SessionMixin, as a ratio to a plain handler.

A server process (this script with ``--serve``) runs one Tornado application
per case on 127.0.0.1:

* ``baseline``: a plain :class:`~tornado.web.RequestHandler` that increments a
  counter in a dict and returns it;
* ``memory``, ``redis``, ``mysql``, ``postgresql``, ``cookie``: the same
  handler with :class:`~gosession_tornado.SessionMixin`, the counter kept in
  ``self.session`` (so every request is a session read plus a save of one
  changed key, or a cookie decode plus encode).

This process then drives each case in turn with ``--clients`` concurrent
HTTP/1.1 keep-alive connections (a small asyncio client, much cheaper per
request than the server, so the server is what is measured). Each client
keeps its own cookie and checks that its counter goes up by one per request,
so a lost session counts as an error. Per case: a short warm-up, then
``--seconds`` seconds (at most ``--max-requests`` requests) of measurement.
It prints requests/s, the ratio to the baseline measured in this run, and the
p50/p99 latency per request. A case whose server is unreachable is skipped
with the reason printed. Nothing is asserted; the exit status is 1 only if a
request failed.

    python3 bench/bench_http.py [--quick] [--clients 16] [--seconds 3] [--cases baseline,memory,redis]

Server and client share the machine: on 2 cores each mostly gets one.
Stores are private (random key prefix / table) and removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import re
import sys
import time

from _common import HOST, Store, add_port_options, open_store

#: This script, run again with ``--serve`` as the server process.
SCRIPT = os.path.abspath(__file__)
CASES = ("baseline", "memory", "redis", "mysql", "postgresql", "cookie")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run, for the tests)")
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated subset (baseline always runs)"
    )
    parser.add_argument("--clients", type=int, default=None, help="concurrent connections (default 16)")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per case (default 3)")
    parser.add_argument(
        "--max-requests", type=int, default=None, help="most requests per case (default 50000)"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    add_port_options(parser)
    args = parser.parse_args(argv)
    q = args.quick
    args.clients = args.clients or (4 if q else 16)
    args.seconds = args.seconds or (0.3 if q else 3.0)
    args.warmup = 0.1 if q else 0.5
    args.max_requests = args.max_requests or (2000 if q else 50000)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}; choose from {', '.join(CASES)}")
    args.cases = ["baseline", *(c for c in cases if c != "baseline")]
    return args


# ---------------------------------------------------------------- server process


async def serve(args: argparse.Namespace) -> None:
    """Serve one application per case until stdin closes.

    Reports ``READY <case> <port>`` or ``SKIP <case> <reason>`` per case on
    stdout, then ``ALL``; closes managers and removes the stores on the way out.
    """
    import tornado.httpserver
    import tornado.netutil
    import tornado.web

    from gosession_tornado import SessionManager, SessionMixin
    from gosession_tornado.errors import SessionError

    counts = {"n": 0}

    class Plain(tornado.web.RequestHandler):
        def get(self) -> None:
            counts["n"] += 1
            self.write(str(counts["n"]))

    class WithSession(SessionMixin, tornado.web.RequestHandler):
        def get(self) -> None:
            n = int(self.session.get("n", 0)) + 1
            self.session["n"] = n
            self.write(str(n))

    servers: list[tornado.httpserver.HTTPServer] = []
    managers: list[SessionManager] = []
    stores: list[Store] = []

    def listen(app: tornado.web.Application) -> int:
        sockets = tornado.netutil.bind_sockets(0, HOST)
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        servers.append(server)
        return int(sockets[0].getsockname()[1])

    try:
        for case in args.cases:
            if case == "baseline":
                print(f"READY {case} {listen(tornado.web.Application([('/', Plain)]))}", flush=True)
                continue
            store = open_store(case, args)
            if isinstance(store, str):
                print(f"SKIP {case} {store}", flush=True)
                continue
            stores.append(store)
            manager = SessionManager(store.config)
            try:
                await manager.start()
            except SessionError as exc:
                print(f"SKIP {case} {type(exc).__name__}: {exc}", flush=True)
                continue
            managers.append(manager)
            app = tornado.web.Application([("/", WithSession)], session_manager=manager)
            print(f"READY {case} {listen(app)}", flush=True)
        print("ALL", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
    finally:
        for server in servers:
            server.stop()
            await server.close_all_connections()
        for manager in managers:
            await manager.close()
        for store in stores:
            await store.cleanup()


# ---------------------------------------------------------------- client side


@dataclasses.dataclass
class CaseResult:
    """Requests completed in the measured window, its length (s), latencies (s), errors."""

    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, p: float) -> float:
        """The *p*-th percentile latency in milliseconds (nearest rank)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index] * 1000


_COOKIE_RE = re.compile(rb"^set-cookie:\s*sid=([^;\r\n]*)", re.IGNORECASE | re.MULTILINE)
_LENGTH_RE = re.compile(rb"^content-length:\s*(\d+)", re.IGNORECASE | re.MULTILINE)


async def client(
    port: int, session: bool, result: CaseResult, measure_from: float, stop_at: float, budget: list[int]
) -> None:
    """One keep-alive connection sending GET / until *stop_at*; records requests after *measure_from*."""
    reader, writer = await asyncio.open_connection(HOST, port)
    cookie = b""
    last = 0
    try:
        while time.perf_counter() < stop_at and budget[0] > 0:
            header = b"Cookie: sid=" + cookie + b"\r\n" if cookie else b""
            t0 = time.perf_counter()
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = _LENGTH_RE.search(head)
            body = await reader.readexactly(int(length.group(1)) if length else 0)
            t1 = time.perf_counter()
            if not head.startswith(b"HTTP/1.1 200"):
                result.errors.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
                return
            if session:
                found = _COOKIE_RE.search(head)
                if found:
                    cookie = found.group(1)
                n = int(body)
                if n != last + 1:
                    result.errors.append(f"session counter went from {last} to {n}")
                    return
                last = n
            if t0 >= measure_from:
                budget[0] -= 1
                result.requests += 1
                result.latencies.append(t1 - t0)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def drive(port: int, session: bool, args: argparse.Namespace) -> CaseResult:
    """Warm up, then measure for ``args.seconds`` with ``args.clients`` connections."""
    result = CaseResult()
    start = time.perf_counter()
    measure_from = start + args.warmup
    stop_at = measure_from + args.seconds
    budget = [args.max_requests]
    await asyncio.gather(
        *(client(port, session, result, measure_from, stop_at, budget) for _ in range(args.clients))
    )
    result.seconds = min(time.perf_counter(), stop_at) - measure_from
    return result


async def run(args: argparse.Namespace) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, SCRIPT, "--serve", *_forwarded(args),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    ready: dict[str, int] = {}
    skipped: dict[str, str] = {}
    try:
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                print("server process exited before it was ready", file=sys.stderr)
                return 1
            word, _, rest = line.strip().partition(" ")
            if word == "ALL":
                break
            case, _, value = rest.partition(" ")
            if word == "READY":
                ready[case] = int(value)
            elif word == "SKIP":
                skipped[case] = value
        print(
            f"http: GET / over {args.clients} keep-alive connections on {HOST}; "
            f"{args.seconds:g} s (at most {args.max_requests} requests) per case after "
            f"{args.warmup:g} s warm-up; ratios vs the plain handler (baseline) in this run"
        )
        print(f"{'case':<11} {'requests':>8} {'req/s':>8} {'vs baseline':>11} {'p50 ms':>7} {'p99 ms':>7}")
        results: dict[str, CaseResult] = {}
        failed = False
        for case in args.cases:
            if case in skipped:
                print(f"{case}: skipped ({skipped[case]})", flush=True)
                continue
            res = await drive(ready[case], case != "baseline", args)
            results[case] = res
            base = results["baseline"].rate
            ratio = res.rate / base if base else 0.0
            print(
                f"{case:<11} {res.requests:>8} {res.rate:>8.0f} {ratio:>10.2f}x "
                f"{res.percentile(50):>7.2f} {res.percentile(99):>7.2f}",
                flush=True,
            )
            if res.errors:
                failed = True
                print(f"{case}: {len(res.errors)} client(s) failed, first: {res.errors[0]}", flush=True)
        return 1 if failed else 0
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _forwarded(args: argparse.Namespace) -> list[str]:
    return [
        "--cases", ",".join(args.cases),
        "--redis-port", str(args.redis_port),
        "--mysql-port", str(args.mysql_port),
        "--pg-port", str(args.pg_port),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        asyncio.run(serve(args))
        return 0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
