"""The maintenance command line, ``python -m gosession_tornado``, run as a real subprocess.

Sessions are made in this process with :mod:`gosession_tornado.testing` on a
store the subprocess can see too: a file directory (``tmp_path``), Redis under
this test's own ``key_prefix``, and MariaDB/PostgreSQL tables of this test's
own (the contract-suite factories make and drop them). Under ``CI=true`` a
server that does not answer fails the test instead of skipping it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import decimal
import io
import json
import math
import os
import pathlib
import secrets
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from cryptography.fernet import Fernet

from gosession_tornado import SessionManager, register, unregister
from gosession_tornado.cli import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    json_value,
    main,
)
from gosession_tornado.testing import make_session, read_session

from .conftest import ManagerFactory, free_port, open_factory
from .support import DictStore, require_provider

ROOT = pathlib.Path(__file__).resolve().parent.parent
STORES = ["file", "redis", "mysql", "postgresql"]


async def run_cli(
    *argv: str, cwd: pathlib.Path | None = None, stdin: str | None = None,
    env: dict[str, str] | None = None, timeout: float = 60,
) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``python -m gosession_tornado *argv``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gosession_tornado", *argv, cwd=cwd or ROOT,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def assert_one_line_error(err: str, *needles: str) -> None:
    """*err* is one ``gosession_tornado: error:`` line (warnings aside) holding every needle."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if not line.startswith("gosession_tornado: warning:")]
    assert len(errors) == 1 and errors[0].startswith("gosession_tornado: error: "), err
    for needle in needles:
        assert needle in errors[0], (needle, err)


class Store:
    """One store under test: the factory that makes managers on it, and its CLI arguments."""

    def __init__(self, factory: ManagerFactory) -> None:
        self.factory = factory
        self.name = factory.name

    def argv(self, **overrides: Any) -> list[str]:
        config = self.factory.config(**overrides)
        provider = config.pop("provider")
        return ["--provider", provider, "--config", json.dumps(config)]

    async def manager(self, **overrides: Any) -> SessionManager:
        return await self.factory(**overrides)


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Store]:
    """Each shared store, its server required (fails under CI=true), cleaned up afterwards."""
    require_provider(request.param)
    async with open_factory(request.param, tmp_path) as factory:
        yield Store(factory)


RICH = {
    "user": "ann",
    "n": 3,
    "ratio": 0.5,
    "none": None,
    "price": decimal.Decimal("19.90"),
    "raw": b"\x00\xffhi",
    "at": datetime.datetime(2026, 5, 1, 12, 0, tzinfo=datetime.timezone.utc),
    "day": datetime.date(2026, 5, 1),
    "tags": {"b", "a"},
    "pair": (1, "x"),
    "id": uuid.UUID("6f1c2a4e-3b7d-4c8e-9f10-112233445566"),
    7: "seven",
    "$weird": [1.5, None, True],
    "nested": {"k": (1,), 2: frozenset({3})},
    "ünïcode": "é",
}
RICH_JSON = {
    "user": "ann",
    "n": 3,
    "ratio": 0.5,
    "none": None,
    "price": {"$decimal": "19.90"},
    "raw": {"$bytes": base64.b64encode(b"\x00\xffhi").decode()},
    "at": {"$datetime": "2026-05-01T12:00:00+00:00"},
    "day": {"$date": "2026-05-01"},
    "tags": {"$set": ["a", "b"]},
    "pair": {"$tuple": [1, "x"]},
    "id": {"$uuid": "6f1c2a4e-3b7d-4c8e-9f10-112233445566"},
    "$map": [[7, "seven"]],
    "$$weird": [1.5, None, True],
    "nested": {"k": {"$tuple": [1]}, "$map": [[2, {"$frozenset": [3]}]]},
    "ünïcode": "é",
}


# ---------------------------------------------------------------- every shared store


async def test_count_show_destroy_stats(store: Store) -> None:
    manager = await store.manager()
    rich = await make_session(manager, RICH)
    empty = await make_session(manager)
    argv = store.argv()

    code, out, err = await run_cli("count", *argv)
    assert (code, out, err) == (EXIT_OK, "2\n", "")

    code, out, err = await run_cli("show", rich.session_id, *argv)
    assert code == EXIT_OK, err
    assert json.loads(out) == RICH_JSON
    assert err == ""
    code, out, _ = await run_cli("show", empty.session_id, *argv)
    assert (code, json.loads(out)) == (EXIT_OK, {})
    code, out, _ = await run_cli("show", rich.session_id, "--format", "python", *argv)
    assert code == EXIT_OK
    assert "Decimal('19.90')" in out and "b'\\x00\\xffhi'" in out and "7: 'seven'" in out

    unknown = manager.new_sid()
    code, out, err = await run_cli("show", unknown, *argv)
    assert (code, out) == (EXIT_NOT_FOUND, "")
    assert_one_line_error(err, "no session", unknown[:8])
    assert unknown not in err, "a whole session id was printed"

    code, out, err = await run_cli("destroy", rich.session_id, *argv)
    assert (code, out, err) == (EXIT_OK, "", "")
    assert await manager.read(rich.session_id) is None
    assert await read_session(manager, rich.cookie) is None
    code, _, err = await run_cli("destroy", rich.session_id, *argv)
    assert code == EXIT_NOT_FOUND
    assert_one_line_error(err, "no session")
    code, _, err = await run_cli("destroy", rich.session_id, "--missing-ok", *argv)
    assert (code, err) == (EXIT_OK, "")
    assert await manager.read(empty.session_id) == {}, "destroy took another session"

    code, out, err = await run_cli("stats", *argv)
    assert code == EXIT_OK, err
    stats = json.loads(out)
    assert stats["provider"] == store.name
    assert stats["active_sessions"] == 1
    assert stats["started"] is True


async def test_hashed_ids_take_the_real_id(store: Store) -> None:
    manager = await store.manager(hash_session_ids=True)
    made = await make_session(manager, {"user": "bob"})
    argv = store.argv(hash_session_ids=True)
    code, out, err = await run_cli("show", made.session_id, *argv)
    assert (code, json.loads(out)) == (EXIT_OK, {"user": "bob"}), err
    # Without hash_session_ids the command looks for the id in the clear, which is not stored.
    code, _, _ = await run_cli("show", made.session_id, *store.argv())
    assert code == EXIT_NOT_FOUND
    code, _, err = await run_cli("destroy", made.session_id, *argv)
    assert code == EXIT_OK, err
    assert await manager.read(made.session_id) is None


async def raw_records(store: Store, manager: SessionManager, sid: str) -> int:
    """How many records the store itself still holds for *sid* (expired ones included)."""
    key = manager._key(sid)
    if store.name == "file":
        save_path = pathlib.Path(manager.config.provider_config)
        return int((save_path / key[0] / key[1] / key).exists())
    table = f"session_{store.factory.unique}"  # generated by the factory, never user input
    if store.name == "mysql":
        query = f"SELECT COUNT(*) FROM `{table}` WHERE session_key = %s"  # noqa: S608
        rows = await store.factory.module.sql(query, (key,))
    else:
        query = f'SELECT COUNT(*) FROM "{table}" WHERE session_key = $1'  # noqa: S608
        rows = await store.factory.module.sql(query, key)
    return int(rows[0][0])


async def test_gc_removes_expired_records(store: Store) -> None:
    manager = await store.manager()
    live = await make_session(manager, {"a": 1})
    short = await make_session(manager, {"b": 2}, expiry=1)
    argv = store.argv()
    if store.name == "redis":  # Redis expires keys itself: its GC pass is a no-op that succeeds
        code, out, err = await run_cli("gc", *argv)
        assert (code, out, err) == (EXIT_OK, "", "")
        return
    assert await raw_records(store, manager, short.session_id) == 1
    await asyncio.sleep(2.2)
    code, out, err = await run_cli("gc", *argv)
    assert (code, out, err) == (EXIT_OK, "", "")
    assert await raw_records(store, manager, short.session_id) == 0
    assert await raw_records(store, manager, live.session_id) == 1
    assert await manager.read(live.session_id) == {"a": 1}


# ---------------------------------------------------------------- configuration forms


async def test_config_from_a_file_stdin_and_relative_paths(tmp_path: pathlib.Path) -> None:
    manager = SessionManager("file", {"provider_config": str(tmp_path / "sessions")})
    try:
        made = await make_session(manager, {"user": "cy"})
    finally:
        await manager.close()
    beego = '{"cookieName":"gosessionid","gclifetime":3600,"ProviderConfig":"./sessions"}'
    (tmp_path / "session.json").write_text(beego)
    for argv, stdin in (
        (["--config", beego], None),  # relative to the command's working directory
        (["--config", "@session.json"], None),
        (["--config", f"@{tmp_path / 'session.json'}"], None),
        (["--config", "@-"], beego),
    ):
        code, out, err = await run_cli("show", made.session_id, "--provider", "file", *argv,
                                       cwd=tmp_path, stdin=stdin)
        assert (code, json.loads(out or "null"), err) == (EXIT_OK, {"user": "cy"}, ""), argv
    # The options may come before the command too; the provider may come from the config.
    with_provider = json.dumps({"provider": "file", "provider_config": "./sessions"})
    code, out, _ = await run_cli("--config", with_provider, "count", cwd=tmp_path)
    assert (code, out) == (EXIT_OK, "1\n")


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--provider", "file", "--config", '{"gclifetime": "soon"}'], ["'gclifetime'", "integer"]),
        (["--provider", "file", "--config", '{"cookie_name": "bad name"}'], ["'cookie_name'"]),
        (["--provider", "file", "--config", '{"gclifetime": '], ["--config is not valid JSON"]),
        (["--provider", "file", "--config", "@missing.json"], ["cannot read config file 'missing.json'"]),
        (["--provider", "file", "--config", "@list.json"], ["must hold a JSON object"]),
        (["--provider", "file", "--config", "session.json"], ["@session.json"]),
        (["--provider", "file", "--config", '{"ProviderConfig": "/proc/no/such"}'], ["provider_config"]),
        (["--provider", "nosuch"], ["unknown session provider 'nosuch'"]),
        (["--config", '{"cookie_name": "x"}'], ["give --provider NAME"]),
        (["--provider", "redis", "--config", '{"provider": "file"}'], ["--provider 'redis'", "'file'"]),
        (["--provider", "memory"], ["'memory' provider keeps its sessions inside the application"]),
        (["--provider", "file", "--import", "no_such_module_here"], ["--import no_such_module_here"]),
    ],
)
async def test_bad_configuration_exits_2_with_one_line_naming_it(
    tmp_path: pathlib.Path, argv: list[str], needles: list[str]
) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "session.json").write_text("{}")
    code, out, err = await run_cli("count", *argv, cwd=tmp_path)
    assert (code, out) == (EXIT_USAGE, "")
    assert_one_line_error(err, *needles)


async def test_provider_dsn_error_names_provider_config() -> None:
    require_provider("mysql")
    code, _, err = await run_cli("gc", "--provider", "mysql", "--config", '{"ProviderConfig": "garbage"}')
    assert code == EXIT_USAGE
    assert_one_line_error(err, "provider_config", "DSN")


async def test_unknown_key_warns_with_the_closest_key_and_still_runs(tmp_path: pathlib.Path) -> None:
    config = json.dumps({"ProviderConfig": str(tmp_path), "cookie_nmae": "sid"})
    code, out, err = await run_cli("count", "--provider", "file", "--config", config)
    assert (code, out) == (EXIT_OK, "0\n")
    assert err.splitlines() == [
        "gosession_tornado: warning: unknown session config key 'cookie_nmae' ignored; "
        "did you mean 'cookie_name'?"
    ]


async def test_usage_errors_and_help() -> None:
    code, out, _ = await run_cli("--help")
    assert code == EXIT_OK
    for word in ("gc", "count", "show", "destroy", "stats", "--provider", "--config", "exit status"):
        assert word in out
    for command, options in {
        "gc": ["--timeout"], "count": ["--config"], "show": ["SID", "--format", "$datetime"],
        "destroy": ["SID", "--missing-ok"], "stats": ["milliseconds"],
    }.items():
        code, out, _ = await run_cli(command, "--help")
        assert code == EXIT_OK, command
        for option in [*options, "--provider", "3  the session store is unavailable"]:
            assert option in out, (command, option)
    code, _, err = await run_cli()
    assert code == EXIT_USAGE and "required: COMMAND" in err
    code, _, err = await run_cli("show", "--provider", "file")
    assert code == EXIT_USAGE and "SID" in err
    code, _, err = await run_cli("vacuum", "--provider", "file")
    assert code == EXIT_USAGE and "invalid choice" in err
    code, _, err = await run_cli("gc", "--provider", "file", "--timeout", "0")
    assert code == EXIT_USAGE and "--timeout" in err


async def test_malformed_id_exits_1(tmp_path: pathlib.Path) -> None:
    argv = ["--provider", "file", "--config", json.dumps({"ProviderConfig": str(tmp_path)})]
    code, _, err = await run_cli("show", "../../etc/passwd", *argv)
    assert code == EXIT_NOT_FOUND
    assert_one_line_error(err, "not a session id of this configuration", "32 lowercase hex digits")
    code, _, err = await run_cli("destroy", "nothex", "--missing-ok", *argv)
    assert (code, err) == (EXIT_OK, "")


# ---------------------------------------------------------------- store down


@pytest.mark.parametrize("provider", ["redis", "mysql", "postgresql"])
async def test_store_down_exits_3_within_the_timeout(provider: str) -> None:
    require_provider(provider)
    port = free_port()  # nothing listens there
    provider_config = {
        "redis": f"127.0.0.1:{port},10,",
        "mysql": f"root@tcp(127.0.0.1:{port})/test",
        "postgresql": f"postgresql://postgres@127.0.0.1:{port}/test",
    }[provider]
    started = time.monotonic()
    code, out, err = await run_cli(
        "count", "--provider", provider, "--config", json.dumps({"ProviderConfig": provider_config}),
        "--timeout", "2",
    )
    assert (code, out) == (EXIT_UNAVAILABLE, "")
    assert_one_line_error(err, "unavailable", f"127.0.0.1:{port}")
    assert time.monotonic() - started < 15


# ---------------------------------------------------------------- cookie provider


async def test_cookie_provider_show_decrypts_a_cookie_value_count_and_destroy_refused() -> None:
    key = Fernet.generate_key().decode()
    config = {"cookie_name": "gosessionid", "provider_config": {"keys": [key]}}
    manager = SessionManager("cookie", config)
    try:
        made = await make_session(manager, {"user": "dee", "at": datetime.date(2026, 1, 2)})
    finally:
        await manager.close()
    argv = ["--provider", "cookie", "--config", json.dumps(config)]
    code, out, err = await run_cli("show", made.cookie_value, *argv)
    assert (code, json.loads(out), err) == (EXIT_OK, {"user": "dee", "at": {"$date": "2026-01-02"}}, "")
    value = made.cookie_value
    tampered = value[:-6] + ("A" if value[-6] != "A" else "B") + value[-5:]
    code, _, err = await run_cli("show", tampered, *argv)
    assert code == EXIT_NOT_FOUND
    assert "Traceback" not in err and "no session" in err
    other_key = json.dumps({**config, "provider_config": {"keys": [Fernet.generate_key().decode()]}})
    code, _, _ = await run_cli("show", made.cookie_value, "--provider", "cookie", "--config", other_key)
    assert code == EXIT_NOT_FOUND
    for command in ("count", "destroy"):
        args = [command] + ([made.cookie_value] if command == "destroy" else [])
        code, _, err = await run_cli(*args, *argv)
        assert code == EXIT_USAGE
        assert_one_line_error(err, "keeps sessions in the browsers' cookies")
    code, out, err = await run_cli("gc", *argv)
    assert (code, out, err) == (EXIT_OK, "", "")


# ---------------------------------------------------------------- custom providers, failures


async def test_import_registers_a_custom_provider(tmp_path: pathlib.Path) -> None:
    (tmp_path / "my_sessions.py").write_text(textwrap.dedent("""
        from gosession_tornado import register
        from tests.support import DictStore

        register("dict_store", DictStore)
    """))
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    code, out, err = await run_cli("count", "--import", "my_sessions", "--provider", "dict_store", env=env)
    assert (code, out, err) == (EXIT_OK, "0\n", "")


class Broken(DictStore):
    """A provider whose count fails with a bug."""

    async def session_all(self) -> int:
        raise RuntimeError("bug in the provider")


@pytest.fixture
def broken() -> Any:
    name = f"broken_{secrets.token_hex(4)}"
    register(name, Broken)
    yield name
    unregister(name)


def test_unexpected_error_exits_4_and_debug_shows_the_traceback(broken: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main(["count", "--provider", broken], out=out, err=err) == EXIT_FAILED
    assert out.getvalue() == ""
    assert_one_line_error(err.getvalue(), "unexpected RuntimeError: bug in the provider", "--debug")
    err = io.StringIO()
    assert main(["count", "--provider", broken, "--debug"], out=out, err=err) == EXIT_FAILED
    assert "Traceback" in err.getvalue() and "bug in the provider" in err.getvalue()


class CannotCount(DictStore):
    """A provider whose store cannot count its sessions (as memcached)."""

    async def session_all(self) -> int:
        raise NotImplementedError("this store cannot count its sessions")


def test_a_command_the_provider_cannot_answer_exits_2() -> None:
    name = f"cannot_count_{secrets.token_hex(4)}"
    register(name, CannotCount)
    try:
        out, err = io.StringIO(), io.StringIO()
        assert main(["count", "--provider", name], out=out, err=err) == EXIT_USAGE
        assert_one_line_error(err.getvalue(), "cannot count its sessions")
    finally:
        unregister(name)


def test_main_in_process_counts(tmp_path: pathlib.Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    config = json.dumps({"ProviderConfig": str(tmp_path)})
    assert main(["count", "--provider", "file", "--config", config], out=out, err=err) == EXIT_OK
    assert (out.getvalue(), err.getvalue()) == ("0\n", "")


# ---------------------------------------------------------------- the JSON form


def test_json_value_tags_every_type_json_cannot_hold() -> None:
    assert json_value(RICH) == RICH_JSON
    assert json.loads(json.dumps(json_value(RICH))) == RICH_JSON
    assert json_value({"1": "a", 1: "b"}) == {"1": "a", "$map": [[1, "b"]]}
    assert json_value({(1, 2): "t"}) == {"$map": [[{"$tuple": [1, 2]}, "t"]]}
    assert json_value({"$map": 1, "$$x": 2}) == {"$$map": 1, "$$$x": 2}
    assert json_value(datetime.time(9, 30)) == {"$time": "09:30:00"}
    assert json_value(datetime.datetime(2026, 1, 1, 8)) == {"$datetime": "2026-01-01T08:00:00"}
    assert json_value([math.nan, math.inf, -math.inf]) == [
        {"$float": "nan"}, {"$float": "inf"}, {"$float": "-inf"}
    ]
    assert json_value(msgpack.ExtType(42, b"\x01")) == {"$ext": [42, "AQ=="]}
    assert json_value({3, "a", 1}) == {"$set": ["a", 1, 3]}  # a stable order across types (by JSON text)
    assert json_value(2**63 - 1) == 2**63 - 1
