"""The ``file`` provider: layout, modes, atomic writes, path safety, expiry/GC and
cross-process updates, against a real directory (and real subprocesses)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import pathlib
import secrets
import signal
import stat
import sys
import textwrap
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import tornado.web

from gosession_tornado import (
    ConfigError,
    ProviderUnavailableError,
    Session,
    SessionManager,
    SessionMixin,
    codec,
)
from gosession_tornado.provider import Changes, Destroy, Read, Release
from gosession_tornado.providers import file as file_module
from gosession_tornado.providers.file import (
    TEMP_GRACE,
    FileProvider,
    InvalidSessionIdError,
    UnsafePathError,
    refresh_step,
    session_path,
)

from .conftest import free_port

REPO = pathlib.Path(__file__).resolve().parent.parent

ProviderMaker = Callable[..., Awaitable[FileProvider]]


def new_sid() -> str:
    return secrets.token_hex(16)


def add(**kv: Any) -> Changes:
    """Changes that set *kv* on an existing record."""
    return Changes(set=kv)


def create(**kv: Any) -> Changes:
    """Changes that set *kv*, creating the record if needed."""
    return Changes(set=kv, create=True)


def files_under(root: pathlib.Path) -> list[pathlib.Path]:
    """Every non-directory entry under *root* (symlinks not followed)."""
    return sorted(p for p in root.rglob("*") if not p.is_dir() or p.is_symlink())


def snapshot(root: pathlib.Path) -> dict[str, tuple[int, int, bytes | None]]:
    """path -> (mode, mtime_ns, content) of everything under *root*, symlinks not followed."""
    out: dict[str, tuple[int, int, bytes | None]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        content = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
        out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, content)
    return out


def backdate(path: pathlib.Path, seconds: float) -> None:
    """Set *path*'s atime/mtime to *seconds* ago (symlinks not followed)."""
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def record_bytes(data: dict[Any, Any], lifetime: int = 3600) -> bytes:
    return codec.encode({"data": data, "lifetime": lifetime})


#: Whether this platform and tmp_path's filesystem support exchange mode (spare file +
#: RENAME_EXCHANGE + OFD pins); tests of both modes force the classic one with FORCE_RENAME.
EXCHANGE = sys.platform.startswith("linux") and file_module.probe_exchange(
    os.environ.get("TMPDIR", "/tmp")
)
MODES = ["exchange", "rename"] if EXCHANGE else ["rename"]
#: Prepended to a child interpreter's script: argv[-1] == "rename" forces the classic mode.
FORCE_RENAME = """
    import sys
    from gosession_tornado.providers import file as _file
    if sys.argv[-1] == "rename":
        _file.probe_exchange = lambda directory: False
"""


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test in exchange mode (where supported) and in the classic rename mode."""
    if request.param == "rename":
        monkeypatch.setattr(file_module, "probe_exchange", lambda directory: False)
    return str(request.param)


@pytest.fixture
async def make_provider(tmp_path: pathlib.Path) -> AsyncIterator[ProviderMaker]:
    """``p = await make_provider(max_lifetime=3600, path=None, timeout=None)``; closed after the test."""
    made: list[FileProvider] = []

    async def make(max_lifetime: int = 3600, path: Any = None, timeout: float | None = None) -> FileProvider:
        p = FileProvider()
        if timeout is not None:
            p.manager_config = types.SimpleNamespace(provider_timeout=timeout)
        await p.session_init(max_lifetime, str(tmp_path / "s") if path is None else path)
        made.append(p)
        return p

    yield make
    for p in made:
        await p.session_close()


def spare_of(path: pathlib.Path) -> pathlib.Path:
    """The spare file exchange mode keeps beside the session file *path*."""
    return path.with_name(f".{path.name}.spare")


def session_files(root: pathlib.Path) -> list[pathlib.Path]:
    """Like :func:`files_under`, without the spares exchange mode keeps."""
    return [f for f in files_under(root) if not f.name.endswith(".spare")]


async def run_python(code: str, *args: str, timeout: float = 120) -> str:
    """Run *code* in a fresh interpreter; return its stdout, failing on a non-zero exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(code), *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode}):\n{err.decode()}"
    return out.decode()


def file_manager(path: pathlib.Path, **kw: Any) -> SessionManager:
    return SessionManager({"provider": "file", "cookie_name": "sid", "provider_config": str(path), **kw})


class KeysHandler(SessionMixin, tornado.web.RequestHandler):
    """``GET /?k=key&v=value`` sets one key; the body lists the session's keys."""

    async def get(self) -> None:
        key = self.get_argument("k", None)
        if key is not None:
            self.session[key] = self.get_argument("v", "")
        self.write({"sid": self.session.session_id, "keys": sorted(map(str, self.session.keys()))})


# ---------------------------------------------------------------- config


async def test_seed_positional_form_creates_relative_dir(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with SessionManager("file", "gosessionid", 3600, "./tmp") as m:
        sid = m.new_sid()
        s = Session(m, sid, {}, is_new=True)
        s["user"] = "ann"
        await s.release()
        # resolved once at start: a later chdir does not move the store
        monkeypatch.chdir(REPO)
        assert await m.read(sid) == {"user": "ann"}
    assert (tmp_path / "tmp" / sid[0] / sid[1] / sid).is_file()
    assert stat.S_IMODE((tmp_path / "tmp").stat().st_mode) == 0o700


async def test_seed_json_dict_and_default_forms(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    json_dir = tmp_path / "json" / "nested"
    forms = [
        SessionManager("file", json.dumps({"cookieName": "gosessionid", "gclifetime": 3600,
                                           "ProviderConfig": str(json_dir)})),
        SessionManager({"provider": "file", "provider_config": {"save_path": str(tmp_path / "d1")}}),
        SessionManager({"provider": "file", "provider_config": {"savePath": str(tmp_path / "d2")}}),
    ]
    monkeypatch.chdir(tmp_path)
    forms.append(SessionManager("file", "gosessionid", 3600, ""))  # beego's default "./tmp"
    for m, where in zip(forms, [json_dir, tmp_path / "d1", tmp_path / "d2", tmp_path / "tmp"]):
        async with m:
            s = Session(m, m.new_sid(), {}, is_new=True)
            s["n"] = 1
            await s.release()
        assert files_under(where) == [where / s.session_id[0] / s.session_id[1] / s.session_id]


@pytest.mark.parametrize(
    "config",
    [5, ["/tmp/x"], {"save_path": 5}, {"save_path": "/tmp/a", "path": "/tmp/b"}, "bad\x00path"],
)
async def test_bad_config_raises_config_error(config: Any) -> None:
    async def build_and_start() -> None:  # the error may come at construction or at start
        m = SessionManager({"provider": "file", "provider_config": config})
        try:
            await m.start()
        finally:
            await m.close()

    with pytest.raises(ConfigError, match="provider_config"):
        await build_and_start()


async def test_unknown_dict_key_warns_and_is_ignored(tmp_path: pathlib.Path) -> None:
    m = SessionManager({"provider": "file", "provider_config": {"save_path": str(tmp_path / "d"), "mode": 7}})
    with pytest.warns(UserWarning, match="'mode'"):
        await m.start()
    await m.close()
    assert (tmp_path / "d").is_dir()


async def test_save_path_that_is_a_file_raises_config_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("x")
    m = file_manager(tmp_path / "file")
    with pytest.raises(ConfigError):
        await m.start()
    await m.close()


# ---------------------------------------------------------------- layout


async def test_layout_modes_and_record_format(make_provider: ProviderMaker, tmp_path: pathlib.Path) -> None:
    old = os.umask(0)  # modes must not depend on the umask
    try:
        p = await make_provider(max_lifetime=600)
        sid = new_sid()
        await p.session_release(sid, create(user="ann", n=1), 120)
    finally:
        os.umask(old)
    save = tmp_path / "s"
    path = save / sid[0] / sid[1] / sid
    assert pathlib.Path(session_path(str(save), sid)) == path
    assert files_under(save) == [path]  # no temp file left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for d in (save, save / sid[0], save / sid[0] / sid[1]):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert codec.decode(path.read_bytes()) == {"data": {"user": "ann", "n": 1}, "lifetime": 120}


async def test_update_replaces_file_atomically(
    make_provider: ProviderMaker, tmp_path: pathlib.Path, mode: str
) -> None:
    p = await make_provider()
    assert p.exchange_mode is (mode == "exchange")
    sid = new_sid()
    await p.session_release(sid, create(a=1), 3600)
    path = tmp_path / "s" / sid[0] / sid[1] / sid
    first = path.stat().st_ino
    await p.session_release(sid, add(b=2), 3600)
    second = path.stat().st_ino
    assert second != first  # another file put in place by one rename, not rewritten in place
    assert await p.session_read(sid) == {"a": 1, "b": 2}
    if mode == "rename":
        assert files_under(tmp_path / "s") == [path]
        return
    # Exchange mode: the old version became the spare, and the next write recycles it.
    spare = spare_of(path)
    assert files_under(tmp_path / "s") == [spare, path]
    assert spare.stat().st_ino == first
    assert codec.decode(spare.read_bytes())["data"] == {"a": 1}
    assert stat.S_IMODE(spare.stat().st_mode) == 0o600
    for i in range(5):
        await p.session_release(sid, add(i=i), 3600)
        assert {path.stat().st_ino, spare.stat().st_ino} == {first, second}  # no new inode
    assert await p.session_read(sid) == {"a": 1, "b": 2, "i": 4}
    await p.session_release(sid, Changes(set={"big": "x" * 10000}), 3600)
    await p.session_release(sid, Changes(deleted=frozenset({"big"})), 3600)  # shorter than the spare
    assert await p.session_read(sid) == {"a": 1, "b": 2, "i": 4}
    assert codec.decode(path.read_bytes())["data"] == {"a": 1, "b": 2, "i": 4}


async def test_sigkill_mid_write_leaves_previous_content(
    make_provider: ProviderMaker, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Classic mode, killed at a random moment (exchange mode: the test below)."""
    monkeypatch.setattr(file_module, "probe_exchange", lambda directory: False)
    size = 8 * 1024 * 1024
    p = await make_provider()
    sid = new_sid()
    await p.session_release(sid, create(v=0, blob=b"\x00" * size), 3600)
    shard = tmp_path / "s" / sid[0] / sid[1]
    writer = """
        import asyncio, sys
        from gosession_tornado.provider import Changes
        from gosession_tornado.providers.file import FileProvider

        async def main():
            p = FileProvider()
            await p.session_init(3600, sys.argv[1])
            sid, size, i = sys.argv[2], int(sys.argv[3]), 1
            while True:
                await p.session_release(sid, Changes(set={"v": i, "blob": bytes([i % 256]) * size}), 3600)
                i += 1

        asyncio.run(main())
    """
    caught_mid_write = 0
    for _attempt in range(5):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", textwrap.dedent(FORCE_RENAME) + textwrap.dedent(writer),
            str(tmp_path / "s"), sid, str(size), "rename", cwd=REPO,
        )
        try:
            deadline = time.monotonic() + 60
            # Wait until a temp file holds part of a record, i.e. a write is in progress.
            while not any(f.name.startswith(".") and f.stat().st_size > 0 for f in shard.iterdir()):
                assert time.monotonic() < deadline, "the writer never started a write"
                await asyncio.sleep(0.002)
        except FileNotFoundError:
            pass  # the temp file was renamed while we looked: still mid-loop
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        orphans = [f for f in shard.iterdir() if f.name.startswith(".")]
        caught_mid_write += bool(orphans)
        data = await p.session_read(sid)
        assert data is not None, "a killed writer left no readable session"
        v = data["v"]
        assert data["blob"] == bytes([v % 256]) * size  # one complete version, never a mix
        if caught_mid_write:
            break
    assert caught_mid_write, "never managed to kill the writer mid-write"
    # The orphaned temp file is left alone while young, and collected once old.
    await p.session_gc()
    assert [f for f in shard.iterdir() if f.name.startswith(".")] == orphans
    for f in orphans:
        backdate(f, TEMP_GRACE + 5)
    await p.session_gc()
    assert [f.name for f in shard.iterdir()] == [sid]
    assert (await p.session_read(sid) or {}).get("v") == v


CRASHER = """
    import asyncio, os, signal, sys
    from gosession_tornado.provider import Changes
    from gosession_tornado.providers import file as F

    path, sid, point = sys.argv[1], sys.argv[2], sys.argv[3]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "mid-write":  # the record is half written when the process dies
        real_write, real_pwrite = os.write, os.pwrite

        def write(fd, data):
            if len(data) >= 1000:
                real_write(fd, bytes(data)[: len(data) // 2])
                die()
            return real_write(fd, data)

        def pwrite(fd, data, offset):
            if len(data) >= 1000:
                real_pwrite(fd, bytes(data)[: len(data) // 2], offset)
                die()
            return real_pwrite(fd, data, offset)

        os.write, os.pwrite = write, pwrite
    else:  # written and fsync-ed, not yet renamed or exchanged into place
        real_fsync = os.fsync

        def fsync(fd):
            real_fsync(fd)
            die()

        os.fsync = fsync

    async def main():
        p = F.FileProvider()
        await p.session_init(3600, path)
        await p.session_release(sid, Changes(set={"v": 2, "blob": b"\\x02" * 100000}), 3600)

    asyncio.run(main())
"""


@pytest.mark.parametrize("point", ["mid-write", "before-rename"])
async def test_sigkill_at_each_step_of_a_save_leaves_a_complete_record(
    make_provider: ProviderMaker, tmp_path: pathlib.Path, mode: str, point: str
) -> None:
    p = await make_provider()
    sid = new_sid()
    for v in (0, 1):  # two versions: in exchange mode the spare now holds v=0
        await p.session_release(sid, create(v=v, blob=bytes([v]) * 100000), 3600)
    path = tmp_path / "s" / sid[0] / sid[1] / sid
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(FORCE_RENAME) + textwrap.dedent(CRASHER),
        str(tmp_path / "s"), sid, point, mode, cwd=REPO,
    )
    assert await asyncio.wait_for(proc.wait(), 60) == -signal.SIGKILL
    assert await p.session_read(sid) == {"v": 1, "blob": b"\x01" * 100000}  # the previous version, whole
    leftovers = [f for f in files_under(tmp_path / "s") if f != path]
    if mode == "rename":
        assert len(leftovers) == 1 and ".tmp." in leftovers[0].name  # an orphaned temp file ...
        await p.session_gc()
        assert leftovers[0].exists()  # ... left alone while young ...
        backdate(leftovers[0], TEMP_GRACE + 5)
        await p.session_gc()
        assert files_under(tmp_path / "s") == [path]  # ... and collected once old
    else:
        assert leftovers == [spare_of(path)]  # the killed write went to the spare only
        await p.session_gc()
        assert leftovers[0].exists()  # the spare of a live session stays
    # The next save works and overwrites whatever the killed one left.
    await p.session_release(sid, add(v=3, blob=b"\x03" * 100000), 3600)
    assert await p.session_read(sid) == {"v": 3, "blob": b"\x03" * 100000}
    for f in files_under(tmp_path / "s"):
        data = codec.decode(f.read_bytes())["data"]
        assert data["blob"] == bytes([data["v"]]) * 100000  # every file holds one whole version


# ---------------------------------------------------------------- path safety

BAD_SIDS = [
    "../../../../../../etc/passwd",
    "..",
    "../" + "a" * 30,
    "ab/" + "c" * 30,
    "a" * 20 + "\x00" + "b" * 12,
    ".hidden" + "a" * 30,
    "short",
    "",
    "a" * 161,
    "é" * 32,
    "a" * 31 + "\n",
    " " + "a" * 31,
    "a" * 15,
]


async def test_bad_sids_never_touch_the_filesystem(
    make_provider: ProviderMaker, tmp_path: pathlib.Path
) -> None:
    p = await make_provider()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "marker").write_text("keep")
    before = snapshot(tmp_path)
    good = new_sid()
    for sid in BAD_SIDS:
        assert await p.session_read(sid) is None
        assert await p.session_exist(sid) is False
        await p.session_destroy(sid)
        for changes in (create(x=1), add(x=1)):
            with pytest.raises(InvalidSessionIdError):
                await p.session_release(sid, changes, 3600)
        with pytest.raises(InvalidSessionIdError):
            await p.session_regenerate(sid, good)
        with pytest.raises(InvalidSessionIdError):
            await p.session_regenerate(good, sid)
        with pytest.raises(InvalidSessionIdError):
            session_path(str(tmp_path / "s"), sid)
    assert snapshot(tmp_path) == before
    assert await p.session_all() == 0


async def test_bad_sid_cookie_gets_fresh_session(
    serve: Callable[..., Awaitable[Any]], tmp_path: pathlib.Path
) -> None:
    m = file_manager(tmp_path / "s")
    client = await serve([(r"/", KeysHandler)], session_manager=m)
    try:
        before = snapshot(tmp_path)
        for bad in ("../../etc/passwd", "..%2F..%2Fetc", "a" * 200):
            resp = await client.fetch("/?k=x&v=1", headers={"Cookie": f"sid={bad}"}, use_jar=False)
            assert resp.code == 200
            assert json.loads(resp.body)["sid"] != bad
        written = set(snapshot(tmp_path)) - set(before)
        assert written and all(name == "s" or name.startswith("s/") for name in written)
    finally:
        await m.close()


async def test_symlinked_session_file_is_not_followed(
    make_provider: ProviderMaker, tmp_path: pathlib.Path
) -> None:
    p = await make_provider(max_lifetime=60)
    sid = new_sid()
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(record_bytes({"stolen": True}))
    backdate(victim, 3600)  # expired by its lifetime: GC would delete it if it followed the link
    shard = tmp_path / "s" / sid[0] / sid[1]
    shard.mkdir(parents=True)
    (shard / sid).symlink_to(victim)
    before = snapshot(outside)

    assert await p.session_read(sid) is None
    assert await p.session_exist(sid) is False
    with pytest.raises(UnsafePathError):
        await p.session_release(sid, create(x=1), 60)
    with pytest.raises(UnsafePathError):
        await p.session_release(sid, add(x=1), 60)
    with pytest.raises(UnsafePathError):
        await p.session_regenerate(sid, new_sid())
    await p.session_destroy(sid)
    await p.session_gc()
    assert await p.session_all() == 0

    assert snapshot(outside) == before  # content and mtime untouched
    assert (shard / sid).is_symlink()


@pytest.mark.parametrize("level", [1, 2])
async def test_symlinked_shard_directory_is_not_followed(
    make_provider: ProviderMaker, tmp_path: pathlib.Path, level: int
) -> None:
    p = await make_provider(max_lifetime=60)
    sid = new_sid()
    outside = tmp_path / "outside"
    # What the tree would look like through the link: a valid (expired) session file.
    target_file = outside / sid[1] / sid if level == 1 else outside / sid
    target_file.parent.mkdir(parents=True)
    target_file.write_bytes(record_bytes({"stolen": True}, lifetime=60))
    backdate(target_file, 3600)
    save = tmp_path / "s"
    if level == 1:
        (save / sid[0]).symlink_to(outside, target_is_directory=True)
    else:
        (save / sid[0]).mkdir()
        (save / sid[0] / sid[1]).symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)

    assert await p.session_read(sid) is None
    assert await p.session_exist(sid) is False
    with pytest.raises(UnsafePathError):
        await p.session_release(sid, create(x=1), 60)
    with pytest.raises(UnsafePathError):
        await p.session_regenerate(new_sid(), sid)  # the new sid's shard is the symlink
    await p.session_destroy(sid)
    await p.session_gc()
    assert await p.session_all() == 0
    assert snapshot(outside) == before


async def test_fifo_and_directory_named_like_a_session_are_skipped(
    make_provider: ProviderMaker, tmp_path: pathlib.Path
) -> None:
    p = await make_provider(max_lifetime=1)
    fifo_sid, dir_sid = new_sid(), new_sid()
    for sid in (fifo_sid, dir_sid):
        (tmp_path / "s" / sid[0] / sid[1]).mkdir(parents=True, exist_ok=True)
    os.mkfifo(tmp_path / "s" / fifo_sid[0] / fifo_sid[1] / fifo_sid)
    (tmp_path / "s" / dir_sid[0] / dir_sid[1] / dir_sid).mkdir()
    for sid in (fifo_sid, dir_sid):
        assert await asyncio.wait_for(p.session_read(sid), 10) is None
        with pytest.raises(UnsafePathError):
            await asyncio.wait_for(p.session_release(sid, create(x=1), 1), 10)
    await asyncio.wait_for(p.session_gc(), 10)
    assert await p.session_all() == 0
    assert stat.S_ISFIFO((tmp_path / "s" / fifo_sid[0] / fifo_sid[1] / fifo_sid).lstat().st_mode)
    assert (tmp_path / "s" / dir_sid[0] / dir_sid[1] / dir_sid).is_dir()


# ---------------------------------------------------------------- expiry and GC


async def test_expired_session_is_never_served_and_gc_removes_it(
    make_provider: ProviderMaker, tmp_path: pathlib.Path
) -> None:
    p = await make_provider(max_lifetime=1)
    sid = new_sid()
    await p.session_release(sid, create(a=1), 1)
    assert await p.session_read(sid) == {"a": 1}
    await asyncio.sleep(1.2)
    path = tmp_path / "s" / sid[0] / sid[1] / sid
    assert path.exists()  # GC has not run ...
    assert await p.session_read(sid) is None  # ... yet it is not served
    assert await p.session_exist(sid) is False
    assert await p.session_all() == 0
    await p.session_gc()
    assert not path.exists()


async def test_read_refreshes_last_access(make_provider: ProviderMaker, tmp_path: pathlib.Path) -> None:
    p = await make_provider(max_lifetime=2)
    sid = new_sid()
    await p.session_release(sid, create(a=1), 2)
    path = tmp_path / "s" / sid[0] / sid[1] / sid
    backdate(path, 1.5)  # 0.5 s left
    stale = path.stat().st_mtime
    assert await p.session_exist(sid) is True
    assert path.stat().st_mtime == stale  # exist() does not refresh
    assert await p.session_read(sid) == {"a": 1}
    assert path.stat().st_mtime > stale + 1  # read() does
    backdate(path, 2.5)
    assert await p.session_read(sid) is None


async def test_per_session_lifetime_is_stored_and_honoured(
    make_provider: ProviderMaker, tmp_path: pathlib.Path
) -> None:
    p = await make_provider(max_lifetime=1)
    long_sid, short_sid = new_sid(), new_sid()
    await p.session_release(long_sid, create(a=1), 100)
    await p.session_release(short_sid, create(a=1), 1)
    for sid in (long_sid, short_sid):
        backdate(tmp_path / "s" / sid[0] / sid[1] / sid, 50)
    await p.session_gc()
    assert await p.session_read(long_sid) == {"a": 1}
    assert await p.session_read(short_sid) is None
    assert files_under(tmp_path / "s") == [tmp_path / "s" / long_sid[0] / long_sid[1] / long_sid]
    # Changing only the lifetime rewrites the record.
    await p.session_release(long_sid, Changes(), 7)
    raw = (tmp_path / "s" / long_sid[0] / long_sid[1] / long_sid).read_bytes()
    assert codec.decode(raw)["lifetime"] == 7


async def test_thousand_sessions_created_then_gced_leave_none(tmp_path: pathlib.Path) -> None:
    save = tmp_path / "s"
    async with file_manager(save, max_lifetime=1, provider_timeout=60) as m:

        async def one(i: int) -> str:
            s = Session(m, m.new_sid(), {}, is_new=True)
            s["i"] = i
            await s.release()
            return s.session_id

        sids = await asyncio.gather(*(one(i) for i in range(1000)))
        assert len(set(sids)) == 1000
        assert len(files_under(save)) == 1000
        assert m.stats()["largest_batch"] > 1  # the actor batched the releases
        await asyncio.sleep(1.2)
        await m.gc()
        assert files_under(save) == []
        assert await m.get_active_sessions() == 0


async def test_session_all_counts_live_sessions(make_provider: ProviderMaker, tmp_path: pathlib.Path) -> None:
    p = await make_provider(max_lifetime=60)
    sids = [new_sid() for _ in range(5)]
    for sid in sids:
        await p.session_release(sid, create(a=1), 60)
    assert await p.session_all() == 5
    backdate(tmp_path / "s" / sids[0][0] / sids[0][1] / sids[0], 120)
    await p.session_destroy(sids[1])
    assert await p.session_all() == 3


async def test_gc_time_budget_resumes_where_it_stopped(
    make_provider: ProviderMaker, tmp_path: pathlib.Path
) -> None:
    p = await make_provider(max_lifetime=1)
    sids = [new_sid() for _ in range(40)]
    for sid in sids:
        await p.session_release(sid, create(a=1), 1)
        backdate(tmp_path / "s" / sid[0] / sid[1] / sid, 10)
    assert p._store is not None
    p._store.gc_budget = 0.0  # every pass stops after one shard directory
    passes = 0
    while files_under(tmp_path / "s"):
        await p.session_gc()
        passes += 1
        assert passes <= 40
    assert passes > 1


# ---------------------------------------------------------------- verbs


async def test_regenerate_moves_the_file(make_provider: ProviderMaker, tmp_path: pathlib.Path) -> None:
    p = await make_provider()
    old, new = new_sid(), new_sid()
    await p.session_release(old, create(user="ann"), 3600)
    old_path = tmp_path / "s" / old[0] / old[1] / old
    inode = old_path.stat().st_ino
    assert await p.session_regenerate(old, new) == {"user": "ann"}
    new_path = tmp_path / "s" / new[0] / new[1] / new
    assert not old_path.exists()
    assert new_path.stat().st_ino == inode  # renamed, not copied
    assert await p.session_read(old) is None
    assert await p.session_read(new) == {"user": "ann"}
    await p.session_release(old, add(x=1), 3600)  # a late release for the old id
    assert not old_path.exists()


async def test_regenerate_of_missing_session_creates_empty_record(make_provider: ProviderMaker) -> None:
    p = await make_provider()
    new = new_sid()
    assert await p.session_regenerate(new_sid(), new) == {}
    assert await p.session_exist(new) is True


async def test_release_never_resurrects(make_provider: ProviderMaker, tmp_path: pathlib.Path) -> None:
    p = await make_provider(max_lifetime=60)
    sid = new_sid()
    path = tmp_path / "s" / sid[0] / sid[1] / sid
    await p.session_release(sid, add(a=1), 60)  # never existed, not create
    assert not path.exists()
    await p.session_release(sid, create(a=1), 60)
    await p.session_destroy(sid)
    assert not path.exists()
    await p.session_release(sid, add(b=2), 60)
    assert not path.exists()
    await p.session_release(sid, create(c=3), 60)
    backdate(path, 120)  # expired, not yet collected
    await p.session_release(sid, add(d=4), 60)
    assert await p.session_read(sid) is None
    assert not path.exists()
    await p.session_release(sid, create(e=5), 60)  # a new session may reuse nothing stale
    assert await p.session_read(sid) == {"e": 5}


async def test_release_applies_only_the_changes(make_provider: ProviderMaker) -> None:
    a, b = await make_provider(), await make_provider()  # two stores on one directory
    sid = new_sid()
    await a.session_release(sid, create(keep=1, drop=2, other=3), 3600)
    assert await a.session_read(sid) == {"keep": 1, "drop": 2, "other": 3}
    await b.session_release(sid, add(from_b=True), 3600)
    await a.session_release(sid, Changes(set={"from_a": True}, deleted=frozenset({"drop"})), 3600)
    assert await b.session_read(sid) == {"keep": 1, "other": 3, "from_b": True, "from_a": True}
    await a.session_release(sid, Changes(set={"fresh": 1}, flushed=True), 3600)
    assert await b.session_read(sid) == {"fresh": 1}


async def test_batch_is_handled_in_order(make_provider: ProviderMaker) -> None:
    p = await make_provider()
    sid = new_sid()
    out = await p.handle_batch([
        Read(sid),
        Release(sid, create(a=1), 3600),
        Read(sid),
        Release(sid, add(b=2), 3600),
        Release("../bad", add(b=2), 3600),
        Read(sid),
    ])
    assert out[:4] == [None, None, {"a": 1}, None]
    assert isinstance(out[4], InvalidSessionIdError)  # fails alone; the batch goes on
    assert out[5] == {"a": 1, "b": 2}


async def test_corrupt_file_reads_as_none_with_warning(
    make_provider: ProviderMaker, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = await make_provider()
    sid = new_sid()
    shard = tmp_path / "s" / sid[0] / sid[1]
    shard.mkdir(parents=True)
    for garbage in (b"\xc1\xff\x00garbage", codec.encode(["not", "a", "record"]), b""):
        (shard / sid).write_bytes(garbage)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="gosession_tornado.providers.file"):
            assert await p.session_read(sid) is None
        messages = [r.getMessage() for r in caplog.records]
        assert any(sid[:8] + "…" in m for m in messages)  # named, but never in full (issue 9)
        assert not any(sid in m for m in messages)
    await p.session_release(sid, add(a=1), 3600)  # a corrupt record counts as missing
    assert not (shard / sid).exists()


async def test_corrupt_file_over_http_gives_fresh_session(
    serve: Callable[..., Awaitable[Any]], tmp_path: pathlib.Path
) -> None:
    m = file_manager(tmp_path / "s")
    client = await serve([(r"/", KeysHandler)], session_manager=m)
    try:
        resp = await client.fetch("/?k=a&v=1")
        sid = json.loads(resp.body)["sid"]
        (tmp_path / "s" / sid[0] / sid[1] / sid).write_bytes(os.urandom(64))
        resp = await client.fetch("/?k=b&v=2")
        assert resp.code == 200
        body = json.loads(resp.body)
        assert body["sid"] != sid
        assert body["keys"] == ["b"]
    finally:
        await m.close()


# ---------------------------------------------------------------- exchange mode: spares and pins


def ofd_lock(fd: int, kind: int) -> None:
    """Take an OFD lock (what exchange-mode readers and spare writers use) on all of *fd*."""
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, file_module._flock_arg(kind))


needs_exchange = pytest.mark.skipif(not EXCHANGE, reason="exchange mode is not available here")


@needs_exchange
async def test_a_spare_a_reader_still_holds_is_not_rewritten(
    make_provider: ProviderMaker, tmp_path: pathlib.Path
) -> None:
    p = await make_provider()
    sid = new_sid()
    await p.session_release(sid, create(v=0), 3600)
    await p.session_release(sid, add(v=1), 3600)  # the spare now holds v=0
    path = tmp_path / "s" / sid[0] / sid[1] / sid
    spare = spare_of(path)
    # A reader (another process) opened the file while v=0 was current and pinned it.
    reader = os.open(spare, os.O_RDONLY)
    try:
        ofd_lock(reader, fcntl.F_RDLCK)
        pinned = spare.stat().st_ino
        await p.session_release(sid, add(v=2), 3600)
        assert await p.session_read(sid) == {"v": 2}
        assert os.pread(reader, 1000, 0) == record_bytes({"v": 0})  # not rewritten under the reader
        assert path.stat().st_ino != pinned  # a new temp file was renamed in instead ...
        assert spare.stat().st_ino == pinned  # ... and the pinned spare left as it was
    finally:
        os.close(reader)
    await p.session_release(sid, add(v=3), 3600)  # and the spare is reused again
    assert await p.session_read(sid) == {"v": 3}


@needs_exchange
@pytest.mark.parametrize("reader_mode", ["exchange", "rename"])
async def test_reads_never_see_a_spare_being_rewritten(
    make_provider: ProviderMaker,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    reader_mode: str,
) -> None:
    p = await make_provider()
    sid = new_sid()
    await p.session_release(sid, create(v=0), 3600)
    path = tmp_path / "s" / sid[0] / sid[1] / sid
    if reader_mode == "rename":  # a process in rename mode pins too (where OFD locks exist)
        with monkeypatch.context() as m:
            m.setattr(file_module, "probe_exchange", lambda directory: False)
            reader = await make_provider()
        assert not reader.exchange_mode
    else:
        reader = p
    store = reader._store
    assert store is not None and store.pin
    dfd = store.shard_fd(sid, create=False)
    assert dfd is not None
    # A reader opened the current file; then a save exchanged it out and the next save
    # started rewriting it as the spare (OFD write lock held) before the reader pinned it.
    stale = os.open(path, os.O_RDONLY)
    try:
        await p.session_release(sid, add(v=1), 3600)
        writer = os.open(spare_of(path), os.O_RDWR)
        ofd_lock(writer, fcntl.F_WRLCK)
        os.pwrite(writer, b"\xc1garbage", 0)
        try:
            assert not file_module._ofd_lock(stale, file_module._PIN)  # the pin is refused ...
            opened = await asyncio.to_thread(store._open_current, dfd, sid, str(path))
            assert opened is not None  # ... so the reader opens the name again
            fd, st = opened
            os.close(fd)
            assert st.st_ino == path.stat().st_ino
            assert await reader.session_read(sid) == {"v": 1}
        finally:
            os.close(writer)
        # Pinned after the rewrite finished but not renamed back: the name check catches it.
        assert file_module._ofd_lock(stale, file_module._PIN)
        assert await reader.session_read(sid) == {"v": 1}
    finally:
        os.close(stale)


async def test_a_batch_of_saves_is_fsynced_together_and_answered_in_order(
    make_provider: ProviderMaker, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    p = await make_provider()
    sids = [new_sid() for _ in range(6)]
    for sid in sids:
        await p.session_release(sid, create(v=0), 3600)
    groups: list[int] = []
    real_fsync_all = file_module._Store._fsync_all

    def fsync_all(self: Any, fds: list[int]) -> list[BaseException | None]:
        groups.append(len(fds))
        return real_fsync_all(self, fds)

    monkeypatch.setattr(file_module._Store, "_fsync_all", fsync_all)
    a, b = sids[0], sids[1]
    out = await p.handle_batch(
        [Release(sid, add(v=1), 3600) for sid in sids]  # one wave of six
        + [
            Read(a),  # sees the wave's save
            Release(a, add(w=2), 3600),
            Release(b, add(w=2), 3600),
            Release(a, add(x=3), 3600),  # a is in the wave: finish it first
            Read(a),
            Release(b, Changes(deleted=frozenset({"w"})), 3600),
            Read(b),
        ]
    )
    assert out == [None] * 6 + [{"v": 1}, None, None, None, {"v": 1, "w": 2, "x": 3}, None, {"v": 1}]
    if mode == "exchange":
        assert groups == [6, 2, 1, 1]
    else:
        assert groups == []  # rename mode fsyncs each temp file on its own


@needs_exchange
@pytest.mark.parametrize("second", ["save", "destroy"])
async def test_a_save_waiting_for_a_lock_holds_no_other_lock(
    make_provider: ProviderMaker, tmp_path: pathlib.Path, second: str
) -> None:
    p = await make_provider()
    a, b = new_sid(), new_sid()
    for sid in (a, b):
        await p.session_release(sid, create(v=0), 3600)
    path_a, path_b = (tmp_path / "s" / sid[0] / sid[1] / sid for sid in (a, b))
    held = os.open(path_b, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # another process holds b
    try:
        then = Release(b, add(v=1), 3600) if second == "save" else Destroy(b)
        batch = asyncio.ensure_future(p.handle_batch([Release(a, add(v=1), 3600), then]))
        await asyncio.sleep(0.3)
        assert not batch.done()  # waiting for b ...
        probe = os.open(path_a, os.O_RDONLY)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ... without holding a
        finally:
            os.close(probe)
        assert await asyncio.to_thread(lambda: codec.decode(path_a.read_bytes())["data"]) == {"v": 1}
    finally:
        os.close(held)
    assert await asyncio.wait_for(batch, 10) == [None, None]
    assert await p.session_read(a) == {"v": 1}
    assert await p.session_read(b) == ({"v": 1} if second == "save" else None)


BATCH_CRASHER = """
    import asyncio, os, signal, sys
    from gosession_tornado.provider import Changes, Release
    from gosession_tornado.providers import file as F

    path, sids = sys.argv[1], sys.argv[2].split(",")
    real_fsync, calls = os.fsync, [0]

    def fsync(fd):  # the fourth fsync of the wave kills the process: some spares are
        calls[0] += 1  # fsync-ed, some only written, none exchanged yet
        if calls[0] == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        real_fsync(fd)

    os.fsync = fsync
    F.FSYNC_LANES = 1  # one lane: the order of the fsyncs is fixed

    async def main():
        p = F.FileProvider()
        await p.session_init(3600, path)
        await p.handle_batch([Release(sid, Changes(set={"v": 2, "pad": "x" * 5000}), 3600) for sid in sids])

    asyncio.run(main())
"""


@needs_exchange
async def test_sigkill_in_the_middle_of_a_batch_leaves_every_record_whole(
    make_provider: ProviderMaker, tmp_path: pathlib.Path
) -> None:
    p = await make_provider()
    sids = [new_sid() for _ in range(8)]
    for sid in sids:
        await p.session_release(sid, create(v=0), 3600)
        await p.session_release(sid, add(v=1), 3600)  # every session has a spare
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(BATCH_CRASHER), str(tmp_path / "s"), ",".join(sids), cwd=REPO,
    )
    assert await asyncio.wait_for(proc.wait(), 60) == -signal.SIGKILL
    for sid in sids:
        assert await p.session_read(sid) == {"v": 1}  # no save of the killed wave went in
    for f in files_under(tmp_path / "s"):  # every file (spares too) holds one whole record
        data = codec.decode(f.read_bytes())["data"]
        assert data in ({"v": 0}, {"v": 1}, {"v": 2, "pad": "x" * 5000})
    out = await p.handle_batch([Release(sid, add(v=3), 3600) for sid in sids])  # and the next works
    assert out == [None] * len(sids)
    for sid in sids:
        assert await p.session_read(sid) == {"v": 3}


async def test_reads_refresh_last_access_at_most_once_per_step(
    make_provider: ProviderMaker, tmp_path: pathlib.Path, mode: str
) -> None:
    p = await make_provider(max_lifetime=600)
    assert refresh_step(600) == 10 and refresh_step(30) == 1
    sid = new_sid()
    await p.session_release(sid, create(a=1), 600)
    path = tmp_path / "s" / sid[0] / sid[1] / sid
    backdate(path, 5)  # within the step: the read writes nothing
    stale = path.stat().st_mtime_ns
    assert await p.session_read(sid) == {"a": 1}
    assert path.stat().st_mtime_ns == stale
    backdate(path, 11)  # a step old: refreshed
    assert await p.session_read(sid) == {"a": 1}
    assert path.stat().st_mtime > time.time() - 2


async def test_destroy_gc_and_regenerate_take_the_spare_along(
    make_provider: ProviderMaker, tmp_path: pathlib.Path, mode: str
) -> None:
    p = await make_provider(max_lifetime=60)
    a, b, c, d = (new_sid() for _ in range(4))
    for sid in (a, b, c):
        await p.session_release(sid, create(v=0), 60)
        await p.session_release(sid, add(v=1), 60)
    save = tmp_path / "s"

    def path(sid: str) -> pathlib.Path:
        return save / sid[0] / sid[1] / sid

    expected_spares = {path(x) for x in (a, b, c)} if mode == "exchange" else set()
    assert {f.with_name(f.name[1:-6]) for f in files_under(save) if f.name.endswith(".spare")} == (
        expected_spares
    )
    await p.session_destroy(a)
    assert not path(a).exists() and not spare_of(path(a)).exists()  # the old data goes too
    assert await p.session_regenerate(b, d) == {"v": 1}
    assert not spare_of(path(b)).exists()
    assert spare_of(path(d)).exists() is (mode == "exchange")
    await p.session_release(d, add(v=2), 60)
    assert await p.session_read(d) == {"v": 2}
    backdate(path(c), 120)
    await p.session_gc()
    assert files_under(save) == sorted([path(d)] + ([spare_of(path(d))] if mode == "exchange" else []))


async def test_gc_removes_spares_of_gone_sessions_once_old(
    make_provider: ProviderMaker, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = await make_provider()
    sid, live = new_sid(), new_sid()
    shard = tmp_path / "s" / sid[0] / sid[1]
    shard.mkdir(parents=True)
    orphan = shard / f".{sid}.spare"  # e.g. its session was destroyed by an older version
    orphan.write_bytes(record_bytes({"old": 1}))
    await p.session_release(live, create(v=0), 3600)
    await p.session_release(live, add(v=1), 3600)
    await p.session_gc()
    assert orphan.exists()  # its last rename (ctime) is recent: a save may be about to use it
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + TEMP_GRACE + 5)  # ctime cannot be backdated
    await p.session_gc()
    assert not orphan.exists()
    live_path = tmp_path / "s" / live[0] / live[1] / live
    assert spare_of(live_path).exists() is p.exchange_mode  # the spare of a live session stays
    assert await p.session_read(live) == {"v": 1}


async def test_save_path_removed_while_running_is_recreated(
    make_provider: ProviderMaker, tmp_path: pathlib.Path, mode: str
) -> None:
    import shutil

    p = await make_provider()
    sid = new_sid()
    await p.session_release(sid, create(a=1), 3600)
    assert await p.session_read(sid) == {"a": 1}  # the directories are cached now
    shutil.rmtree(tmp_path / "s")
    assert await p.session_read(sid) is None
    await p.session_release(sid, add(b=2), 3600)  # no record: not resurrected
    assert not (tmp_path / "s").exists()
    await p.session_release(sid, create(c=3), 3600)  # the next new session recreates the tree
    assert await p.session_read(sid) == {"c": 3}
    assert (tmp_path / "s" / sid[0] / sid[1] / sid).exists()
    # Another process recreates the tree behind our cached fds: we find its sessions.
    other = await make_provider()
    shutil.rmtree(tmp_path / "s")
    await other.session_release(sid, create(d=4), 3600)
    assert await p.session_read(sid) == {"d": 4}


async def test_a_moved_shard_directory_is_left_within_a_second(
    make_provider: ProviderMaker, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = await make_provider()
    sid = new_sid()
    await p.session_release(sid, create(a=1), 3600)
    assert await p.session_read(sid) == {"a": 1}
    (tmp_path / "s" / sid[0]).rename(tmp_path / "moved")  # out of save_path, still alive
    monkeypatch.setattr(file_module, "DIR_CACHE_SECONDS", 0.0)
    assert await p.session_read(sid) is None  # the cache is dropped: the path is walked again
    await p.session_release(sid, create(b=2), 3600)
    assert await p.session_read(sid) == {"b": 2}
    assert codec.decode((tmp_path / "moved" / sid[1] / sid).read_bytes())["data"] == {"a": 1}


async def test_a_cancelled_batch_leaves_no_lock_and_the_next_batch_works(tmp_path: pathlib.Path) -> None:
    """A batch past provider_timeout is cancelled while its worker thread runs on."""
    save = tmp_path / "s"
    async with file_manager(save, provider_timeout=0.5) as m:
        sids = []
        for i in range(2):
            s = Session(m, m.new_sid(), {}, is_new=True)
            s["i"] = i
            await s.release()
            sids.append(s.session_id)
        paths = [save / sid[0] / sid[1] / sid for sid in sids]
        held = [os.open(p, os.O_RDONLY) for p in paths]
        try:
            for fd in held:
                fcntl.flock(fd, fcntl.LOCK_EX)  # another process holds both sessions

            async def bump(sid: str) -> None:
                s = Session(m, sid, {"i": 0})
                s["bumped"] = True
                await s.release()

            # One batch of two saves, each waiting 0.4 s for its lock: 0.8 s > 0.5 s.
            outcomes = await asyncio.gather(*(bump(sid) for sid in sids), return_exceptions=True)
            assert all(isinstance(o, ProviderUnavailableError) for o in outcomes), outcomes
        finally:
            for fd in held:
                os.close(fd)
        await asyncio.sleep(0.5)  # the worker thread finishes the cancelled batch
        for path in paths:  # no lock left behind ...
            fd = os.open(path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
        assert not [f for f in files_under(save) if ".tmp." in f.name]  # ... nor a temp file
        for i, sid in enumerate(sids):  # ... and the next batch works
            s = Session(m, sid, {"i": i})
            s["after"] = True
            await s.release()
            data = await m.read(sid)
            assert data is not None
            # (the second save of the cancelled batch got its lock once we let go: a save
            # that timed out may still land, as with any store)
            assert data["i"] == i and data["after"] is True


# ---------------------------------------------------------------- locking and the event loop


async def test_lock_wait_runs_off_the_event_loop(
    make_provider: ProviderMaker, tmp_path: pathlib.Path
) -> None:
    p = await make_provider()
    sid = new_sid()
    await p.session_release(sid, create(a=1), 3600)
    fd = os.open(tmp_path / "s" / sid[0] / sid[1] / sid, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another "process" holds the session
        task = asyncio.ensure_future(p.session_release(sid, add(b=2), 3600))
        ticks = 0
        for _ in range(20):
            await asyncio.sleep(0.01)
            ticks += 1
        assert not task.done()  # waiting for the lock ...
        assert ticks == 20  # ... without blocking the loop
    finally:
        os.close(fd)
    await asyncio.wait_for(task, 10)
    assert await p.session_read(sid) == {"a": 1, "b": 2}


async def test_lock_held_too_long_is_unavailable_then_recovers(
    make_provider: ProviderMaker, tmp_path: pathlib.Path
) -> None:
    p = await make_provider(timeout=0.5)
    sid = new_sid()
    await p.session_release(sid, create(a=1), 3600)
    fd = os.open(tmp_path / "s" / sid[0] / sid[1] / sid, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(ProviderUnavailableError, match="locked"):
            await p.session_release(sid, add(b=2), 3600)
        assert await p.session_read(sid) == {"a": 1}  # reads need no lock
    finally:
        os.close(fd)
    await p.session_release(sid, add(b=2), 3600)
    assert await p.session_read(sid) == {"a": 1, "b": 2}


async def test_two_stores_in_one_process_lose_no_update(make_provider: ProviderMaker) -> None:
    a, b = await make_provider(), await make_provider()
    sid = new_sid()
    await a.session_release(sid, create(), 3600)

    async def run(p: FileProvider, tag: str) -> None:
        for i in range(25):
            await p.session_release(sid, add(**{f"{tag}{i}": i}), 3600)

    await asyncio.gather(run(a, "a"), run(b, "b"))
    assert len(await a.session_read(sid) or {}) == 50


# ---------------------------------------------------------------- across processes


UPDATER = """
    import asyncio, os, sys, time
    from gosession_tornado.provider import Changes
    from gosession_tornado.providers.file import FileProvider

    async def main():
        path, sid, tag, n, go = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
        p = FileProvider()
        await p.session_init(3600, path)
        while not os.path.exists(go):  # start together
            time.sleep(0.001)
        for i in range(n):
            await p.session_release(sid, Changes(set={f"{tag}{i}": i}), 3600)
        await p.session_close()

    asyncio.run(main())
"""


@pytest.mark.parametrize(
    "modes", [("exchange", "exchange"), ("rename", "rename"), ("exchange", "rename")], ids="-".join
)
async def test_processes_updating_different_keys_lose_none(
    make_provider: ProviderMaker, tmp_path: pathlib.Path, modes: tuple[str, str]
) -> None:
    if "exchange" in modes and not EXCHANGE:
        pytest.skip("exchange mode is not available here")
    p = await make_provider()
    sid = new_sid()
    await p.session_release(sid, create(start=True), 3600)
    go = tmp_path / "go"
    # Mixed modes: a process of the classic mode (an older version, another platform
    # build) updating the same session as exchange-mode processes loses nothing either.
    runs = [
        asyncio.ensure_future(
            run_python(FORCE_RENAME + UPDATER, str(tmp_path / "s"), sid, tag, "25", str(go), m)
        )
        for tag, m in zip(("a", "b"), modes)
    ]
    await asyncio.sleep(0.5)
    go.touch()
    await asyncio.gather(*runs)
    data = await p.session_read(sid)
    assert data is not None
    expected = {"start": True} | {f"{t}{i}": i for t in "ab" for i in range(25)}
    assert data == expected
    assert session_files(tmp_path / "s") == [tmp_path / "s" / sid[0] / sid[1] / sid]


SERVER = """
    import asyncio, sys
    import tornado.web
    from gosession_tornado import SessionManager, SessionMixin

    class H(SessionMixin, tornado.web.RequestHandler):
        async def get(self):
            k = self.get_argument("k", None)
            if k is not None:
                self.session[k] = self.get_argument("v", "")
            self.write({"sid": self.session.session_id, "keys": sorted(self.session.keys())})

    async def main():
        m = SessionManager({"provider": "file", "cookie_name": "sid", "provider_config": sys.argv[1]})
        app = tornado.web.Application([(r"/", H)], session_manager=m)
        app.listen(int(sys.argv[2]), "127.0.0.1")
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
"""


async def test_two_tornado_servers_on_one_directory_lose_no_update(
    serve: Callable[..., Awaitable[Any]], tmp_path: pathlib.Path
) -> None:
    from .conftest import Client

    procs: list[asyncio.subprocess.Process] = []
    clients: list[Client] = []
    try:
        for _ in range(2):
            port = free_port()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", textwrap.dedent(SERVER), str(tmp_path / "s"), str(port),
                cwd=REPO, stdout=asyncio.subprocess.PIPE,
            )
            procs.append(proc)
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
            clients.append(Client(f"http://127.0.0.1:{port}"))
        first = await clients[0].fetch("/?k=start&v=1")
        sid = json.loads(first.body)["sid"]
        clients[1].cookies = dict(clients[0].cookies)

        async def hit(client: Client, tag: str, i: int) -> None:
            resp = await client.fetch(f"/?k={tag}{i}&v={i}")
            assert resp.code == 200
            assert json.loads(resp.body)["sid"] == sid

        await asyncio.gather(*(hit(c, tag, i) for c, tag in zip(clients, "ab") for i in range(25)))
        final = json.loads((await clients[1].fetch("/")).body)
        assert final["keys"] == sorted(["start"] + [f"{t}{i}" for t in "ab" for i in range(25)])
    finally:
        for c in clients:
            c.close()
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def test_data_survives_reopening_in_a_new_process(
    serve: Callable[..., Awaitable[Any]], tmp_path: pathlib.Path
) -> None:
    m = file_manager(tmp_path / "s")
    client = await serve([(r"/", KeysHandler)], session_manager=m)
    resp = await client.fetch("/?k=user&v=ann")
    sid = json.loads(resp.body)["sid"]
    await m.close()
    reader = """
        import asyncio, json, sys
        from gosession_tornado import SessionManager

        async def main():
            async with SessionManager({"provider": "file", "provider_config": sys.argv[1]}) as m:
                print(json.dumps(await m.read(sys.argv[2])))

        asyncio.run(main())
    """
    out = await run_python(reader, str(tmp_path / "s"), sid)
    assert json.loads(out) == {"user": "ann"}


# ---------------------------------------------------------------- HTTP


async def test_fifty_concurrent_requests_on_one_session_lose_no_key(
    serve: Callable[..., Awaitable[Any]], tmp_path: pathlib.Path
) -> None:
    m = file_manager(tmp_path / "s")
    client = await serve([(r"/", KeysHandler)], session_manager=m)
    try:
        sid = json.loads((await client.fetch("/?k=start&v=1")).body)["sid"]
        responses = await asyncio.gather(*(client.fetch(f"/?k=k{i}&v={i}") for i in range(50)))
        assert all(r.code == 200 for r in responses)
        assert {json.loads(r.body)["sid"] for r in responses} == {sid}
        final = json.loads((await client.fetch("/")).body)
        assert final["keys"] == sorted(["start"] + [f"k{i}" for i in range(50)])
        stored = await m.read(sid)
        assert stored is not None
        assert len(stored) == 51
    finally:
        await m.close()
