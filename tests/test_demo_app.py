"""HTTP-level tests of the demo app (``demo_app/``): log in/out, regenerate, flashes,
remember-me, the prefs session, the status panel, XSRF, secrets and the command line.

The app is built in-process with :func:`demo_app.make_app` and served on
127.0.0.1; the command-line behaviour (``--help``, exit codes) runs
``python -m demo_app`` in a subprocess.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import pathlib
import secrets
import socket
import stat
import sys
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from demo_app import DemoError, close_managers, make_app, start_managers
from demo_app.app import (
    HERE,
    MAIN_COOKIE,
    PREFS_COOKIE,
    REMEMBER_SECONDS,
    SECRET_ENV,
    load_secret,
    main_session_config,
)
from gosession_tornado import UnknownProviderError, lookup
from gosession_tornado.testing import make_session_cookie, read_session
from tests.conftest import REDIS, Client, free_port, require_server
from tests.support import require_provider

ROOT = HERE.parent

DemoFactory = Callable[..., Awaitable[tuple[Client, tornado.web.Application]]]


@pytest.fixture
async def demo(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DemoFactory]:
    """``client, app = await demo("--provider", ...)``: the demo app served on 127.0.0.1."""
    monkeypatch.setenv(SECRET_ENV, f"test-secret-{secrets.token_hex(16)}")
    running: list[tuple[tornado.httpserver.HTTPServer, Client, tornado.web.Application]] = []

    async def start(*argv: str) -> tuple[Client, tornado.web.Application]:
        app = make_app(["--secret-file", str(tmp_path / "secret"), *argv])
        await start_managers(app)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets(sockets)
        client = Client(f"http://127.0.0.1:{sockets[0].getsockname()[1]}")
        running.append((server, client, app))
        return client, app

    yield start
    for server, client, app in running:
        client.close()
        server.stop()
        await server.close_all_connections()
        await close_managers(app)


async def post_form(client: Client, path: str, **fields: str) -> Any:
    """POST *fields* with the XSRF token from the client's cookie jar."""
    body = urllib.parse.urlencode({"_xsrf": client.cookies.get("_xsrf", ""), **fields})
    return await client.fetch(
        path, method="POST", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )


async def status_with(client: Client, sid: str) -> dict[str, Any]:
    """``/status`` as seen by a client sending only ``gosessionid=<sid>``."""
    resp = await client.fetch("/status", headers={"Cookie": f"{MAIN_COOKIE}={sid}"}, use_jar=False)
    assert resp.code == 200
    data: dict[str, Any] = json.loads(resp.body)
    return data


def set_cookies(resp: Any, name: str) -> list[str]:
    return [h for h in resp.headers.get_list("Set-Cookie") if h.startswith(f"{name}=")]


async def login(client: Client, user: str = "ann", remember: bool = False) -> Any:
    if "_xsrf" not in client.cookies:
        await client.fetch("/")
    fields = {"username": user}
    if remember:
        fields["remember"] = "on"
    resp = await post_form(client, "/login", **fields)
    assert resp.code == 302, resp.body
    return resp


# ---------------------------------------------------------------- pages


async def test_anonymous_home_shows_login_form_with_xsrf_and_cookie_attributes(demo: DemoFactory) -> None:
    client, _ = await demo()
    resp = await client.fetch("/")
    assert resp.code == 200
    html = resp.body.decode()
    assert 'id="login-form"' in html
    assert 'name="_xsrf"' in html
    assert 'id="visits"' not in html
    assert set_cookies(resp, MAIN_COOKIE) == []  # no session cookie until the visitor does something
    (main_cookie,) = set_cookies(await login(client, "ann"), MAIN_COOKIE)
    attrs = [a.strip() for a in main_cookie.split(";")]
    assert "HttpOnly" in attrs
    assert "SameSite=Lax" in attrs
    assert "Path=/" in attrs
    assert not any(a.startswith("Max-Age") for a in attrs)
    static = await client.fetch("/static/style.css")
    assert static.code == 200
    assert b".theme-dark" in static.body


@pytest.mark.parametrize("provider", ["memory", "file", "redis"])
async def test_login_regenerates_sid_counts_visits_and_flashes_once(
    demo: DemoFactory, provider: str, tmp_path: pathlib.Path
) -> None:
    argv = ["--provider", provider]
    prefix = f"demo-test-{secrets.token_hex(4)}:"
    if provider != "memory":
        require_provider(provider)
    if provider == "file":
        argv += ["--config", json.dumps({"ProviderConfig": str(tmp_path / "sessions")})]
    if provider == "redis":
        require_server(REDIS)
        argv += ["--config", json.dumps({"key_prefix": prefix})]
    client, app = await demo(*argv)
    manager = app.settings["session_managers"]["main"]
    try:
        await client.fetch("/")
        assert MAIN_COOKIE not in client.cookies  # the first visit stores nothing
        await login(client, "ann")
        earlier_sid = client.cookies[MAIN_COOKIE]
        await client.fetch("/")
        await login(client, "ann")  # a login on a stored session moves it to a new id
        sid = client.cookies[MAIN_COOKIE]
        assert sid != earlier_sid, "the session id must change at login"
        assert await manager.read(earlier_sid) is None
        assert (await status_with(client, earlier_sid))["user"] is None

        first = (await client.fetch("/")).body.decode()
        assert "Welcome, ann! You are logged in." in first
        assert 'id="visits">1<' in first
        second = (await client.fetch("/")).body.decode()
        assert "Welcome, ann" not in second, "a flash is shown once"
        assert 'id="visits">2<' in second
        assert 'id="status-provider">' + provider in second
        status = json.loads((await client.fetch("/status")).body)
        assert status["user"] == "ann"
        assert status["visits"] == 2  # /status does not count a visit
        assert status["provider"] == provider
        assert status["session_id"] == sid[:8] + "…"
        assert client.cookies[MAIN_COOKIE] == sid
    finally:
        if provider == "redis":
            import redis.asyncio as aioredis

            r = aioredis.Redis(host=REDIS[1], port=REDIS[2])
            keys = [k async for k in r.scan_iter(match=f"*{prefix}*")]
            if keys:
                await r.delete(*keys)
            await r.aclose()


async def test_a_premade_session_cookie_logs_a_user_in_without_the_form(demo: DemoFactory) -> None:
    """gosession_tornado.testing: a test can start logged in, skipping the login form and XSRF."""
    client, app = await demo()
    manager = app.settings["session_managers"]["main"]
    login_at = datetime.datetime(2026, 5, 1, 12, 30, tzinfo=datetime.timezone.utc)
    cookie = await make_session_cookie(manager, {"user": "gus", "visits": 41, "login_at": login_at})
    page = (await client.fetch("/", headers={"Cookie": cookie}, use_jar=False)).body.decode()
    assert 'id="login-form"' not in page
    assert "Hello, gus" in page
    assert 'id="visits">42<' in page
    assert "2026-05-01 12:30:00 UTC" in page
    assert await read_session(manager, cookie) == {"user": "gus", "visits": 42, "login_at": login_at}
    assert (await status_with(client, cookie.partition("=")[2]))["user"] == "gus"


async def test_logout_destroys_session_and_old_cookie_stops_working(demo: DemoFactory) -> None:
    client, app = await demo()
    manager = app.settings["session_managers"]["main"]
    await login(client, "bob")
    await client.fetch("/")
    old_sid = client.cookies[MAIN_COOKIE]
    assert (await status_with(client, old_sid))["user"] == "bob"

    resp = await post_form(client, "/logout")
    assert resp.code == 302
    assert await manager.read(old_sid) is None
    new_sid = client.cookies[MAIN_COOKIE]  # the fresh session carries the flash
    assert new_sid != old_sid
    page = (await client.fetch("/")).body.decode()
    assert "You have been logged out." in page
    assert 'id="login-form"' in page
    assert "You have been logged out." not in (await client.fetch("/")).body.decode()
    replay = await status_with(client, old_sid)
    assert replay["user"] is None
    assert replay["session_id"] != old_sid[:8] + "…"


async def test_remember_me_sets_a_30_day_cookie_else_a_browser_session_cookie(demo: DemoFactory) -> None:
    client, _ = await demo()
    resp = await login(client, "carol", remember=True)
    (cookie,) = set_cookies(resp, MAIN_COOKIE)
    assert f"Max-Age={REMEMBER_SECONDS}" in cookie
    page = (await client.fetch("/")).body.decode()
    assert "Remembered for 30 days" in page

    other = Client(client.base_url)
    try:
        resp = await login(other, "dave", remember=False)
        (cookie,) = set_cookies(resp, MAIN_COOKIE)
        assert "Max-Age" not in cookie and "Expires" not in cookie
        assert "Until you close the browser" in (await other.fetch("/")).body.decode()
    finally:
        other.close()


async def test_prefs_theme_lives_in_its_own_session_and_survives_logout(demo: DemoFactory) -> None:
    client, app = await demo()
    prefs_manager = app.settings["session_managers"]["prefs"]
    try:
        lookup("cookie")
        cookie_provider = True
    except UnknownProviderError:
        cookie_provider = False  # the demo falls back to memory for prefs
    assert prefs_manager.provider_name == ("cookie" if cookie_provider else "memory")
    await login(client, "erin")
    resp = await post_form(client, "/prefs", theme="dark")
    assert resp.code == 302
    if cookie_provider:  # the whole prefs session travels in the (re-issued) cookie
        (cookie,) = set_cookies(resp, PREFS_COOKIE)
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert 'class="theme-dark"' in (await client.fetch("/")).body.decode()
    await post_form(client, "/logout")
    assert 'class="theme-dark"' in (await client.fetch("/")).body.decode()
    bad = await post_form(client, "/prefs", theme="neon<script>")
    assert bad.code == 400
    assert b"<script>" not in bad.body


async def test_status_reports_provider_and_stats(demo: DemoFactory) -> None:
    client, _ = await demo()
    await login(client, "fay")
    await login(client, "fay")  # the second login regenerates the stored session
    status = json.loads((await client.fetch("/status")).body)
    assert status["provider"] == "memory"
    assert status["active_sessions"] >= 1
    assert status["stats"]["started"] is True
    assert status["stats"]["calls"]["regenerate"]["calls"] >= 1
    page = (await client.fetch("/")).body.decode()
    assert 'id="status-active">' in page
    assert "regenerate" in page


async def test_forms_without_valid_xsrf_token_are_rejected(demo: DemoFactory) -> None:
    client, _ = await demo()
    await client.fetch("/")
    hdrs = {"Content-Type": "application/x-www-form-urlencoded"}
    missing = await client.fetch("/login", method="POST", body="username=mallory", headers=hdrs)
    assert missing.code == 403
    assert b"XSRF" in missing.body
    forged = await client.fetch(
        "/login", method="POST", body="username=mallory&_xsrf=2|00|00|0", headers=hdrs
    )
    assert forged.code == 403
    assert json.loads((await client.fetch("/status")).body)["user"] is None
    assert (await post_form(client, "/logout")).code == 302  # with the token it passes


async def test_bad_user_name_is_a_400_form_error_not_a_login(demo: DemoFactory) -> None:
    client, _ = await demo()
    await client.fetch("/")
    resp = await post_form(client, "/login", username="<b>x</b>")
    assert resp.code == 400
    html = resp.body.decode()
    assert "Pick a user name" in html
    assert "<b>x</b>" not in html
    assert json.loads((await client.fetch("/status")).body)["user"] is None


async def test_bad_session_cookie_gets_a_fresh_session_not_an_error(demo: DemoFactory) -> None:
    client, _ = await demo()
    for junk in ("../../etc/passwd", "x" * 5000, "0" * 32):
        resp = await client.fetch("/", headers={"Cookie": f"{MAIN_COOKIE}={junk}"}, use_jar=False)
        assert resp.code == 200
        assert not any(c.startswith(f"{MAIN_COOKIE}={junk};") for c in set_cookies(resp, MAIN_COOKIE))


async def test_cookie_provider_as_the_main_session(demo: DemoFactory) -> None:
    require_provider("cookie")
    client, app = await demo("--provider", "cookie")
    assert app.settings["session_managers"]["main"].client_side
    await client.fetch("/")
    assert MAIN_COOKIE not in client.cookies  # nothing to carry yet
    await login(client, "gus")
    assert MAIN_COOKIE in client.cookies
    page = (await client.fetch("/")).body.decode()
    assert "Welcome, gus" in page and 'id="visits">1<' in page
    assert "Client-side sessions live in the cookie itself" in page
    assert 'id="visits">2<' in (await client.fetch("/")).body.decode()
    await post_form(client, "/logout")
    assert "You have been logged out." in (await client.fetch("/")).body.decode()
    assert json.loads((await client.fetch("/status")).body)["user"] is None


async def test_unknown_path_is_a_themed_404_without_a_main_session(demo: DemoFactory) -> None:
    client, _ = await demo()
    resp = await client.fetch("/no/such/page")
    assert resp.code == 404
    assert b"There is no such page." in resp.body
    assert b'class="theme-light"' in resp.body
    assert not set_cookies(resp, MAIN_COOKIE)


# ---------------------------------------------------------------- config and secrets


def test_default_provider_configs() -> None:
    assert main_session_config("memory", None, "k")["provider"] == "memory"
    assert main_session_config("file", None, "k")["provider_config"] == str(HERE / "sessions")
    assert main_session_config("redis", None, "k")["provider_config"] == "127.0.0.1:6379,100,"
    assert main_session_config("mysql", None, "k")["provider_config"] == "root:@tcp(127.0.0.1:3306)/test"
    assert main_session_config("cookie", None, "key1")["provider_config"] == {"keys": ["key1"]}
    assert main_session_config("file", None, "k")["cookie_name"] == MAIN_COOKIE


def test_config_json_string_or_file_overrides_defaults(tmp_path: pathlib.Path) -> None:
    beego = '{"cookieName":"gosessionid","gclifetime":3600,"ProviderConfig":"./tmp"}'
    cfg = main_session_config("file", beego, "k")
    assert cfg["ProviderConfig"] == "./tmp"
    assert "provider_config" not in cfg
    assert cfg["gclifetime"] == 3600
    path = tmp_path / "cfg.json"
    path.write_text('{"provider": "redis", "cookie_lifetime": 60}')
    cfg = main_session_config("memory", str(path), "k")
    assert cfg["provider"] == "redis"
    assert cfg["provider_config"] == "127.0.0.1:6379,100,"
    assert cfg["cookie_lifetime"] == 60
    for bad in ("{not json", "[1, 2]", str(tmp_path / "missing.json")):
        with pytest.raises(DemoError):
            main_session_config("memory", bad, "k")


def test_secret_is_generated_once_with_mode_0600_and_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sub" / ".secret_key"
    with caplog.at_level(logging.INFO, logger="demo_app"):
        first = load_secret(path, environ={})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert any("generated a new secret key" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records)
    assert load_secret(path, environ={}) == first
    assert load_secret(path, environ={SECRET_ENV: "s" * 20}) == b"s" * 20
    with pytest.raises(DemoError, match=SECRET_ENV):
        load_secret(path, environ={SECRET_ENV: "short"})


def test_make_app_uses_env_secret_without_writing_a_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret"
    monkeypatch.setenv(SECRET_ENV, "e" * 32)
    a = make_app(["--secret-file", str(path)])
    b = make_app(["--secret-file", str(path)])
    assert not path.exists()
    assert a.settings["cookie_secret"] == b.settings["cookie_secret"]
    assert "e" * 32 not in str(a.settings["cookie_secret"])
    monkeypatch.delenv(SECRET_ENV)
    c = make_app(["--secret-file", str(path)])
    assert path.exists()
    assert c.settings["cookie_secret"] != a.settings["cookie_secret"]
    assert c.settings["xsrf_cookies"] is True


# ---------------------------------------------------------------- command line


async def run_demo(*argv: str, timeout: float = 60) -> tuple[int, str, str]:
    env = {**os.environ, SECRET_ENV: "cli-test-secret-0123456789"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "demo_app", *argv, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_help_lists_the_options() -> None:
    code, out, _ = await run_demo("--help")
    assert code == 0
    for option in ("--provider", "--config", "--port", "--host", SECRET_ENV):
        assert option in out


async def test_unreachable_provider_exits_1_with_a_clear_message() -> None:
    require_provider("redis")
    port = free_port()  # nothing listens there
    config = json.dumps({"provider_config": f"127.0.0.1:{port},10,", "provider_timeout": 3})
    code, _, err = await run_demo("--provider", "redis", "--config", config, "--port", str(free_port()))
    assert code == 1
    assert "demo_app: error: cannot start the 'redis' session provider" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--config", '{"gclifetime": "soon"}'], "gclifetime"),
        (["--config", "/nonexistent/demo.json"], "--config"),
        (["--provider", "nosuch"], "invalid choice"),
        (["--port", "99999"], "port"),
    ],
)
async def test_bad_arguments_exit_2(argv: list[str], needle: str) -> None:
    code, _, err = await run_demo(*argv)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err


async def test_busy_port_exits_1() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        code, _, err = await run_demo("--port", str(port))
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err


def test_cookie_jar_helper_parses_xsrf_cookie() -> None:
    """The test client must keep Tornado's ``2|…|…|…`` XSRF cookie (guards the helpers above)."""
    jar: SimpleCookie = SimpleCookie()
    jar.load("_xsrf=2|889ba1b5|4c7e3e94|1795295392; HttpOnly; Path=/; SameSite=Lax")
    assert jar["_xsrf"].value == "2|889ba1b5|4c7e3e94|1795295392"


async def test_saving_preferences_flashes_and_the_status_panel_names_its_calls(demo: DemoFactory) -> None:
    client, app = await demo()
    await login(client, "hal")
    assert (await post_form(client, "/prefs", theme="dark")).code == 302
    page = (await client.fetch("/")).body.decode()
    assert "Theme set to dark." in page
    assert "Theme set to dark." not in (await client.fetch("/")).body.decode()  # shown once
    await app.settings["session_managers"]["main"].get_active_sessions()  # an "all" call
    page = (await client.fetch("/")).body.decode()
    assert ">count active sessions<" in page  # not the bare message kind "all"
    assert ">all<" not in page
