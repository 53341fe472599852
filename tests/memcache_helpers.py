"""Private memcached servers for the memcache tests: started on free loopback ports, stopped by PID.

:class:`Memcached` runs ``memcached -l 127.0.0.1 -p PORT -U 0 -m 64`` (plus
``-u nobody`` when the tests run as root, which memcached requires). The
contract suite shares one server (:func:`shared_memcached`), started on first
use and stopped when the test process exits; provider tests that stop, kill
or fill a server start their own. Without the ``memcached`` binary,
:func:`require_memcached_binary` fails under ``CI=true`` and skips loudly
elsewhere (``.ci/run`` and ``scripts/test.sh`` install Debian's package).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from reliability.private_servers import stop_process

from .support import fail_or_skip, free_port


def require_memcached_binary() -> None:
    """Fail (CI) or skip loudly (elsewhere) unless ``memcached`` is installed."""
    if shutil.which("memcached") is None:
        fail_or_skip("memcached binary not found (Debian: apt-get install memcached)")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the server gets SIGKILL if the test process dies, so none outlives the run."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Memcached:
    """One private memcached process on a free 127.0.0.1 port (*memory_mb* MiB of cache)."""

    def __init__(self, memory_mb: int = 64, *extra: str) -> None:
        self.port = free_port()
        self.memory_mb = memory_mb
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Memcached:
        """Start it (again, on the same port) and wait until it answers ``version``."""
        user = ["-u", "nobody"] if os.geteuid() == 0 else []  # memcached refuses root without -u
        self.proc = subprocess.Popen(
            ["memcached", "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", str(self.memory_mb),
             *user, *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.command(b"version").startswith(b"VERSION"):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"memcached on port {self.port} did not start")

    def stop(self) -> None:
        """Terminate it by PID (and wait)."""
        proc, self.proc = self.proc, None
        stop_process(proc)

    def kill(self) -> None:
        """SIGKILL it by PID: no shutdown, connections reset."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self, line: bytes, timeout: float = 1.0) -> bytes:
        """Send one text-protocol command; its answer up to ``END``/one line (b"" if unreachable)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
                s.sendall(line + b"\r\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        return data
                    data += chunk
                    if data.endswith(b"END\r\n") or (
                        data.endswith(b"\r\n") and not data.startswith((b"VALUE", b"STAT"))
                    ):
                        return data
        except OSError:
            return b""

    def get(self, key: bytes) -> bytes | None:
        """The raw value stored under *key*, or ``None``."""
        answer = self.command(b"get " + key)
        if not answer.startswith(b"VALUE"):
            return None
        header, _, rest = answer.partition(b"\r\n")
        length = int(header.split()[3])
        return rest[:length]

    def stats(self) -> dict[str, str]:
        """``stats`` as a dict of strings."""
        out: dict[str, str] = {}
        for line in self.command(b"stats").decode().splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[0] == "STAT":
                out[parts[1]] = parts[2]
        return out

    def set(self, key: bytes, value: bytes, exptime: int = 0) -> bool:
        return self.command(b"set %b 0 %d %d\r\n%b" % (key, exptime, len(value), value)).startswith(b"STORED")


_shared: Memcached | None = None
_shared_error: str | None = None


def shared_memcached() -> Memcached | None:
    """The test session's shared server, started on first use; ``None`` if it cannot run here."""
    global _shared, _shared_error
    if _shared is not None or _shared_error is not None:
        return _shared
    if shutil.which("memcached") is None:
        _shared_error = "memcached binary not found (Debian: apt-get install memcached)"
        return None
    server = Memcached()
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        _shared_error = str(exc)
        return None
    atexit.register(server.stop)
    _shared = server
    return _shared


def shared_error() -> str | None:
    """Why :func:`shared_memcached` gave ``None``."""
    return _shared_error
