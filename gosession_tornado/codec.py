"""Serialization of session values: msgpack with ext types, never pickle.

This module is the only place msgpack options live. What round-trips:

* everything msgpack has natively: ``None``, ``bool``, ``int`` (64-bit),
  ``float``, ``str``, ``bytes``, ``list``, ``dict`` (integer keys included);
* through ext types: ``tuple``, ``set``, ``frozenset``, ``datetime.datetime``
  (naive or aware, microseconds kept), ``datetime.date``, ``datetime.time``,
  ``decimal.Decimal`` and ``uuid.UUID``.

Anything else (a custom object, a function, an int wider than 64 bits) raises
:class:`TypeError`. Decoding never executes code: the worst a hostile payload
can do is raise :class:`ValueError`.
"""

from __future__ import annotations

import datetime
import decimal
import threading
import uuid
from typing import Any

import msgpack

__all__ = [
    "encode", "decode", "encode_item", "check_serializable", "MAX_DECODE_BYTES", "MAX_NESTING",
    "MAX_EXT_NESTING",
]

#: Upper bound on the size of one payload :func:`decode` accepts, in bytes.
MAX_DECODE_BYTES = 64 * 1024 * 1024

_EXT_TUPLE = 1
_EXT_SET = 2
_EXT_FROZENSET = 3
_EXT_DATETIME = 4
_EXT_DATE = 5
_EXT_TIME = 6
_EXT_DECIMAL = 7
_EXT_UUID = 8


#: Most levels of lists and dicts (and tuples, sets, frozensets) one value may
#: nest. Every provider stores a value a few levels down its own envelope, so
#: :func:`encode_item` refuses deeper values: all providers then accept the same.
MAX_NESTING = 1000
#: Most tuples, sets and frozensets nested inside each other in one value (each
#: level is a payload of its own, encoded by a nested call).
MAX_EXT_NESTING = 16
#: Container levels msgpack's packer takes in one payload.
_PACK_DEPTH = 1025


def _ext_payload(code: int, items: list[Any]) -> msgpack.ExtType:
    """An ext payload holding *items*, encoded by a nested packer; depth-limited."""
    depth = getattr(_local, "ext_depth", 0)
    if depth >= MAX_EXT_NESTING:
        raise TypeError(f"tuples, sets and frozensets nest at most {MAX_EXT_NESTING} levels deep")
    _local.ext_depth = depth + 1
    try:
        # A fresh packer: the caller's is in the middle of a pack.
        return msgpack.ExtType(code, _encode_fresh(items))
    finally:
        _local.ext_depth = depth


def _default(obj: Any) -> msgpack.ExtType:
    # strict_types=True sends tuples (and subclasses of native types) here.
    if isinstance(obj, tuple):
        return _ext_payload(_EXT_TUPLE, list(obj))
    if isinstance(obj, frozenset):
        return _ext_payload(_EXT_FROZENSET, list(obj))
    if isinstance(obj, set):
        return _ext_payload(_EXT_SET, list(obj))
    if isinstance(obj, datetime.datetime):
        return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode("ascii"))
    if isinstance(obj, datetime.date):
        return msgpack.ExtType(_EXT_DATE, obj.isoformat().encode("ascii"))
    if isinstance(obj, datetime.time):
        return msgpack.ExtType(_EXT_TIME, obj.isoformat().encode("ascii"))
    if isinstance(obj, decimal.Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode("ascii"))
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(_EXT_UUID, obj.bytes)
    # Subclasses of native types (an IntEnum, a str subclass, OrderedDict) are
    # stored as their base type, which is what a reader gets back anyway.
    for base in (int, float, str, bytes, dict, list):
        if isinstance(obj, base):
            return base(obj)  # type: ignore[arg-type]
    raise TypeError(f"cannot serialize object of type {type(obj).__name__!r} into a session")


def _ext_items(code: int, data: bytes) -> list[Any]:
    """The list inside a tuple/set/frozenset payload; depth-limited like :func:`_ext_payload`."""
    depth = getattr(_local, "ext_depth", 0)
    if depth >= MAX_EXT_NESTING:
        raise ValueError(f"tuples and sets nested more than {MAX_EXT_NESTING} levels deep")
    _local.ext_depth = depth + 1
    try:
        items = decode(data)
    finally:
        _local.ext_depth = depth
    if not isinstance(items, list):
        raise ValueError(f"ext type {code} does not hold a list")
    return items


def _ext_hook(code: int, data: bytes) -> Any:
    try:
        if code == _EXT_TUPLE:
            return tuple(_ext_items(code, data))
        if code == _EXT_SET:
            return set(_ext_items(code, data))
        if code == _EXT_FROZENSET:
            return frozenset(_ext_items(code, data))
        if code == _EXT_DATETIME:
            return datetime.datetime.fromisoformat(data.decode("ascii"))
        if code == _EXT_DATE:
            return datetime.date.fromisoformat(data.decode("ascii"))
        if code == _EXT_TIME:
            return datetime.time.fromisoformat(data.decode("ascii"))
        if code == _EXT_DECIMAL:
            return decimal.Decimal(data.decode("ascii"))
        if code == _EXT_UUID:
            return uuid.UUID(bytes=data)
    except (ValueError, TypeError, UnicodeDecodeError, decimal.InvalidOperation) as exc:
        raise ValueError(f"corrupt session payload (ext type {code}): {exc}") from exc
    return msgpack.ExtType(code, data)


_PACK_OPTIONS: dict[str, Any] = {
    "default": _default,
    "use_bin_type": True,
    "strict_types": True,
    "datetime": False,
}
#: One reusable :class:`msgpack.Packer` per thread (a packer is not thread-safe,
#: and reusing one is several times cheaper than ``packb`` for small values).
_local = threading.local()


def _encode_fresh(obj: Any) -> bytes:
    return msgpack.packb(obj, **_PACK_OPTIONS)  # type: ignore[no-any-return]


def encode(obj: Any) -> bytes:
    """Serialize *obj* to msgpack bytes.

    :raises TypeError: if *obj* (or anything inside it) is not serializable.
    """
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(**_PACK_OPTIONS)
    try:
        return packer.pack(obj)  # type: ignore[no-any-return]
    except OverflowError as exc:
        raise TypeError(f"integer out of range for a session value: {exc}") from exc
    except ValueError as exc:  # e.g. recursion too deep / too large
        raise TypeError(f"cannot serialize session value: {exc}") from exc


def decode(data: bytes | memoryview) -> Any:
    """Deserialize msgpack *data* produced by :func:`encode`.

    Integer map keys round-trip (``strict_map_key=False``). Lists decode as
    lists; unhashable map keys are rejected.

    :raises ValueError: if *data* is not a valid payload.
    """
    if len(data) > MAX_DECODE_BYTES:
        raise ValueError(f"session payload of {len(data)} bytes exceeds {MAX_DECODE_BYTES}")
    try:
        # msgpack >= 1.0's defaults give the rest (raw=False, use_list=True,
        # timestamp=0). Called directly: a functools.partial around it cost
        # about a fifth of a 10-key session's decode.
        return _unpackb(data, strict_map_key=False, ext_hook=_ext_hook)
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise ValueError(f"corrupt session payload: {exc!r}") from exc


_unpackb = msgpack.unpackb


def encode_item(key: Any, value: Any) -> tuple[bytes, bytes]:
    """``(encode(key), encode(value))``, or :class:`TypeError` naming *key*.

    Also refuses a value nested more than :data:`MAX_NESTING` levels (a
    provider stores it a few levels deeper, where msgpack would refuse it).
    """
    try:
        kb = encode(key)
    except TypeError as exc:
        raise TypeError(f"session key {key!r} is not serializable: {exc}") from None
    try:
        vb = encode(value)
    except TypeError as exc:
        raise TypeError(f"session value for key {key!r} is not serializable: {exc}") from None
    # Each level costs at least one byte, so only a long payload can be too deep:
    # encode it again below enough levels to reach msgpack's limit exactly then.
    if len(vb) > MAX_NESTING:
        probe: Any = value
        for _ in range(_PACK_DEPTH - MAX_NESTING):
            probe = [probe]
        try:
            encode(probe)
        except TypeError:
            raise TypeError(
                f"session value for key {key!r} nests more than {MAX_NESTING} levels deep"
            ) from None
    return kb, vb


def check_serializable(key: Any, value: Any) -> None:
    """Raise :class:`TypeError` naming *key* unless *key* and *value* both serialize."""
    encode_item(key, value)
