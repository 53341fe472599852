"""Contract-suite factory for the memcache provider: a private memcached shared by the suite.

The server is started on a free loopback port on first use of :data:`SERVER`
(the contract suite reads it through ``require_server``) and stopped by PID
when the test process exits (see ``tests/memcache_helpers.py``). Without the
``memcached`` binary, ``SERVER`` names a closed port, so ``require_server``
fails under ``CI=true`` and skips loudly elsewhere, with the reason.

Each test gets its own key prefix ``gstest:<unique>:``. memcached cannot list
keys, so nothing is deleted afterwards: the items are small and expire.
"""

from __future__ import annotations

import pathlib
from typing import Any

from ..memcache_helpers import shared_error, shared_memcached

CLIENT_SIDE = False
#: memcached cannot count sessions: get_active_sessions() raises CannotCountError.
COUNTS = False


def __getattr__(name: str) -> Any:
    # SERVER is computed on first access: it starts the shared server.
    if name == "SERVER":
        server = shared_memcached()
        if server is None:
            # Port 1 is closed: require_server fails under CI=true and skips loudly elsewhere.
            return (f"memcached ({shared_error()})", "127.0.0.1", 1)
        return ("memcached", "127.0.0.1", server.port)
    raise AttributeError(name)


def prefix(unique: str) -> str:
    """The key prefix of the test identified by *unique*."""
    return f"gstest:{unique}:"


def config(tmp_path: pathlib.Path, unique: str) -> dict[str, Any]:
    server = shared_memcached()
    address = server.address if server is not None else "127.0.0.1:1"
    # beego's form (one "host:port"), the prefix through the manager's own key_prefix.
    return {
        "provider": "memcache",
        "cookie_name": "sid",
        "provider_config": address,
        "key_prefix": prefix(unique),
    }
