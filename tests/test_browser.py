"""End-to-end: headless Chromium drives the demo app (``python -m demo_app``).

Uses Debian's ``/usr/bin/chromium`` through Playwright's async API (no browser
download). Without Chromium the test fails under ``CI=true`` and is skipped
loudly elsewhere (``scripts/test.sh`` installs it via apt when run as root).

The flow: log in, watch the visit counter grow across page loads, see the
welcome flash exactly once, check the cookie attributes the browser stored,
switch the theme (second, named session), save a screenshot, log out, and
replay the old session cookie with a plain HTTP client to see it no longer
logs anyone in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import secrets
import shutil
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import tornado.httpclient

from demo_app.app import MAIN_COOKIE, PREFS_COOKIE, REMEMBER_SECONDS, SECRET_ENV
from tests.conftest import REDIS, free_port, require_server
from tests.support import fail_or_skip, require_provider

pytestmark = pytest.mark.browser

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def require_chromium() -> str:
    """Path of Debian's chromium; fail (CI) or skip loudly when it is missing."""
    path = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
    if path:
        return path
    fail_or_skip("chromium is not installed (apt-get install chromium; scripts/test.sh does it when root)")


@contextlib.asynccontextmanager
async def demo_process(tmp_path: pathlib.Path, *argv: str) -> AsyncIterator[str]:
    """Run ``python -m demo_app --port <free> *argv``; yield its base URL; stop it with SIGTERM."""
    port = free_port()
    log_path = tmp_path / "demo.log"
    env = {**os.environ, SECRET_ENV: f"browser-test-{secrets.token_hex(16)}"}
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "demo_app", "--port", str(port), *argv,
            cwd=ROOT, env=env, stdout=log, stderr=log,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.returncode is not None:
                pytest.fail(f"demo app exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"demo app did not listen on port {port}:\n{log_path.read_text()}")
                await asyncio.sleep(0.1)
                continue
            writer.close()
            await writer.wait_closed()
            break
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, f"demo app did not stop cleanly on SIGTERM:\n{log_path.read_text()}"


async def plain_get(url: str, cookie: str) -> tornado.httpclient.HTTPResponse:
    """GET *url* sending exactly *cookie*, with no cookie jar."""
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    try:
        return await client.fetch(url, headers={"Cookie": cookie}, raise_error=False, follow_redirects=False)
    finally:
        client.close()


def by_name(cookies: list[Any], name: str) -> dict[str, Any]:
    found = [c for c in cookies if c["name"] == name]
    assert len(found) == 1, f"expected one {name!r} cookie, browser has {[c['name'] for c in cookies]}"
    cookie: dict[str, Any] = dict(found[0])
    return cookie


async def delete_redis_keys(prefix: str) -> None:
    import redis.asyncio as aioredis

    r = aioredis.Redis(host=REDIS[1], port=REDIS[2])
    try:
        keys = [k async for k in r.scan_iter(match=f"*{prefix}*")]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


@pytest.mark.parametrize("provider", ["memory", "redis"])
async def test_browser_login_counter_flash_cookies_logout(provider: str, tmp_path: pathlib.Path) -> None:
    chromium = require_chromium()
    argv = ["--provider", provider]
    prefix = f"demo-browser-{secrets.token_hex(4)}:"
    if provider == "redis":
        require_server(REDIS)
        require_provider("redis")
        argv += ["--config", json.dumps({"key_prefix": prefix})]
    from playwright.async_api import async_playwright

    try:
        async with demo_process(tmp_path, *argv) as base, async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            try:
                await run_flow(browser, base, provider, tmp_path)
                await check_remember_me(browser, base)
            finally:
                await browser.close()
    finally:
        if provider == "redis":
            await delete_redis_keys(prefix)


async def run_flow(browser: Any, base: str, provider: str, tmp_path: pathlib.Path) -> None:
    context = await browser.new_context(viewport={"width": 1100, "height": 800})
    page = await context.new_page()
    resp = await page.goto(base + "/")
    assert resp is not None and resp.status == 200
    assert await page.locator("#login-form").count() == 1
    # the first visit stores nothing and sets no session cookie (only Tornado's _xsrf)
    assert [c["name"] for c in await context.cookies() if c["name"] == MAIN_COOKIE] == []

    # log in: the id changes, the counter starts at 1 and the welcome flash shows once
    await page.fill("#username", "ann")
    async with page.expect_navigation():
        await page.click("#login-button")
    assert (await page.inner_text("#user")) == "ann"
    assert (await page.inner_text("#visits")) == "1"
    flashes = await page.locator(".flash").all_inner_texts()
    assert flashes == ["Welcome, ann! You are logged in."]
    assert (await page.inner_text("#status-provider")) == provider
    cookies = await context.cookies()
    session_cookie = by_name(cookies, MAIN_COOKIE)
    assert session_cookie["httpOnly"] is True
    assert session_cookie["sameSite"] == "Lax"
    assert session_cookie["path"] == "/"
    assert session_cookie["secure"] is False  # plain http on loopback
    assert session_cookie["expires"] == -1  # no "remember me": a browser-session cookie
    xsrf_cookie = by_name(cookies, "_xsrf")
    assert xsrf_cookie["httpOnly"] is True and xsrf_cookie["sameSite"] == "Lax"
    assert (await page.inner_text("#status-sid")) == session_cookie["value"][:8] + "…"

    await page.reload()
    assert (await page.inner_text("#visits")) == "2"
    assert await page.locator(".flash").count() == 0, "the flash must show only once"
    await page.reload()
    assert (await page.inner_text("#visits")) == "3"
    assert "Until you close the browser" in await page.inner_text("#remember-state")
    assert int(await page.inner_text("#status-active")) >= 1
    await page.screenshot(path=str(tmp_path / "logged-in.png"), full_page=True)

    # the theme lives in the second, named session
    await page.select_option("#theme", "dark")
    async with page.expect_navigation():
        await page.click("#save-prefs")
    assert "theme-dark" in (await page.get_attribute("body", "class") or "")
    assert (await page.inner_text("#visits")) == "4"
    prefs_cookie = by_name(await context.cookies(), PREFS_COOKIE)
    assert prefs_cookie["httpOnly"] is True and prefs_cookie["sameSite"] == "Lax"
    await page.screenshot(path=str(tmp_path / "logged-in-dark.png"), full_page=True)
    old_sid = by_name(await context.cookies(), MAIN_COOKIE)["value"]

    # log out: flash once, the old cookie is gone from the browser and dead on the server
    async with page.expect_navigation():
        await page.click("#logout")
    assert await page.locator("#login-form").count() == 1
    assert await page.locator(".flash").all_inner_texts() == ["You have been logged out."]
    assert "theme-dark" in (await page.get_attribute("body", "class") or "")  # prefs survive logout
    new_sid = by_name(await context.cookies(), MAIN_COOKIE)["value"]
    assert new_sid != old_sid
    await page.reload()
    assert await page.locator(".flash").count() == 0

    replay = await plain_get(base + "/status", f"{MAIN_COOKIE}={old_sid}")
    assert replay.code == 200
    status = json.loads(replay.body)
    assert status["user"] is None, "the logged-out session cookie must not log anyone in"
    assert status["session_id"] != old_sid[:8] + "…"
    home = await plain_get(base + "/", f"{MAIN_COOKIE}={old_sid}")
    assert b'id="login-form"' in home.body and b'id="user"' not in home.body
    await context.close()

    shot = tmp_path / "logged-in.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def check_remember_me(browser: Any, base: str) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(base + "/")
    await page.fill("#username", "bob")
    await page.check("#remember")
    async with page.expect_navigation():
        await page.click("#login-button")
    assert "Remembered for 30 days" in await page.inner_text("#remember-state")
    cookie = by_name(await context.cookies(), MAIN_COOKIE)
    assert cookie["expires"] > time.time() + REMEMBER_SECONDS - 3600
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
    await context.close()
