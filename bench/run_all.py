"""Run every benchmark in turn: ``python3 bench/run_all.py [--quick] [extra options]``.

Runs ``bench_batching.py`` (the actor's batching, about a minute) and then
``harness.py`` (wrk against one Tornado server per configuration plus the
micro benchmarks, about 30 minutes; with ``--quick`` a smoke run of seconds
whose output goes to a temporary directory), each as its own process,
passing ``--quick`` and the port options through. ``bench_redis_batching.py``
is the redis-only subset of ``bench_batching.py`` and is not repeated.
Exits with the highest exit status of the benchmarks, so 0 means every
benchmark ran (providers whose server is down are skipped, not failed).
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
BENCHES = ("bench_batching.py", "harness.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run, for the tests)")
    parser.add_argument("--redis-port", type=int)
    parser.add_argument("--mysql-port", type=int)
    parser.add_argument("--pg-port", type=int)
    args = parser.parse_args(argv)
    forwarded = ["--quick"] if args.quick else []
    for option in ("redis_port", "mysql_port", "pg_port"):
        value = getattr(args, option)
        if value is not None:
            forwarded += ["--" + option.replace("_", "-"), str(value)]
    worst = 0
    for bench in BENCHES:
        print(f"### {bench} {' '.join(forwarded)}".rstrip(), flush=True)
        proc = subprocess.run([sys.executable, str(HERE / bench), *forwarded], check=False)
        if proc.returncode:
            print(f"### {bench} exited with status {proc.returncode}", flush=True)
        worst = max(worst, proc.returncode)
        print(flush=True)
    return worst


if __name__ == "__main__":
    sys.exit(main())
