"""The reliability suite of gosession-tornado: model-checked stress, fuzz, soak and the report.

Modules:

* :mod:`reliability.app`: the Tornado server process the stress and fuzz runs talk to;
* :mod:`reliability.httpclient`: raw HTTP/1.1 clients (asyncio keep-alive, and blocking
  byte-exact requests for the fuzz);
* :mod:`reliability.stores`: how each provider is set up (the test suite's factories);
* :mod:`reliability.model`: the recorded history and the checker;
* :mod:`reliability.stress`: the load driver, its command line (CI size, ``--minutes`` soak);
* :mod:`reliability.faults`: the hook fault scenarios plug into;
* :mod:`reliability.fuzz`: the invariants every response to hostile input must keep;
* :mod:`reliability.report`: renders ``docs/reliability.rst`` from ``reliability/results``.

Run everything from the repository root (``python -m reliability.stress --help``).
"""
