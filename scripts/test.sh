#!/usr/bin/env bash
# Install everything the test suite needs into ./.venv, then run the whole suite.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --disable-pip-version-check -U pip
fi
# Install (again) only when the dependencies changed since the last install: a second run
# needs no network. The stamp is the hash of the files that declare them.
stamp=".venv/.gosession-installed-$(cat setup.py pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[all,test,docs]"
    rm -f .venv/.gosession-installed-*
    touch "$stamp"
fi
# The browser test drives Debian's chromium (nothing is downloaded at test time).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser tests" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# The performance harness (bench/harness.py, run --quick by tests/test_bench.py) drives Debian's wrk.
if ! command -v wrk >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's wrk for the performance harness" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
# The memcache tests start their own memcached processes (Debian's memcached) on free ports.
if ! command -v memcached >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's memcached for the memcache provider tests" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached >/dev/null
fi
exec .venv/bin/python -m pytest "$@"
