"""``python -m demo_app``: run the demo (see ``--help``)."""

from __future__ import annotations

from .app import main

raise SystemExit(main())
