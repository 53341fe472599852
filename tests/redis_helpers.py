"""Helpers shared by the Redis-family provider tests (test_provider_redis,
test_provider_redis_cluster, test_provider_redis_sentinel): the provider behind a
manager, raw messages, and the request handlers of the HTTP concurrency tests.
"""

from __future__ import annotations

import tornado.httpclient
import tornado.web

from gosession_tornado import SessionMixin


def cookie_of(resp: tornado.httpclient.HTTPResponse, name: str = "sid") -> str:
    """``name=value`` of the cookie *name* that *resp* sets."""
    for header in resp.headers.get_list("Set-Cookie"):
        if header.startswith(f"{name}="):
            return header.split(";", 1)[0]
    raise AssertionError(f"no {name} cookie in {resp.headers.get_list('Set-Cookie')}")


class Counter(SessionMixin, tornado.web.RequestHandler):
    """``GET``: increments the session's ``n`` and answers it."""

    async def get(self) -> None:
        self.session["n"] = self.session.get("n", 0) + 1
        self.write({"n": self.session["n"]})
