"""``python -m gosession_tornado``: the maintenance command line (see :mod:`gosession_tornado.cli`)."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
