"""Provider registry: register/lookup, duplicates, unknown names, missing optional clients."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

import gosession_tornado
from gosession_tornado import (
    ConfigError,
    DuplicateProviderError,
    Provider,
    SessionError,
    SessionManager,
    UnknownProviderError,
    lookup,
    provider_names,
    register,
    registry,
    unregister,
)
from gosession_tornado.providers.memory import MemoryProvider
from tests.support import DictStore

REPO = pathlib.Path(__file__).resolve().parent.parent
OPTIONAL_CLIENTS = ("redis", "hiredis", "aiomysql", "pymysql", "asyncpg", "emcache")


class OwnProvider(DictStore):
    """A minimal user provider (a dict)."""


@pytest.fixture
def own_name(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"own_{request.node.name[:30]}".replace("[", "_").replace("]", "_")
    yield name
    unregister(name)


def test_builtin_memory_is_found() -> None:
    assert lookup("memory") is MemoryProvider


def test_register_and_lookup(own_name: str) -> None:
    register(own_name, OwnProvider)
    assert lookup(own_name) is OwnProvider
    assert own_name in provider_names()


def test_register_duplicate_raises(own_name: str) -> None:
    register(own_name, OwnProvider)
    with pytest.raises(DuplicateProviderError, match=own_name):
        register(own_name, MemoryProvider)
    assert lookup(own_name) is OwnProvider  # the first registration stays


@pytest.mark.parametrize("name", sorted(registry.BUILTINS))
def test_register_over_a_builtin_name_raises(name: str) -> None:
    with pytest.raises(DuplicateProviderError):
        register(name, OwnProvider)


def test_unregister_then_register_again(own_name: str) -> None:
    register(own_name, OwnProvider)
    unregister(own_name)
    with pytest.raises(UnknownProviderError):
        lookup(own_name)
    register(own_name, MemoryProvider)
    assert lookup(own_name) is MemoryProvider


@pytest.mark.parametrize("bad", [object, dict, "MemoryProvider", MemoryProvider()])
def test_register_refuses_non_provider_classes(bad: Any, own_name: str) -> None:
    with pytest.raises(ConfigError, match="Provider"):
        register(own_name, bad)


@pytest.mark.parametrize("name", ["", None, 5])
def test_register_refuses_bad_names(name: Any) -> None:
    with pytest.raises(ConfigError):
        register(name, OwnProvider)


def test_unknown_name_raises() -> None:
    with pytest.raises(UnknownProviderError, match="nosuchprovider") as info:
        lookup("nosuchprovider")
    assert "memory" in str(info.value)  # lists what is known
    assert isinstance(info.value, SessionError)


def test_manager_with_unknown_provider_raises() -> None:
    with pytest.raises(UnknownProviderError, match="nosuchprovider"):
        SessionManager("nosuchprovider")


def test_manager_uses_a_registered_provider(own_name: str) -> None:
    register(own_name, OwnProvider)
    m = SessionManager(own_name)
    assert m.provider_name == own_name
    assert m._provider_cls is OwnProvider


def test_provider_names_lists_every_builtin() -> None:
    names = provider_names()
    for name in ("memory", "file", "redis", "mysql", "cookie", "redis_cluster", "redis_sentinel",
                 "postgresql"):
        assert name in names


# ---------------------------------------------------------------- missing clients


def test_builtin_whose_client_is_missing_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """A provider module that imports a missing client gives an error naming the extra."""
    (tmp_path / "gs_fake_redis_provider.py").write_text("import gs_fake_client  # noqa\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "gs_fake_client", None)  # blocks the import
    monkeypatch.setitem(registry.BUILTINS, "fakeredis", ("gs_fake_redis_provider", "X", "redis"))
    with pytest.raises(UnknownProviderError) as info:
        lookup("fakeredis")
    msg = str(info.value)
    assert "pip install 'gosession-tornado[redis]'" in msg
    assert "gs_fake_client" in msg
    with pytest.raises(UnknownProviderError, match=r"gosession-tornado\[redis\]"):
        SessionManager("fakeredis")


def test_builtin_module_itself_missing_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        registry.BUILTINS, "ghost", ("gosession_tornado.providers.ghost_does_not_exist", "Ghost", None)
    )
    with pytest.raises(UnknownProviderError, match="not available"):
        lookup("ghost")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )


_BLOCK = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in OPTIONAL_CLIENTS)


def test_import_works_without_optional_clients() -> None:
    proc = _run(
        _BLOCK
        + """
import asyncio
import gosession_tornado
from gosession_tornado import SessionManager, lookup
for name in ("redis", "aiomysql", "asyncpg"):
    assert sys.modules[name] is None, name   # nothing replaced the block
print(lookup("memory").__name__)

async def main():
    async with SessionManager("memory", "sid", 60, "") as m:
        print(await m.get_active_sessions())

asyncio.run(main())
print("OK")
"""
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["MemoryProvider", "0", "OK"]


def test_importing_the_package_imports_no_optional_client() -> None:
    proc = _run(
        """
import sys
import gosession_tornado
import gosession_tornado.web
print(sorted(m for m in ("redis", "aiomysql", "asyncpg", "pymysql", "emcache") if m in sys.modules))
"""
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# Only the built-ins whose module exists in this version (the planned ones get their
# own "not available in this version" error, tested elsewhere).
_WRITTEN = [
    (name, extra)
    for name, (module, _cls, extra) in sorted(registry.BUILTINS.items())
    if extra is not None and importlib.util.find_spec(module) is not None
]


@pytest.mark.parametrize(("name", "extra"), _WRITTEN)
def test_real_builtin_without_its_client_names_the_extra(name: str, extra: str) -> None:
    proc = _run(
        _BLOCK
        + f"""
from gosession_tornado import SessionManager, UnknownProviderError
try:
    SessionManager({name!r})
except UnknownProviderError as exc:
    print(exc)
else:
    print("NO ERROR")
"""
    )
    assert proc.returncode == 0, proc.stderr
    assert f"gosession-tornado[{extra}]" in proc.stdout, proc.stdout


def test_errors_are_exported_at_top_level() -> None:
    for name in ("SessionError", "ConfigError", "UnknownProviderError", "DuplicateProviderError",
                 "ProviderUnavailableError", "ProviderClosedError", "CookieTooLargeError"):
        cls = getattr(gosession_tornado, name)
        assert issubclass(cls, SessionError)


def test_planned_builtin_not_in_this_version_says_so() -> None:
    planned = [
        name for name, (module, _cls, _extra) in registry.BUILTINS.items()
        if importlib.util.find_spec(module) is None
    ]
    if not planned:
        return  # every built-in is written
    with pytest.raises(UnknownProviderError, match="not available in this version"):
        registry.lookup(planned[0])


def test_register_refuses_a_provider_missing_verbs() -> None:
    from gosession_tornado import ConfigError

    class Half(Provider):
        async def session_init(self, max_lifetime: int, config: Any) -> None:
            return None

    with pytest.raises(ConfigError, match="session_read"):
        registry.register("half-provider", Half)
    assert "half-provider" not in registry.provider_names()
