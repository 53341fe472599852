"""The maintenance command line: ``python -m gosession_tornado COMMAND --provider NAME --config CONFIG``.

Runs one command against the session store an application uses, from cron or
a shell, the way Django's ``clearsessions`` and flask-session's
``session_cleanup`` do::

    python -m gosession_tornado gc      --provider file --config '{"ProviderConfig": "./tmp"}'
    python -m gosession_tornado count   --provider redis --config @/etc/myapp/session.json
    python -m gosession_tornado show    SID --provider mysql --config @session.json
    python -m gosession_tornado destroy SID --provider mysql --config @session.json
    python -m gosession_tornado stats   --provider postgresql --config @session.json

*CONFIG* is what ``SessionManager(NAME, CONFIG)`` takes as its second
argument: beego's JSON string (camelCase or snake_case keys), ``@path`` of a
file holding it (``@-``: standard input), or a bare cookie name (beego's
positional form). Give the application's own configuration: the command must
see the same ``provider_config``, ``key_prefix``, ``session_id_length``,
``session_id_prefix`` and ``hash_session_ids`` to find its sessions.

What holds:

* Exit status: :data:`EXIT_OK` (0) success; :data:`EXIT_NOT_FOUND` (1) ``show``
  or ``destroy`` of a session the store does not know; :data:`EXIT_USAGE` (2)
  a bad command line or configuration (the message names the key), an unknown
  provider, or a command the provider cannot answer; :data:`EXIT_UNAVAILABLE`
  (3) the store is down, refused the connection or did not answer within
  ``provider_timeout`` (``--timeout``); :data:`EXIT_FAILED` (4) anything else
  (a provider error, a corrupt record); 130 after Ctrl-C; 141 (silently)
  when standard output was closed early (``show SID | head -1``).
* Errors are one line on standard error, ``gosession_tornado: error: ...``;
  no traceback unless ``--debug``. Session ids in messages are shortened to
  their first 8 characters, as in the library's logs.
* Standard output carries only the answer: nothing for ``gc`` and
  ``destroy``, an integer for ``count``, JSON for ``show`` (see
  :func:`json_value`) and ``stats``.
* ``show`` and ``destroy`` take the session id the browser holds (also with
  ``hash_session_ids``: the command hashes it, as the manager does).
* ``memory`` sessions live inside the application's process, so the command
  refuses that provider. With the ``cookie`` provider the sessions live in the
  browsers: ``show`` takes a cookie *value* and decrypts it, ``gc`` and
  ``stats`` work, ``count`` and ``destroy`` are refused.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import decimal
import importlib
import io
import json
import logging
import math
import os
import pathlib
import pprint
import sys
import traceback
import uuid
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TextIO

import msgpack

from . import __version__
from ._log import redact
from .config import ManagerConfig, build_config
from .errors import (
    ConfigError,
    DuplicateProviderError,
    ProviderUnavailableError,
    SessionError,
    UnknownProviderError,
)
from .manager import SessionManager
from .registry import lookup, provider_names
from .testing import read_session
from .values import normalize_key

__all__ = [
    "main",
    "build_parser",
    "json_value",
    "manager_config",
    "load_config",
    "CommandError",
    "EXIT_OK",
    "EXIT_NOT_FOUND",
    "EXIT_USAGE",
    "EXIT_UNAVAILABLE",
    "EXIT_FAILED",
]

#: The command did what was asked.
EXIT_OK = 0
#: ``show``/``destroy``: the store does not know that session (unknown, expired, malformed id).
EXIT_NOT_FOUND = 1
#: A bad command line or configuration, an unknown provider, or a command the provider cannot answer.
EXIT_USAGE = 2
#: The store is down, refused the connection, or did not answer within ``provider_timeout``.
EXIT_UNAVAILABLE = 3
#: Anything else: a provider error, a corrupt record (``--debug`` shows the traceback).
EXIT_FAILED = 4

PROG = "python -m gosession_tornado"

_EXIT_CODES_HELP = """\
exit status:
  0  success
  1  show/destroy: no such session (unknown, expired or malformed id)
  2  bad command line or configuration, unknown provider, command not possible
     with this provider
  3  the session store is unavailable (down, refused, slower than --timeout)
  4  any other error (run with --debug for the traceback)
"""


class CommandError(Exception):
    """A failure the command reports as one line and exits with *status* for."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- JSON output


def _sort_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def json_value(value: Any) -> Any:
    """*value* (decoded session data) as something :func:`json.dumps` writes faithfully.

    JSON's own types pass through: ``None``, ``bool``, ``int``, finite
    ``float``, ``str``, ``list``, and a ``dict`` as an object. Everything
    else becomes a one-key object whose key (``"$"`` and a type name) names
    its type, so that a string and a timestamp never look alike:

    ============================ ==============================================
    Python value                 JSON
    ============================ ==============================================
    ``bytes``                    ``{"$bytes": "<base64, RFC 4648 alphabet>"}``
    ``datetime.datetime``        ``{"$datetime": "2026-05-01T12:00:00+00:00"}``
    ``datetime.date``            ``{"$date": "2026-05-01"}``
    ``datetime.time``            ``{"$time": "12:00:00"}``
    ``decimal.Decimal``          ``{"$decimal": "19.90"}``
    ``uuid.UUID``                ``{"$uuid": "6f1c…"}`` (canonical hyphenated form)
    ``tuple``                    ``{"$tuple": [...]}``
    ``set`` / ``frozenset``      ``{"$set": [...]}`` / ``{"$frozenset": [...]}``
                                 (items in a stable order)
    NaN and infinite ``float``   ``{"$float": "nan"}``, ``"inf"``, ``"-inf"``
    dict keys that are not str   gathered under the key ``"$map"`` of the
                                 dict's object as ``[[key, value], ...]``
                                 (keys converted like values), so ``1`` and
                                 ``"1"`` stay apart
    str keys starting with ``$`` written with one more ``$`` (``"$$price"``),
                                 so user data never looks like a tag
    an unknown msgpack ext type  ``{"$ext": [code, "<base64>"]}``
    ============================ ==============================================

    Lists, tuples, sets and dict values are converted recursively.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, list):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        obj: dict[str, Any] = {}
        others: list[list[Any]] = []
        for k, v in value.items():
            if isinstance(k, str):
                obj["$" + k if k.startswith("$") else k] = json_value(v)
            else:
                others.append([json_value(k), json_value(v)])
        if others:
            obj["$map"] = sorted(others, key=_sort_key)
        return obj
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"$date": value.isoformat()}
    if isinstance(value, datetime.time):
        return {"$time": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, msgpack.ExtType):  # a namedtuple: before tuple
        return {"$ext": [value.code, base64.b64encode(value.data).decode("ascii")]}
    if isinstance(value, tuple):
        return {"$tuple": [json_value(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        tag = "$frozenset" if isinstance(value, frozenset) else "$set"
        return {tag: sorted((json_value(v) for v in value), key=_sort_key)}
    return {"$repr": repr(value)}  # nothing the codec decodes gets here


def _dumps(data: Any, out: TextIO, *, sort_keys: bool) -> str:
    """JSON text of *data*, non-ASCII kept when *out* can encode it."""
    text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=sort_keys, default=str)
    try:
        text.encode(getattr(out, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        text = json.dumps(data, indent=2, ensure_ascii=True, sort_keys=sort_keys, default=str)
    return text


# ---------------------------------------------------------------- arguments


def _common_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes (before or after the command name)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("store options")
    group.add_argument(
        "--provider", metavar="NAME", default=default(None),
        help="provider name: " + ", ".join(provider_names())
        + " (or a \"provider\" key in --config)",
    )
    group.add_argument(
        "--config", metavar="CONFIG", default=default(None),
        help="what SessionManager(NAME, CONFIG) takes: a JSON object such as "
        "'{\"cookieName\":\"gosessionid\",\"ProviderConfig\":\"./tmp\"}' (beego or snake_case keys), "
        "@PATH of a file holding one (@- reads standard input), or a cookie name",
    )
    group.add_argument(
        "--timeout", metavar="SECONDS", type=_seconds, default=default(None),
        help="provider_timeout for this command (default: the config's, else 5); "
        "raise it for a GC pass over a large store",
    )
    group.add_argument(
        "--import", dest="imports", metavar="MODULE", action="append", default=default([]),
        help="import MODULE first (it registers a custom provider); repeatable",
    )
    group.add_argument(
        "--debug", action="store_true", default=default(False),
        help="log debug messages and show tracebacks",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m gosession_tornado`` argument parser (one subcommand per command)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Maintenance commands for a gosession-tornado session store: "
        "a GC pass, counting, inspecting and destroying sessions, provider stats.",
        epilog=_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gosession-tornado {__version__}")
    _common_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, parents=[common], help=summary, description=description, epilog=_EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    command(
        "gc", "run one GC pass",
        "Run one garbage-collection pass: delete the expired sessions (file, mysql, postgresql; "
        "a no-op where the store expires them itself: redis, cookie). Prints nothing; exit 0 "
        "when the pass completed. Run it from cron if the application's own periodic GC is "
        "not enough (the passes of several processes do not conflict).",
    )
    command(
        "count", "print the number of active sessions",
        "Print the number of live sessions in the store (beego's GetActiveSession), one integer "
        "on a line. Counting may walk the whole store (a key scan, a COUNT(*)).",
    )
    show = command(
        "show", "print a session's data as JSON",
        "Print the data of session SID as a JSON object (exit 1 if the store does not know it). "
        "Values JSON cannot hold are written as one-key objects naming their type: "
        "{\"$datetime\": \"2026-05-01T12:00:00+00:00\"}, {\"$bytes\": \"<base64>\"}, "
        "{\"$decimal\": \"19.90\"}, {\"$uuid\": ...}, {\"$set\": [...]}, {\"$tuple\": [...]}, "
        "the entries of a dict whose keys are not strings (e.g. 1) under its key \"$map\" as "
        "[[key, value], ...], and a string key starting with $ with one more $. "
        "With the cookie provider SID is the cookie's value.",
    )
    show.add_argument("sid", metavar="SID", help="the session id (the cookie value the browser holds)")
    show.add_argument(
        "--format", choices=("json", "python"), default="json",
        help="json (default: the tagged JSON described above) or python (the values' repr)",
    )
    destroy = command(
        "destroy", "delete one session",
        "Delete session SID from the store, as a logout would; the browser's cookie stops "
        "working at its next request. Prints nothing; exit 1 if the store does not know SID "
        "(already gone, expired, malformed) unless --missing-ok.",
    )
    destroy.add_argument("sid", metavar="SID", help="the session id (the cookie value the browser holds)")
    destroy.add_argument(
        "--missing-ok", action="store_true", help="exit 0 also when there is no such session",
    )
    command(
        "stats", "print the provider's stats as JSON",
        "Print SessionManager.stats() as a JSON object: provider, active_sessions (asked from "
        "the store; active_sessions_error says why if that failed), and this command's own "
        "calls and their latency in milliseconds.",
    )
    return parser


# ---------------------------------------------------------------- configuration


def _read_config_text(spec: str) -> tuple[str, str]:
    """``(text, where)`` for ``--config`` *spec*; ``@path`` and ``@-`` read a file or stdin."""
    if not spec.startswith("@"):
        return spec, "--config"
    path = spec[1:]
    if path == "-":
        return sys.stdin.read(), "--config @- (standard input)"
    if not path:
        raise CommandError("--config @ needs a file name, e.g. --config @session.json", EXIT_USAGE)
    try:
        return pathlib.Path(path).read_text(encoding="utf-8"), f"config file {path!r}"
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CommandError(f"cannot read config file {path!r}: {reason}", EXIT_USAGE) from None


def load_config(spec: str | None) -> dict[str, Any] | str | None:
    """The second argument for ``SessionManager`` from ``--config`` *spec*.

    A JSON object (inline or from ``@path``) comes back as a dict, anything
    else inline as the string (beego's positional cookie-name form).

    :raises CommandError: (exit 2) for unreadable files and invalid JSON.
    """
    if spec is None:
        return None
    text, where = _read_config_text(spec)
    stripped = text.strip()
    if stripped.startswith("{") or where != "--config":
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise CommandError(f"{where} is not valid JSON: {exc}", EXIT_USAGE) from None
        if not isinstance(data, dict):
            raise CommandError(f"{where} must hold a JSON object, got {type(data).__name__}", EXIT_USAGE)
        return data
    if pathlib.Path(stripped).is_file():
        raise CommandError(
            f"--config {stripped!r} names a file; write --config @{stripped} to read it "
            "(a bare word is taken as a cookie name)",
            EXIT_USAGE,
        )
    return text


def _has_provider_key(config: Mapping[str, Any] | str | None) -> bool:
    return isinstance(config, Mapping) and any(
        normalize_key(str(k)) in ("provider", "providername") for k in config
    )


def manager_config(args: argparse.Namespace) -> ManagerConfig:
    """The :class:`ManagerConfig` the command line describes (``--provider``, ``--config``, ``--timeout``).

    :raises CommandError: (exit 2) for a bad or contradictory configuration.
    :raises ConfigError: for a bad key or value (the message names it).
    """
    config = load_config(args.config)
    overrides: dict[str, Any] = {}
    if args.timeout is not None:
        overrides["provider_timeout"] = args.timeout
    if args.provider is None:
        if not _has_provider_key(config):
            raise CommandError(
                "no provider: give --provider NAME (or a \"provider\" key in --config)", EXIT_USAGE
            )
        assert isinstance(config, Mapping)
        return build_config(config, **overrides)
    if config is None:
        return build_config(args.provider, **overrides)
    built = build_config(args.provider, config, **overrides)
    if built.provider != args.provider:
        raise CommandError(
            f"--provider {args.provider!r} contradicts the provider {built.provider!r} named in --config",
            EXIT_USAGE,
        )
    return built


# ---------------------------------------------------------------- commands


async def _gc(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    await manager.gc()
    return EXIT_OK


async def _count(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    out.write(f"{await manager.get_active_sessions()}\n")
    return EXIT_OK


def _check_sid(manager: SessionManager, sid: str) -> None:
    """Exit 1 unless *sid* has the shape of this configuration's ids."""
    if manager.valid_sid(sid):
        return
    c = manager.config
    prefix = f"{c.session_id_prefix!r} and " if c.session_id_prefix else ""
    raise CommandError(
        f"{redact(sid)!r} is not a session id of this configuration (expected {prefix}"
        f"{c.session_id_length * 2} lowercase hex digits)",
        EXIT_NOT_FOUND,
    )


async def _load(manager: SessionManager, sid: str) -> dict[Any, Any] | None:
    """The data of *sid* (a cookie value with a client-side provider), or ``None``."""
    if manager.client_side:
        return await read_session(manager, sid)
    _check_sid(manager, sid)
    return await manager.read(sid)


def _not_found(manager: SessionManager, sid: str) -> CommandError:
    return CommandError(
        f"no session {redact(sid)!r} in the {manager.provider_name!r} store "
        "(unknown, expired or destroyed)",
        EXIT_NOT_FOUND,
    )


async def _show(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    data = await _load(manager, args.sid)
    if data is None:
        raise _not_found(manager, args.sid)
    if args.format == "python":
        out.write(pprint.pformat(data, width=100, sort_dicts=True) + "\n")
    else:
        out.write(_dumps(json_value(data), out, sort_keys=True) + "\n")
    return EXIT_OK


async def _destroy(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    try:
        _check_sid(manager, args.sid)
    except CommandError:
        if args.missing_ok:
            return EXIT_OK
        raise
    if not await manager.destroy(args.sid) and not args.missing_ok:
        raise _not_found(manager, args.sid)
    return EXIT_OK


async def _stats(manager: SessionManager, args: argparse.Namespace, out: TextIO) -> int:
    stats = dict(await manager.stats())
    out.write(_dumps(stats, out, sort_keys=False) + "\n")
    return EXIT_OK


_Command = Callable[[SessionManager, argparse.Namespace, TextIO], Awaitable[int]]
_COMMANDS: dict[str, _Command] = {
    "gc": _gc, "count": _count, "show": _show, "destroy": _destroy, "stats": _stats,
}


def _check_provider(config: ManagerConfig, command: str) -> None:
    """Refuse commands the provider cannot answer from outside the application (exit 2)."""
    cls = lookup(config.provider)
    if cls.in_process and not cls.client_side:  # (a client-side store lives in the browsers)
        raise CommandError(
            f"the {config.provider!r} provider keeps its sessions inside the application's process, "
            "where this command cannot see them; use manager.gc(), get_active_sessions() and "
            "stats() in the application, or a shared store (file, redis, mysql, postgresql)",
            EXIT_USAGE,
        )
    if cls.client_side and command in ("count", "destroy"):
        what = "count them" if command == "count" else "destroy one"
        raise CommandError(
            f"the {config.provider!r} provider keeps sessions in the browsers' cookies: the server "
            f"cannot {what} (to end every session, rotate the provider's keys)",
            EXIT_USAGE,
        )


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise CommandError(f"--import {module}: {exc}", EXIT_USAGE) from None
    config = manager_config(args)
    _check_provider(config, args.command)
    try:
        manager = SessionManager(config)
    except ConfigError as exc:  # the provider refused its provider_config
        raise _provider_config_error(exc) from None
    try:
        try:
            await manager.start()
        except ConfigError as exc:  # ... or refused it only at start (a directory it cannot create)
            raise _provider_config_error(exc) from None
        return await _COMMANDS[args.command](manager, args, out)
    finally:
        await manager.close()


def _provider_config_error(exc: ConfigError) -> CommandError:
    """A provider's :class:`ConfigError` as one line that names the key (``provider_config`` by default)."""
    return CommandError(_config_message(exc, default_key="provider_config"), EXIT_USAGE)


def _config_message(exc: ConfigError, default_key: str | None = None) -> str:
    """*exc*'s message, led by the key it is about unless the message names it already."""
    message = str(exc)
    key = exc.key or default_key
    if key and repr(key) not in message and key not in message:
        message = f"{key}: {message}"
    return message


# ---------------------------------------------------------------- entry point


class _OneLineFormatter(logging.Formatter):
    """``gosession_tornado: warning: message (ExcType: text)``: never a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"gosession_tornado: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line += f" ({type(exc).__name__}: {exc})"
        return redact(" ".join(line.split()))


def _classify(exc: BaseException) -> tuple[int, str]:
    """Exit status and one-line message for an exception the command raised."""
    if isinstance(exc, CommandError):
        return exc.status, str(exc)
    if isinstance(exc, ConfigError):
        return EXIT_USAGE, _config_message(exc)
    if isinstance(exc, (UnknownProviderError, DuplicateProviderError)):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, NotImplementedError):  # a provider that cannot answer this command
        return EXIT_USAGE, f"the provider cannot do this: {exc or type(exc).__name__}"
    if isinstance(exc, ProviderUnavailableError):
        return EXIT_UNAVAILABLE, str(exc)
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return EXIT_UNAVAILABLE, f"the session store is unavailable: {type(exc).__name__}: {exc}"
    if isinstance(exc, SessionError):
        return EXIT_FAILED, str(exc)
    return EXIT_FAILED, f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"


def _error(message: str, err: TextIO) -> None:
    err.write(f"gosession_tornado: error: {redact(' '.join(message.split()))}\n")
    err.flush()


def _silence(out: TextIO) -> None:
    """Point *out*'s file descriptor at /dev/null, so that flushing it at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a real file (a StringIO): nothing will flush it at exit


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``python -m gosession_tornado`` with *argv*; returns the exit status.

    *out* and *err* default to :data:`sys.stdout` and :data:`sys.stderr`.
    Must be called outside a running event loop (it runs its own).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s") if args.debug
                         else _OneLineFormatter())
    logger = logging.getLogger("gosession_tornado")
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if args.debug else logging.WARNING)
    logger.propagate = False
    try:
        failure: BaseException | None = None
        with warnings.catch_warnings(record=True) as caught:
            # Configuration warnings (unknown keys) are reported; other categories keep their filters.
            warnings.simplefilter("always", UserWarning)
            try:
                status = asyncio.run(_run(args, out))
                out.flush()
            except KeyboardInterrupt:
                status, message = 130, "interrupted"
                failure = KeyboardInterrupt()
            except BrokenPipeError:  # `... show SID | head -1`: the reader left; not an error to report
                _silence(out)
                return 141
            except Exception as exc:
                status, message = _classify(exc)
                failure = exc
        seen: set[str] = set()
        for warning in caught:
            text = " ".join(str(warning.message).split())
            if text not in seen:
                seen.add(text)
                err.write(f"gosession_tornado: warning: {redact(text)}\n")
        if failure is not None:
            if args.debug:
                traceback.print_exception(failure, file=err)
            _error(message, err)
        return status
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
