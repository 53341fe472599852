"""The documentation builds, covers the public API and config keys, and its examples run.

CI only runs ``bash scripts/test.sh``, so this module is how CI builds the
Sphinx site: ``sphinx-build -W --keep-going`` (warnings are errors), as
``tox -e docs`` does. The README's example, the quickstart's login example
and the own-provider example are executed against a real Tornado server.
"""

from __future__ import annotations

import asyncio
import importlib.util
import pathlib
import re
import secrets
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import ModuleType
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

import gosession_tornado
from gosession_tornado import SessionManager, SessionMixin, config, register, unregister
from gosession_tornado.provider import GC, Changes, EncodeCookie, Init, Read, Release
from gosession_tornado.registry import BUILTINS
from gosession_tornado.web import managers_for

from .conftest import Client

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"


# ---------------------------------------------------------------- the Sphinx build


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Build the site once for this module, warnings as errors; returns the HTML dir."""
    out = tmp_path_factory.mktemp("docs")
    html = out / "html"
    proc = subprocess.run(
        [
            sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
            "-d", str(out / "doctrees"), str(DOCS), str(html),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert proc.returncode == 0, (
        f"sphinx-build -W failed ({proc.returncode}):\n{proc.stderr[-6000:]}\n{proc.stdout[-2000:]}"
    )
    return html


def test_sphinx_build_passes_with_warnings_as_errors(built_docs: pathlib.Path) -> None:
    for page in ("index", "quickstart", "configuration", "own_provider", "security", "migrating",
                 "operations", "api", "gorilla", "providers/index", "providers/memory"):
        assert (built_docs / f"{page}.html").is_file(), f"docs page {page!r} was not built"


def _inventory(html: pathlib.Path) -> set[str]:
    """The ``py:`` object names in Sphinx's ``objects.inv`` (format version 2)."""
    raw = (html / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):  # four "# ..." header lines, then zlib data
        header_end = raw.index(b"\n", header_end) + 1
    assert raw.startswith(b"# Sphinx inventory version 2")
    names: set[str] = set()
    for line in zlib.decompress(raw[header_end:]).decode("utf-8").splitlines():
        match = re.match(r"(.+?)\s+(py:\S+)\s+-?\d+\s", line)
        if match:
            names.add(match.group(1))
    return names


CORE_MODULES = (
    "manager", "web", "session", "config", "values", "errors", "provider", "registry", "actor", "codec",
)


def test_api_reference_documents_every_public_name(built_docs: pathlib.Path) -> None:
    documented = _inventory(built_docs)
    missing = []
    for name in gosession_tornado.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(gosession_tornado, name)
        if f"{obj.__module__}.{name}" not in documented:
            missing.append(f"{obj.__module__}.{name}")
    for module_name in CORE_MODULES:
        module = importlib.import_module(f"gosession_tornado.{module_name}")
        qualified = (f"{module.__name__}.{name}" for name in module.__all__)
        missing.extend(name for name in qualified if name not in documented)
    assert not missing, f"public names missing from the API reference: {missing}"
    for method in ("session_start", "session_destroy", "session_regenerate_id", "get_active_sessions",
                   "gc", "stats", "set_secure", "set_hash_func", "start", "close"):
        assert f"gosession_tornado.manager.SessionManager.{method}" in documented, method
    for module_name, class_name, _extra in BUILTINS.values():
        if importlib.util.find_spec(module_name) is not None:  # providers not built yet are skipped
            assert f"{module_name}.{class_name}" in documented, f"no docs page documents {class_name}"


def test_configuration_reference_names_every_key() -> None:
    """Every key build_config accepts (snake_case and beego spellings) is in configuration.rst."""
    text = (DOCS / "configuration.rst").read_text(encoding="utf-8")
    literals = {config.normalize_key(m) for m in re.findall(r"``([^`]+)``", text)}
    accepted = set(config._ALIASES) | set(config._IGNORED_WITH_WARNING) | {"disablehttponly"}
    missing = sorted(accepted - literals)
    assert not missing, f"configuration.rst does not mention these keys: {missing}"
    for field in config.ManagerConfig.__dataclass_fields__:
        assert f"``{field}``" in text, f"snake_case key {field!r} missing from configuration.rst"


# ---------------------------------------------------------------- README


def _readme_code_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    lines = [line.strip() for line in re.findall(r"^ {4}(\S.*)$", text, re.M)]
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        lines.extend(line.strip() for line in block.splitlines())
    return lines


def test_readme_commands_are_the_scripts() -> None:
    lines = _readme_code_lines()
    assert "bash scripts/demo.sh" in lines
    assert "bash scripts/test.sh" in lines
    assert "http://127.0.0.1:8888/" in README.read_text(encoding="utf-8")
    demo = (ROOT / "scripts" / "demo.sh").read_text(encoding="utf-8")
    test = (ROOT / "scripts" / "test.sh").read_text(encoding="utf-8")
    assert demo.startswith("#!/usr/bin/env bash") and test.startswith("#!/usr/bin/env bash")
    assert re.search(r"^exec .*python -m demo_app\b", demo, re.M), "demo.sh no longer runs demo_app"
    assert re.search(r"^exec .*python -m pytest\b", test, re.M), "test.sh no longer runs pytest"
    for script in ("demo.sh", "test.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], check=True)
    # CI runs exactly the README's test command.
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^bash scripts/test\.sh\b", ci, re.M)


def test_readme_has_no_links_that_only_work_inside_the_repository() -> None:
    # The README is also the PyPI page: every link must be absolute.
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links, "the README links to nothing"
    assert [link for link in links if not link.startswith(("https://", "http://"))] == []
    assert "tox -e docs" in text
    for page in ("why", "performance"):  # the pages it names exist
        assert (DOCS / f"{page}.rst").is_file()


# ---------------------------------------------------------------- runnable examples


@asynccontextmanager
async def _serve_app(app: tornado.web.Application) -> AsyncIterator[Client]:
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    client = Client(f"http://127.0.0.1:{sockets[0].getsockname()[1]}")
    try:
        yield client
    finally:
        client.close()
        server.stop()
        await server.close_all_connections()
        for manager in set(managers_for(app).values()):
            await manager.close()


def _load(path: pathlib.Path, source: str | None = None) -> ModuleType:
    """Execute *path* (or *source*) as a fresh module not named ``__main__``."""
    name = f"docs_example_{path.stem}_{secrets.token_hex(4)}"
    if source is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    module = ModuleType(name)
    exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - the README's own example
    return module


async def test_readme_example_counts_visits() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "the README has no python example"
    example = _load(README, blocks[0])
    async with _serve_app(example.make_app()) as client:
        first = await client.fetch("/")
        second = await client.fetch("/")
        fresh = await client.fetch("/", use_jar=False)
    assert first.body == b"visits: 1"
    assert second.body == b"visits: 2"
    assert fresh.body == b"visits: 1"


async def test_quickstart_login_example() -> None:
    login = _load(DOCS / "examples" / "login.py")
    async with _serve_app(login.make_app()) as client:
        form = await client.fetch("/login")
        assert b"<form" in form.body and b'name="_xsrf"' in form.body
        assert "gosessionid" not in client.cookies  # reading an empty session stores nothing

        def post(path: str, body: str = "") -> Awaitable[Any]:
            xsrf = f"_xsrf={client.cookies['_xsrf']}"
            return client.fetch(path, method="POST", body=f"{body}&{xsrf}" if body else xsrf)

        forged = await client.fetch("/login", method="POST", body="username=ann&password=wonderland")
        assert forged.code == 403  # no XSRF token
        wrong = await post("/login", "username=ann&password=nope")
        assert wrong.code == 403
        ok = await post("/login", "username=ann&password=wonderland")
        assert ok.code == 302
        earlier_sid = client.cookies["gosessionid"]
        again = await post("/login", "username=ann&password=wonderland")
        assert again.code == 302
        assert client.cookies["gosessionid"] != earlier_sid, "login must regenerate the session id"
        hello = await client.fetch("/login")
        assert hello.body.startswith(b"hello ann") and b'action="/logout"' in hello.body
        stolen = await client.fetch("/login", headers={"Cookie": f"gosessionid={earlier_sid}"})
        assert b"<form" in stolen.body, "the pre-login id must not be logged in"
        assert (await client.fetch("/logout")).code == 405  # a GET cannot log anyone out
        out = await post("/logout")
        assert out.code == 302
        assert "gosessionid" not in client.cookies
        assert b'action="/login"' in (await client.fetch("/login")).body


@pytest.fixture
def sqlite_provider() -> Any:
    module = _load(DOCS / "examples" / "sqlite_provider.py")
    name = f"sqlite_{secrets.token_hex(4)}"
    register(name, module.SQLiteProvider)
    yield name, module.SQLiteProvider
    unregister(name)


async def test_own_provider_example_keeps_concurrent_keys_and_moves_ids(
    sqlite_provider: Any, tmp_path: pathlib.Path, serve: Callable[..., Awaitable[Client]]
) -> None:
    name, _ = sqlite_provider
    db = str(tmp_path / "sessions.db")
    manager = SessionManager(name, {"cookie_name": "sid", "provider_config": db})
    other = SessionManager(name, {"cookie_name": "sid", "provider_config": db})  # "another process"

    class SetHandler(SessionMixin, tornado.web.RequestHandler):
        async def get(self, key: str) -> None:
            self.session[key] = int(self.get_query_argument("v"))

    class LoginHandler(SessionMixin, tornado.web.RequestHandler):
        async def get(self) -> None:
            await self.session_regenerate_id()

    try:
        handlers = [(r"/set/(\w+)", SetHandler), (r"/login", LoginHandler)]
        client = await serve(handlers, session_manager=manager)
        assert (await client.fetch("/set/a?v=1")).code == 200
        sid = client.cookies["sid"]
        responses = await asyncio.gather(*(client.fetch(f"/set/k{i}?v={i}") for i in range(8)))
        assert [r.code for r in responses] == [200] * 8
        await other.start()
        assert await other.read(sid) == {"a": 1, **{f"k{i}": i for i in range(8)}}
        await client.fetch("/login")
        new_sid = client.cookies["sid"]
        assert new_sid != sid
        assert await other.read(sid) is None
        assert (await other.read(new_sid) or {}).get("a") == 1
        assert await manager.get_active_sessions() == 1
        stats = manager.stats()
        assert stats["calls"]["release"]["errors"] == 0
    finally:
        await manager.close()
        await other.close()


async def test_own_provider_example_batch_fails_one_message_only(
    sqlite_provider: Any, tmp_path: pathlib.Path
) -> None:
    _, cls = sqlite_provider
    provider = cls()
    await provider.dispatch(Init(60, str(tmp_path / "s.db")))
    sid = "a" * 32
    try:
        outcomes = await provider.handle_batch([
            Release(sid, Changes(set={"x": 1}, create=True), 60),
            EncodeCookie(sid, {}, 60),  # not a cookie provider: fails alone
            Read(sid),
            Release("b" * 32, Changes(set={"y": 2}), 60),  # not created: no resurrection
            Read("b" * 32),
        ])
        assert outcomes[0] is None
        assert isinstance(outcomes[1], NotImplementedError)
        assert outcomes[2] == {"x": 1}
        assert outcomes[3] is None and outcomes[4] is None
        provider.db.execute("UPDATE session SET expires = 0 WHERE sid = ?", (sid,))
        assert await provider.session_read(sid) is None, "an expired record was served"
        assert await provider.session_all() == 0
        await provider.handle_batch([GC()])
        assert provider.db.execute("SELECT COUNT(*) FROM session").fetchone()[0] == 0
    finally:
        await provider.session_close()


# ---------------------------------------------------------------- every Python block of the docs runs


def _doc_pages() -> list[tuple[pathlib.Path, list[str]]]:
    """Every ``.rst`` page of the docs (not the build output) with its lines."""
    return [
        (page, page.read_text(encoding="utf-8").splitlines())
        for page in sorted(DOCS.rglob("*.rst"))
        if "_build" not in page.parts
    ]


def _python_blocks() -> list[tuple[str, int, str]]:
    """``(page, line, code)`` of every ``.. code-block:: python`` in the docs."""
    blocks: list[tuple[str, int, str]] = []
    for page, lines in _doc_pages():
        i = 0
        while i < len(lines):
            if lines[i].strip() in (".. code-block:: python", ".. code-block:: python3"):
                start = i + 1
                while start < len(lines) and lines[start].strip().startswith(":"):
                    start += 1  # directive options
                body: list[str] = []
                j = start
                while j < len(lines) and (not lines[j].strip() or lines[j].startswith("   ")):
                    body.append(lines[j][3:])
                    j += 1
                code = "\n".join(body).strip("\n")
                blocks.append((str(page.relative_to(DOCS)), i + 1, code))
                i = j
            else:
                i += 1
    return blocks


PYTHON_BLOCKS = _python_blocks()


def test_the_docs_have_python_blocks_and_every_one_is_collected() -> None:
    assert len(PYTHON_BLOCKS) >= 15, [p for p, _, _ in PYTHON_BLOCKS]


@pytest.mark.parametrize(
    ("page", "line", "code"), PYTHON_BLOCKS, ids=[f"{p}:{n}" for p, n, _ in PYTHON_BLOCKS]
)
async def test_every_python_block_of_the_docs_runs(page: str, line: int, code: str, tmp_path: Any) -> None:
    """Each block runs (top-level ``await`` allowed) with the names the docs assume in scope.

    Defining a handler class runs its definition, not its methods; a block that
    builds a manager builds it (without connecting); the admin calls run
    against a started memory manager holding one session.
    """
    import ast
    import datetime
    import os
    import types
    import warnings

    import tornado.websocket
    from cryptography.fernet import Fernet

    from gosession_tornado import Session, testing

    manager = SessionManager("memory", cookie_name="sid")
    await manager.start()
    made = await testing.make_session(manager, {"user": "ann"})
    key = Fernet.generate_key().decode()
    namespace: dict[str, Any] = {
        "asyncio": asyncio, "datetime": datetime, "tornado": tornado, "SessionManager": SessionManager,
        "SessionMixin": SessionMixin, "Session": Session, "handlers": [], "manager": manager,
        "m": SessionManager("memory"), "m2": SessionManager("memory", cookie_name="prefs"),
        "sid": made.session_id, "fernet_key": key, "PREFS_KEY": key, "OLD_KEY": key,
        "__name__": "docs_example",
        # fragments written as a handler method's body see a fresh session as ``self.session``
        "self": types.SimpleNamespace(session=manager.fresh_session(None)),
    }
    assert tornado.websocket  # imported for blocks that subclass WebSocketHandler
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative paths a block names ("./tmp") land in a scratch directory
    try:
        compiled = compile(code, f"{page}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        with warnings.catch_warnings():
            # beego's long form names options it accepts but ignores, with a UserWarning
            warnings.simplefilter("ignore", UserWarning)
            result = eval(compiled, namespace)  # noqa: S307 - the docs' own examples
            if asyncio.iscoroutine(result):
                await asyncio.wait_for(result, 20)
    finally:
        os.chdir(cwd)
        await manager.close()


async def test_recipes_example() -> None:
    import tornado.httpclient
    import tornado.websocket

    recipes = _load(DOCS / "examples" / "recipes.py")
    manager = SessionManager("memory")
    async with _serve_app(recipes.make_app(manager)) as client:
        # anonymous: reading stores nothing; writing before consent is refused
        assert (await client.fetch("/cart")).body == b'{"items": []}'
        assert "gosessionid" not in client.cookies
        assert (await client.fetch("/cart", method="POST", body="item=tea")).code == 409
        assert "gosessionid" not in client.cookies
        assert (await client.fetch("/consent", method="POST", body="")).code == 200
        assert "gosessionid" in client.cookies  # the first write stores the session
        assert (await client.fetch("/cart", method="POST", body="item=tea")).code == 200
        assert (await client.fetch("/cart")).body == b'{"items": ["tea"]}'
        # the current user, @authenticated, a prepare() override
        redirected = await client.fetch("/account")
        assert redirected.code == 302 and redirected.headers["Location"].startswith("/login")
        assert (await client.fetch("/admin")).code == 403
        before = client.cookies["gosessionid"]
        assert (await client.fetch("/login", method="POST", body="user=admin")).code == 302
        assert client.cookies["gosessionid"] != before  # regenerated at login
        assert (await client.fetch("/account")).body == b"hello admin"
        assert (await client.fetch("/admin")).body == b"admin area"
        assert (await client.fetch("/cart")).body == b'{"items": ["tea"]}'  # kept across the login
        # a WebSocket: the session read at the handshake, changes saved explicitly
        url = client.base_url.replace("http://", "ws://") + "/chat"
        cookie = f"gosessionid={client.cookies['gosessionid']}"
        ws = await tornado.websocket.websocket_connect(
            tornado.httpclient.HTTPRequest(url, headers={"Cookie": cookie})
        )
        ws.write_message("hi")
        assert await ws.read_message() == "admin: hi"
        ws.close()
        stored = await manager.read(client.cookies["gosessionid"])
        assert stored is not None and stored["last_message"] == "hi"
        # no session: the WebSocket is closed with a reason
        anonymous = await tornado.websocket.websocket_connect(url)
        assert await anonymous.read_message() is None
        assert anonymous.close_code == 4001
        anonymous.close()


#: Widest code line the theme's text column shows without sideways scrolling.
CODE_WIDTH = 88


def test_code_blocks_fit_the_page_without_sideways_scrolling() -> None:
    too_wide: list[tuple[str, int, int]] = []
    for page, lines in _doc_pages():
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            if line.startswith(".. code-block::") or (line.endswith("::") and not line.startswith("..")):
                j = i + 1
                while j < len(lines) and (not lines[j].strip() or lines[j].startswith("   ")):
                    if len(lines[j]) - 3 > CODE_WIDTH:
                        too_wide.append((str(page.relative_to(DOCS)), j + 1, len(lines[j]) - 3))
                    j += 1
                i = j
                continue
            included = re.match(r"\.\. literalinclude:: (\S+)", line)
            if included and included.group(1).endswith(".py"):
                source = (page.parent / included.group(1)).resolve()
                for n, text in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
                    if len(text) > CODE_WIDTH:
                        too_wide.append((source.name, n, len(text)))
            i += 1
    assert sorted(set(too_wide)) == [], f"code lines wider than {CODE_WIDTH} characters"
