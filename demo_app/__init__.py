"""The gosession-tornado demo application (``python -m demo_app --help``)."""

from __future__ import annotations

from .app import DemoError, close_managers, main, make_app, parse_args, start_managers

__all__ = ["DemoError", "close_managers", "main", "make_app", "parse_args", "start_managers"]
