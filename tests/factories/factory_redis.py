"""Contract-suite factory for the redis provider (the shared server on 127.0.0.1).

Each test gets its own key prefix ``gstest:<unique>:``; :func:`cleanup`
deletes every key under it.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

CLIENT_SIDE = False
PORT = int(os.environ.get("GOSESSION_REDIS_PORT", "6379"))
SERVER = ("redis", "127.0.0.1", PORT)


def prefix(unique: str) -> str:
    """The key prefix of the test identified by *unique*."""
    return f"gstest:{unique}:"


def config(tmp_path: pathlib.Path, unique: str) -> dict[str, Any]:
    # beego's comma form, and the prefix through the manager's own key_prefix.
    return {
        "provider": "redis",
        "cookie_name": "sid",
        "provider_config": f"127.0.0.1:{PORT},16,",
        "key_prefix": prefix(unique),
    }


async def delete_prefix(key_prefix: str, port: int = PORT) -> int:
    """Delete every key under *key_prefix* (SCAN + DEL); returns how many were deleted."""
    import redis.asyncio as aioredis

    client = aioredis.Redis(host="127.0.0.1", port=port)
    deleted = 0
    try:
        pattern = "".join("\\" + c if c in "\\*?[]" else c for c in key_prefix) + "*"
        keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
        for i in range(0, len(keys), 500):
            deleted += int(await client.delete(*keys[i : i + 500]))
    finally:
        await client.aclose()
    return deleted


async def cleanup(unique: str) -> None:
    await delete_prefix(prefix(unique))
