"""Contract-suite factory for the memory provider."""

from __future__ import annotations

import pathlib
from typing import Any

CLIENT_SIDE = False
SERVER = None


def config(tmp_path: pathlib.Path, unique: str) -> dict[str, Any]:
    return {"provider": "memory", "cookie_name": "sid"}
PERSISTENT = False  # data does not survive the process
