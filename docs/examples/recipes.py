"""Recipes: the current user, prepare() overrides, a WebSocket, consent before storing.

Run it with ``python docs/examples/recipes.py`` and open http://127.0.0.1:8888/.
``tests/test_docs.py`` drives every handler here through real HTTP and a real
WebSocket.
"""

from __future__ import annotations

import asyncio
from typing import Any

import tornado.web
import tornado.websocket
from gosession_tornado import SessionManager, SessionMixin


class BaseHandler(SessionMixin, tornado.web.RequestHandler):
    """The session is loaded in prepare(), before Tornado asks for the current user."""

    def get_current_user(self) -> Any:
        return self.session.get("user")


class Login(BaseHandler):
    async def post(self) -> None:
        await self.session_regenerate_id()  # a new id at login: no session fixation
        self.session["user"] = self.get_body_argument("user")
        self.redirect("/account")


class Account(BaseHandler):
    @tornado.web.authenticated  # redirects to login_url when get_current_user() is None
    def get(self) -> None:
        self.write(f"hello {tornado.escape.xhtml_escape(self.current_user)}")


class AdminArea(BaseHandler):
    """A prepare() override: load the session first, then decide."""

    async def prepare(self) -> None:
        await super().prepare()  # loads self.session
        if self.session.get("user") != "admin":
            raise tornado.web.HTTPError(403)

    def get(self) -> None:
        self.write("admin area")


class Consent(BaseHandler):
    """Store nothing about a visitor until they agree (cookie consent)."""

    def post(self) -> None:
        self.session["consent"] = True  # the first write: now the session is stored
        self.write("thanks")


class Cart(BaseHandler):
    def get(self) -> None:
        # Reading a new session stores nothing and sets no cookie, so anonymous
        # visitors who have not agreed leave no trace.
        self.write({"items": self.session.get("items", [])})

    def post(self) -> None:
        if not self.session.get("consent"):
            raise tornado.web.HTTPError(409, reason="Consent Required")
        items = [*self.session.get("items", []), self.get_body_argument("item")]
        self.session["items"] = items


class Chat(SessionMixin, tornado.websocket.WebSocketHandler):
    """The session is read during the handshake; later changes are saved explicitly."""

    def open(self) -> None:
        if self.session.get("user") is None:
            self.close(
                4001, "log in first"
            )  # a new session cannot get a cookie over a WebSocket

    async def on_message(self, message: str | bytes) -> None:
        self.session["last_message"] = message
        await self.session.release()  # no finish() in a WebSocket: save it yourself
        self.write_message(f"{self.session['user']}: {message}")


def make_app(manager: SessionManager | None = None) -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r"/login", Login),
            (r"/account", Account),
            (r"/admin", AdminArea),
            (r"/consent", Consent),
            (r"/cart", Cart),
            (r"/chat", Chat),
        ],
        session_manager=manager or SessionManager("memory"),
        login_url="/login",
    )


async def main() -> None:
    make_app().listen(8888, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
