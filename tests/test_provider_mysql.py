"""The mysql provider's own tests: its config forms (Go DSN, URL, dict, beego's JSON), TLS,
beego's schema and DDL, whole-second expiry. What it shares with the postgresql provider
(storage, concurrency, batching proof, compare-and-swap releases, outages) runs in
``test_provider_sql.py`` over both.

Every test that touches the shared MariaDB uses its own table ``session_t<hex>``
and drops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import pytest

from gosession_tornado import ConfigError, SessionManager
from gosession_tornado.provider import Read, Release
from gosession_tornado.providers.sql.mysql_dsn import MySQLSettings, parse_mysql_config

from .conftest import fail_or_skip
from .sql_helpers import MYSQL_DIALECT as DB
from .sql_helpers import check_too_large_fails_alone, round_trip
from .support import ask, create

SOCKET = "/run/mysqld/mysqld.sock"
PORT, USER, PASSWORD, DATABASE = DB.port, DB.user, DB.password, DB.database
dsn, sql, manager, raw_row, provider_of = DB.dsn, DB.sql, DB.manager, DB.raw_row, DB.provider_of
table = DB.table_fixture()


# ---------------------------------------------------------------- config forms (no server)


def test_go_dsn_with_every_part() -> None:
    s = parse_mysql_config(
        "ann:p@ss:w/rd@tcp(db.example.com:3307)/app?table=web_sessions&timeout=1500ms"
        "&charset=utf8&maxsize=5&minsize=0&pool_recycle=30s"
    )
    assert (s.user, s.password, s.host, s.port) == ("ann", "p@ss:w/rd", "db.example.com", 3307)
    assert (s.database, s.table, s.charset) == ("app", "web_sessions", "utf8")
    assert (s.connect_timeout, s.maxsize, s.minsize) == (1.5, 5, 0)
    assert s.pool_recycle == 30.0
    assert s.unix_socket is None
    assert "p@ss" not in repr(s)
    assert s.where == "db.example.com:3307"


@pytest.mark.parametrize(
    ("text", "host", "port", "socket_path", "user"),
    [
        ("/test", "127.0.0.1", 3306, None, ""),  # go-sql-driver defaults: tcp(127.0.0.1:3306)
        ("root@/test", "127.0.0.1", 3306, None, "root"),
        ("root@tcp/test", "127.0.0.1", 3306, None, "root"),
        ("root@tcp(dbhost)/test", "dbhost", 3306, None, "root"),
        ("root:@tcp(10.0.0.2:3310)/test", "10.0.0.2", 3310, None, "root"),
        ("root@tcp([::1]:3307)/test", "::1", 3307, None, "root"),
        ("root@unix(/run/mysqld/mysqld.sock)/test", "127.0.0.1", 3306, "/run/mysqld/mysqld.sock", "root"),
        ("root@unix/test", "127.0.0.1", 3306, "/tmp/mysql.sock", "root"),
    ],
)
def test_go_dsn_addresses_and_defaults(
    text: str, host: str, port: int, socket_path: str | None, user: str
) -> None:
    s = parse_mysql_config(text)
    assert (s.host, s.port, s.unix_socket, s.user, s.database) == (host, port, socket_path, user, "test")
    assert s.table == "session"  # beego's


def test_go_dsn_system_variables_and_ignored_driver_params() -> None:
    s = parse_mysql_config(
        "root@tcp(h)/d?parseTime=true&loc=Local&sql_mode=%27TRADITIONAL%27&wait_timeout=600&readTimeout=1s"
    )
    assert s.variables == (("sql_mode", "'TRADITIONAL'"), ("wait_timeout", "600"))


def test_go_dsn_query_may_hold_a_slash() -> None:
    s = parse_mysql_config("root@tcp(h)/d?time_zone=%27Europe/Paris%27")
    assert s.database == "d"
    assert s.variables == (("time_zone", "'Europe/Paris'"),)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "mysql://ann:p%40ss%3Aw@db:3307/app?table=t1&pool_size=4&tls=skip-verify",
            {"user": "ann", "password": "p@ss:w", "host": "db", "port": 3307, "database": "app",
             "table": "t1", "maxsize": 4, "tls": "skip-verify"},
        ),
        ("mysql://root@/test", {"host": "127.0.0.1", "port": 3306, "user": "root", "database": "test"}),
        (
            "mariadb://root@localhost/test?unix_socket=/run/mysqld/mysqld.sock",
            {"unix_socket": "/run/mysqld/mysqld.sock", "database": "test"},
        ),
        ("mysql+aiomysql://u:p@h:1/d?connect_timeout=2", {"connect_timeout": 2.0, "port": 1}),
    ],
)
def test_url_forms(url: str, expected: dict[str, Any]) -> None:
    s = parse_mysql_config(url)
    assert {k: getattr(s, k) for k in expected} == expected


def test_dict_and_json_forms() -> None:
    s = parse_mysql_config({"dsn": "root@tcp(127.0.0.1:3306)/test?table=a", "table": "b", "maxsize": 3})
    assert (s.user, s.database, s.table, s.maxsize) == ("root", "test", "b", 3)  # keys override the DSN
    s = parse_mysql_config(
        {"host": "h", "port": 3307, "user": "u", "password": "p", "database": "d",
         "variables": {"wait_timeout": 60, "sql_mode": "'ANSI'"}}
    )
    assert (s.host, s.port, s.user, s.password, s.database) == ("h", 3307, "u", "p", "d")
    assert s.variables == (("sql_mode", "'ANSI'"), ("wait_timeout", "60"))
    s = parse_mysql_config('{"url": "mysql://root@h/d", "Table": "web", "connectTimeout": "250ms"}')
    assert (s.host, s.table, s.connect_timeout) == ("h", "web", 0.25)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ("", "provider_config"),
        ("username:password@protocol(address)/dbname?param=value", "provider_config"),  # the seed's template
        ("root@tcp(127.0.0.1:3306)", "provider_config"),  # no '/dbname'
        ("root@tcp(127.0.0.1:3306/test", "provider_config"),  # unclosed address
        ("root@tcp(h:99999)/test", "port"),
        ("root@tcp(h)/", "provider_config"),  # no database
        ("root@tcp(h)/test?table=bad-name", "table"),
        ("root@tcp(h)/test?table=x%3BDROP%20TABLE%20y", "table"),
        ("root@tcp(h)/test?table=" + "a" * 65, "table"),
        ("root@tcp(h)/test?table=1abc", "table"),
        ("root@tcp(h)/test?autocommit=0", "autocommit"),
        ("root@tcp(h)/test?tx_isolation=SERIALIZABLE", "tx_isolation"),
        ("root@tcp(h)/test?wait_timeout=1;DROP", "wait_timeout"),
        ("root@tcp(h)/test?sql_mode=%27a%27%27b%27", "sql_mode"),
        ("root@tcp(h)/test?timeout=soon", "timeout"),
        ("root@tcp(h)/test?tls=maybe", "tls"),
        ("root@tcp(h)/test?maxsize=0", "maxsize"),
        ("root@tcp(h)/test?minsize=5&maxsize=2", "minsize"),
        ("root@tcp(h)/test?novalue", "novalue"),
        ("postgresql://u@h/db", "provider_config"),
        ("mysql://u@h:notaport/db", "provider_config"),
        ("{not json", "provider_config"),
        ({"host": "h", "database": "d", "colour": "red"}, "colour"),
        ({"host": "h"}, "provider_config"),
        ({"database": "d", "port": True}, "port"),
        ({"database": "d", "variables": {"x": "a b"}}, "x"),
        (42, "provider_config"),
    ],
)
def test_bad_configs_raise_config_error_naming_the_part(config: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_mysql_config(config)
    assert info.value.key == key, str(info.value)


def test_bad_dsn_fails_when_the_manager_is_built() -> None:
    with pytest.raises(ConfigError, match="tcp"):
        SessionManager("mysql", "gosessionid", 3600, "username:password@protocol(address)/dbname?param=value")


def test_settings_defaults() -> None:
    s = MySQLSettings()
    assert (s.host, s.port, s.table, s.charset, s.minsize, s.maxsize, s.tls) == (
        "127.0.0.1", 3306, "session", "utf8mb4", 1, 10, "false",
    )


# ---------------------------------------------------------------- config forms against the server


@pytest.mark.parametrize("form", ["go_dsn", "seed_json", "url", "dict", "unix_socket"])
async def test_every_config_form_reaches_the_server(table: str, form: str) -> None:
    cred = f"{USER}:{PASSWORD}" if PASSWORD else USER
    args: tuple[Any, ...]
    if form == "go_dsn":
        args = ("mysql", "sid", 3600, dsn(table))
    elif form == "seed_json":  # seed 001: the DSN inside beego's JSON config
        args = ("mysql", json.dumps({"cookieName": "sid", "gclifetime": 3600, "ProviderConfig": dsn(table)}))
    elif form == "url":
        args = ("mysql", {"provider_config": f"mysql://{cred}@127.0.0.1:{PORT}/{DATABASE}?table={table}"})
    elif form == "dict":
        args = ("mysql", {"provider_config": {"host": "127.0.0.1", "port": PORT, "user": USER,
                                              "password": PASSWORD, "database": DATABASE, "table": table}})
    else:
        if not os.path.exists(SOCKET) or PORT != 3306:
            fail_or_skip(f"mysql server socket {SOCKET} is not there (unix-socket DSN form)")
        args = ("mysql", {"provider_config": f"{cred}@unix({SOCKET})/{DATABASE}?table={table}"})
    async with SessionManager(*args) as m:
        await round_trip(m, form=form)
    assert await DB.row_count(table) == 1


async def test_tls_required_is_never_silently_unencrypted(table: str) -> None:
    """tls=true/skip-verify: encrypted or a ConfigError; only tls=preferred may fall back."""
    (_, have_ssl), = await sql("SHOW VARIABLES LIKE 'have_ssl'")
    offers_tls = str(have_ssl).upper() == "YES"
    for mode in ("skip-verify", "true"):
        m = SessionManager("mysql", {"provider_config": dsn(table, tls=mode)})
        try:
            if offers_tls and mode == "skip-verify":
                await m.start()
                conn = await provider_of(m)._pool.acquire()
                try:
                    assert conn._writer.get_extra_info("ssl_object") is not None
                finally:
                    await provider_of(m)._pool.release(conn)
            elif not offers_tls:
                with pytest.raises(ConfigError, match="does not offer TLS") as info:
                    await m.start()
                assert info.value.key == "tls"
        finally:
            await m.close()
    async with SessionManager("mysql", {"provider_config": dsn(table, tls="preferred")}) as m:
        await round_trip(m, a=1)


# ---------------------------------------------------------------- schema and expiry


async def test_schema_is_beegos_with_a_bigger_blob(table: str) -> None:
    async with manager(table):
        pass
    cols = await sql(
        "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_KEY, CHARACTER_MAXIMUM_LENGTH "
        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
        "ORDER BY ORDINAL_POSITION",
        (DATABASE, table),
    )
    by_name = {c[0]: c[1:] for c in cols}
    assert list(by_name) == ["session_key", "session_data", "session_expiry"]
    assert by_name["session_key"] == ("char(64)", "NO", "PRI", 64)
    assert by_name["session_data"][0] == "mediumblob"  # beego: blob (64 KiB)
    assert by_name["session_expiry"][0].startswith("int") and "unsigned" in by_name["session_expiry"][0]
    assert by_name["session_expiry"][1] == "NO"
    engine = await sql(
        "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
        (DATABASE, table),
    )
    assert engine[0][0] == "InnoDB"


async def test_a_table_made_with_beegos_own_ddl_works(table: str, caplog: pytest.LogCaptureFixture) -> None:
    # The DDL from beego's session/mysql package documentation, verbatim but for the name.
    await sql(
        f"CREATE TABLE `{table}` (`session_key` char(64) NOT NULL, `session_data` blob, "
        "`session_expiry` int(11) unsigned NOT NULL, PRIMARY KEY (`session_key`)) "
        "ENGINE=MyISAM DEFAULT CHARSET=utf8"
    )
    async with manager(table) as m:
        assert "InnoDB" in caplog.text  # warned: MyISAM has no transactions
        p = provider_of(m)
        assert p.max_payload == 65535
        await check_too_large_fails_alone(m, 70000, "65535")


async def test_a_table_that_is_not_a_session_table_is_a_config_error(table: str) -> None:
    await sql(f"CREATE TABLE `{table}` (id INT PRIMARY KEY, session_data TEXT)")
    m = manager(table)
    with pytest.raises(ConfigError, match="session_key"):
        await m.start()
    await m.close()


async def test_expiry_is_rounded_down_never_served_late(table: str) -> None:
    async with manager(table) as m:
        for _ in range(5):
            sid = m.new_sid()
            written = time.time()
            await ask(m, Release(sid, create(a=1), 1))
            after = time.time()
            row = await raw_row(table, sid)
            assert row is not None
            assert row.expiry <= after + 1  # never past the last access + lifetime
            await asyncio.sleep(max(0.0, written + 1.05 - time.time()))
            assert await ask(m, Read(sid)) is None
