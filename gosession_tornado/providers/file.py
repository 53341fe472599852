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
  Its mtime is the last access: reads refresh it (``os.utime``, at most once
  per :func:`~gosession_tornado.provider.refresh_step`), and a record is expired once
  ``now - mtime >= lifetime``. An expired record is never served, even
  before GC removes it.
* Every write puts a complete record in another file of the same directory,
  ``fsync``-s it and renames it into place, so a process killed mid-write
  leaves the previous complete version in place. On Linux (probed at start)
  that file is the session's *spare* ``.<sid>.spare`` and the rename is
  ``renameat2(RENAME_EXCHANGE)``: the old version becomes the spare for the
  next write, so no inode is allocated or freed per write. Elsewhere it is a
  new temp file ``.<sid>.tmp.<random>`` renamed over the session file.
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
* Reads take no ``flock``. Files are never written in place while they are
  a session file; in exchange mode a reader pins the file it reads with an
  OFD read lock, and a spare is rewritten only under an OFD write lock.
* Blocking I/O runs in one dedicated worker thread per provider (the actor
  still decides the order); a whole drained batch is one hop to that thread.
  The saves of a batch to different sessions are fsync-ed together (several
  at once on helper threads), each before its own rename; directory fds are
  cached for up to :data:`DIR_CACHE_SECONDS`.
* GC removes expired session files (with their spares), orphaned temp files
  (a temp file nobody holds locked, older than :data:`TEMP_GRACE` seconds) and
  spares whose session is gone; anything that is not a regular file is left
  alone. One GC pass works for at most half of
  ``provider_timeout`` and resumes at the next shard directory the next time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import errno
import fcntl
import os
import re
import secrets
import stat
import struct
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from .. import codec
from .._log import get_logger
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
    refresh_step,
)
from ..values import normalize_key

__all__ = [
    "DEFAULT_SAVE_PATH",
    "DIR_CACHE_SECONDS",
    "FSYNC_LANES",
    "TEMP_GRACE",
    "FileProvider",
    "InvalidSessionIdError",
    "UnsafePathError",
    "probe_exchange",
    "refresh_step",
    "session_path",
    "valid_sid",
]

log = get_logger("gosession_tornado.providers.file")

#: Directory used when ``provider_config`` is empty (beego's default).
DEFAULT_SAVE_PATH = "./tmp"
#: Seconds an unlocked temp file must have been left untouched before GC removes it.
TEMP_GRACE = 60.0
#: Mode of shard directories (and of ``save_path`` when this provider creates it).
DIR_MODE = 0o700
#: Mode of session files.
FILE_MODE = 0o600
#: Seconds an open shard directory fd is reused before the path is walked again.
DIR_CACHE_SECONDS = 1.0
#: How many fsyncs of one batch run at once (the worker thread and helper threads).
FSYNC_LANES = 8

_SID_RE = re.compile(r"[A-Za-z0-9_-]{16,160}")
_SHARD_RE = re.compile(r"[A-Za-z0-9_-]")
_TMP_MARK = ".tmp."
_TMP_RE = re.compile(r"\.([A-Za-z0-9_-]{16,160})\.tmp\.[0-9a-f]{16}")
_SPARE_SUFFIX = ".spare"
_SPARE_RE = re.compile(r"\.([A-Za-z0-9_-]{16,160})\.spare")

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted under a session's name must not hang.
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_O_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_SPARE = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Errors that mean "something other than a directory/regular file is in the way".
_UNSAFE_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO})



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


class _Staged(NamedTuple):
    """A rewrite in exchange mode, written to the spare and waiting for its fsync."""

    dfd: int
    sid: str
    #: The session file, ``flock``-ed until the spare is in its place.
    fd: int
    #: The spare, under our OFD write lock, holding the new record.
    sfd: int
    payload: bytes


class _BusyError(Exception):
    """Another process holds a session's lock, and the caller must not wait while holding others."""


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


def _parse_config(config: Any) -> str:
    """The directory named by *config* (a path string or a dict with ``save_path``)."""
    if config is None:
        return DEFAULT_SAVE_PATH
    if isinstance(config, Mapping):
        found = [v for k, v in config.items() if normalize_key(str(k)) in _PATH_KEYS]
        unknown = sorted(str(k) for k in config if normalize_key(str(k)) not in _PATH_KEYS)
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


def _read_exact(fd: int, size: int) -> bytes:
    """The *size* bytes of a file that does not change while we read it (from offset 0)."""
    data = os.read(fd, size) if size else b""
    if len(data) >= size:
        return data
    chunks = [data]  # a short read: keep going until EOF
    while True:
        chunk = os.read(fd, max(size - len(data), 65536))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _pwrite_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    offset = 0
    while offset < len(payload):
        offset += os.pwrite(fd, view[offset:], offset)


class _ClosedOnError:
    """``with _ClosedOnError(fd):`` closes the descriptor *fd* if the block raises (the error goes on)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if kind is not None:
            os.close(self.fd)


def _regular_stat(fd: int, where: str) -> os.stat_result:
    """``fstat`` of the open session file *fd*.

    :raises UnsafePathError: if it is not a regular file (*where* names it).
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"session file {where!r} is not a regular file; remove it")
    return st


def _expired(st: os.stat_result, lifetime: int, now: float) -> bool:
    return now - st.st_mtime_ns / 1e9 >= lifetime


def _spare_name(sid: str) -> str:
    return f".{sid}{_SPARE_SUFFIX}"


# ---------------------------------------------------------------- exchange mode (Linux)
#
# Rewriting a session writes the complete new record into the session's spare
# file ``.<sid>.spare``, fsyncs it and swaps the two names with one
# ``renameat2(RENAME_EXCHANGE)``: the new version takes the session's name and
# the old inode becomes the spare for the next write. No inode is allocated or
# freed per write (ext4 and others pay dearly for inode churn), and a crash
# still leaves either the old or the new complete record at ``<sid>``.
#
# The old inode is rewritten in place the next time, so a lock-free reader
# must not be reading it then: readers *pin* the file they read with an OFD
# read lock (``F_OFD_SETLK``, ``F_RDLCK``) and check that it still has the
# session's name; a writer rewrites a spare only under an OFD write lock. OFD
# locks are independent of the ``flock`` that serializes writers, so a read
# never waits for a write (Linux; the mode is probed at start and falls back
# to a new temp file + ``rename`` per write elsewhere).

_RENAME_EXCHANGE = 2
#: errnos saying this filesystem or kernel cannot exchange names.
_NO_EXCHANGE_ERRNOS = frozenset(
    {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EPERM}
)


def _load_renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # pragma: no cover - glibc < 2.28 / musl without it
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()
_F_OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)
# struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks), padded to 8 bytes.
_FLOCK_FMT = "hhqqi"
_FLOCK_SIZE = (struct.calcsize(_FLOCK_FMT) + 7) & ~7


def _flock_arg(kind: int) -> bytes:
    return struct.pack(_FLOCK_FMT, kind, os.SEEK_SET, 0, 0, 0).ljust(_FLOCK_SIZE, b"\0")


_PIN = _flock_arg(fcntl.F_RDLCK)
_PIN_WRITE = _flock_arg(fcntl.F_WRLCK)


def _ofd_lock(fd: int, arg: bytes) -> bool:
    """Take an OFD lock on the whole of *fd* without waiting; False if someone holds a conflicting one."""
    assert _F_OFD_SETLK is not None
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, arg)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _exchange(dfd: int, a: str, b: str) -> None:
    """Swap the names *a* and *b* in directory *dfd* atomically."""
    assert _renameat2 is not None
    if _renameat2(dfd, a.encode(), dfd, b.encode(), _RENAME_EXCHANGE) != 0:  # names are ASCII
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a)


def probe_exchange(directory: str) -> bool:
    """True if *directory*'s filesystem supports what exchange mode needs.

    ``renameat2(RENAME_EXCHANGE)`` swaps two names, and OFD read locks are
    independent of ``flock`` but conflict with OFD write locks. Checked with
    two probe files (``.probe.*``) created and removed in *directory*.
    """
    if _renameat2 is None or _F_OFD_SETLK is None:
        return False
    tag = secrets.token_hex(8)
    names = (f".probe.{tag}.a", f".probe.{tag}.b")
    fds: list[int] = []
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name, body in zip(names, (b"a", b"b")):
            fd = os.open(name, _O_SPARE | os.O_EXCL, FILE_MODE, dir_fd=dfd)
            fds.append(fd)
            os.write(fd, body)
        _exchange(dfd, names[0], names[1])
        reader = os.open(names[0], _O_FILE, dir_fd=dfd)
        fds.append(reader)
        if os.read(reader, 8) != b"b":
            return False
        fcntl.flock(reader, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a writer's session lock ...
        pinner = os.open(names[0], _O_FILE, dir_fd=dfd)
        fds.append(pinner)
        if not _ofd_lock(pinner, _PIN):  # ... must not keep a reader out
            return False
        # fds[1] is now the inode named names[0]: a rewrite must wait for the pin.
        return not _ofd_lock(fds[1], _PIN_WRITE)
    except OSError as exc:
        log.debug("file provider: no exchange mode in %s (%s)", directory, exc)
        return False
    finally:
        for fd in fds:
            os.close(fd)
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dfd)
        os.close(dfd)


class _Store:
    """The synchronous file operations; called only from the provider's worker thread.

    It caches open directory fds (``save_path`` and its shard directories),
    dropped every :data:`DIR_CACHE_SECONDS` and whenever one turns out to have
    been removed.
    """

    def __init__(self, save_path: str, max_lifetime: int, timeout: float, exchange: bool = False) -> None:
        self.save_path = save_path
        self.max_lifetime = max_lifetime
        #: Seconds an operation waits for another process's lock: 0.8 x *timeout*, the
        #: seconds one provider call may take (``provider_timeout``).
        self.lock_timeout = timeout * 0.8
        #: Seconds one GC pass may take before it stops where it is: 0.5 x *timeout*.
        self.gc_budget = timeout * 0.5
        #: Rewrite sessions through their spare file and RENAME_EXCHANGE (see above).
        self.exchange = exchange
        #: Pin what lock-free reads read (OFD read lock): needed when any process
        #: sharing the directory may be in exchange mode.
        self.pin = exchange or _F_OFD_SETLK is not None
        #: (shard1, shard2) where the last GC pass stopped for lack of time, or None.
        self.gc_cursor: tuple[str, str] | None = None
        self._root: int | None = None
        self._dirs: dict[str, int] = {}
        self._dirs_since = time.monotonic()
        #: Directory fds dropped from the cache during a batch, closed when it ends
        #: (an operation in progress may still use one).
        self._retired: list[int] = []
        self._fsync_pool: concurrent.futures.ThreadPoolExecutor | None = None

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

    def _drop_dirs(self) -> None:
        """Forget the cached directory fds; they are closed at the end of the batch."""
        self._retired.extend(self._dirs.values())
        self._dirs.clear()
        if self._root is not None:
            self._retired.append(self._root)
            self._root = None
        self._dirs_since = time.monotonic()

    def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for fd in retired:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Close the cached directory fds and stop the fsync helpers (the store still works)."""
        self._drop_dirs()
        self._close_retired()
        pool, self._fsync_pool = self._fsync_pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def shard_fd(self, sid: str, create: bool) -> int | None:
        """The fd of ``save_path/sid[0]/sid[1]`` (``None`` if missing and not *create*).

        Cached for the batch and up to :data:`DIR_CACHE_SECONDS`: the caller
        must not close it.
        """
        key = sid[:2]
        dfd = self._dirs.get(key)
        if dfd is not None:
            return dfd
        for attempt in range(2):
            root = self._root
            if root is None:
                root = self._open_root(create)
                if root is None:
                    return None
                self._root = root
            where1 = os.path.join(self.save_path, sid[0])
            try:
                level1 = self._open_subdir(root, sid[0], create, where1)
                if level1 is None:
                    return None
                try:
                    dfd = self._open_subdir(level1, sid[1], create, os.path.join(where1, sid[1]))
                finally:
                    os.close(level1)
            except FileNotFoundError:  # mkdir in a save_path removed since we opened it
                if attempt or not self.stale(sid):
                    raise
                continue
            if dfd is not None:
                self._dirs[key] = dfd
            return dfd
        return None  # pragma: no cover - the loop returns or raises

    def stale(self, sid: str) -> bool:
        """True (and the cache dropped) if a cached directory on *sid*'s path was removed."""
        for fd in (self._root, self._dirs.get(sid[:2])):
            if fd is None:
                continue
            try:
                gone = os.fstat(fd).st_nlink == 0
            except OSError:  # pragma: no cover - a closed fd would be a bug
                gone = True
            if gone:
                self._drop_dirs()
                return True
        return False

    # ------------------------------------------------------------ files

    def _open_file(self, dfd: int, name: str, where: str) -> int | None:
        """Open the entry *name* for reading and locking; ``None`` if missing.

        :raises UnsafePathError: if the entry is a symlink.
        """
        try:
            return os.open(name, _O_FILE, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in _UNSAFE_ERRNOS:
                raise UnsafePathError(
                    f"session file {where!r} is a symlink or not a regular file; refusing to follow "
                    "it (remove it)"
                ) from None
            raise

    def _where(self, sid: str) -> str:
        # (== os.path.join(save_path, sid[0], sid[1], sid): save_path is absolute, the
        # sid validated; built for every operation, so without join's overhead)
        return f"{self.save_path}{os.sep}{sid[0]}{os.sep}{sid[1]}{os.sep}{sid}"

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
    def _named(dfd: int, name: str, st: os.stat_result) -> bool:
        """True if *name* in *dfd* names the inode whose ``fstat`` is *st*."""
        try:
            there = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return there.st_ino == st.st_ino and there.st_dev == st.st_dev

    def _open_locked(
        self, dfd: int, name: str, where: str, deadline: float, wait: bool = True
    ) -> tuple[int, os.stat_result] | None:
        """The session file *name*, ``flock``-ed, and its stat; ``None`` if there is none.

        Retries until the locked inode is the one *name* names (a concurrent
        save may have put a new file there, a destroy removed it).

        :raises UnsafePathError: if *name* is a symlink or not a regular file.
        :raises _BusyError: if another process holds the lock and not *wait*.
        """
        while True:
            self._check_deadline(deadline, where)
            fd = self._open_file(dfd, name, where)
            if fd is None:
                return None
            with _ClosedOnError(fd):
                if wait:
                    self._lock(fd, where, deadline)
                else:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise _BusyError from None
                st = _regular_stat(fd, where)
                if self._named(dfd, name, st):
                    return fd, st
            os.close(fd)  # replaced or removed while we waited: look again

    def _open_current(
        self, dfd: int, name: str, where: str
    ) -> tuple[int, os.stat_result] | None:
        """The session file *name* for a lock-free read, and its stat; ``None`` if there is none.

        Where OFD locks exist the file is pinned (an OFD read lock) and
        checked to still be the one *name* names, so it holds one complete
        version that an exchange-mode process (this one or another) cannot
        rewrite while it is open. Without them nothing rewrites files in
        place and the open file is enough.

        :raises UnsafePathError: if *name* is a symlink or not a regular file.
        """
        deadline = 0.0
        delay = 0.0
        while True:
            fd = self._open_file(dfd, name, where)
            if fd is None:
                return None
            with _ClosedOnError(fd):
                if not self.pin:
                    st = _regular_stat(fd, where)
                    return fd, st
                try:
                    pinned = _ofd_lock(fd, _PIN)
                except OSError:
                    st = _regular_stat(fd, where)
                    if self.exchange:
                        raise
                    self.pin = False  # no OFD locks on this filesystem, so no exchange mode either
                    return fd, st
                if pinned:
                    st = _regular_stat(fd, where)
                    if self._named(dfd, name, st):
                        return fd, st
            # The inode we opened left the name (it is the spare now, perhaps being
            # rewritten): open the name again. A rewrite is never done under the
            # name itself, so this settles at once; back off only if it does not.
            os.close(fd)
            if not deadline:
                deadline = time.monotonic() + self.lock_timeout
            else:
                self._check_deadline(deadline, where)
                time.sleep(delay)
                delay = min(max(delay * 2, 0.0005), 0.02)

    def _load(self, fd: int, where: str, st: os.stat_result) -> _Record | None:
        """Decode the record open as *fd* (of size ``st.st_size``); ``None`` (and a warning) if corrupt."""
        size = st.st_size
        if size > codec.MAX_DECODE_BYTES:
            log.warning("session file %s is %d bytes, over the limit; ignored", where, size)
            return None
        payload = _read_exact(fd, size)
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

    def _write_temp(self, dfd: int, sid: str, payload: bytes) -> tuple[str, int]:
        """Write *payload* to a new temp file and fsync it; returns (name, locked fd)."""
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

    def _replace(self, dfd: int, sid: str, payload: bytes) -> None:
        """Atomically put *payload* at *sid* through a new temp file (the caller holds the lock)."""
        tmp, fd = self._write_temp(dfd, sid, payload)
        try:
            os.rename(tmp, sid, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        finally:
            os.close(fd)

    def _stage_spare(self, dfd: int, sid: str, payload: bytes, where: str) -> int | None:
        """Write *payload* over *sid*'s spare file (not yet fsync-ed); returns its fd.

        The caller holds the session's lock; the spare stays under our OFD
        write lock until :meth:`_commit`. ``None`` when the spare cannot be
        used right now (a reader still holds it, something else is in its
        place): the caller then writes a new temp file.
        """
        spare = _spare_name(sid)
        try:
            sfd = os.open(spare, _O_SPARE, FILE_MODE, dir_fd=dfd)
        except OSError as exc:
            if exc.errno not in _UNSAFE_ERRNOS:
                raise
            log.warning("%s.spare is a symlink or not a file; writing a new file instead", where)
            return None
        with _ClosedOnError(sfd):
            if not _ofd_lock(sfd, _PIN_WRITE):
                os.close(sfd)
                return None  # a reader pinned the old version a moment ago: leave it be
            st = os.fstat(sfd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                log.warning("%s.spare is not a plain file; writing a new file instead", where)
                os.close(sfd)
                return None
            _pwrite_all(sfd, payload)
            if st.st_size > len(payload):
                os.ftruncate(sfd, len(payload))
        return sfd

    def _commit(self, staged: _Staged) -> None:
        """Put a staged (written and fsync-ed) spare in place of the session file.

        Closes the spare's fd (not the session's). The rename of last resort
        when names cannot be exchanged is the classic mode's.
        """
        dfd, sid = staged.dfd, staged.sid
        spare = _spare_name(sid)
        os.close(staged.sfd)  # unpins: the spare holds the complete, fsync-ed record
        try:
            _exchange(dfd, spare, sid)
        except OSError as exc:
            if exc.errno == errno.ENOENT:  # the spare was removed meanwhile (GC): a temp file then
                self._replace(dfd, sid, staged.payload)
                return
            if exc.errno not in _NO_EXCHANGE_ERRNOS:
                raise
            log.warning("session store %s cannot exchange names (%s); using rename", self.save_path, exc)
            self.exchange = False
            os.rename(spare, sid, src_dir_fd=dfd, dst_dir_fd=dfd)

    @staticmethod
    def _fsync_one(fd: int) -> BaseException | None:
        try:
            os.fsync(fd)
        except OSError as exc:
            return exc
        return None

    def _fsync_all(self, fds: list[int]) -> list[BaseException | None]:
        """fsync every fd, several at a time (the disk merges concurrent flushes)."""
        if len(fds) == 1 or FSYNC_LANES < 2:
            return [self._fsync_one(fd) for fd in fds]
        lanes = min(len(fds), FSYNC_LANES)
        if self._fsync_pool is None:
            self._fsync_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=FSYNC_LANES - 1, thread_name_prefix="gosession-fsync"
            )
        outcomes: list[BaseException | None] = [None] * len(fds)

        def lane(k: int) -> None:
            for i in range(k, len(fds), lanes):
                try:
                    os.fsync(fds[i])
                except OSError as exc:
                    outcomes[i] = exc

        helpers = [self._fsync_pool.submit(lane, k) for k in range(1, lanes)]
        lane(0)  # this thread takes a lane too
        for helper in helpers:
            helper.result()
        return outcomes

    def _finish(self, wave: list[_Staged]) -> list[BaseException | None]:
        """fsync the staged spares together, then put each in place; unlock everything.

        Returns one outcome per staged save (``None`` or its error).
        """
        outcomes: list[BaseException | None] = [None] * len(wave)
        spares_open = len(wave)
        try:
            synced = self._fsync_all([staged.sfd for staged in wave])
            for i, (staged, error) in enumerate(zip(wave, synced)):
                spares_open = len(wave) - i - 1
                try:
                    if error is not None:
                        os.close(staged.sfd)
                        raise error
                    self._commit(staged)
                except Exception as exc:
                    outcomes[i] = exc
        finally:
            for staged in wave[len(wave) - spares_open :]:
                with contextlib.suppress(OSError):
                    os.close(staged.sfd)
            for staged in wave:
                os.close(staged.fd)  # releases the session's lock
        return outcomes

    def _create(self, dfd: int, sid: str, payload: bytes) -> bool:
        """Create the record at *sid* unless one appeared meanwhile; True if created."""
        tmp, fd = self._write_temp(dfd, sid, payload)
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

    @staticmethod
    def _remove(dfd: int, sid: str) -> None:
        """Delete the session file *sid* and its spare (the caller holds the lock)."""
        os.unlink(sid, dir_fd=dfd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_spare_name(sid), dir_fd=dfd)

    # ------------------------------------------------------------ verbs

    def read(self, sid: str, refresh: bool = True) -> SessionData | None:
        if not valid_sid(sid):
            return None
        try:
            data = self._read(sid, refresh)
            if data is None and self.stale(sid):  # a miss through a removed directory: look again
                data = self._read(sid, refresh)
            return data
        except UnsafePathError as exc:
            log.warning("session %s… not served: %s", sid[:8], exc)
            return None

    def _read(self, sid: str, refresh: bool) -> SessionData | None:
        dfd = self.shard_fd(sid, create=False)
        if dfd is None:
            return None
        where = self._where(sid)
        opened = self._open_current(dfd, sid, where)
        if opened is None:
            return None
        fd, st = opened
        try:
            rec = self._load(fd, where, st)
            if rec is None:
                return None
            now = time.time()
            age = now - st.st_mtime_ns / 1e9
            if age >= rec.lifetime:
                return None
            if refresh and age >= refresh_step(rec.lifetime):
                os.utime(fd)  # last access = now
            return rec.data
        finally:
            os.close(fd)

    def exist(self, sid: str) -> bool:
        return self.read(sid, refresh=False) is not None

    def release(
        self, sid: str, changes: Changes, expiry: int, wave: list[_Staged] | None = None
    ) -> None:
        """Apply *changes* to *sid*'s record.

        With *wave* (exchange mode, inside a batch), a rewrite is left staged
        in it instead of finished: the spare written but not fsync-ed, the
        session still locked; :meth:`_finish` completes it. Then a session
        that another process holds locked raises :class:`_BusyError` instead of
        waiting (never wait for one lock while holding others).
        """
        _check_sid(sid)
        lifetime = expiry if expiry > 0 else self.max_lifetime
        where = self._where(sid)
        deadline = time.monotonic() + self.lock_timeout
        for attempt in range(2):
            dfd = self.shard_fd(sid, create=changes.create)
            if dfd is None:
                return  # no shard directory, so no record: do not resurrect
            try:
                if self._release(dfd, sid, changes, lifetime, where, deadline, wave):
                    return
            except FileNotFoundError:
                if attempt or not self.stale(sid):
                    raise
                continue  # the cached directory was removed: once more from the top
            if attempt or not self.stale(sid):
                return  # destroyed or expired meanwhile: do not resurrect

    def _release(
        self,
        dfd: int,
        sid: str,
        changes: Changes,
        lifetime: int,
        where: str,
        deadline: float,
        wave: list[_Staged] | None,
    ) -> bool:
        """Apply *changes*; False if dropped because there is no record and no ``create``."""
        while True:
            opened = self._open_locked(dfd, sid, where, deadline, wait=not wave)
            if opened is None:
                if not changes.create:
                    return False
                payload = codec.encode({"data": changes.apply({}), "lifetime": lifetime})
                if self._create(dfd, sid, payload):
                    return True
                continue  # created by someone else meanwhile: update that one
            fd, st = opened
            handed_over = False
            try:
                rec = self._load(fd, where, st)
                live = rec is not None and not _expired(st, rec.lifetime, time.time())
                if not live:
                    if not changes.create:
                        self._remove(dfd, sid)  # expired or corrupt: gone for good
                        return True
                    base: SessionData = {}
                else:
                    assert rec is not None
                    if changes.empty and rec.lifetime == lifetime:
                        os.utime(fd)  # nothing to write: refresh last access only
                        return True
                    base = rec.data
                payload = codec.encode({"data": changes.apply(base), "lifetime": lifetime})
                sfd = self._stage_spare(dfd, sid, payload, where) if self.exchange else None
                if sfd is None:
                    self._replace(dfd, sid, payload)
                    return True
                staged = _Staged(dfd, sid, fd, sfd, payload)
                handed_over = True
                if wave is not None:
                    wave.append(staged)
                else:
                    error = self._finish([staged])[0]
                    if error is not None:
                        raise error
                return True
            finally:
                if not handed_over:
                    os.close(fd)  # releases the lock

    def destroy(self, sid: str) -> None:
        if not valid_sid(sid):
            return
        where = self._where(sid)
        deadline = time.monotonic() + self.lock_timeout
        try:
            dfd = self.shard_fd(sid, create=False)
            if dfd is None:
                return
            opened = self._open_locked(dfd, sid, where, deadline)
            if opened is None:
                return
            try:
                self._remove(dfd, sid)
            finally:
                os.close(opened[0])
        except UnsafePathError as exc:
            log.warning("session %s… not destroyed: %s", sid[:8], exc)

    def regenerate(self, old_sid: str, sid: str) -> SessionData:
        _check_sid(old_sid)
        _check_sid(sid)
        old_where = self._where(old_sid)
        deadline = time.monotonic() + self.lock_timeout
        odfd = self.shard_fd(old_sid, create=False)
        opened = None if odfd is None else self._open_locked(odfd, old_sid, old_where, deadline)
        if odfd is not None and opened is not None:
            fd, st = opened
            try:
                rec = self._load(fd, old_where, st)
                if rec is None or _expired(st, rec.lifetime, time.time()):
                    self._remove(odfd, old_sid)
                else:
                    ndfd = self.shard_fd(sid, create=True)
                    assert ndfd is not None
                    # One rename, under the old record's lock: the data is at exactly one sid.
                    os.rename(old_sid, sid, src_dir_fd=odfd, dst_dir_fd=ndfd)
                    with contextlib.suppress(FileNotFoundError):  # its spare goes along
                        os.rename(_spare_name(old_sid), _spare_name(sid), src_dir_fd=odfd, dst_dir_fd=ndfd)
                    os.utime(fd)
                    return rec.data
            finally:
                os.close(fd)
        ndfd = self.shard_fd(sid, create=True)
        assert ndfd is not None
        if not self._create(ndfd, sid, codec.encode({"data": {}, "lifetime": self.max_lifetime})):
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

        With *collect*, expired session files (with their spares), orphaned
        temp files and spares whose session is gone are removed.
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
            sessions = {name for name in names if valid_sid(name)}
            for name in names:
                if name in sessions:
                    live += self._visit(dfd, name, now, collect)
                elif not collect:
                    continue
                elif _TMP_RE.fullmatch(name):
                    self._collect_temp(dfd, name, now)
                else:
                    spare = _SPARE_RE.fullmatch(name)
                    if spare is not None and spare.group(1) not in sessions:
                        self._collect_spare(dfd, name, spare.group(1), now)
        finally:
            os.close(dfd)
        return live

    def _visit(self, dfd: int, name: str, now: float, collect: bool) -> int:
        where = self._where(name)
        if not collect:
            try:
                opened = self._open_current(dfd, name, where)
            except (OSError, SessionError):
                return 0  # gone, swapped for a symlink/other entry, or busy: skip
            if opened is None:
                return 0
            fd, st = opened
        else:
            try:
                fd = os.open(name, _O_FILE, dir_fd=dfd)
            except OSError:
                return 0  # gone, or swapped for a symlink/other entry: skip
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    os.close(fd)
                    return 0
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return 1  # being updated right now, so it is in use
            except BaseException:
                os.close(fd)
                raise
            if not self._named(dfd, name, st):
                os.close(fd)
                return 0
        try:
            rec = self._load(fd, where, st)
            # A corrupt file is kept for max_lifetime after its last write, then collected.
            lifetime = rec.lifetime if rec is not None else self.max_lifetime
            if not _expired(st, lifetime, now):
                return 1 if rec is not None else 0
            if collect:
                self._remove(dfd, name)
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
            if self._named(dfd, name, st):
                os.unlink(name, dir_fd=dfd)
                log.info("removed orphaned temp file %s", os.path.join(self.save_path, name))
        finally:
            os.close(fd)

    def _collect_spare(self, dfd: int, name: str, sid: str, now: float) -> None:
        """Remove the spare *name* of session *sid* if the session is gone.

        Removing a spare never loses data (it holds an old version); a save
        that was about to use it writes a new temp file instead. Left alone
        while its last exchange (its ctime) is younger than TEMP_GRACE.
        """
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode) or now - st.st_ctime < TEMP_GRACE:
            return
        try:
            os.stat(sid, dir_fd=dfd, follow_symlinks=False)
            return  # the session is there after all
        except FileNotFoundError:
            pass
        except OSError:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dfd)
            log.info("removed the spare of a gone session %s", os.path.join(self.save_path, name))

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

    # ------------------------------------------------------------ batches

    def run_batch(self, messages: Sequence[Message]) -> list[Any]:
        """Answer *messages* in order: one outcome each, the result or the error it raised.

        In exchange mode, consecutive saves of different sessions form a
        *wave*: each is read, merged and written to its spare while its
        session stays locked, then the wave's spares are fsync-ed together
        and exchanged into place one by one. A read or a second save of a
        session of the wave, and any other message (destroy, regenerate,
        GC, count), first finishes the wave, so every message sees the ones
        before it.
        """
        if time.monotonic() - self._dirs_since >= DIR_CACHE_SECONDS:
            self._drop_dirs()
        results: list[Any] = [None] * len(messages)
        wave: list[_Staged] = []
        owners: list[int] = []  # the message of each staged save
        staged: set[str] = set()  # their sessions

        def settle() -> None:
            self._settle(wave, owners, results)
            staged.clear()

        try:
            for i, message in enumerate(messages):
                if staged and _touches(message, staged):
                    settle()
                try:
                    if isinstance(message, Release) and self.exchange:
                        try:
                            self.release(message.sid, message.changes, message.expiry, wave)
                        except _BusyError:  # locked elsewhere: let go of ours before waiting
                            settle()
                            self.release(message.sid, message.changes, message.expiry, wave)
                        if len(wave) > len(owners):
                            owners.append(i)
                            staged.add(message.sid)
                    else:
                        results[i] = self.dispatch(message)
                except Exception as exc:  # one message fails, the batch goes on
                    results[i] = self._failure(exc)
        finally:
            if wave:
                settle()
            self._close_retired()
        return results

    def _settle(self, wave: list[_Staged], owners: list[int], results: list[Any]) -> None:
        for i, error in zip(owners, self._finish(wave)):
            if error is not None:
                results[i] = self._failure(error)
        wave.clear()
        owners.clear()

    def _failure(self, exc: BaseException) -> BaseException:
        """*exc* as its message's outcome: an OS error becomes ProviderUnavailableError."""
        if isinstance(exc, OSError):
            failure = ProviderUnavailableError(
                f"file session store {self.save_path!r}: {exc}; check that the directory exists, "
                "is writable and the disk is not full"
            )
            failure.__cause__ = exc
            return failure
        return exc

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


def _touches(message: Message, staged: set[str]) -> bool:
    """True if the saves staged for the sessions *staged* must finish before *message*.

    A read or save of one of them must see it done. A destroy or regenerate
    may wait for a lock another process holds, which we must never do while
    holding the wave's locks; a GC or count walks every session.
    """
    if isinstance(message, (Read, Exist, Release)):
        return message.sid in staged
    return True


class FileProvider(BatchVerbs):
    """Sessions as files under ``save_path``, shared safely between processes.

    ``provider_config``: a directory path (``""`` means ``"./tmp"``) or
    ``{"save_path": path}``. See the module docstring for the guarantees.
    """

    inline_when_idle = True

    def __init__(self) -> None:
        super().__init__()
        self.save_path = ""
        self._store: _Store | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    # ------------------------------------------------------------ plumbing

    def _timeout(self) -> float:
        timeout = getattr(self.manager_config, "provider_timeout", None)
        return float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else 5.0

    async def _run_one(self, message: Message) -> Any:
        """One message on the worker thread (the verbs come from :class:`BatchVerbs`)."""
        store, executor = self._require()
        loop = asyncio.get_running_loop()
        (outcome,) = await loop.run_in_executor(executor, store.run_batch, [message])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _require(self) -> tuple[_Store, concurrent.futures.ThreadPoolExecutor]:
        if self._store is None or self._executor is None:
            raise ProviderUnavailableError("file session provider is not initialised; start the manager")
        return self._store, self._executor

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
        exchange = await asyncio.to_thread(probe_exchange, self.save_path)
        timeout = self._timeout()
        old, self._store = self._store, _Store(self.save_path, max_lifetime, timeout, exchange=exchange)
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="gosession-file"
            )
        elif old is not None:
            self._executor.submit(old.close)

    async def handle_batch(self, messages: Sequence[Message]) -> list[Any]:
        """Run a batch of file messages in one hop to the worker thread, in order."""
        if self._store is None or not all(isinstance(m, _FILE_MESSAGES) for m in messages):
            return await super().handle_batch(messages)
        store, executor = self._require()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, store.run_batch, messages)

    @property
    def exchange_mode(self) -> bool:
        """True when saves rewrite each session's spare file and exchange names (Linux)."""
        return self._store is not None and self._store.exchange

    async def session_close(self) -> None:
        """Stop the worker thread once the batch in progress (if any) is done; close its fds."""
        executor, self._executor = self._executor, None
        store, self._store = self._store, None
        if executor is not None:
            if store is not None:
                executor.submit(store.close)  # on the worker thread, after the batch in progress
            await asyncio.to_thread(executor.shutdown, wait=True)
