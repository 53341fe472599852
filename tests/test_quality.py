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
    targets = ["gosession_tornado", "tests", "demo_app", "bench", "reliability", "setup.py"]
    proc = _run("ruff", "check", *targets)
    assert proc.returncode == 0, f"ruff check {' '.join(targets)} failed:\n{proc.stdout}\n{proc.stderr}"


def test_mypy_strict_is_clean() -> None:
    proc = _run("mypy", "--strict", "gosession_tornado")
    assert proc.returncode == 0, f"mypy --strict gosession_tornado failed:\n{proc.stdout}\n{proc.stderr}"


def test_mypy_reports_a_misspelt_config_keyword_and_accepts_the_seed_forms(tmp_path: pathlib.Path) -> None:
    snippet = tmp_path / "uses_the_api.py"
    snippet.write_text(
        "from gosession_tornado import SessionManager\n"
        "SessionManager('memory', cookie_nmae='sid')\n"  # line 2: the typo
        "SessionManager('memory', cookie_name='sid', max_lifetime=600, provider_timeout=0.5)\n"
        "SessionManager('memory', 'gosessionid', 3600, '')\n"
        "SessionManager('memory', 'gosessionid', 3600, '', False, 'sha1', 'key', 3600)\n"
        "SessionManager('file', '{\"cookieName\": \"gosessionid\"}')\n"
        "SessionManager('redis', {'cookie_name': 'sid'}, key_prefix='app:')\n"
        "SessionManager({'provider': 'memory'})\n"
        "SessionManager()\n"
    )
    proc = _run("mypy", "--strict", "--no-incremental", str(snippet))
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert errors, proc.stdout
    assert all(line.startswith(f"{snippet}:2:") for line in errors), proc.stdout
    assert 'did you mean "cookie_name"' in proc.stdout
