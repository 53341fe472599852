"""The ``file`` provider: one file per session in a directory tree (POSIX only).

Layout (beego's)::

    save_path/<sid[0]>/<sid[1]>/<sid>

What holds:

* ``provider_config`` is the directory (beego's ``"./tmp"``; ``""`` means
  ``"./tmp"``) or a dict ``{"save_path": ...}``. It is created if missing
  (mode 0700) and resolved to an absolute path once, at start.
* Shard directories are created as needed with mode 0700; session files have
  mode 0600.
* A session file holds ``codec.encode({"data": {...}, "lifetime": seconds})``.
  Its mtime is the last access: reads refresh it (``os.utime``), and a record
  is expired once ``now - mtime >= lifetime``. An expired record is never
  served, even before GC removes it.
* Every write goes to a temp file ``.<sid>.tmp.<random>`` in the same
  directory, is ``fsync``-ed and then renamed over the session file, so a
  process killed mid-write leaves the previous complete version in place.
* The sid is checked against ``[A-Za-z0-9_-]{16,160}`` before any path is
  built. Every path component below ``save_path`` is opened relative to its
  parent's file descriptor with ``O_NOFOLLOW``, so a symlink planted in the
  tree (as a shard directory or as a session file) is never followed.
* Cross-process safety: every change to the entry ``<sid>`` (update, destroy,
  regenerate, GC) happens while holding ``fcntl.flock`` on the inode that is
  currently at that path; after taking the lock the holder checks that the
  path still names that inode and retries if it does not (the file was
  replaced or removed meanwhile). Releases are read-modify-write under that
  lock and apply only the request's :class:`~gosession_tornado.provider.Changes`,
  so processes updating different keys of one session lose none. Creating a
  record uses ``link()``, which never overwrites a record created meanwhile.
* Blocking I/O runs in one dedicated worker thread per provider (the actor
  still decides the order); a whole drained batch is one hop to that thread.
* GC removes expired session files and orphaned temp files (a temp file nobody
  holds locked, older than :data:`TEMP_GRACE` seconds); anything that is not a
  regular file is left alone. One GC pass works for at most half of
  ``provider_timeout`` and resumes at the next shard directory the next time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import functools
import logging
import os
import re
import secrets
import stat
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from .. import codec
from ..errors import ConfigError, ProviderUnavailableError, SessionError
from ..provider import (
    GC,
    All,
    BatchVerbs,
    Changes,
    Destroy,
    Exist,
    Message,
    Read,
    Regenerate,
    Release,
    SessionData,
)

__all__ = [
    "DEFAULT_SAVE_PATH",
    "TEMP_GRACE",
    "FileProvider",
    "InvalidSessionIdError",
    "UnsafePathError",
    "session_path",
    "valid_sid",
]

log = logging.getLogger("gosession_tornado.providers.file")

#: Directory used when ``provider_config`` is empty (beego's default).
DEFAULT_SAVE_PATH = "./tmp"
#: Seconds an unlocked temp file must have been left untouched before GC removes it.
TEMP_GRACE = 60.0
#: Mode of shard directories (and of ``save_path`` when this provider creates it).
DIR_MODE = 0o700
#: Mode of session files.
FILE_MODE = 0o600

_SID_RE = re.compile(r"[A-Za-z0-9_-]{16,160}")
_SHARD_RE = re.compile(r"[A-Za-z0-9_-]")
_TMP_MARK = ".tmp."
_TMP_RE = re.compile(r"\.([A-Za-z0-9_-]{16,160})\.tmp\.[0-9a-f]{16}")

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted under a session's name must not hang.
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_O_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Errors that mean "something other than a directory/regular file is in the way".
_UNSAFE_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO})

_T = TypeVar("_T")


class InvalidSessionIdError(SessionError, ValueError):
    """Raised when a sid given to a writing verb cannot name a session file.

    A valid sid matches ``[A-Za-z0-9_-]{16,160}``; the manager only generates
    such ids, so this means a bug or a hand-made call.
    """


class UnsafePathError(ProviderUnavailableError):
    """Raised when a write finds a symlink or other non-regular entry where the
    session tree needs a directory or a session file.

    Nothing is followed or overwritten; remove the entry named in the message.
    """


class _Record(NamedTuple):
    data: SessionData
    lifetime: int


def valid_sid(sid: object) -> bool:
    """True if *sid* may name a session file: ``[A-Za-z0-9_-]``, 16-160 characters."""
    return isinstance(sid, str) and _SID_RE.fullmatch(sid) is not None


def session_path(save_path: str, sid: str) -> str:
    """``save_path/<sid[0]>/<sid[1]>/<sid>``.

    :raises InvalidSessionIdError: if *sid* is not valid (checked before any path is built).
    """
    _check_sid(sid)
    return os.path.join(save_path, sid[0], sid[1], sid)


def _check_sid(sid: object) -> None:
    if not valid_sid(sid):
        raise InvalidSessionIdError(
            f"invalid session id {sid!r:.60}: the file provider accepts 16-160 characters "
            "of [A-Za-z0-9_-]"
        )


_PATH_KEYS = frozenset({"savepath", "path"})


def _norm_key(key: object) -> str:
    return str(key).lower().replace("_", "")


def _parse_config(config: Any) -> str:
    """The directory named by *config* (a path string or a dict with ``save_path``)."""
    if config is None:
        return DEFAULT_SAVE_PATH
    if isinstance(config, Mapping):
        found = [v for k, v in config.items() if _norm_key(k) in _PATH_KEYS]
        unknown = sorted(str(k) for k in config if _norm_key(k) not in _PATH_KEYS)
        if unknown:
            warnings.warn(
                f"file provider: unknown provider_config keys {unknown} ignored (known: 'save_path')",
                UserWarning,
                stacklevel=2,
            )
        if len(found) > 1:
            raise ConfigError(
                "file provider_config names the directory more than once; give only 'save_path'",
                key="provider_config",
            )
        config = found[0] if found else ""
    if isinstance(config, os.PathLike):
        config = os.fspath(config)
    if not isinstance(config, str):
        raise ConfigError(
            "file provider_config must be a directory path or {'save_path': path}, "
            f"got {type(config).__name__}",
            key="provider_config",
        )
    if "\x00" in config:
        raise ConfigError("file provider_config holds a NUL character", key="provider_config")
    return config.strip() or DEFAULT_SAVE_PATH


def _read_all(fd: int, size_hint: int) -> bytes:
    chunks: list[bytes] = []
    want = max(size_hint, 0) + 1
    while True:
        chunk = os.read(fd, max(want, 65536))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class _Store:
    """The synchronous file operations; called only from the provider's worker thread."""

    def __init__(self, save_path: str, max_lifetime: int, lock_timeout: float, gc_budget: float) -> None:
        self.save_path = save_path
        self.max_lifetime = max_lifetime
        self.lock_timeout = lock_timeout
        self.gc_budget = gc_budget
        #: (shard1, shard2) where the last GC pass stopped for lack of time, or None.
        self.gc_cursor: tuple[str, str] | None = None

    # ------------------------------------------------------------ directories

    def _open_root(self, create: bool) -> int | None:
        try:
            return os.open(self.save_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                return None
        os.makedirs(self.save_path, mode=DIR_MODE, exist_ok=True)
        return os.open(self.save_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _open_subdir(self, parent: int, name: str, create: bool, where: str) -> int | None:
        for _ in range(2):
            try:
                return os.open(name, _O_DIR, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    return None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, DIR_MODE, dir_fd=parent)
            except OSError as exc:
                if exc.errno in _UNSAFE_ERRNOS:
                    raise UnsafePathError(
                        f"session directory {where!r} is a symlink or not a directory; refusing to "
                        "follow it (remove it and the provider recreates it)"
                    ) from None
                raise
        return None  # pragma: no cover - removed again between mkdir and open

    @contextlib.contextmanager
    def shard(self, sid: str, create: bool) -> Iterator[int | None]:
        """The fd of ``save_path/sid[0]/sid[1]`` (``None`` if missing and not *create*)."""
        root = self._open_root(create)
        if root is None:
            yield None
            return
        level1: int | None = None
        level2: int | None = None
        try:
            where1 = os.path.join(self.save_path, sid[0])
            level1 = self._open_subdir(root, sid[0], create, where1)
            if level1 is not None:
                level2 = self._open_subdir(level1, sid[1], create, os.path.join(where1, sid[1]))
            yield level2
        finally:
            for fd in (level2, level1, root):
                if fd is not None:
                    os.close(fd)

    # ------------------------------------------------------------ files

    def _open_file(self, dfd: int, name: str, where: str) -> int | None:
        """Open the session file *name* for reading/locking; ``None`` if missing.

        :raises UnsafePathError: if the entry is a symlink or not a regular file.
        """
        try:
            fd = os.open(name, _O_FILE, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in _UNSAFE_ERRNOS:
                raise UnsafePathError(
                    f"session file {where!r} is a symlink or not a regular file; refusing to follow "
                    "it (remove it)"
                ) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePathError(f"session file {where!r} is not a regular file; remove it")
        return fd

    def _where(self, sid: str) -> str:
        return os.path.join(self.save_path, sid[0], sid[1], sid)

    def _lock(self, fd: int, where: str, deadline: float) -> None:
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if time.monotonic() >= deadline:
                raise ProviderUnavailableError(
                    f"session file {where!r} stayed locked by another process for "
                    f"{self.lock_timeout:g} s; is a process stuck holding it?"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def _check_deadline(self, deadline: float, where: str) -> None:
        if time.monotonic() >= deadline:
            raise ProviderUnavailableError(
                f"session file {where!r} kept changing under us for {self.lock_timeout:g} s; "
                "is another process rewriting it in a loop?"
            )

    @staticmethod
    def _still_there(fd: int, dfd: int, name: str) -> bool:
        """True if *name* in *dfd* still names the inode open as *fd*."""
        try:
            there = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)

    def _load(self, fd: int, where: str) -> _Record | None:
        """Decode the record open as *fd*; ``None`` (and a warning) if it is corrupt."""
        st = os.fstat(fd)
        if st.st_size > codec.MAX_DECODE_BYTES:
            log.warning("session file %s is %d bytes, over the limit; ignored", where, st.st_size)
            return None
        os.lseek(fd, 0, os.SEEK_SET)
        payload = _read_all(fd, st.st_size)
        try:
            obj = codec.decode(payload)
        except ValueError as exc:
            log.warning("session file %s is corrupt (%s); treated as missing", where, exc)
            return None
        if isinstance(obj, dict):
            data = obj.get("data")
            lifetime = obj.get("lifetime")
            if isinstance(data, dict) and type(lifetime) is int and lifetime > 0:
                return _Record(data, lifetime)
        log.warning("session file %s does not hold a session record; treated as missing", where)
        return None

    @staticmethod
    def _expired(fd: int, lifetime: int, now: float) -> bool:
        return now - os.fstat(fd).st_mtime_ns / 1e9 >= lifetime

    def _write_temp(self, dfd: int, sid: str, data: SessionData, lifetime: int) -> tuple[str, int]:
        """Write a complete, fsync-ed record to a new temp file; returns (name, locked fd)."""
        payload = codec.encode({"data": data, "lifetime": lifetime})
        name = f".{sid}{_TMP_MARK}{secrets.token_hex(8)}"
        fd = os.open(name, _O_TEMP, FILE_MODE, dir_fd=dfd)
        try:
            # Locked while we write: GC never removes a temp file someone holds.
            fcntl.flock(fd, fcntl.LOCK_EX)
            _write_all(fd, payload)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dfd)
            raise
        return name, fd

    def _replace(self, dfd: int, sid: str, data: SessionData, lifetime: int) -> None:
        """Atomically put a new record at *sid* (the caller holds the old one's lock)."""
        tmp, fd = self._write_temp(dfd, sid, data, lifetime)
        try:
            os.rename(tmp, sid, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        finally:
            os.close(fd)

    def _create(self, dfd: int, sid: str, data: SessionData, lifetime: int) -> bool:
        """Create the record at *sid* unless one appeared meanwhile; True if created."""
        tmp, fd = self._write_temp(dfd, sid, data, lifetime)
        try:
            try:
                os.link(tmp, sid, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                    raise
                # No hard links on this filesystem: a rename may clobber a record created in the
                # last microseconds, which only a colliding CSPRNG sid could cause.
                os.rename(tmp, sid, src_dir_fd=dfd, dst_dir_fd=dfd)
                return True
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            os.close(fd)

    # ------------------------------------------------------------ verbs

    def read(self, sid: str, refresh: bool = True) -> SessionData | None:
        if not valid_sid(sid):
            return None
        where = self._where(sid)
        try:
            with self.shard(sid, create=False) as dfd:
                if dfd is None:
                    return None
                fd = self._open_file(dfd, sid, where)
                if fd is None:
                    return None
                try:
                    rec = self._load(fd, where)
                    if rec is None or self._expired(fd, rec.lifetime, time.time()):
                        return None
                    if refresh:
                        os.utime(fd)  # last access = now
                    return rec.data
                finally:
                    os.close(fd)
        except UnsafePathError as exc:
            log.warning("session %s… not served: %s", sid[:8], exc)
            return None

    def exist(self, sid: str) -> bool:
        return self.read(sid, refresh=False) is not None

    def release(self, sid: str, changes: Changes, expiry: int) -> None:
        _check_sid(sid)
        lifetime = expiry if expiry > 0 else self.max_lifetime
        where = self._where(sid)
        deadline = time.monotonic() + self.lock_timeout
        with self.shard(sid, create=changes.create) as dfd:
            if dfd is None:
                return  # no shard directory, so no record: do not resurrect
            while True:
                self._check_deadline(deadline, where)
                fd = self._open_file(dfd, sid, where)
                if fd is None:
                    if not changes.create:
                        return  # destroyed or expired meanwhile: do not resurrect
                    if self._create(dfd, sid, changes.apply({}), lifetime):
                        return
                    continue  # created by someone else meanwhile: update that one
                try:
                    self._lock(fd, where, deadline)
                    if not self._still_there(fd, dfd, sid):
                        continue  # replaced or removed while we waited: look again
                    rec = self._load(fd, where)
                    live = rec is not None and not self._expired(fd, rec.lifetime, time.time())
                    if not live:
                        if not changes.create:
                            os.unlink(sid, dir_fd=dfd)  # expired or corrupt: gone for good
                            return
                        base: SessionData = {}
                    else:
                        assert rec is not None
                        if changes.empty and rec.lifetime == lifetime:
                            os.utime(fd)  # nothing to write: refresh last access only
                            return
                        base = rec.data
                    self._replace(dfd, sid, changes.apply(base), lifetime)
                    return
                finally:
                    os.close(fd)  # releases the lock

    def destroy(self, sid: str) -> None:
        if not valid_sid(sid):
            return
        where = self._where(sid)
        deadline = time.monotonic() + self.lock_timeout
        try:
            with self.shard(sid, create=False) as dfd:
                if dfd is None:
                    return
                while True:
                    self._check_deadline(deadline, where)
                    fd = self._open_file(dfd, sid, where)
                    if fd is None:
                        return
                    try:
                        self._lock(fd, where, deadline)
                        if not self._still_there(fd, dfd, sid):
                            continue
                        os.unlink(sid, dir_fd=dfd)
                        return
                    finally:
                        os.close(fd)
        except UnsafePathError as exc:
            log.warning("session %s… not destroyed: %s", sid[:8], exc)

    def regenerate(self, old_sid: str, sid: str) -> SessionData:
        _check_sid(old_sid)
        _check_sid(sid)
        old_where = self._where(old_sid)
        deadline = time.monotonic() + self.lock_timeout
        with self.shard(old_sid, create=False) as odfd:
            while odfd is not None:
                self._check_deadline(deadline, old_where)
                fd = self._open_file(odfd, old_sid, old_where)
                if fd is None:
                    break
                try:
                    self._lock(fd, old_where, deadline)
                    if not self._still_there(fd, odfd, old_sid):
                        continue
                    rec = self._load(fd, old_where)
                    if rec is None or self._expired(fd, rec.lifetime, time.time()):
                        os.unlink(old_sid, dir_fd=odfd)
                        break
                    with self.shard(sid, create=True) as ndfd:
                        assert ndfd is not None
                        # One rename, under the old record's lock: the data is at exactly one sid.
                        os.rename(old_sid, sid, src_dir_fd=odfd, dst_dir_fd=ndfd)
                    os.utime(fd)
                    return rec.data
                finally:
                    os.close(fd)
        with self.shard(sid, create=True) as ndfd:
            assert ndfd is not None
            if not self._create(ndfd, sid, {}, self.max_lifetime):
                raise InvalidSessionIdError(f"session id {sid[:8]}… is already taken; use a fresh id")
        return {}

    # ------------------------------------------------------------ walking

    def _shards(self, root: int) -> list[tuple[str, str]]:
        """Every (shard1, shard2) directory pair in sorted order; symlinks are skipped."""
        pairs: list[tuple[str, str]] = []
        with os.scandir(root) as top:
            firsts = sorted(
                e.name for e in top if _SHARD_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
            )
        for first in firsts:
            try:
                fd = os.open(first, _O_DIR, dir_fd=root)
            except OSError:
                continue  # removed or swapped for a symlink meanwhile
            try:
                with os.scandir(fd) as sub:
                    seconds = sorted(
                        e.name for e in sub if _SHARD_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
                    )
            finally:
                os.close(fd)
            pairs.extend((first, second) for second in seconds)
        return pairs

    def _walk(self, root: int, pair: tuple[str, str], now: float, collect: bool) -> int:
        """Visit one shard directory; returns the number of live sessions in it.

        With *collect*, expired session files and orphaned temp files are removed.
        """
        try:
            fd1 = os.open(pair[0], _O_DIR, dir_fd=root)
        except OSError:
            return 0
        try:
            try:
                dfd = os.open(pair[1], _O_DIR, dir_fd=fd1)
            except OSError:
                return 0
        finally:
            os.close(fd1)
        live = 0
        try:
            with os.scandir(dfd) as entries:
                names = [e.name for e in entries if e.is_file(follow_symlinks=False)]
            for name in names:
                if valid_sid(name):
                    live += self._visit(dfd, name, now, collect)
                elif collect and _TMP_RE.fullmatch(name):
                    self._collect_temp(dfd, name, now)
        finally:
            os.close(dfd)
        return live

    def _visit(self, dfd: int, name: str, now: float, collect: bool) -> int:
        where = self._where(name)
        try:
            fd = os.open(name, _O_FILE, dir_fd=dfd)
        except OSError:
            return 0  # gone, or swapped for a symlink/other entry: skip
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return 0
            if collect:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return 1  # being updated right now, so it is in use
                if not self._still_there(fd, dfd, name):
                    return 0
            rec = self._load(fd, where)
            # A corrupt file is kept for max_lifetime after its last write, then collected.
            lifetime = rec.lifetime if rec is not None else self.max_lifetime
            if not self._expired(fd, lifetime, now):
                return 1 if rec is not None else 0
            if collect:
                os.unlink(name, dir_fd=dfd)
            return 0
        finally:
            os.close(fd)

    def _collect_temp(self, dfd: int, name: str, now: float) -> None:
        try:
            fd = os.open(name, _O_FILE, dir_fd=dfd)
        except OSError:
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < TEMP_GRACE:
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a writer is still at it
            if self._still_there(fd, dfd, name):
                os.unlink(name, dir_fd=dfd)
                log.info("removed orphaned temp file %s", os.path.join(self.save_path, name))
        finally:
            os.close(fd)

    def gc(self) -> None:
        root = self._open_root(create=False)
        if root is None:
            return
        try:
            now = time.time()
            stop_at = time.monotonic() + self.gc_budget
            pairs = self._shards(root)
            cursor = self.gc_cursor
            if cursor is not None:
                pairs = [p for p in pairs if p > cursor]
            self.gc_cursor = None
            for pair in pairs:
                self._walk(root, pair, now, collect=True)
                if time.monotonic() >= stop_at and pair != pairs[-1]:
                    self.gc_cursor = pair
                    log.info("session GC stopped after %s/%s for time; resumes there", *pair)
                    return
        finally:
            os.close(root)

    def count(self) -> int:
        root = self._open_root(create=False)
        if root is None:
            return 0
        try:
            now = time.time()
            return sum(self._walk(root, pair, now, collect=False) for pair in self._shards(root))
        finally:
            os.close(root)

    def dispatch(self, message: Message) -> Any:
        if isinstance(message, Read):
            return self.read(message.sid)
        if isinstance(message, Release):
            return self.release(message.sid, message.changes, message.expiry)
        if isinstance(message, Exist):
            return self.exist(message.sid)
        if isinstance(message, Regenerate):
            return self.regenerate(message.old_sid, message.sid)
        if isinstance(message, Destroy):
            return self.destroy(message.sid)
        if isinstance(message, All):
            return self.count()
        if isinstance(message, GC):
            return self.gc()
        raise TypeError(f"not a file-store message: {message!r}")  # pragma: no cover


_FILE_MESSAGES = (Read, Release, Exist, Regenerate, Destroy, All, GC)


class FileProvider(BatchVerbs):
    """Sessions as files under ``save_path``, shared safely between processes.

    ``provider_config``: a directory path (``""`` means ``"./tmp"``) or
    ``{"save_path": path}``. See the module docstring for the guarantees.
    """

    def __init__(self) -> None:
        super().__init__()
        self.save_path = ""
        self._store: _Store | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    # ------------------------------------------------------------ plumbing

    def _timeout(self) -> float:
        timeout = getattr(self.manager_config, "provider_timeout", None)
        return float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else 5.0

    def _guarded(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except SessionError:
            raise
        except OSError as exc:
            raise ProviderUnavailableError(
                f"file session store {self.save_path!r}: {exc}; check that the directory exists, "
                "is writable and the disk is not full"
            ) from exc

    async def _run_one(self, message: Message) -> Any:
        """One message on the worker thread (the verbs come from :class:`BatchVerbs`)."""
        store, executor = self._require()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._guarded, functools.partial(store.dispatch, message))

    def _require(self) -> tuple[_Store, concurrent.futures.ThreadPoolExecutor]:
        if self._store is None or self._executor is None:
            raise ProviderUnavailableError("file session provider is not initialised; start the manager")
        return self._store, self._executor

    def _run_batch(self, store: _Store, messages: Sequence[Message]) -> list[Any]:
        results: list[Any] = []
        for message in messages:
            try:
                results.append(self._guarded(functools.partial(store.dispatch, message)))
            except Exception as exc:  # one message fails, the batch goes on
                results.append(exc)
        return results

    # ------------------------------------------------------------ verbs

    async def session_init(self, max_lifetime: int, config: Any) -> None:
        """Resolve and create the directory (mode 0700); start the worker thread.

        :raises ConfigError: if *config* is not a path or the directory cannot be created.
        """
        self.max_lifetime = max_lifetime
        path = _parse_config(config)

        def prepare() -> str:
            absolute = os.path.abspath(os.path.expanduser(path))
            try:
                os.makedirs(absolute, mode=DIR_MODE, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create the session directory {absolute!r}: {exc}; "
                    "set provider_config to a writable directory",
                    key="provider_config",
                ) from exc
            if not os.path.isdir(absolute):
                raise ConfigError(
                    f"session save path {absolute!r} is not a directory", key="provider_config"
                )
            return os.path.realpath(absolute)

        self.save_path = await asyncio.to_thread(prepare)
        timeout = self._timeout()
        self._store = _Store(
            self.save_path, max_lifetime, lock_timeout=timeout * 0.8, gc_budget=timeout * 0.5
        )
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="gosession-file"
            )

    async def handle_batch(self, messages: Sequence[Message]) -> list[Any]:
        """Run a batch of file messages in one hop to the worker thread, in order."""
        if self._store is None or not all(isinstance(m, _FILE_MESSAGES) for m in messages):
            return await super().handle_batch(messages)
        store, executor = self._require()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._run_batch, store, list(messages))

    async def session_close(self) -> None:
        """Stop the worker thread once the write in progress (if any) is done."""
        executor, self._executor = self._executor, None
        self._store = None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
