"""The Redis family: the ``redis``, ``redis_cluster`` and ``redis_sentinel`` providers.

* :mod:`~gosession_tornado.providers.redis.config`: their ``provider_config``
  forms (beego's comma form, JSON, dicts, URLs), pure parsing that needs no
  Redis client;
* :mod:`~gosession_tornado.providers.redis.provider`: the ``redis`` provider,
  one Redis hash per session;
* :mod:`~gosession_tornado.providers.redis.cluster`: the ``redis_cluster``
  provider, the same layout over a Redis Cluster;
* :mod:`~gosession_tornado.providers.redis.sentinel`: the ``redis_sentinel``
  provider, the same layout on the master that Redis Sentinel names.

Importing this package imports no client: the registry imports the provider
modules when a manager asks for them (they need the ``[redis]`` extra).
"""
