"""How each provider is set up for a reliability run: the test suite's factories, reused.

Every built-in provider has a factory in ``tests/factories/factory_<name>.py``
(the contract suite's): its ``config(tmp_path, unique)`` is the
``SessionManager`` configuration, ``SERVER`` the loopback server it needs and
``cleanup(unique)`` removes what a run left behind. A reliability run uses
them with a *unique* of its own (``rel<hex>``), so its Redis keys live under
``gstest:rel<hex>:``, its tables are ``session_rel<hex>`` and its memcached
items under their own prefix; the file provider gets a directory in the run's
work directory. Redis Cluster, Sentinel and memcached are the suite's private
servers (started on first use, stopped by PID at exit).

Fault scenarios that need a store of their own (a private ``redis-server``
with ``appendfsync always``, a private MariaDB) add it with
:func:`register_store`.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = [
    "DEFAULT_PROCESSES", "PROVIDERS", "STORES", "StoreSetup", "StoreUnavailableError", "open_store",
    "register_store",
]

#: Every built-in provider, in report order.
PROVIDERS = (
    "memory", "file", "redis", "redis_cluster", "redis_sentinel", "mysql", "postgresql", "memcache", "cookie",
)

#: Server processes a run starts per provider: one for the in-process store, three for
#: the shared ones (each request goes to a random one of them).
DEFAULT_PROCESSES = {name: (1 if name == "memory" else 3) for name in PROVIDERS}


class StoreUnavailableError(Exception):
    """The store of a provider cannot be used here (server down, binary missing)."""


@dataclasses.dataclass
class StoreSetup:
    """A provider ready for a run: the configuration every server process gets, and the cleanup."""

    provider: str
    #: The ``SessionManager`` configuration (JSON-serialisable).
    config: dict[str, Any]
    #: The sessions live in the cookie (single client per session is all it can promise).
    client_side: bool
    #: Several processes may serve the same sessions.
    shared: bool
    #: One line for the report: where the sessions live in this run.
    where: str
    cleanup: Callable[[], Awaitable[None]]
    #: Anything a fault scenario needs to find (ports, processes of private servers).
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Modules each server process imports first (e.g. one that registers a provider).
    imports: list[str] = dataclasses.field(default_factory=list)


Opener = Callable[[pathlib.Path, str], Awaitable[StoreSetup]]


def _factory(provider: str) -> Any:
    return importlib.import_module(f"tests.factories.factory_{provider}")


def _describe(provider: str, config: dict[str, Any], unique: str) -> str:
    if provider == "memory":
        return "a dict in the one server process"
    if provider == "file":
        return "a fresh directory of the run"
    if provider == "cookie":
        return "the cookie (Fernet), one key shared by the processes"
    if provider in ("mysql", "postgresql"):
        return f"table session_{unique} on the loopback server"
    return f"keys under {config.get('key_prefix', '?')!r} on the suite's {provider} server(s)"


async def _open_factory(provider: str, workdir: pathlib.Path, unique: str) -> StoreSetup:
    try:
        module = _factory(provider)
    except ImportError as exc:
        raise StoreUnavailableError(f"{provider}: factory cannot be imported: {exc}") from exc
    from tests.support import server_answers

    try:
        server = getattr(module, "SERVER", None)  # may start the suite's private servers
        if server is not None:
            name, host, port = server
            if not server_answers(host, port):
                raise StoreUnavailableError(f"{name} server at {host}:{port} is not reachable")
        config = dict(module.config(workdir, unique))
    except StoreUnavailableError:
        raise
    except Exception as exc:  # e.g. the sentinel topology cannot start: no redis-server
        raise StoreUnavailableError(f"{provider}: {type(exc).__name__}: {exc}") from exc
    if provider == "file":
        config["provider_config"] = str(workdir / f"sessions-{unique}")
    cleanup_fn = getattr(module, "cleanup", None)

    async def cleanup() -> None:
        if cleanup_fn is not None:
            await cleanup_fn(unique)

    return StoreSetup(
        provider=provider,
        config=config,
        client_side=bool(getattr(module, "CLIENT_SIDE", False)),
        shared=provider != "memory",
        where=_describe(provider, config, unique),
        cleanup=cleanup,
        details={"unique": unique},
    )


def _opener(provider: str) -> Opener:
    async def open_it(workdir: pathlib.Path, unique: str) -> StoreSetup:
        return await _open_factory(provider, workdir, unique)

    return open_it


#: name -> opener; the built-in providers, plus what fault scenarios register.
STORES: dict[str, Opener] = {name: _opener(name) for name in PROVIDERS}


def register_store(name: str, opener: Opener) -> None:
    """Make ``--provider NAME`` (and ``open_store(NAME)``) use *opener*."""
    STORES[name] = opener


async def open_store(name: str, workdir: pathlib.Path, unique: str | None = None) -> StoreSetup:
    """Set up store *name* in *workdir*; :class:`StoreUnavailableError` if it cannot run here."""
    opener = STORES.get(name)
    if opener is None:
        raise StoreUnavailableError(f"unknown store {name!r} (known: {', '.join(sorted(STORES))})")
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once per run, a local directory
    return await opener(workdir, unique or f"rel{secrets.token_hex(4)}")
