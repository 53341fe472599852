"""Go duration strings (``"1m30s"``, ``"500ms"``, ``"2.5s"``), as beego and go-sql-driver configs use them."""

from __future__ import annotations

import re

__all__ = ["go_duration_seconds"]

_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration_seconds(text: str) -> float:
    """Seconds in *text*: a plain number of seconds or a Go duration.

    :raises ValueError: if *text* is empty, not a duration, negative or NaN.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty duration")
    try:
        seconds = float(text)
    except ValueError:
        pos = 0
        seconds = 0.0
        while pos < len(text):
            m = _DURATION_RE.match(text, pos)
            if m is None:
                raise ValueError(f"{text!r} is not a duration (examples: '5s', '500ms', '1m30s')") from None
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"duration must be >= 0, got {text!r}")
    return seconds
