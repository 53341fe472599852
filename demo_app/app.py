"""The gosession-tornado demo: log in and out, a visit counter, flashes, "remember me",
a second named session for UI preferences, and a status panel.

Run it from the repository root::

    bash scripts/demo.sh                       # memory provider, http://127.0.0.1:8888/
    bash scripts/demo.sh --provider redis      # Redis on 127.0.0.1:6379
    bash scripts/demo.sh --provider file --config '{"gclifetime": 600}'

What holds:

* The main session (cookie ``gosessionid``) uses the provider chosen with
  ``--provider`` (default ``memory``) and ``--config`` (a beego JSON string, or
  a path to a file holding one). Its id is regenerated at login and the
  session is destroyed at logout.
* The second session (cookie ``prefs``) keeps the UI theme in an encrypted
  cookie (the ``cookie`` provider), so it survives logging out.
* Every form carries Tornado's XSRF token; a POST without it gets 403.
* No secret is written in the source: the keys come from the environment
  variable ``GOSESSION_DEMO_SECRET``, or from ``demo_app/.secret_key``
  (generated with mode 0600 on first run).
* A provider whose server is unreachable, or a bad ``--config``, stops the
  program at boot with a one-line error and a non-zero exit status
  (1: provider unreachable or port busy; 2: bad arguments or configuration).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import logging
import os
import pathlib
import re
import secrets
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import tornado.httpserver
import tornado.web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gosession_tornado import (
    SessionError,
    SessionManager,
    SessionMixin,
    UnknownProviderError,
    lookup,
    provider_names,
)
from gosession_tornado.session import Session
from gosession_tornado.values import normalize_key

__all__ = [
    "DemoError",
    "make_app",
    "main",
    "parse_args",
    "main_session_config",
    "load_secret",
    "start_managers",
    "close_managers",
    "SECRET_ENV",
    "REMEMBER_SECONDS",
]

log = logging.getLogger("demo_app")

HERE = pathlib.Path(__file__).resolve().parent
#: Environment variable holding the demo's secret (any string of 16+ characters).
SECRET_ENV = "GOSESSION_DEMO_SECRET"  # noqa: S105 - a variable name, not a secret
DEFAULT_SECRET_FILE = HERE / ".secret_key"
#: Lifetime of a "remember me" session: 30 days, in seconds.
REMEMBER_SECONDS = 30 * 24 * 3600
#: Lifetime of the preferences cookie: one year, in seconds.
PREFS_SECONDS = 365 * 24 * 3600
MAIN_COOKIE = "gosessionid"
PREFS_COOKIE = "prefs"
THEMES = ("light", "dark")
_USERNAME_RE = re.compile(r"^[\w .@+-]{1,32}$")

#: provider_config used when ``--config`` gives none (the cookie provider's keys are added at run time).
DEFAULT_PROVIDER_CONFIGS: dict[str, Any] = {
    "memory": "",
    "file": str(HERE / "sessions"),
    "redis": "127.0.0.1:6379,100,",
    "mysql": "root:@tcp(127.0.0.1:3306)/test",
    "postgresql": "postgresql://postgres@127.0.0.1:5432/postgres",
}


class DemoError(Exception):
    """Raised for a bad command line, a bad ``--config`` or an unusable secret."""


# ---------------------------------------------------------------- arguments


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    """The demo's command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m demo_app",
        description=(
            "gosession-tornado demo: log in/out, visit counter, flash messages, remember-me, "
            "a cookie-backed preferences session and a status panel."
        ),
        epilog=(
            f"Secrets come from ${SECRET_ENV}, or from demo_app/.secret_key (created on first run). "
            "Exit status: 0 ok, 1 provider unreachable or port busy, 2 bad arguments or config."
        ),
    )
    parser.add_argument(
        "--provider",
        default="memory",
        choices=provider_names(),
        help="session provider for the main session (default: memory, needs no server)",
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="JSON|FILE",
        help=(
            "manager config as a beego JSON string, e.g. "
            "'{\"cookieName\":\"gosessionid\",\"gclifetime\":3600,\"ProviderConfig\":\"./tmp\"}', "
            "or the path of a file holding one; keys override the demo defaults"
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8888, help="port to listen on (default: 8888)")
    parser.add_argument(
        "--secret-file",
        type=pathlib.Path,
        default=DEFAULT_SECRET_FILE,
        help=f"where the generated secret is kept when ${SECRET_ENV} is unset "
        "(default: demo_app/.secret_key)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse *argv* (default: ``sys.argv[1:]``); exits with status 2 on bad arguments."""
    return build_parser().parse_args(argv)


def _read_config(text: str | None) -> dict[str, Any]:
    """``--config``: a JSON object, or the path of a file holding one."""
    if text is None:
        return {}
    stripped = text.strip()
    source = "--config"
    if not stripped.startswith("{"):
        path = pathlib.Path(text).expanduser()
        if not path.is_file():
            raise DemoError(f"--config: {text!r} is neither a JSON object nor the path of a file")
        try:
            stripped = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DemoError(f"--config: cannot read {str(path)!r}: {exc}") from None
        source = f"--config file {str(path)!r}"
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise DemoError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DemoError(f"{source} must hold a JSON object, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------- secrets


def load_secret(path: pathlib.Path, environ: Mapping[str, str] | None = None) -> bytes:
    """The demo's master secret.

    Taken from ``$GOSESSION_DEMO_SECRET`` if set (at least 16 characters),
    else read from *path*, else generated (32 random bytes, URL-safe base64)
    and stored in *path* with mode 0600. Logs which source was used.

    :raises DemoError: if the variable is too short or *path* cannot be used.
    """
    env = os.environ if environ is None else environ
    value = env.get(SECRET_ENV, "")
    if value:
        if len(value) < 16:
            raise DemoError(f"${SECRET_ENV} must be at least 16 characters long")
        log.info("using the secret key from $%s", SECRET_ENV)
        return value.encode("utf-8")
    try:
        stored = path.read_bytes().strip()
    except FileNotFoundError:
        stored = b""
    except OSError as exc:
        raise DemoError(f"cannot read the secret key file {str(path)!r}: {exc}") from None
    if len(stored) >= 16:
        log.info("using the secret key stored in %s", path)
        return stored
    secret = secrets.token_urlsafe(32).encode("ascii")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if stored or path.exists():
            path.unlink()  # an empty or truncated file: replace it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secret + b"\n")
    except FileExistsError:  # another process created it meanwhile: use theirs
        return load_secret(path, env)
    except OSError as exc:
        raise DemoError(f"cannot write the secret key file {str(path)!r}: {exc}") from None
    log.warning(
        "generated a new secret key and stored it in %s (mode 0600); set $%s to use your own",
        path,
        SECRET_ENV,
    )
    return secret


def derive_key(secret: bytes, purpose: str) -> str:
    """A Fernet key (32 bytes, URL-safe base64) for *purpose*, derived from *secret* with HKDF-SHA256."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"gosession-demo:{purpose}".encode())
    return base64.urlsafe_b64encode(hkdf.derive(secret)).decode("ascii")


# ---------------------------------------------------------------- managers


def main_session_config(provider: str, config_text: str | None, cookie_key: str) -> dict[str, Any]:
    """The main manager's config: demo defaults for *provider*, overridden by ``--config``.

    A ``provider`` key inside ``--config`` wins over ``--provider``.

    :raises DemoError: if ``--config`` is not a JSON object (or a file holding one).
    """
    user = _read_config(config_text)
    for key, value in user.items():
        if normalize_key(key) in ("provider", "providername") and isinstance(value, str) and value:
            provider = value
    user_has_pc = any(normalize_key(k) == "providerconfig" for k in user)
    config: dict[str, Any] = {"provider": provider, "cookie_name": MAIN_COOKIE}
    if not user_has_pc:
        if provider == "cookie":
            config["provider_config"] = {"keys": [cookie_key]}
        elif provider in DEFAULT_PROVIDER_CONFIGS:
            config["provider_config"] = DEFAULT_PROVIDER_CONFIGS[provider]
    config.update({k: v for k, v in user.items() if normalize_key(k) not in ("provider", "providername")})
    return config


def _prefs_manager(key: str) -> SessionManager:
    """The preferences manager: the cookie provider, or memory if it is not available."""
    common: dict[str, Any] = {"cookie_name": PREFS_COOKIE, "max_lifetime": PREFS_SECONDS}
    try:
        lookup("cookie")
    except UnknownProviderError as exc:
        log.warning("cookie provider not available (%s); keeping preferences in memory", exc)
        return SessionManager({"provider": "memory", **common})
    return SessionManager(
        {"provider": "cookie", "cookie_lifetime": PREFS_SECONDS, "provider_config": {"keys": [key]}, **common}
    )


def _managers(app: tornado.web.Application) -> dict[str, SessionManager]:
    managers: dict[str, SessionManager] = app.settings["session_managers"]
    return managers


async def start_managers(app: tornado.web.Application) -> None:
    """Start every session manager of *app*.

    :raises DemoError: naming the provider, if one cannot reach its store.
    """
    for name, manager in _managers(app).items():
        try:
            await manager.start()
        except SessionError as exc:
            raise DemoError(
                f"cannot start the {manager.provider_name!r} session provider (session {name!r}): {exc}"
            ) from None
        except Exception as exc:  # a provider bug, or a client error it did not wrap
            raise DemoError(
                f"cannot start the {manager.provider_name!r} session provider (session {name!r}): "
                f"{type(exc).__name__}: {exc}"
            ) from None


async def close_managers(app: tornado.web.Application) -> None:
    """Close every session manager of *app* (idempotent)."""
    for manager in _managers(app).values():
        await manager.close()


# ---------------------------------------------------------------- handlers


def _short(sid: str) -> str:
    return f"{sid[:8]}…" if len(sid) > 8 else sid


class BaseHandler(SessionMixin, tornado.web.RequestHandler):
    """Loads the main session (mixin) and the ``prefs`` session for every request."""

    prefs: Session | None = None

    async def prepare(self) -> None:
        await super().prepare()
        self.prefs = await self.get_session("prefs")

    @property
    def user(self) -> str | None:
        """The logged-in user's name, or ``None``."""
        session = self._gs_session
        if session is None:
            return None
        user = session.get("user")
        return user if isinstance(user, str) else None

    @property
    def theme(self) -> str:
        """The UI theme from the preferences session (``light`` by default)."""
        theme = self.prefs.get("theme") if self.prefs is not None else None
        return theme if theme in THEMES else THEMES[0]

    def compute_etag(self) -> str | None:
        """No ETag: every page shows per-session data."""
        return None

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        namespace.update(user=self.user, theme=self.theme, themes=THEMES, flashes=[], error=None)
        return namespace

    async def status(self) -> dict[str, Any]:
        """What the status panel shows: providers, shortened session id, active sessions, stats."""
        manager = self.session_manager
        stats = dict(await manager.stats())
        session = self._gs_session
        return {
            "provider": manager.provider_name,
            "client_side": manager.client_side,
            "prefs_provider": self.session_manager_for("prefs").provider_name,
            "session_id": _short(session.session_id) if session is not None else None,
            "user": self.user,
            "visits": session.get("visits", 0) if session is not None and self.user else 0,
            "active_sessions": stats.get("active_sessions"),
            "stats": stats,
            "call_labels": CALL_LABELS,
        }

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self._reason
        messages = {
            403: "The form was rejected: its XSRF token is missing or wrong. Reload the page and retry.",
            404: "There is no such page.",
            405: "That method is not allowed here.",
            503: "The session store is unavailable right now; retry in a moment.",
        }
        try:
            self.render(
                "error.html", status_code=status_code, reason=reason,
                message=messages.get(status_code, "Something went wrong."),
            )
        except Exception:  # never let the error page itself fail
            log.exception("error page")
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish(f"{status_code} {reason}\n")


#: How the status panel names each kind of provider call (``stats()["calls"]`` keys).
CALL_LABELS = {
    "init": "start",
    "read": "read a session",
    "release": "save a session",
    "exist": "check a session",
    "regenerate": "new id (login)",
    "destroy": "destroy (logout)",
    "all": "count active sessions",
    "gc": "expire old sessions (GC)",
    "decode_cookie": "decode a cookie",
    "encode_cookie": "encode a cookie",
}


class HomeHandler(BaseHandler):
    """``GET /``: the login form, or the logged-in page with the visit counter."""

    async def get(self) -> None:
        session = self.session
        visits = 0
        if self.user:
            visits = int(session.get("visits", 0)) + 1
            session["visits"] = visits
        flashes = [str(f) for f in session.flashes()]
        login_at = session.get("login_at") if self.user else None
        self.render(
            "index.html",
            flashes=flashes,
            visits=visits,
            remember=bool(session.get("remember", False)),
            remember_days=REMEMBER_SECONDS // 86400,
            login_at=login_at.strftime("%Y-%m-%d %H:%M:%S UTC")
            if isinstance(login_at, datetime.datetime) else None,
            status=await self.status(),
        )


class LoginHandler(BaseHandler):
    """``POST /login``: regenerate the session id, store the user, flash a welcome."""

    def get(self) -> None:
        self.redirect("/")

    async def post(self) -> None:
        username = self.get_body_argument("username", "").strip()
        remember = self.get_body_argument("remember", "") in ("on", "1", "true", "yes")
        if not _USERNAME_RE.match(username):
            self.set_status(400)
            self.render(
                "index.html", flashes=[], visits=0, remember=False, login_at=None,
                remember_days=REMEMBER_SECONDS // 86400, status=await self.status(),
                error="Pick a user name of 1-32 letters, digits, spaces or . @ + - _",
            )
            return
        session = await self.session_regenerate_id()  # against session fixation
        session["user"] = username
        session["visits"] = 0
        session["remember"] = remember
        session["login_at"] = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        session.set_expiry(REMEMBER_SECONDS if remember else 0)
        session.add_flash(f"Welcome, {username}! You are logged in.")
        log.info("user %r logged in (remember me: %s)", username, remember)
        self.redirect("/")


class LogoutHandler(BaseHandler):
    """``POST /logout``: destroy the session; flash into the fresh one."""

    async def post(self) -> None:
        user = self.user
        fresh = await self.session_destroy()
        fresh.add_flash("You have been logged out." if user else "You were not logged in.")
        self.redirect("/")


class PrefsHandler(BaseHandler):
    """``POST /prefs``: store the theme in the ``prefs`` (cookie) session."""

    async def post(self) -> None:
        theme = self.get_body_argument("theme", "")
        if theme not in THEMES:
            raise tornado.web.HTTPError(400, reason="Unknown theme")
        assert self.prefs is not None
        self.prefs["theme"] = theme
        self.session.add_flash(f"Theme set to {theme}.")
        self.redirect("/")


class StatusHandler(BaseHandler):
    """``GET /status``: the status panel as JSON."""

    async def get(self) -> None:
        status = await self.status()
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(status, default=str))


class NotFoundHandler(BaseHandler):
    """Any other path: a themed 404 page; creates no main session."""

    session_autoload = False

    async def prepare(self) -> None:
        self.prefs = await self.get_session("prefs")
        raise tornado.web.HTTPError(404)


# ---------------------------------------------------------------- application


def make_app(args: argparse.Namespace | Sequence[str] | None = None) -> tornado.web.Application:
    """Build the demo :class:`tornado.web.Application` (managers built, not started).

    *args* is a namespace from :func:`parse_args`, or an argument list.
    ``app.settings["session_managers"]`` holds the ``main`` and ``prefs``
    managers; start them with :func:`start_managers` (or let the first request
    start them) and close them with :func:`close_managers`.

    :raises DemoError: for a bad ``--config`` or an unusable secret.
    :raises SessionError: (``ConfigError``, ``UnknownProviderError``) for a bad manager config.
    """
    if not isinstance(args, argparse.Namespace):
        args = parse_args(list(args) if args is not None else [])
    secret = load_secret(args.secret_file)
    main_config = main_session_config(args.provider, args.config, derive_key(secret, "main-cookie"))
    main_manager = SessionManager(main_config)
    prefs_manager = _prefs_manager(derive_key(secret, "prefs-cookie"))
    return tornado.web.Application(
        [
            (r"/", HomeHandler),
            (r"/login", LoginHandler),
            (r"/logout", LogoutHandler),
            (r"/prefs", PrefsHandler),
            (r"/status", StatusHandler),
        ],
        default_handler_class=NotFoundHandler,
        template_path=str(HERE / "templates"),
        static_path=str(HERE / "static"),
        cookie_secret=derive_key(secret, "tornado-cookie-secret"),
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Lax"},
        session_managers={"main": main_manager, "prefs": prefs_manager},
        demo_args=args,
    )


def _fail(message: str) -> None:
    print(f"demo_app: error: {message}", file=sys.stderr, flush=True)


async def serve(app: tornado.web.Application, host: str, port: int) -> int:
    """Start the managers, listen on *host*:*port* until SIGINT/SIGTERM, then close.

    Returns the exit status: 0 after a signal, 1 if a provider or the port is unusable.
    """
    try:
        await start_managers(app)
    except DemoError as exc:
        _fail(f"{exc}\n  Start the server, point --config at it, or use --provider memory.")
        await close_managers(app)
        return 1
    try:
        server: tornado.httpserver.HTTPServer = app.listen(port, host)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port")
        await close_managers(app)
        return 1
    managers = _managers(app)
    actual = next(iter(server._sockets.values())).getsockname()[1] if port == 0 else port
    log.info(
        "demo running at http://%s:%d/ (main session: %s provider, prefs: %s provider); Ctrl-C stops it",
        host, actual, managers["main"].provider_name, managers["prefs"].provider_name,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        server.stop()
        await server.close_all_connections()
        await close_managers(app)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m demo_app``; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = make_app(args)
    except (DemoError, SessionError) as exc:
        _fail(str(exc))
        return 2
    return asyncio.run(serve(app, args.host, args.port))
