"""Helpers shared by the Redis-family provider tests (test_provider_redis,
test_provider_redis_cluster, test_provider_redis_sentinel): the provider behind a
manager, raw messages, and the request handlers of the HTTP concurrency tests.
"""

from __future__ import annotations

from typing import Any, TypeVar

import tornado.httpclient
import tornado.web

from gosession_tornado import SessionManager, SessionMixin
from gosession_tornado.provider import Changes, Provider

_P = TypeVar("_P", bound=Provider)


def provider_as(m: SessionManager, cls: type[_P]) -> _P:
    """The started manager *m*'s provider, checked to be a *cls*."""
    actor = m._actor
    assert actor is not None
    assert isinstance(actor.provider, cls)
    return actor.provider


async def ask(m: SessionManager, message: Any) -> Any:
    """Send one raw provider message through *m*'s actor and return its result."""
    return await m._ask(message)


def create(**values: Any) -> Changes:
    """A release delta that creates the session with *values*."""
    return Changes(set=dict(values), create=True)


def cookie_of(resp: tornado.httpclient.HTTPResponse, name: str = "sid") -> str:
    """``name=value`` of the cookie *name* that *resp* sets."""
    for header in resp.headers.get_list("Set-Cookie"):
        if header.startswith(f"{name}="):
            return header.split(";", 1)[0]
    raise AssertionError(f"no {name} cookie in {resp.headers.get_list('Set-Cookie')}")


class SetKey(SessionMixin, tornado.web.RequestHandler):
    """``GET /set/<key>``: stores ``key = key``; answers the session id."""

    async def get(self, key: str) -> None:
        self.session[key] = key
        self.write({"sid": self.session.session_id})


class Dump(SessionMixin, tornado.web.RequestHandler):
    """``GET /dump``: the session's keys (sorted, as strings) and id."""

    async def get(self) -> None:
        self.write({"keys": sorted(str(k) for k in self.session), "sid": self.session.session_id})


class Counter(SessionMixin, tornado.web.RequestHandler):
    """``GET``: increments the session's ``n`` and answers it."""

    async def get(self) -> None:
        self.session["n"] = self.session.get("n", 0) + 1
        self.write({"n": self.session["n"]})
