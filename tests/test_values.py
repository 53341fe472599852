"""gosession_tornado.values: the value parsers every configuration shares (issue 12).

One behaviour everywhere: these tests pin it, and the parametrized tests at
the end check that the provider parsers and the manager's configuration
really go through it (an integer refuses 10.9 in each of them).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest

from gosession_tornado import ConfigError, build_config
from gosession_tornado.providers.memcache import parse_memcache_config
from gosession_tornado.providers.redis.cluster import parse_cluster_config
from gosession_tornado.providers.redis.config import parse_redis_config
from gosession_tornado.providers.redis.sentinel import parse_sentinel_config
from gosession_tornado.providers.sql.mysql_dsn import parse_mysql_config
from gosession_tornado.providers.sql.postgresql_dsn import parse_postgresql_config
from gosession_tornado.values import (
    aliased_items,
    boolean,
    fail,
    integer,
    join_host_port,
    json_object,
    normalize_key,
    number,
    port,
    seconds,
    split_host_port,
    string,
    url_parts,
)

WHAT = "test provider_config item"


def _refused(parse: Any, value: Any, *args: Any, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(value, "k", WHAT, *args, **kwargs)
    assert info.value.key == "k"
    assert str(info.value).startswith(f"{WHAT} 'k' "), str(info.value)
    return info.value


# ---------------------------------------------------------------- keys and messages


def test_normalize_key() -> None:
    assert normalize_key("cookieLifeTime") == "cookielifetime"
    assert normalize_key("cookie_lifetime") == "cookielifetime"
    assert normalize_key("COOKIE-LIFETIME") == "cookielifetime"
    assert normalize_key(" db num ") == "dbnum"


def test_fail_names_the_key_in_one_style() -> None:
    error = fail("redis provider_config item", "poolsize", "must be an integer, got float 10.9")
    assert str(error) == "redis provider_config item 'poolsize' must be an integer, got float 10.9"
    assert error.key == "poolsize"


def test_aliased_items_warns_for_unknown_keys_and_refuses_two_spellings() -> None:
    aliases = {"poolsize": "poolsize", "pool": "poolsize", "db": "db"}
    config = "x provider_config"
    values, names = aliased_items({"Pool_Size": 5, "DB": 1}, aliases, config, known="poolsize, db")
    assert values == {"poolsize": 5, "db": 1}
    assert names == {"poolsize": "Pool_Size", "db": "DB"}
    with pytest.warns(UserWarning, match="unknown x provider_config key 'colour' ignored"):
        assert aliased_items({"colour": 1}, aliases, "x provider_config", known="poolsize") == ({}, {})
    with pytest.raises(ConfigError) as info:
        aliased_items({"pool": 1, "poolsize": 2}, aliases, "x provider_config", known="")
    assert info.value.key == "poolsize"
    with pytest.raises(ConfigError) as info:
        aliased_items({1: 1}, aliases, "x provider_config", known="")
    assert info.value.key == "provider_config"


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize(("value", "expected"), [(10, 10), (10.0, 10), ("10", 10), (" -3 ", -3), (0, 0)])
def test_integer_accepts(value: Any, expected: int) -> None:
    assert integer(value, "k", WHAT) == expected


@pytest.mark.parametrize(
    "value", [10.9, "10.9", True, False, "", "ten", None, [1], math.inf, math.nan, "1e3"]
)
def test_integer_refuses(value: Any) -> None:
    assert "must be an integer" in str(_refused(integer, value))


def test_integer_bounds_and_typed_values() -> None:
    assert "must be >= 1, got 0" in str(_refused(integer, 0, minimum=1))
    assert "must be <= 9, got 10" in str(_refused(integer, "10", maximum=9))
    assert integer(7.0, "k", WHAT, text=False) == 7
    _refused(integer, "7", text=False)


@pytest.mark.parametrize(("value", "expected"), [(2, 2.0), (2.5, 2.5), ("2.5", 2.5), (0, 0.0)])
def test_number(value: Any, expected: float) -> None:
    assert number(value, "k", WHAT) == expected


@pytest.mark.parametrize("value", [True, "x", None, math.nan, math.inf, -math.inf, "inf"])
def test_number_refuses(value: Any) -> None:
    _refused(number, value)
    _refused(number, "2.5", text=False)


@pytest.mark.parametrize(
    ("value", "expected"), [(3306, 3306), ("3306", 3306), (1, 1), (65535, 65535), (80.0, 80)]
)
def test_port(value: Any, expected: int) -> None:
    assert port(value, "k", WHAT) == expected


@pytest.mark.parametrize("value", [0, 65536, -1, 3306.7, "3306.7", True, "http"])
def test_port_refuses(value: Any) -> None:
    _refused(port, value)


# ---------------------------------------------------------------- seconds


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0), (30, 30.0), (2.5, 2.5), ("10", 10.0), (" 2.5 ", 2.5), ("1m30s", 90.0), ("500ms", 0.5),
        ("2.5s", 2.5), ("1h", 3600.0), ("1h2m3.5s", 3723.5), ("250ms", 0.25), ("1.5m", 90.0),
        ("100us", 1e-4), ("100µs", 1e-4), ("3ns", 3e-9), ("0s", 0.0),
    ],
)
def test_seconds_reads_numbers_and_go_durations(value: Any, expected: float) -> None:
    assert seconds(value, "k", WHAT) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value", ["5 s", "-1s", "s", "1d", "soon", "5 parsecs", "", "1m 30s", -1, -0.5, math.nan, math.inf, "inf",
              "nan", True, None, [30]],
)
def test_seconds_refuses(value: Any) -> None:
    _refused(seconds, value)


# ---------------------------------------------------------------- bool, string


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", True), ("Yes", True), (" on ", True), ("1", True),
     ("false", False), ("NO", False), ("off", False), ("0", False)],
)
def test_boolean(value: Any, expected: bool) -> None:
    assert boolean(value, "k", WHAT) is expected


@pytest.mark.parametrize("value", [1, 0, "maybe", "", None, 1.0])
def test_boolean_refuses(value: Any) -> None:
    assert "must be a boolean" in str(_refused(boolean, value))
    _refused(boolean, "true", text=False)


def test_string() -> None:
    assert string("x", "k", WHAT) == "x"
    assert "must be a string, got int 5" in str(_refused(string, 5))


# ---------------------------------------------------------------- host:port, URLs, JSON


@pytest.mark.parametrize(
    ("text", "expected"),
    [("h:1", ("h", 1)), ("h", ("h", 6379)), (":7000", ("127.0.0.1", 7000)), ("[::1]:7001", ("::1", 7001)),
     ("[::1]", ("::1", 6379)), ("", ("127.0.0.1", 6379))],
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text, "addr", WHAT, default_host="127.0.0.1", default_port=6379) == expected


@pytest.mark.parametrize(
    ("text", "key"),
    [("h:port", "addr"), ("h:70000", "addr"), ("h:0", "addr"), ("[::1", "addr"), ("[::1]x", "addr"),
     ("::1", "addr"), ("a b:1", "addr"), ("u@h:1", "addr"), ("h/x:1", "addr")],
)
def test_split_host_port_refuses(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        split_host_port(text, "addr", WHAT, default_host="127.0.0.1", default_port=6379)
    assert info.value.key == key


def test_split_host_port_bare_ipv6_and_port_key() -> None:
    found = split_host_port("::1", "a", WHAT, default_host="h", default_port=3306, bare_ipv6=True)
    assert found == ("::1", 3306)
    with pytest.raises(ConfigError) as info:
        split_host_port("h:99999", "a", WHAT, default_host="h", default_port=3306, port_key="port")
    assert info.value.key == "port"


def test_join_host_port() -> None:
    assert join_host_port("h", 1) == "h:1"
    assert join_host_port("::1", 6379) == "[::1]:6379"


def test_url_parts() -> None:
    parts = url_parts(" redis://us%40r:p%3Ass@Cache.local:6390/2?a=1&b=&a=3 ", "the URL", key="url")
    assert (parts.scheme, parts.user, parts.password, parts.host, parts.port, parts.path) == (
        "redis", "us@r", "p:ss", "cache.local", 6390, "/2",
    )
    assert parts.params == {"a": "3", "b": ""}
    assert "p:ss" not in repr(parts)
    bare = url_parts("mysql:///db", "the URL", key="url")
    assert (bare.user, bare.password, bare.host, bare.port) == ("", "", None, None)
    with pytest.raises(ConfigError) as info:
        url_parts("redis://:secret@h:notaport", "the URL", key="url", port_key="port")
    assert info.value.key == "port" and "secret" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        url_parts("redis://[::1", "the URL", key="url")
    assert info.value.key == "url"


def test_json_object() -> None:
    assert json_object('{"a": 1}', "x provider_config") == {"a": 1}
    for text, problem in (("{not json", "is not valid JSON"), ("[1]", "must be a JSON object, got list")):
        with pytest.raises(ConfigError, match=problem) as info:
            json_object(text, "x provider_config")
        assert info.value.key == "provider_config"


# ---------------------------------------------------------------- one behaviour everywhere


@pytest.mark.parametrize(
    ("parse", "config", "key"),
    [
        (parse_redis_config, "h,10.9", "poolsize"),
        (parse_redis_config, {"poolsize": 10.9}, "poolsize"),
        (parse_redis_config, {"port": 6379.5}, "port"),
        (parse_cluster_config, {"nodes": "h:7000", "poolsize": "10.9"}, "poolsize"),
        (parse_sentinel_config, {"sentinels": [("h", 26379.5)]}, "sentinels"),
        (parse_memcache_config, {"max_connections": 10.9}, "max_connections"),
        (parse_mysql_config, "root@tcp(h)/d?maxsize=10.9", "maxsize"),
        (parse_mysql_config, {"database": "d", "maxsize": 10.9}, "maxsize"),
        (parse_mysql_config, {"database": "d", "port": 3306.7}, "port"),
        (parse_mysql_config, {"database": "d", "port": "3306.7"}, "port"),
        (parse_mysql_config, {"database": "d", "minsize": True}, "minsize"),
        (parse_postgresql_config, "dbname=d max_size=10.9", "max_size"),
        (parse_postgresql_config, {"dbname": "d", "port": 5432.5}, "port"),
        (parse_postgresql_config, {"max_inactive_lifetime": math.inf}, "max_inactive_lifetime"),
        (parse_mysql_config, {"database": "d", "connect_timeout": math.nan}, "connect_timeout"),
    ],
)
def test_every_parser_refuses_what_values_refuses(parse: Any, config: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(config)
    assert info.value.key == key, str(info.value)


def test_every_parser_reads_seconds_the_same_way() -> None:
    assert parse_redis_config({"idle_timeout": "1m30s"}).idle_timeout == 90.0
    assert parse_mysql_config({"database": "d", "connect_timeout": "1m30s"}).connect_timeout == 90.0
    assert parse_postgresql_config({"connect_timeout": "1m30s"}).connect_timeout == 90.0
    assert parse_postgresql_config("max_inactive_lifetime=2.5").max_inactive_lifetime == 2.5


def test_the_manager_config_goes_through_values_too() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build_config("memory", gc_lifetime=60.0).gc_lifetime == 60
    for key, value in (("gc_lifetime", 60.5), ("gc_lifetime", "60"), ("secure", "true"),
                       ("provider_timeout", math.nan), ("provider_timeout", math.inf)):
        with pytest.raises(ConfigError) as info:
            build_config("memory", **{key: value})
        assert info.value.key == key
        assert str(info.value).startswith(f"config key {key!r} ")
