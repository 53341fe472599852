"""The mixin under ``tornado.testing.AsyncHTTPTestCase``, the way many Tornado apps test.

The manager is built synchronously in ``get_app()`` and started on first use
inside the test's IOLoop; teardown cancels the actor task without errors.
"""

from __future__ import annotations

import tornado.escape
import tornado.testing
import tornado.web

from gosession_tornado import SessionManager, SessionMixin


class Counter(SessionMixin, tornado.web.RequestHandler):
    def get(self) -> None:
        self.session["n"] = self.session.get("n", 0) + 1
        self.write({"n": self.session["n"]})


class CounterTest(tornado.testing.AsyncHTTPTestCase):
    def get_app(self) -> tornado.web.Application:
        self.manager = SessionManager("memory", "gosessionid", 3600, "")
        return tornado.web.Application([("/", Counter)], session_manager=self.manager)

    def test_counter_across_requests(self) -> None:
        first = self.fetch("/")
        assert first.code == 200
        cookie = first.headers["Set-Cookie"].split(";")[0]
        assert tornado.escape.json_decode(first.body) == {"n": 1}
        for expected in (2, 3, 4):
            resp = self.fetch("/", headers={"Cookie": cookie})
            assert tornado.escape.json_decode(resp.body) == {"n": expected}
        assert self.manager.started

    def test_session_dict_setting(self) -> None:
        app = tornado.web.Application([("/", Counter)], session={"provider": "memory", "cookie_name": "sid"})
        self._app = app
        self.http_server.request_callback = app
        resp = self.fetch("/")
        assert "sid=" in resp.headers["Set-Cookie"]
