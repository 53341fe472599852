"""CI's lint and type gates: ``ruff check`` and ``mypy --strict`` must pass."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_ruff_check_is_clean() -> None:
    targets = ["gosession_tornado", "tests", "demo_app", "bench", "setup.py"]
    proc = _run("ruff", "check", *targets)
    assert proc.returncode == 0, f"ruff check {' '.join(targets)} failed:\n{proc.stdout}\n{proc.stderr}"


def test_mypy_strict_is_clean() -> None:
    proc = _run("mypy", "--strict", "gosession_tornado")
    assert proc.returncode == 0, f"mypy --strict gosession_tornado failed:\n{proc.stdout}\n{proc.stderr}"
