"""Contract-suite factory for the cookie provider (client-side: server-only tests are skipped)."""

from __future__ import annotations

import pathlib
from typing import Any

from cryptography.fernet import Fernet

CLIENT_SIDE = True
SERVER = None

#: One key per test run, so every manager a test builds reads the others' cookies.
KEY = Fernet.generate_key().decode("ascii")


def config(tmp_path: pathlib.Path, unique: str) -> dict[str, Any]:
    return {"provider": "cookie", "cookie_name": "sid", "provider_config": {"keys": [KEY]}}
