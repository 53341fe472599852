"""Configuration: the seeds' calling forms, key spellings, defaults, types and warnings."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from gosession_tornado import ConfigError, ManagerConfig, SessionManager, build_config

# Seed 001 (memory/file/cookie) and seed 002 (memory, with the odd "omitempty" key), verbatim.
SEED_001_MEMORY = '{"cookieName":"gosessionid","gclifetime":3600}'
SEED_001_FILE = '{"cookieName":"gosessionid","gclifetime":3600,"ProviderConfig":"./tmp"}'
SEED_001_COOKIE = (
    '{"cookieName":"gosessionid","enableSetCookie":false,"gclifetime":3600,'
    '"ProviderConfig":"{\\"cookieName\\":\\"gosessionid\\",\\"securityKey\\":\\"beegocookiehashkey\\"}"}'
)
SEED_002_MEMORY = (
    '{"cookieName":"gosessionid", "enableSetCookie,omitempty": true, "gclifetime":3600, '
    '"maxLifetime": 3600, "secure": false, "sessionIDHashFunc": "sha1", "sessionIDHashKey": "", '
    '"cookieLifeTime": 3600, "providerConfig": ""}'
)

#: Every ManagerConfig field and its SPEC default.
DEFAULTS: dict[str, Any] = {
    "provider": "memory",
    "cookie_name": "gosessionid",
    "enable_set_cookie": True,
    "gc_lifetime": 3600,
    "max_lifetime": 3600,
    "cookie_lifetime": 0,
    "provider_config": "",
    "domain": "",
    "path": "/",
    "secure": False,
    "http_only": True,
    "same_site": "Lax",
    "partitioned": False,
    "session_id_length": 16,
    "session_id_prefix": "",
    "enable_sid_in_http_header": False,
    "session_name_in_http_header": "",
    "enable_sid_in_url_query": False,
    "provider_timeout": 5.0,
    "key_prefix": "gosession:",
    "eager_new_sessions": False,
    "hash_session_ids": False,
}

#: (snake_case key, beego spelling, a valid non-default value)
KEYS: list[tuple[str, str, Any]] = [
    ("cookie_name", "cookieName", "sid"),
    ("enable_set_cookie", "enableSetCookie", False),
    ("gc_lifetime", "gclifetime", 120),
    ("max_lifetime", "maxLifetime", 90),
    ("cookie_lifetime", "cookieLifeTime", 60),
    ("provider_config", "providerConfig", "./tmp"),
    ("domain", "domain", "example.test"),
    ("secure", "secure", True),
    ("http_only", "httpOnly", False),
    ("same_site", "sameSite", "Strict"),
    ("session_id_length", "sessionIDLength", 24),
    ("session_id_prefix", "sessionIDPrefix", "app-"),
    ("enable_sid_in_http_header", "EnableSidInHTTPHeader", True),
    ("session_name_in_http_header", "SessionNameInHTTPHeader", "X-Session"),
    ("enable_sid_in_url_query", "EnableSidInURLQuery", True),
    ("provider_timeout", "providerTimeout", 0.5),
    ("key_prefix", "keyPrefix", "app:"),
    ("eager_new_sessions", "eagerNewSessions", True),
    ("hash_session_ids", "hashSessionIDs", True),
]


def test_every_field_has_its_spec_default() -> None:
    got = dataclasses.asdict(ManagerConfig())
    assert got == DEFAULTS
    assert dataclasses.asdict(build_config("memory")) == DEFAULTS


def test_manager_without_arguments_uses_the_defaults() -> None:
    assert dataclasses.asdict(SessionManager().config) == DEFAULTS


# ---------------------------------------------------------------- calling forms


def test_positional_four_args_seed_000() -> None:
    cfg = SessionManager("memory", "gosessionid", 3600, "").config
    assert cfg.provider == "memory"
    assert cfg.cookie_name == "gosessionid"
    assert cfg.max_lifetime == 3600
    assert cfg.gc_lifetime == 3600  # beego: the positional lifetime is also the GC interval
    assert cfg.provider_config == ""


def test_positional_four_args_lifetime_sets_both_lifetimes() -> None:
    cfg = build_config("file", "sid", 120, "./tmp")
    assert (cfg.provider, cfg.cookie_name, cfg.max_lifetime, cfg.gc_lifetime) == ("file", "sid", 120, 120)
    assert cfg.provider_config == "./tmp"


def test_positional_eight_args_seed_004() -> None:
    with pytest.warns(UserWarning, match="sessionIDHashKey"):
        cfg = SessionManager("memory", "gosessionid", 3600, "", False, "sha1", "sessionidkey", 1800).config
    assert cfg.cookie_name == "gosessionid"
    assert cfg.max_lifetime == 3600
    assert cfg.secure is False
    assert cfg.cookie_lifetime == 1800


def test_positional_secure_true() -> None:
    cfg = build_config("memory", "gosessionid", 3600, "", True)
    assert cfg.secure is True


def test_too_many_positional_arguments_refused() -> None:
    with pytest.raises(ConfigError, match="at most 8"):
        build_config("memory", "sid", 3600, "", False, "sha1", "", 0, "extra")


@pytest.mark.parametrize(
    ("provider", "text", "provider_config"),
    [("memory", SEED_001_MEMORY, ""), ("file", SEED_001_FILE, "./tmp")],
)
def test_json_string_seed_001(provider: str, text: str, provider_config: str) -> None:
    cfg = build_config(provider, text)
    assert cfg.provider == provider
    assert cfg.cookie_name == "gosessionid"
    assert cfg.gc_lifetime == 3600
    assert cfg.max_lifetime == 3600  # defaults to gclifetime
    assert cfg.provider_config == provider_config


def test_json_string_seed_001_cookie_form_keeps_the_inner_json() -> None:
    cfg = build_config("cookie", SEED_001_COOKIE)
    assert cfg.enable_set_cookie is False
    inner = json.loads(cfg.provider_config)
    assert inner == {"cookieName": "gosessionid", "securityKey": "beegocookiehashkey"}


def test_json_string_seed_002_warns_about_the_omitempty_key() -> None:
    with pytest.warns(UserWarning, match="omitempty") as record:
        m = SessionManager("memory", SEED_002_MEMORY)
    cfg = m.config
    assert cfg.cookie_name == "gosessionid"
    assert cfg.enable_set_cookie is True  # the odd key is ignored, the default stays
    assert cfg.gc_lifetime == 3600
    assert cfg.max_lifetime == 3600
    assert cfg.secure is False
    assert cfg.cookie_lifetime == 3600
    assert cfg.provider_config == ""
    assert any("enableSetCookie,omitempty" in str(w.message) for w in record)


def test_json_string_null_means_default() -> None:
    cfg = build_config("memory", '{"cookieName": null, "gclifetime": 10}')
    assert cfg.cookie_name == "gosessionid"
    assert cfg.gc_lifetime == 10


def test_bad_json_string_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        build_config("memory", '{"cookieName": ')


def test_single_plain_string_is_the_cookie_name() -> None:
    assert build_config("memory", "sid").cookie_name == "sid"
    with pytest.raises(ConfigError, match="cookie_name"):
        build_config("memory", "[1, 2]")


def test_dict_form() -> None:
    given = {"cookie_name": "sid", "max_lifetime": 60, "provider_config": {"a": 1}}
    cfg = SessionManager("memory", given).config
    assert (cfg.cookie_name, cfg.max_lifetime, cfg.provider_config) == ("sid", 60, {"a": 1})
    assert cfg.gc_lifetime == 3600


def test_dict_with_provider_inside() -> None:
    cfg = SessionManager({"provider": "memory", "cookieName": "sid"}).config
    assert (cfg.provider, cfg.cookie_name) == ("memory", "sid")


def test_kwargs_form_and_kwargs_override_dict() -> None:
    cfg = SessionManager("memory", cookie_name="sid", gc_lifetime=30).config
    assert (cfg.cookie_name, cfg.gc_lifetime, cfg.max_lifetime) == ("sid", 30, 30)
    cfg = SessionManager("memory", {"cookie_name": "a"}, cookie_name="b").config
    assert cfg.cookie_name == "b"
    cfg = SessionManager("memory", SEED_001_MEMORY, max_lifetime=5).config
    assert (cfg.cookie_name, cfg.gc_lifetime, cfg.max_lifetime) == ("gosessionid", 3600, 5)


def test_manager_config_instance_is_accepted_and_replace_works() -> None:
    base = build_config("memory", cookie_name="sid")
    assert build_config(base) == base
    assert base.replace(secure=True).secure is True
    assert base.replace(secure=True).cookie_name == "sid"


def test_explicit_max_lifetime_is_independent_of_gc_lifetime() -> None:
    cfg = build_config("memory", {"gclifetime": 60, "maxLifetime": 600})
    assert (cfg.gc_lifetime, cfg.max_lifetime) == (60, 600)


# ---------------------------------------------------------------- key spellings


@pytest.mark.parametrize(("field", "beego", "value"), KEYS)
def test_every_key_in_snake_and_beego_spelling(field: str, beego: str, value: Any) -> None:
    for key in (field, beego, beego.lower(), beego.upper(), field.upper()):
        cfg = build_config("memory", {key: value})
        assert getattr(cfg, field) == value, key


@pytest.mark.parametrize(("field", "beego", "value"), KEYS)
def test_every_key_via_json_and_kwargs(field: str, beego: str, value: Any) -> None:
    assert getattr(build_config("memory", json.dumps({beego: value})), field) == value
    assert getattr(build_config("memory", **{field: value}), field) == value


def test_provider_key_spellings() -> None:
    assert build_config({"providerName": "file"}).provider == "file"
    assert build_config({"Provider": "file"}).provider == "file"


# ---------------------------------------------------------------- beego specials


@pytest.mark.parametrize(("disable", "http_only"), [(True, False), (False, True)])
def test_beego_disable_http_only_inverts(disable: bool, http_only: bool) -> None:
    assert build_config("memory", {"disableHTTPOnly": disable}).http_only is http_only
    assert build_config("memory", json.dumps({"DisableHTTPOnly": disable})).http_only is http_only


def test_disable_http_only_wrong_type() -> None:
    with pytest.raises(ConfigError, match="disableHTTPOnly"):
        build_config("memory", {"disableHTTPOnly": "yes"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Lax", "Lax"), ("lax", "Lax"), ("STRICT", "Strict"), ("strict", "Strict"),
     (0, "Lax"), (1, "Lax"), (2, "Lax"), (3, "Strict")],
)
def test_same_site_strings_and_beego_ints(value: Any, expected: str) -> None:
    assert build_config("memory", same_site=value).same_site == expected
    assert build_config("memory", json.dumps({"cookieSameSite": value})).same_site == expected


@pytest.mark.parametrize("value", ["None", "none", 4])
def test_same_site_none(value: Any) -> None:
    assert build_config("memory", same_site=value, secure=True).same_site == "None"
    with pytest.warns(UserWarning, match="secure"):
        assert build_config("memory", same_site=value).same_site == "None"


@pytest.mark.parametrize("value", ["bogus", 5, -1, "", True, 1.5, ["Lax"]])
def test_same_site_invalid(value: Any) -> None:
    with pytest.raises(ConfigError, match="same_site") as info:
        build_config("memory", same_site=value)
    assert info.value.key == "same_site"


@pytest.mark.parametrize("length", [0, 8, 15])
def test_session_id_length_below_16_refused(length: int) -> None:
    with pytest.raises(ConfigError, match="sessionIDLength") as info:
        build_config("memory", {"sessionIDLength": length})
    assert info.value.key == "sessionIDLength"


def test_session_id_length_16_and_above_accepted() -> None:
    assert build_config("memory", session_id_length=16).session_id_length == 16
    assert build_config("memory", session_id_length=32).session_id_length == 32


@pytest.mark.parametrize(
    ("key", "value"),
    [("gc_lifetime", 0), ("gclifetime", -1), ("max_lifetime", 0), ("cookie_lifetime", -1),
     ("provider_timeout", 0), ("provider_timeout", -1.0), ("cookie_name", ""), ("cookie_name", "a b"),
     ("cookie_name", "a;b"), ("session_id_prefix", "../"), ("path", "x"), ("path", "/a;b"),
     ("domain", "a;b"), ("provider", ""), ("session_id_length", 65)],
)
def test_invalid_values_raise_config_error_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        build_config("memory", {key: value})
    assert info.value.key == key
    assert repr(key) in str(info.value)


def test_unknown_keys_warn_and_are_ignored() -> None:
    with pytest.warns(UserWarning, match="colour"):
        cfg = build_config("memory", {"colour": "red", "cookie_name": "sid"})
    assert cfg.cookie_name == "sid"
    with pytest.warns(UserWarning, match="bogusKey"):
        build_config("memory", '{"bogusKey": 1}')
    with pytest.warns(UserWarning, match="whatever"):
        SessionManager("memory", whatever=1)


@pytest.mark.parametrize("key", ["sessionIDHashFunc", "sessionIDHashKey", "session_id_hash_func"])
def test_hash_func_and_key_accepted_with_a_warning(key: str) -> None:
    with pytest.warns(UserWarning, match="CSPRNG"):
        cfg = build_config("memory", {key: "md5-secret", "cookie_name": "sid"})
    assert cfg.cookie_name == "sid"
    assert not hasattr(cfg, "session_id_hash_func")


def test_set_hash_func_warns_and_changes_nothing() -> None:
    m = SessionManager("memory")
    before = m.config
    with pytest.warns(UserWarning, match="CSPRNG"):
        m.set_hash_func("sha1", "sessionidkey")
    with pytest.warns(UserWarning, match="CSPRNG"):
        m.SetHashFunc("md5", "")
    assert m.config == before


def test_set_secure() -> None:
    m = SessionManager("memory")
    m.set_secure(True)
    assert m.config.secure is True
    m.SetSecure(False)
    assert m.config.secure is False


def test_non_string_key_refused() -> None:
    with pytest.raises(ConfigError):
        build_config("memory", {1: "x"})


def test_provider_name_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match="provider") as info:
        build_config(5)
    assert info.value.key == "provider"


def test_second_positional_of_wrong_type() -> None:
    with pytest.raises(ConfigError, match="second argument"):
        build_config("memory", 3600)


# ---------------------------------------------------------------- types

_BOOL_KEYS = ["enable_set_cookie", "secure", "http_only", "partitioned",
              "enable_sid_in_http_header", "enable_sid_in_url_query", "eager_new_sessions",
              "hash_session_ids"]
_INT_KEYS = ["gc_lifetime", "max_lifetime", "cookie_lifetime", "session_id_length"]
_STR_KEYS = ["provider", "cookie_name", "domain", "path", "session_id_prefix",
             "session_name_in_http_header", "key_prefix"]

WRONG_TYPES: list[tuple[str, Any]] = (
    [(k, "true") for k in _BOOL_KEYS]
    + [(k, 1) for k in _BOOL_KEYS]
    + [(k, "60") for k in _INT_KEYS]
    + [(k, True) for k in _INT_KEYS]
    + [(k, 1.5) for k in _INT_KEYS]
    + [("provider_timeout", "5"), ("provider_timeout", True)]
    + [(k, 5) for k in _STR_KEYS]
    + [(k, ["x"]) for k in _STR_KEYS]
    + [("provider_config", 5), ("provider_config", ["a"])]
)


def test_wrong_type_table_covers_every_typed_field() -> None:
    covered = {k for k, _ in WRONG_TYPES} | {"same_site"}
    assert covered == set(DEFAULTS)


@pytest.mark.parametrize(("key", "value"), WRONG_TYPES)
def test_wrong_type_raises_config_error_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"provider": "memory", key: value})
    assert info.value.key == key
    assert repr(key) in str(info.value)


@pytest.mark.parametrize(("field", "beego", "value"), KEYS)
def test_wrong_type_in_beego_spelling_names_the_given_key(field: str, beego: str, value: Any) -> None:
    wrong: Any = 5 if isinstance(value, str) else "5"
    if field == "same_site":
        wrong = 9
    with pytest.raises(ConfigError) as info:
        build_config("memory", json.dumps({beego: wrong}))
    assert info.value.key == beego
    assert repr(beego) in str(info.value)


def test_integral_float_accepted_for_int_keys() -> None:
    assert build_config("memory", max_lifetime=60.0).max_lifetime == 60
    assert build_config("memory", provider_timeout=2).provider_timeout == 2.0


def test_config_error_is_a_session_error_and_a_value_error() -> None:
    from gosession_tornado import SessionError

    with pytest.raises(SessionError):
        build_config("memory", gc_lifetime="x")
    with pytest.raises(ValueError):
        build_config("memory", gc_lifetime="x")


def test_config_is_frozen() -> None:
    cfg = build_config("memory")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cookie_name = "x"  # type: ignore[misc]


def test_header_name_falls_back_to_cookie_name() -> None:
    assert build_config("memory", cookie_name="sid").header_name == "sid"
    assert build_config("memory", session_name_in_http_header="X-S").header_name == "X-S"


def test_the_typed_keyword_form_names_every_config_field() -> None:
    import inspect
    import typing

    keyword_form = typing.get_overloads(SessionManager.__init__)[0]
    params = inspect.signature(keyword_form).parameters
    keywords = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keywords == set(DEFAULTS) - {"provider"}


def test_an_unknown_key_warning_suggests_the_closest_known_key() -> None:
    with pytest.warns(UserWarning, match="did you mean 'cookie_name'"):
        build_config("memory", cookie_nmae="sid")
    with pytest.warns(UserWarning, match="did you mean 'gc_lifetime'"):
        build_config("memory", '{"gcLifeTim": 5}')
    with pytest.warns(UserWarning, match="known keys"):
        build_config("memory", {"zzz": 1})
