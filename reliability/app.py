"""The server process of the reliability runs: one ``SessionManager``, the operation handlers.

    python -m reliability.app SPEC_JSON

``SPEC_JSON`` is a JSON object (the text itself, or ``@path`` to a file)::

    {"config": {... SessionManager configuration ...}, "host": "127.0.0.1", "port": 0,
     "imports": ["module", ...]}

*imports* (optional) are imported first: modules that register providers.

The process listens on *port* (0: a free one), prints ``LISTENING <port>`` on
stdout once it accepts connections, and runs until SIGTERM/SIGINT, when it
closes the manager and exits 0.

Every operation is ``GET`` or ``POST /op/<name>``; arguments come from the
query string, or from a JSON object body (``Content-Type: application/json``)
so that the fuzz can send any string. The answer is a JSON object::

    sid_in    the session id the request was served under (as loaded in prepare())
    new       True if that session was new (no valid, known id came in)
    data      the session's data as loaded, before this request changed it
    sid       the session id at the end (another one after regenerate / destroy)
    key       the key the operation was given (``k``), or null
    result    what the operation returns (below)
    pid       this process's id

Operations: ``read``; ``set`` (``k``, ``v``: result ``v``); ``del`` (``k``);
``incr`` (``k``: the new value); ``flash_add`` (``v``: the flash list after the
add); ``flash_read`` (the flashes, read once); ``regen``
(``session_regenerate_id()``: the new id); ``destroy`` (``session_destroy()``).
A value the session refuses (``TypeError`` / ``ValueError`` / ``KeyError`` from
``set``) is answered 400, as an application would.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import sys
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from gosession_tornado import SessionManager, SessionMixin

__all__ = ["OPERATIONS", "OpHandler", "make_app", "main"]

OPERATIONS = ("read", "set", "del", "incr", "flash_add", "flash_read", "regen", "destroy")


def _jsonable(value: Any) -> Any:
    """*value* as JSON can carry it (the session values of these runs are str, int and lists)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


class OpHandler(SessionMixin, tornado.web.RequestHandler):
    """``/op/<name>``: one session operation, answered with what the session looked like."""

    def _args(self) -> dict[str, Any]:
        if self.request.method == "POST" and self.request.headers.get("Content-Type", "").startswith(
            "application/json"
        ):
            body = json.loads(self.request.body or b"{}")
            if not isinstance(body, dict):
                raise tornado.web.HTTPError(400, reason="JSON object expected")
            return body
        # Raw query arguments: Tornado's get_argument() would strip and replace control characters.
        return {
            k: v[-1].decode("utf-8", "replace") for k, v in self.request.query_arguments.items() if v
        }

    async def get(self, op: str) -> None:
        if op not in OPERATIONS:
            raise tornado.web.HTTPError(404)
        try:
            args = self._args()
        except ValueError:
            raise tornado.web.HTTPError(400, reason="bad JSON") from None
        session = self.session
        sid_in, new = session.session_id, session.is_new
        data = {str(k): _jsonable(v) for k, v in session.items()}
        result: Any = None
        try:
            if op == "set":
                session[args["k"]] = args["v"]
                result = args["v"]
            elif op == "del":
                session.delete(args["k"])
            elif op == "incr":
                result = session.incr(args["k"])
            elif op == "flash_add":
                session.add_flash(args["v"])
                result = _jsonable(session.get("_flash"))
            elif op == "flash_read":
                result = _jsonable(session.flashes())
            elif op == "regen":
                result = (await self.session_regenerate_id()).session_id
            elif op == "destroy":
                await self.session_destroy()
        except KeyError as exc:
            if op in ("set", "del", "incr", "flash_add") and exc.args and exc.args[0] in ("k", "v"):
                raise tornado.web.HTTPError(400, reason="missing argument") from None
            raise tornado.web.HTTPError(400, reason="refused key") from None
        except (TypeError, ValueError):
            raise tornado.web.HTTPError(400, reason="refused value") from None
        self.write({
            "sid_in": sid_in, "new": new, "data": data, "sid": self.session.session_id,
            "key": args.get("k"), "result": result, "pid": os.getpid(),
        })

    post = get


class Health(tornado.web.RequestHandler):
    """``/health``: no session; answers the process id."""

    def get(self) -> None:
        self.write({"pid": os.getpid()})


def make_app(manager: SessionManager) -> tornado.web.Application:
    """The reliability application on *manager*."""
    return tornado.web.Application(
        [(r"/op/(\w+)", OpHandler), (r"/health", Health)], session_manager=manager
    )


async def serve(spec: dict[str, Any]) -> None:
    """Run the application described by *spec* until SIGTERM/SIGINT."""
    for module in spec.get("imports", []):
        importlib.import_module(module)
    manager = SessionManager(spec["config"])
    await manager.start()
    app = make_app(manager)
    host = spec.get("host", "127.0.0.1")
    sockets = tornado.netutil.bind_sockets(int(spec.get("port", 0)), host)
    server = tornado.httpserver.HTTPServer(app, max_body_size=16 * 1024 * 1024)
    server.add_sockets(sockets)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"LISTENING {sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.stop()
    await server.close_all_connections()
    await manager.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m reliability.app SPEC_JSON`` (or ``@file``)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    raw = args[0]
    if raw.startswith("@"):
        with open(raw[1:], encoding="utf-8") as f:
            raw = f.read()
    asyncio.run(serve(json.loads(raw)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
