"""Provider registry: ``register(name, cls)`` and lookup by name.

Built-in providers are imported lazily on first lookup, so importing the
package never needs the optional clients (redis, aiomysql, asyncpg, emcache). Asking for
a built-in whose client is missing raises
:class:`~gosession_tornado.errors.UnknownProviderError` naming the extra to
install.
"""

from __future__ import annotations

import importlib
import inspect

from .errors import ConfigError, DuplicateProviderError, UnknownProviderError
from .provider import Provider

__all__ = ["register", "unregister", "lookup", "provider_names", "BUILTINS"]

#: name -> (module, class name, extra or None)
BUILTINS: dict[str, tuple[str, str, str | None]] = {
    "memory": ("gosession_tornado.providers.memory", "MemoryProvider", None),
    "file": ("gosession_tornado.providers.file", "FileProvider", None),
    "cookie": ("gosession_tornado.providers.cookie", "CookieProvider", None),
    "redis": ("gosession_tornado.providers.redis.provider", "RedisProvider", "redis"),
    "redis_cluster": ("gosession_tornado.providers.redis.cluster", "RedisClusterProvider", "redis"),
    "redis_sentinel": ("gosession_tornado.providers.redis.sentinel", "RedisSentinelProvider", "redis"),
    "mysql": ("gosession_tornado.providers.sql.mysql", "MySQLProvider", "mysql"),
    "postgresql": ("gosession_tornado.providers.sql.postgresql", "PostgreSQLProvider", "postgresql"),
    "memcache": ("gosession_tornado.providers.memcache", "MemcacheProvider", "memcache"),
}

_registry: dict[str, type[Provider]] = {}


def register(name: str, cls: type[Provider]) -> None:
    """Register provider class *cls* under *name* (beego's ``session.Register``).

    :raises DuplicateProviderError: if *name* is taken (built-ins included).
    :raises ConfigError: if *cls* is not a :class:`Provider` subclass.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"provider name must be a non-empty string, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ConfigError(
            f"register({name!r}, …) needs a subclass of gosession_tornado.Provider, got {cls!r}"
        )
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise ConfigError(
            f"register({name!r}, {cls.__name__}): the provider does not implement {missing}"
        )
    if name in _registry or name in BUILTINS:
        raise DuplicateProviderError(
            f"a session provider named {name!r} is already registered; pick another name"
        )
    _registry[name] = cls


def unregister(name: str) -> None:
    """Remove a provider registered with :func:`register` (for tests and plugins)."""
    _registry.pop(name, None)


def provider_names() -> list[str]:
    """Every name :func:`lookup` may accept (built-ins whose client is missing included)."""
    return sorted(set(_registry) | set(BUILTINS))


def lookup(name: str) -> type[Provider]:
    """Return the provider class registered as *name*.

    :raises UnknownProviderError: for an unknown name, or a built-in whose
        client library is not installed (the message names the extra).
    """
    cls = _registry.get(name)
    if cls is not None:
        return cls
    builtin = BUILTINS.get(name)
    if builtin is None:
        raise UnknownProviderError(
            f"unknown session provider {name!r} (forgotten import or register() call?); "
            f"known: {', '.join(provider_names())}"
        )
    module_name, class_name, extra = builtin
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise UnknownProviderError(
                f"session provider {name!r} is not available in this version of gosession-tornado"
            ) from exc
        hint = f"pip install 'gosession-tornado[{extra}]'" if extra else "reinstall gosession-tornado"
        raise UnknownProviderError(
            f"session provider {name!r} needs the {exc.name!r} package: {hint}"
        ) from exc
    found: type[Provider] = getattr(module, class_name)
    return found
