"""The sdist is self-contained: built, unpacked, its own test suite collects from it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tarfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def unpacked_sdist(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("sdist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (archive,) = out.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    (root,) = [p for p in out.iterdir() if p.is_dir()]
    return root


def test_the_sdist_holds_everything_its_tests_need(unpacked_sdist: pathlib.Path) -> None:
    for rel in (
        "setup.py", "pyproject.toml", "tox.ini", "README.md", "CHANGELOG.md", "LICENSE", ".ci/run",
        "gosession_tornado/py.typed", "tests/__init__.py", "tests/conftest.py", "tests/support.py",
        "tests/factories/__init__.py", "tests/factories/factory_memory.py", "demo_app/app.py",
        "docs/conf.py", "docs/index.rst", "docs/examples/login.py", "bench/harness.py",
        "scripts/test.sh", "scripts/demo.sh",
    ):
        assert (unpacked_sdist / rel).is_file(), f"{rel} is missing from the sdist"
    assert not list(unpacked_sdist.rglob("__pycache__"))
    assert not (unpacked_sdist / "bench" / ".scratch").exists()


def test_the_unpacked_sdist_collects_its_own_tests(unpacked_sdist: pathlib.Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [sys.executable, "-c", "import gosession_tornado; print(gosession_tornado.__file__)"],
        cwd=unpacked_sdist, capture_output=True, text=True, env=env, timeout=60,
    )
    assert pathlib.Path(where.stdout.strip()).is_relative_to(unpacked_sdist)  # its own copy
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=unpacked_sdist, capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "error" not in proc.stdout.lower().splitlines()[-1]
    assert " tests collected" in proc.stdout.splitlines()[-1]
