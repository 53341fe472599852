"""The SQL family: the ``mysql`` and ``postgresql`` providers.

* :mod:`~gosession_tornado.providers.sql.base`:
  :class:`~gosession_tornado.providers.sql.base.SQLBatchProvider`, what both
  share (batching, compare-and-swap releases, the record codec, the
  connections at hand); a subclass brings the SQL and the driver;
* :mod:`~gosession_tornado.providers.sql.mysql` and
  :mod:`~gosession_tornado.providers.sql.mysql_dsn`: the ``mysql`` provider
  (aiomysql) and its ``provider_config`` forms (Go DSN, URL, dict);
* :mod:`~gosession_tornado.providers.sql.postgresql` and
  :mod:`~gosession_tornado.providers.sql.postgresql_dsn`: the ``postgresql``
  provider (asyncpg) and its ``provider_config`` forms (libpq ``key=value``,
  URL, dict).

Importing this package imports no driver: the registry imports the provider
modules when a manager asks for them (they need the ``[mysql]`` or
``[postgresql]`` extra). The DSN parsers need none.
"""
