"""Contract-suite factory for the postgresql provider (the shared PostgreSQL on 127.0.0.1).

Each test gets its own table ``session_<unique>`` in the ``test`` database;
:func:`cleanup` drops it. Server, user and database can be changed with
``GOSESSION_PG_PORT``, ``GOSESSION_PG_USER``, ``GOSESSION_PG_PASSWORD`` and
``GOSESSION_PG_DB``. What it knows of the server is
:data:`tests.sql_helpers.POSTGRESQL_DIALECT`'s.
"""

from __future__ import annotations

from ..sql_helpers import POSTGRESQL_DIALECT as _D

CLIENT_SIDE = False
SERVER = _D.server
config = _D.config  # beego's key=value DSN form, the table named by a parameter
cleanup = _D.cleanup
sql = _D.sql  # sql(statement, *args): one statement on its own connection; its rows (tests/test_cli.py)
