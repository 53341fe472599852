"""Testing with ``tornado.testing.AsyncHTTPTestCase`` and ``SessionTestMixin``.

Run it with ``python -m pytest docs/examples/testing_asynchttp.py`` (or
``python -m unittest``, from ``docs/examples``).
"""

from __future__ import annotations

import tornado.testing
import tornado.web
from gosession_tornado import SessionManager
from gosession_tornado.testing import SessionTestMixin
from tornado.escape import json_decode

from testing_app import make_app


class ProfileTest(SessionTestMixin, tornado.testing.AsyncHTTPTestCase):
    def get_app(self) -> tornado.web.Application:
        # A fresh manager per test (each test has its own IOLoop); tearDown closes it.
        return make_app(SessionManager("memory", cookie_name="sid"))

    def test_logged_in_user_sees_the_profile(self) -> None:
        cookie = self.make_session_cookie({"user": "ann"})  # "sid=<id>", stored already
        response = self.fetch("/profile", headers={"Cookie": cookie})
        assert response.code == 200
        assert json_decode(response.body) == {"user": "ann", "views": 1}
        assert self.read_session(cookie) == {"user": "ann", "views": 1}

    def test_anonymous_visitor_is_refused(self) -> None:
        assert self.fetch("/profile").code == 403

    def test_logout_destroys_the_session(self) -> None:
        made = self.make_session({"user": "ann"})
        response = self.fetch("/logout", method="POST", body=b"", headers=made.headers)
        assert response.code == 200
        assert self.session_cookie(response) is None  # the cookie was expired
        assert self.read_session(made) is None  # and the stored session is gone
        assert self.fetch("/profile", headers=made.headers).code == 403
