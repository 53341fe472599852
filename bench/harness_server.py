"""One server process of ``bench/harness.py``: one configuration, seeded, on 127.0.0.1.

    python3 bench/harness_server.py SPEC.json

The harness starts this script once per configuration per round, pinned to
one core, with the interpreter of the configuration (the project's virtualenv,
or a peer's own virtualenv under ``bench/.scratch/``). It imports only the
standard library and Tornado at the top; each configuration imports what it
uses (the library, msgpack, redis, aiomysql, asyncpg, cryptography,
torndsession or pycket), so a peer's virtualenv needs nothing but the peer,
Tornado and its store client.

SPEC (JSON, written by the harness) holds::

    config       name, e.g. "memory-ro" (for the log)
    impl         "bare" | "library" | "naive" | "torndsession" | "pycket"
    backend      "memory" | "file" | "redis" | "mysql" | "postgresql" | "cookie"
    mode         "rw" (read the counter, add 1, write it back) | "ro" (read it)
    sessions     how many sessions to seed (10 small keys each, "n" = seed_base)
    seed_base    the seeded counter value (responses below it mean a lost session)
    cookies      path of the cookie file: one ``name=value`` line per seeded session
    ready        path of the ready file this process writes once it listens
    store        backend parameters: redis_port, redis_prefix, cluster_nodes, mysql / pg
                 connection fields and table, directory, fernet_key, secret

Seeding: a store that lives in this process (``memory``) is seeded on every
start; a persistent one (file, redis, SQL, cookie values) is seeded by the
first server of its (impl, backend) pair in a harness run, which writes the
cookie file; later servers reuse it. Library sessions are seeded through the
library's public API (``session_start`` + item assignment + ``release`` on a
request handler); naive and peer sessions in that code's own format.

Every handler answers ``GET /`` with the counter as the body (text). The
process runs until SIGTERM or SIGINT, then closes its stores and exits 0.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import tornado.httpserver
import tornado.httputil
import tornado.netutil
import tornado.web

HOST = "127.0.0.1"
COOKIE = "sid"
#: Sessions live a day in every store: nothing may expire during a run.
LIFETIME = 86400

Seeder = Callable[[int], Awaitable[list[str]]]
Closer = Callable[[], Awaitable[None]]


def seed_data(i: int, base: int) -> dict[str, Any]:
    """Session *i*'s 10 small keys; ``"n"`` is the counter (*base* at seeding)."""
    return {
        "n": base,
        "user": f"user{i:06d}",
        "uid": i,
        "role": "member",
        "lang": "en",
        "theme": "dark",
        "cart": [1, 2, 3],
        "csrf": f"{i:032x}",
        "seen": 1700000000 + i,
        "admin": False,
    }


class App:
    """What one configuration contributes: the application, its seeder, its cleanup."""

    def __init__(self, app: tornado.web.Application, seed: Seeder, close: Closer | None = None,
                 volatile: bool = False, versions: dict[str, str] | None = None,
                 start: Closer | None = None) -> None:
        self.app = app
        #: Seeds *n* sessions (connecting first if needed); returns their cookie lines.
        self.seed = seed
        #: Connects to the store when the store was seeded earlier (no seeding in this process).
        self.start = start
        self.close = close
        #: True when the store lives in this process and must be seeded on every start.
        self.volatile = volatile
        self.versions = versions or {}


async def _nothing() -> None:
    return None


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # not installed as a distribution (a checkout on PYTHONPATH)
        return "?"


# ---------------------------------------------------------------- bare Tornado


def bare(spec: dict[str, Any]) -> App:
    """A plain handler with a process-wide counter: the baseline every ratio is taken against."""
    count = [0]

    class Bare(tornado.web.RequestHandler):
        def get(self) -> None:
            count[0] += 1
            self.write(str(count[0]))

    async def seed(n: int) -> list[str]:
        return []

    return App(tornado.web.Application([("/", Bare)]), seed, volatile=True)


# ---------------------------------------------------------------- the library


class _Conn:
    """Just enough of an HTTP connection for a RequestHandler to be built (seeding only)."""

    def set_close_callback(self, callback: Any) -> None:
        pass


def make_handler(app: tornado.web.Application, cookie: str | None = None) -> tornado.web.RequestHandler:
    """A ``RequestHandler`` for ``GET /`` (with *cookie*), to call a manager without a server."""
    headers = tornado.httputil.HTTPHeaders({"Host": HOST})
    if cookie is not None:
        headers["Cookie"] = cookie
    request = tornado.httputil.HTTPServerRequest(
        start_line=tornado.httputil.RequestStartLine("GET", "/", "HTTP/1.1"),
        headers=headers,
        connection=_Conn(),  # type: ignore[arg-type]
    )
    return tornado.web.RequestHandler(app, request)


def library_config(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``SessionManager`` configuration of the library on *spec*'s backend."""
    backend, store = spec["backend"], spec["store"]
    base: dict[str, Any] = {
        "provider": backend, "cookie_name": COOKIE, "gc_lifetime": 3600, "max_lifetime": LIFETIME,
    }
    if backend == "memory":
        return {**base, "provider_config": ""}
    if backend == "file":
        return {**base, "provider_config": store["directory"]}
    if backend == "cookie":
        return {**base, "provider_config": {"keys": [store["fernet_key"]]}}
    if backend == "redis":
        return {**base, "provider_config": f"{HOST}:{store['redis_port']},16,",
                "key_prefix": store["redis_prefix"]}
    if backend == "redis_cluster":  # the startup nodes, then beego's pool size
        return {**base, "provider_config": f"{store['cluster_nodes']},16",
                "key_prefix": store["redis_prefix"]}
    if backend == "mysql":
        m = store["mysql"]
        cred = f"{m['user']}:{m['password']}" if m["password"] else m["user"]
        return {**base, "provider_config": (
            f"{cred}@tcp({HOST}:{m['port']})/{m['db']}?table={m['table']}&maxsize=16")}
    if backend == "postgresql":
        p = store["pg"]
        return {**base, "provider_config": (
            f"user={p['user']} password={p['password']} host={HOST} port={p['port']} "
            f"dbname={p['db']} sslmode=disable table={p['table']}")}
    raise ValueError(f"the library has no {backend!r} configuration here")


def library(spec: dict[str, Any]) -> App:
    """``SessionMixin`` on the library's provider *backend*; the counter in ``self.session``."""
    import gosession_tornado
    from gosession_tornado import SessionManager, SessionMixin

    rw = spec["mode"] == "rw"

    class Handler(SessionMixin, tornado.web.RequestHandler):
        def get(self) -> None:
            n = self.session.get("n", 0)
            if rw:
                n += 1
                self.session["n"] = n
            self.write(str(n))

    manager = SessionManager(library_config(spec))
    app = tornado.web.Application([("/", Handler)], session_manager=manager)
    seed_app = tornado.web.Application()
    base = spec["seed_base"]

    async def seed_one(i: int) -> str:
        handler = make_handler(seed_app)
        session = await manager.session_start(handler)
        for key, value in seed_data(i, base).items():
            session[key] = value
        await session.release(handler)
        if not manager.client_side:
            return f"{COOKIE}={session.session_id}"
        for header in handler._headers.get_list("Set-Cookie"):  # the cookie *is* the session
            if header.startswith(COOKIE + "="):
                return header.split(";", 1)[0]
        raise RuntimeError("the cookie provider issued no session cookie while seeding")

    async def seed(n: int) -> list[str]:
        await manager.start()
        lines: list[str] = []
        for start in range(0, n, 256):
            lines += await asyncio.gather(*(seed_one(i) for i in range(start, min(n, start + 256))))
        return lines

    async def close() -> None:
        await manager.close()

    versions = {
        "library": getattr(gosession_tornado, "__version__", "?"),
        "library_file": os.path.dirname(gosession_tornado.__file__ or ""),
    }
    return App(app, seed, close, volatile=spec["backend"] == "memory", versions=versions,
               start=manager.start)


# ---------------------------------------------------------------- naive hand-written code


def naive(spec: dict[str, Any]) -> App:
    """What a user writes in about 20 lines per backend, without a session library."""
    backend = spec["backend"]
    maker = {
        "memory": naive_memory, "file": naive_file, "redis": naive_redis,
        "redis_cluster": naive_redis_cluster, "mysql": naive_mysql,
        "postgresql": naive_postgresql, "cookie": naive_cookie,
    }[backend]
    return maker(spec, spec["mode"] == "rw", spec["seed_base"])


def naive_memory(spec: dict[str, Any], rw: bool, base: int) -> App:
    """A module-level dict of dicts, the id in a plain cookie."""
    sessions: dict[str, dict[str, Any]] = {}

    class Handler(tornado.web.RequestHandler):
        def get(self) -> None:
            sid = self.get_cookie(COOKIE)
            data = sessions.get(sid) if sid else None
            if data is None:
                sid = secrets.token_hex(16)
                data = sessions[sid] = {}
                self.set_cookie(COOKIE, sid)
            n = data.get("n", 0)
            if rw:
                n += 1
                data["n"] = n
            self.write(str(n))

    async def seed(count: int) -> list[str]:
        lines = []
        for i in range(count):
            sid = secrets.token_hex(16)
            sessions[sid] = seed_data(i, base)
            lines.append(f"{COOKIE}={sid}")
        return lines

    return App(tornado.web.Application([("/", Handler)]), seed, volatile=True)


def naive_file(spec: dict[str, Any], rw: bool, base: int) -> App:
    """One msgpack file per session; written to a temp file and renamed (no fsync, no lock)."""
    import msgpack

    directory = spec["store"]["directory"]

    def path(sid: str) -> str:
        return os.path.join(directory, sid)

    def save(sid: str, data: dict[str, Any]) -> None:
        tmp = path(sid) + ".tmp"
        with open(tmp, "wb") as f:
            f.write(msgpack.packb(data))
        os.replace(tmp, path(sid))

    class Handler(tornado.web.RequestHandler):
        def get(self) -> None:
            sid = self.get_cookie(COOKIE)
            data = None
            if sid and sid.isalnum():
                try:
                    with open(path(sid), "rb") as f:
                        data = msgpack.unpackb(f.read())
                except FileNotFoundError:
                    data = None
            if data is None or sid is None:
                sid = secrets.token_hex(16)
                data = {}
                self.set_cookie(COOKIE, sid)
            n = data.get("n", 0)
            if rw:
                n += 1
                data["n"] = n
                save(sid, data)
            self.write(str(n))

    async def seed(count: int) -> list[str]:
        os.makedirs(directory, exist_ok=True)
        lines = []
        for i in range(count):
            sid = secrets.token_hex(16)
            save(sid, seed_data(i, base))
            lines.append(f"{COOKIE}={sid}")
        return lines

    return App(tornado.web.Application([("/", Handler)]), seed,
               versions={"msgpack": _version("msgpack")})


def naive_redis(spec: dict[str, Any], rw: bool, base: int) -> App:
    """redis.asyncio: GET and SET (with EX) of one msgpack blob per session."""
    import redis.asyncio as aioredis

    store = spec["store"]
    return _naive_redis_app(aioredis.Redis(host=HOST, port=store["redis_port"]), store["redis_prefix"],
                            rw, base)


def naive_redis_cluster(spec: dict[str, Any], rw: bool, base: int) -> App:
    """redis.asyncio's ``RedisCluster``: the same GET and SET, routed to each key's master."""
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    store = spec["store"]
    nodes = [ClusterNode(host, int(port))
             for host, port in (n.rsplit(":", 1) for n in store["cluster_nodes"].split(","))]
    return _naive_redis_app(RedisCluster(startup_nodes=nodes), store["redis_prefix"], rw, base)


def _naive_redis_app(client: Any, prefix: str, rw: bool, base: int) -> App:
    """The naive redis handler on *client* (a ``Redis`` or a ``RedisCluster``), keys under *prefix*."""
    import msgpack

    class Handler(tornado.web.RequestHandler):
        async def get(self) -> None:
            sid = self.get_cookie(COOKIE)
            raw = await client.get(prefix + sid) if sid else None
            if raw is None or sid is None:
                sid = secrets.token_hex(16)
                data: dict[str, Any] = {}
                self.set_cookie(COOKIE, sid)
            else:
                data = msgpack.unpackb(raw)
            n = data.get("n", 0)
            if rw:
                n += 1
                data["n"] = n
                await client.set(prefix + sid, msgpack.packb(data), ex=LIFETIME)
            self.write(str(n))

    async def seed(count: int) -> list[str]:
        lines = []
        pipe = client.pipeline(transaction=False)
        for i in range(count):
            sid = secrets.token_hex(16)
            pipe.set(prefix + sid, msgpack.packb(seed_data(i, base)), ex=LIFETIME)
            lines.append(f"{COOKIE}={sid}")
            if len(pipe) >= 500:
                await pipe.execute()
        await pipe.execute()
        return lines

    async def close() -> None:
        await client.aclose()

    return App(tornado.web.Application([("/", Handler)]), seed, close,
               versions={"redis-py": _version("redis"), "msgpack": _version("msgpack")})


def naive_mysql(spec: dict[str, Any], rw: bool, base: int) -> App:
    """aiomysql: SELECT, then INSERT ... ON DUPLICATE KEY UPDATE of a msgpack blob (autocommit)."""
    import aiomysql
    import msgpack

    m = spec["store"]["mysql"]
    table = m["table"]
    select = f"SELECT data FROM `{table}` WHERE id = %s"  # noqa: S608 - the harness's own table name
    upsert = (f"INSERT INTO `{table}` (id, data) VALUES (%s, %s) "  # noqa: S608
              "ON DUPLICATE KEY UPDATE data = VALUES(data)")
    pool: list[Any] = []

    class Handler(tornado.web.RequestHandler):
        async def get(self) -> None:
            sid = self.get_cookie(COOKIE)
            row = None
            async with pool[0].acquire() as conn, conn.cursor() as cur:
                if sid:
                    await cur.execute(select, (sid,))
                    row = await cur.fetchone()
                if row is None or sid is None:
                    sid = secrets.token_hex(16)
                    data: dict[str, Any] = {}
                    self.set_cookie(COOKIE, sid)
                else:
                    data = msgpack.unpackb(row[0])
                n = data.get("n", 0)
                if rw:
                    n += 1
                    data["n"] = n
                    await cur.execute(upsert, (sid, msgpack.packb(data)))
            self.write(str(n))

    async def connect() -> None:
        if not pool:
            pool.append(await aiomysql.create_pool(
                host=HOST, port=m["port"], user=m["user"], password=m["password"], db=m["db"],
                autocommit=True, maxsize=16))

    async def seed(count: int) -> list[str]:
        await connect()
        lines = []
        rows = []
        for i in range(count):
            sid = secrets.token_hex(16)
            rows.append((sid, msgpack.packb(seed_data(i, base))))
            lines.append(f"{COOKIE}={sid}")
        async with pool[0].acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                f"CREATE TABLE IF NOT EXISTS `{table}` (id VARCHAR(64) PRIMARY KEY, data BLOB NOT NULL)")
            for start in range(0, len(rows), 1000):
                await cur.executemany(upsert, rows[start : start + 1000])
        return lines

    async def close() -> None:
        if pool:
            pool[0].close()
            await pool[0].wait_closed()

    return App(tornado.web.Application([("/", Handler)]), seed, close, start=connect,
               versions={"aiomysql": _version("aiomysql"), "msgpack": _version("msgpack")})


def naive_postgresql(spec: dict[str, Any], rw: bool, base: int) -> App:
    """asyncpg: SELECT, then INSERT ... ON CONFLICT DO UPDATE of a msgpack blob."""
    import asyncpg
    import msgpack

    p = spec["store"]["pg"]
    table = p["table"]
    select = f'SELECT data FROM "{table}" WHERE id = $1'  # noqa: S608 - the harness's own table name
    upsert = (f'INSERT INTO "{table}" (id, data) VALUES ($1, $2) '  # noqa: S608
              "ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data")
    pool: list[Any] = []

    class Handler(tornado.web.RequestHandler):
        async def get(self) -> None:
            sid = self.get_cookie(COOKIE)
            raw = await pool[0].fetchval(select, sid) if sid else None
            if raw is None or sid is None:
                sid = secrets.token_hex(16)
                data: dict[str, Any] = {}
                self.set_cookie(COOKIE, sid)
            else:
                data = msgpack.unpackb(raw)
            n = data.get("n", 0)
            if rw:
                n += 1
                data["n"] = n
                await pool[0].execute(upsert, sid, msgpack.packb(data))
            self.write(str(n))

    async def connect() -> None:
        if not pool:
            pool.append(await asyncpg.create_pool(
                host=HOST, port=p["port"], user=p["user"], password=p["password"] or None,
                database=p["db"], ssl="disable", min_size=2, max_size=16))

    async def seed(count: int) -> list[str]:
        await connect()
        lines = []
        rows = []
        for i in range(count):
            sid = secrets.token_hex(16)
            rows.append((sid, msgpack.packb(seed_data(i, base))))
            lines.append(f"{COOKIE}={sid}")
        await pool[0].execute(
            f'CREATE TABLE IF NOT EXISTS "{table}" (id TEXT PRIMARY KEY, data BYTEA NOT NULL)')
        await pool[0].executemany(upsert, rows)
        return lines

    async def close() -> None:
        if pool:
            await pool[0].close()

    return App(tornado.web.Application([("/", Handler)]), seed, close, start=connect,
               versions={"asyncpg": _version("asyncpg"), "msgpack": _version("msgpack")})


def naive_cookie(spec: dict[str, Any], rw: bool, base: int) -> App:
    """The session in the cookie: Fernet(msgpack) by hand with ``cryptography``."""
    import msgpack
    from cryptography.fernet import Fernet, InvalidToken

    fernet = Fernet(spec["store"]["fernet_key"])

    class Handler(tornado.web.RequestHandler):
        def get(self) -> None:
            token = self.get_cookie(COOKIE)
            data: dict[str, Any] = {}
            if token:
                try:
                    data = msgpack.unpackb(fernet.decrypt(token, ttl=LIFETIME))
                except (InvalidToken, ValueError):
                    data = {}
            n = data.get("n", 0)
            if rw:
                n += 1
                data["n"] = n
                self.set_cookie(COOKIE, fernet.encrypt(msgpack.packb(data)).decode("ascii"))
            self.write(str(n))

    async def seed(count: int) -> list[str]:
        return [f"{COOKIE}={fernet.encrypt(msgpack.packb(seed_data(i, base))).decode('ascii')}"
                for i in range(count)]

    return App(tornado.web.Application([("/", Handler)]), seed,
               versions={"cryptography": _version("cryptography"), "msgpack": _version("msgpack")})


# ---------------------------------------------------------------- peers, unpatched


def _expires() -> datetime.datetime:
    return datetime.datetime.utcnow() + datetime.timedelta(seconds=LIFETIME)


def torndsession_app(spec: dict[str, Any]) -> App:
    """torndsession's ``SessionBaseHandler`` with its memory, file or redis driver.

    ``force_persistence`` is on, so a change is saved during the request
    (before the response), as the library does; without it torndsession
    saves in ``on_finish``, after the response went out.
    """
    import torndsession
    from torndsession.sessionhandler import SessionBaseHandler

    backend, store, rw, base = spec["backend"], spec["store"], spec["mode"] == "rw", spec["seed_base"]

    class Handler(SessionBaseHandler):  # type: ignore[misc]
        def get(self) -> None:
            n = self.session.get("n", 0)
            if rw:
                n += 1
                self.session["n"] = n
            self.write(str(n))

    driver_settings: dict[str, Any]
    if backend == "memory":
        driver_settings = {}  # "host" (the application) is filled in below
    elif backend == "file":
        driver_settings = {"host": store["directory"], "prefix": "gsbench"}
    elif backend == "redis":
        driver_settings = {"host": HOST, "port": store["redis_port"], "db": 0}
    else:
        raise ValueError(f"torndsession has no {backend!r} driver here")
    settings = {"driver": backend, "driver_settings": driver_settings, "force_persistence": True,
                "cache_driver": True, "sid_name": COOKIE, "session_lifetime": LIFETIME}
    app = tornado.web.Application([("/", Handler)], session=settings)
    if backend == "memory":
        driver_settings["host"] = app
    prefix = store.get("redis_prefix", "") if backend == "redis" else ""

    async def seed(count: int) -> list[str]:
        from torndsession.driver import SessionDriverFactory

        driver = SessionDriverFactory.create_driver(backend, **driver_settings)(**driver_settings)
        lines = []
        for i in range(count):
            sid = prefix + secrets.token_hex(16)
            data = {**seed_data(i, base), "__expires__": _expires()}
            if backend == "memory":
                # its own format, without save(): save() scans every session once more
                # than 1024 are stored (see the docs), which would make seeding quadratic
                driver._data_handler[sid] = data
            else:
                driver.save(sid, data, data["__expires__"])
            lines.append(f"{COOKIE}={sid}")
        return lines

    return App(app, seed, volatile=backend == "memory",
               versions={"torndsession": getattr(torndsession, "version", "?"),
                         "redis-py": _version("redis")})


def pycket_app(spec: dict[str, Any]) -> App:
    """pycket's ``SessionMixin`` on its redis engine (its id in a signed cookie)."""
    import uuid

    from pycket.driver import DriverFactory
    from pycket.session import SessionManager as PycketManager
    from pycket.session import SessionMixin as PycketMixin

    store, rw, base = spec["store"], spec["mode"] == "rw", spec["seed_base"]
    secret = store["secret"]

    class Handler(tornado.web.RequestHandler, PycketMixin):  # type: ignore[misc]
        def get(self) -> None:
            n = self.session.get("n", 0)
            if rw:
                n += 1
                self.session.set("n", n)
            self.write(str(n))

    storage = {"host": HOST, "port": store["redis_port"], "db_sessions": 0}
    app = tornado.web.Application([("/", Handler)], cookie_secret=secret,
                                  pycket={"engine": "redis", "storage": storage})

    async def seed(count: int) -> list[str]:
        driver = DriverFactory().create("redis", storage, PycketManager.STORAGE_CATEGORY)
        lines = []
        for i in range(count):
            sid = f"{store['redis_prefix']}{uuid.uuid4()}"
            driver.set(sid, seed_data(i, base))
            value = tornado.web.create_signed_value(secret, PycketManager.SESSION_ID_NAME, sid)
            lines.append(f"{PycketManager.SESSION_ID_NAME}={value.decode('ascii')}")
        return lines

    return App(app, seed, versions={"pycket": _version("pycket"), "redis-py": _version("redis")})


BUILDERS: dict[str, Callable[[dict[str, Any]], App]] = {
    "bare": bare, "library": library, "naive": naive, "torndsession": torndsession_app, "pycket": pycket_app,
}


# ---------------------------------------------------------------- main


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _write_atomically(path: str, text: str) -> None:
    """Write *text* to *path* through a temp file and a rename (the harness polls for *path*)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


async def serve(spec: dict[str, Any]) -> None:
    """Build, seed if needed, listen, write the ready file, serve until SIGTERM/SIGINT."""
    started = time.monotonic()
    built = BUILDERS[spec["impl"]](spec)
    cookies = spec["cookies"]
    seeded = 0
    if spec["impl"] != "bare" and (built.volatile or not _exists(cookies)):
        lines = await built.seed(spec["sessions"])
        seeded = len(lines)
        _write_atomically(cookies, "".join(line + "\n" for line in lines))
    elif built.start is not None:
        await built.start()
    sockets = tornado.netutil.bind_sockets(0, HOST, backlog=1024)
    server = tornado.httpserver.HTTPServer(built.app)
    server.add_sockets(sockets)
    versions = {"python": sys.version.split()[0], "tornado": tornado.version, **built.versions}
    ready = {
        "port": sockets[0].getsockname()[1], "pid": os.getpid(), "seeded": seeded,
        "startup_s": round(time.monotonic() - started, 3), "versions": versions,
    }
    _write_atomically(spec["ready"], json.dumps(ready))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    await server.close_all_connections()
    if built.close is not None:
        await built.close()


def main(argv: list[str]) -> int:
    """``harness_server.py SPEC.json``: serve one configuration until SIGTERM."""
    with open(argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    asyncio.run(serve(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
