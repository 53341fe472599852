"""Build script for gosession-tornado (``pip install -e .[all,test]``)."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "gosession_tornado" / "__init__.py").read_text(), re.M
).group(1)

EXTRAS = {
    "redis": ["redis>=5.0.1", "hiredis>=2"],
    # aiomysql 0.3.2 breaks on bytes parameters with PyMySQL 1.2 (aio-libs/aiomysql#1080).
    "mysql": ["aiomysql>=0.2", "PyMySQL>=1.0,<1.2"],
    "postgresql": ["asyncpg>=0.29"],
    # emcache over aiomcache: measured in bench/bench_memcache_clients.py (docs/providers/memcache.rst)
    "memcache": ["emcache>=1.3"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})
EXTRAS["test"] = [
    "pytest>=8",
    "pytest-asyncio>=0.24",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
    "mypy>=1.10",
    "ruff>=0.5",
    "playwright>=1.45",
    # bench/harness.py draws docs/performance.rst's chart; tests/test_bench.py runs it with --quick
    "matplotlib>=3.8",
]
EXTRAS["test"].append("build>=1.0")  # tests/test_packaging.py builds the sdist (no isolation)
EXTRAS["docs"] = ["sphinx>=7", "furo>=2024.1"]  # the maintained theme docs/conf.py uses
EXTRAS["dev"] = sorted(set(EXTRAS["all"] + EXTRAS["test"] + EXTRAS["docs"] + ["tox>=4"]))

setup(
    name="gosession-tornado",
    version=VERSION,
    description="beego's session manager for Tornado: one interface, many providers, run as asyncio actors",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author="The gosession-tornado developers",
    license="BSD-3-Clause",
    python_requires=">=3.11",
    packages=find_packages(include=["gosession_tornado", "gosession_tornado.*"]),
    package_data={"gosession_tornado": ["py.typed"]},
    include_package_data=True,
    zip_safe=False,
    install_requires=["tornado>=6.4", "msgpack>=1.0", "cryptography>=42"],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["gosession-tornado = gosession_tornado.cli:main"]},
    # Only what the test suite runs on: CPython 3.11 on Linux (the file provider uses flock
    # and, where the kernel has it, renameat2).
    classifiers=[
        "Development Status :: 4 - Beta",
        "Framework :: AsyncIO",
        "Intended Audience :: Developers",
        "License :: OSI Approved :: BSD License",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Topic :: Internet :: WWW/HTTP :: Session",
        "Typing :: Typed",
    ],
    keywords=[
        "tornado", "session", "sessions", "beego", "gorilla", "asyncio", "redis", "memcached",
        "mysql", "postgresql", "cookie", "fernet",
    ],
)
