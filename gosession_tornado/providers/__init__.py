"""Built-in providers. Each is imported lazily by :mod:`gosession_tornado.registry`."""
