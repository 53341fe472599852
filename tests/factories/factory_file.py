"""Contract-suite factory for the file provider: one fresh directory per test."""

from __future__ import annotations

import pathlib
from typing import Any

CLIENT_SIDE = False
SERVER = None


def config(tmp_path: pathlib.Path, unique: str) -> dict[str, Any]:
    return {
        "provider": "file",
        "cookie_name": "sid",
        "provider_config": str(tmp_path / f"sessions-{unique}"),
    }
