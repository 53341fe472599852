"""The msgpack codec: ext types round-trip, unsupported types are refused, garbage is a ValueError."""

from __future__ import annotations

import datetime
import decimal
import enum
import threading
import uuid
from collections import OrderedDict
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gosession_tornado import Session, codec

UTC = datetime.timezone.utc
IST = datetime.timezone(datetime.timedelta(hours=5, minutes=30))

ROUND_TRIP: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    1.5,
    float("inf"),
    "",
    "héllo ✓",
    b"",
    b"\x00\xffbytes",
    [],
    [1, "a", None, [2, [3]]],
    {},
    {"a": 1, "b": {"c": [1, 2]}},
    {1: "one", 2: {3: 4}, -5: [6]},  # integer map keys
    {1: "int", "1": "str"},
    (),
    (1,),
    (1, (2, (3, "x")), [4, (5,)]),  # nested tuples stay tuples, lists stay lists
    {"t": (1, 2)},
    {(1, 2): "tuple key"},
    set(),
    {1, 2, 3},
    {"a", (1, 2)},
    frozenset(),
    frozenset({1, "b"}),
    {"fs": frozenset({(1, 2)})},
    datetime.datetime(2024, 2, 29, 23, 59, 58, 123456),
    datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC),
    datetime.datetime(1999, 12, 31, 1, 2, 3, tzinfo=IST),
    datetime.date(2024, 2, 29),
    datetime.date(1, 1, 1),
    datetime.time(0, 0),
    datetime.time(23, 59, 59, 999999),
    datetime.time(12, 30, tzinfo=IST),
    decimal.Decimal("0"),
    decimal.Decimal("1.10"),
    decimal.Decimal("-123456789012345678901234567890.000000001"),
    decimal.Decimal("1E+30"),
    decimal.Decimal("Infinity"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    uuid.uuid4(),
    {"user": {"id": uuid.UUID(int=7), "seen": {datetime.date(2020, 1, 1)},
              "balance": decimal.Decimal("9.99")}},
]


@pytest.mark.parametrize("value", ROUND_TRIP, ids=lambda v: f"{type(v).__name__}:{v!r}"[:60])
def test_round_trip_keeps_value_and_type(value: Any) -> None:
    out = codec.decode(codec.encode(value))
    assert out == value
    assert type(out) is type(value)


def _types(value: Any) -> Any:
    """The value's structure with every leaf replaced by its type (to compare nested types)."""
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return (type(value), [_types(v) for v in value])
    return type(value)


def test_nested_types_are_kept() -> None:
    value = {"a": (1, [2, (3,)]), 4: [(5, 6), {7}], "d": datetime.date(2020, 1, 1)}
    out = codec.decode(codec.encode(value))
    assert _types(out) == _types(value)


def test_aware_datetime_keeps_offset_and_microseconds() -> None:
    value = datetime.datetime(2021, 6, 1, 12, 0, 0, 1, tzinfo=IST)
    out = codec.decode(codec.encode(value))
    assert out.utcoffset() == datetime.timedelta(hours=5, minutes=30)
    assert out.microsecond == 1
    naive = codec.decode(codec.encode(value.replace(tzinfo=None)))
    assert naive.tzinfo is None


def test_decimal_keeps_its_exponent() -> None:
    out = codec.decode(codec.encode(decimal.Decimal("1.100")))
    assert str(out) == "1.100"


def test_decimal_nan_round_trips() -> None:
    out = codec.decode(codec.encode(decimal.Decimal("NaN")))
    assert isinstance(out, decimal.Decimal)
    assert out.is_nan()


def test_subclasses_of_native_types_are_stored_as_the_base_type() -> None:
    class Colour(enum.IntEnum):
        RED = 1

    class Name(str):
        pass

    out = codec.decode(codec.encode({"c": Colour.RED, "n": Name("ann"), "o": OrderedDict(a=1)}))
    assert out == {"c": 1, "n": "ann", "o": {"a": 1}}
    assert type(out["c"]) is int
    assert type(out["n"]) is str


class _Custom:
    pass


UNSUPPORTED: list[Any] = [
    _Custom(),
    object(),
    lambda: None,
    2**64,
    -(2**63) - 1,
    complex(1, 2),
    datetime.timedelta(seconds=1),
    range(3),
    [1, _Custom()],
    {"k": {"nested": object()}},
    (1, object()),
    {object(): 1},
]


@pytest.mark.parametrize("value", UNSUPPORTED, ids=lambda v: type(v).__name__)
def test_unsupported_types_raise_type_error(value: Any) -> None:
    with pytest.raises(TypeError):
        codec.encode(value)


def test_check_serializable_names_the_key() -> None:
    with pytest.raises(TypeError, match="'cart'"):
        codec.check_serializable("cart", _Custom())
    with pytest.raises(TypeError, match="key"):
        codec.check_serializable(_Custom(), 1)
    codec.check_serializable(3, {"ok": (1, 2)})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x92\x01",  # array of 2 with 1 element
        b"\xd4\x04\x00",  # datetime ext with garbage body
        b"\xc7\x03\x05abc",  # date ext "abc"
        b"\xc7\x03\x07abc",  # decimal ext "abc"
        b"\xc7\x03\x08abc",  # uuid ext with 3 bytes
        msgpack.packb(msgpack.ExtType(2, msgpack.packb([[1]]))),  # set of an unhashable list
        msgpack.packb(msgpack.ExtType(1, b"\xc1")),  # tuple with a corrupt body
        b"\x81\x91\x01\x01",  # map whose key is a list
        codec.encode({"a": 1}) + b"trailing",
    ],
)
def test_garbage_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        codec.decode(data)


def test_oversized_payload_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_DECODE_BYTES", 10)
    with pytest.raises(ValueError, match="exceeds"):
        codec.decode(codec.encode("x" * 20))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_fuzz_decode_random_bytes_only_raises_value_error(data: bytes) -> None:
    try:
        codec.decode(data)
    except ValueError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=64),
    st.integers(min_value=0, max_value=127),
)
def test_fuzz_decode_random_ext_payloads_only_raise_value_error(body: bytes, code: int) -> None:
    data = msgpack.packb({"k": msgpack.ExtType(code, body)})
    try:
        codec.decode(data)
    except ValueError:
        pass


_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.datetimes()
    | st.dates()
    | st.times()
    | st.decimals(allow_nan=False)
    | st.uuids()
)
_hashable = _leaf.filter(lambda v: not isinstance(v, float) or v == v)
_values = st.recursive(
    _leaf,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=5) | st.integers(-100, 100), children, max_size=4)
        | st.frozensets(_hashable, max_size=4)
        | st.sets(_hashable, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_fuzz_round_trip(value: Any) -> None:
    out = codec.decode(codec.encode(value))
    assert out == value
    assert _types(out) == _types(value)


# ---------------------------------------------------------------- session.set


def test_session_set_with_an_unserializable_value_names_the_key() -> None:
    s = Session(None, "0" * 32, {"keep": 1})
    with pytest.raises(TypeError, match="'basket'"):
        s.set("basket", _Custom())
    with pytest.raises(TypeError, match="'basket'"):
        s["basket"] = [1, {"deep": _Custom()}]
    with pytest.raises(TypeError, match="'n'"):
        s["n"] = 2**70
    assert "basket" not in s
    assert not s.modified
    assert s.changes().set == {}


def test_session_set_with_an_unserializable_key() -> None:
    s = Session(None, "0" * 32)
    with pytest.raises(TypeError, match="session key"):
        s.set(_Custom(), 1)
    assert len(s) == 0


def test_session_add_flash_with_an_unserializable_value() -> None:
    s = Session(None, "0" * 32)
    with pytest.raises(TypeError, match="_flash"):
        s.add_flash(_Custom())
    assert s.flashes() == []


def test_session_accepts_every_ext_type() -> None:
    s = Session(None, "0" * 32)
    for i, value in enumerate(ROUND_TRIP):
        s[i] = value
    assert len(s) == len(ROUND_TRIP)


# ---------------------------------------------------------------- nesting limits


def _lists(depth: int) -> list[Any]:
    """A list nested *depth* levels deep (``[]`` is 1 level)."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _tuples(depth: int) -> tuple[Any, ...]:
    value: tuple[Any, ...] = ()
    for _ in range(depth - 1):
        value = (value,)
    return value


def test_values_nested_up_to_the_limit_are_accepted_and_round_trip() -> None:
    s = Session(None, "0" * 32)
    s["deep"] = _lists(codec.MAX_NESTING)
    s["600"] = _lists(600)  # issue 9: stored alike by every provider
    s["tuples"] = _tuples(codec.MAX_EXT_NESTING)
    for _kb, vb in s.changes().encoded_items():
        assert codec.encode(codec.decode(vb)) == vb  # (== on 1000-deep lists would recurse too far)


def test_values_nested_too_deep_are_refused_at_set_time_naming_the_key() -> None:
    s = Session(None, "0" * 32)
    with pytest.raises(TypeError, match=r"'deep'.*nests more than 1000 levels"):
        s["deep"] = _lists(codec.MAX_NESTING + 1)
    with pytest.raises(TypeError, match="'deeper'"):
        s["deeper"] = _lists(5000)
    with pytest.raises(TypeError, match=r"'tuples'.*16 levels"):
        s["tuples"] = _tuples(codec.MAX_EXT_NESTING + 1)
    assert len(s) == 0


def test_deeply_nested_tuples_never_crash_the_interpreter() -> None:
    # Each tuple level is a nested msgpack call; 200 levels used to overflow the C
    # stack (a segfault, killing the server). Now a TypeError at the 17th level.
    with pytest.raises(TypeError):
        codec.encode(_tuples(200))
    with pytest.raises(TypeError):
        codec.encode({"a": [_tuples(100_000)]})


def test_a_payload_with_tuples_nested_too_deep_is_corrupt_not_a_crash() -> None:
    # Hand-built: 40 levels of ext type 1 (tuple) around an empty list.
    payload = codec.encode([])
    for _ in range(40):
        payload = msgpack.packb(msgpack.ExtType(1, payload))
    with pytest.raises(ValueError, match="nested more than 16"):
        codec.decode(payload)


def test_tuples_in_deep_lists_in_tuples_encode_in_a_thread_too() -> None:
    value: Any = None
    for _ in range(codec.MAX_EXT_NESTING):
        value = (_lists(900) if value is None else [value],)
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(codec.decode(codec.encode(value))))
    worker.start()
    worker.join()
    assert results == [value]
