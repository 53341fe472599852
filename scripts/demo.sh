#!/usr/bin/env bash
# Install the library into ./.venv and run the demo app (memory provider by default).
# Usage: bash scripts/demo.sh [--provider NAME] [--config JSON|FILE] [--port N]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import gosession_tornado, tornado" 2>/dev/null; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[all]"
fi
exec .venv/bin/python -m demo_app "$@"
