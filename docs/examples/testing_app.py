"""The application the "Testing your app" examples test.

A profile page for logged-in users.

``GET /profile`` answers 403 without a ``user`` in the session, else the user
and a view counter; ``POST /logout`` destroys the session.
"""

from __future__ import annotations

import tornado.web
from gosession_tornado import SessionManager, SessionMixin


class ProfileHandler(SessionMixin, tornado.web.RequestHandler):
    def get(self) -> None:
        user = self.session.get("user")
        if user is None:
            raise tornado.web.HTTPError(403)
        self.session["views"] = self.session.get("views", 0) + 1
        self.write({"user": user, "views": self.session["views"]})


class LogoutHandler(SessionMixin, tornado.web.RequestHandler):
    async def post(self) -> None:
        await self.session_destroy()


def make_app(manager: SessionManager) -> tornado.web.Application:
    return tornado.web.Application(
        [(r"/profile", ProfileHandler), (r"/logout", LogoutHandler)],
        session_manager=manager,
    )
