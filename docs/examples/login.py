"""The seeds' ``login`` handler, ported to Tornado with :class:`SessionMixin`.

Run it with ``python docs/examples/login.py`` and open http://127.0.0.1:8888/login.
"""

from __future__ import annotations

import asyncio
import hmac
import html

import tornado.web
from gosession_tornado import SessionManager, SessionMixin

# beego: globalSessions, _ = session.NewManager("memory", "gosessionid", 3600, "")
global_sessions = SessionManager("memory", "gosessionid", 3600, "")

LOGIN_FORM = """<form method="post" action="/login">{xsrf}
  <input name="username" placeholder="username">
  <input name="password" type="password" placeholder="password">
  <button>Log in</button>
</form>"""

LOGOUT_FORM = (
    """<form method="post" action="/logout">{xsrf}<button>Log out</button></form>"""
)


class LoginHandler(SessionMixin, tornado.web.RequestHandler):
    # beego: sess := globalSessions.SessionStart(w, r); defer sess.SessionRelease(w)
    # Here prepare() starts the session and finish() releases it.

    def get(self) -> None:
        username = self.session.get("username")
        xsrf = (
            self.xsrf_form_html()
        )  # POST forms need the XSRF token (xsrf_cookies=True)
        if username is None:
            self.write(LOGIN_FORM.format(xsrf=xsrf))
        else:
            self.write(
                f"hello {html.escape(username)} " + LOGOUT_FORM.format(xsrf=xsrf)
            )

    async def post(self) -> None:
        username = self.get_body_argument("username")
        password = self.get_body_argument("password", "")
        if not check_password(username, password):
            raise tornado.web.HTTPError(403)
        await self.session_regenerate_id()  # a new id at login: no session fixation
        self.session["username"] = username  # beego: sess.Set("username", ...)
        self.redirect("/login")


class LogoutHandler(SessionMixin, tornado.web.RequestHandler):
    async def post(self) -> None:
        await self.session_destroy()  # record deleted, cookie expired
        self.redirect("/login")


#: Stand-in for your user store (keep password hashes there, never plain text).
DEMO_USERS = {"ann": "wonderland"}


def check_password(username: str, password: str) -> bool:
    expected = DEMO_USERS.get(username)
    return expected is not None and hmac.compare_digest(expected, password)


def make_app() -> tornado.web.Application:
    return tornado.web.Application(
        [(r"/login", LoginHandler), (r"/logout", LogoutHandler)],
        session_manager=global_sessions,
        # a logout is a POST: a link on another site cannot log users out
        xsrf_cookies=True,
    )


async def main() -> None:
    make_app().listen(8888, "127.0.0.1")
    try:
        await asyncio.Event().wait()
    finally:
        await global_sessions.close()


if __name__ == "__main__":
    asyncio.run(main())
