"""Contract-suite factory for the mysql provider (the shared MariaDB on 127.0.0.1).

Each test gets its own table ``session_<unique>`` in the ``test`` database;
:func:`cleanup` drops it. Server, user and database can be changed with
``GOSESSION_MYSQL_PORT``, ``GOSESSION_MYSQL_USER``, ``GOSESSION_MYSQL_PASSWORD``
and ``GOSESSION_MYSQL_DB``. What it knows of the server is
:data:`tests.sql_helpers.MYSQL_DIALECT`'s.
"""

from __future__ import annotations

from ..sql_helpers import MYSQL_DIALECT as _D

CLIENT_SIDE = False
SERVER = _D.server
config = _D.config  # beego's Go DSN form, the table named by a parameter
cleanup = _D.cleanup
sql = _D.sql  # sql(statement, args): one statement on its own connection; its rows (tests/test_cli.py)
