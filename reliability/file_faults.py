"""File provider faults: the writer killed mid-write, and a save directory that is read-only or full.

:func:`writer_crash`
    A separate process (``python -m reliability.file_faults writer``) saves
    sessions through the ``file`` provider in a loop (several sessions per
    batch, each save a counter plus a 256 KiB value, so the kill lands in the
    middle of writes, fsyncs and renames) and prints ``ACK <sid> <n>`` after
    each save returned. It is ``SIGKILL``-ed at a random moment, *kills*
    times, a new writer continuing the counters each time. After every kill,
    every session file must decode and each session must hold its last
    acknowledged counter or a later one (a save whose ``ACK`` the kill cut off
    may be there or not).

The read-only and full directory scenarios run under the stress driver's
load (:mod:`reliability.stress`); importing this module registers:

store ``file-tmpfs``
    the ``file`` provider on a private ``tmpfs`` (32 MiB), mounted for the
    run and unmounted after it (needs root);
fault ``dir-readonly-full``
    the save directory's file system remounted read-only (``mount -o
    remount,ro``, for every open descriptor too) for
    :attr:`DirReadOnlyFull.outage` seconds, then writable again; then
    filled up (a filler file until ``ENOSPC``), then the filler removed.
    While each lasts, a write request is checked to get a 503 (or 500)
    whose body names no path and no session id, and the server log must
    have the error. (While full, the load's destroys free pages that a
    small write may take first: the filler is topped up and the probe sent
    again, up to 20 times, until one is refused.) Afterwards the model's checks hold (nothing acknowledged
    lost) and every session file decodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .fault_scenarios import Timeline
from .faults import FAULTS, Fault, RunContext, register_fault
from .httpclient import Connection
from .stores import STORES, StoreSetup, StoreUnavailableError, register_store

__all__ = ["DirReadOnlyFull", "check_session_files", "writer_crash"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
_SID = re.compile(r"^[A-Za-z0-9_-]{16,160}$")
#: Bytes of the padding value each save of the writer carries.
PAD = 256 * 1024


# ---------------------------------------------------------------- the writer process


async def _writer(directory: str, sids: list[str], start: int) -> None:
    from gosession_tornado import SessionManager
    from gosession_tornado.provider import Changes, Release

    manager = SessionManager("file", {"cookie_name": "sid", "provider_config": directory,
                                      "provider_timeout": 30})
    await manager.start()
    out = sys.stdout
    out.write("READY\n")
    out.flush()
    n = start
    pad = "x" * PAD
    while True:
        n += 1

        async def save(sid: str, n: int = n) -> None:
            await manager._ask(Release(sid, Changes(set={"n": n, "pad": pad}, create=True), 3600))
            out.write(f"ACK {sid} {n}\n")
            out.flush()

        await asyncio.gather(*(save(sid) for sid in sids))


def _writer_main(argv: list[str]) -> int:
    directory, start, *sids = argv
    asyncio.run(_writer(directory, sids, int(start)))
    return 0


# ---------------------------------------------------------------- checks


def check_session_files(directory: pathlib.Path) -> tuple[int, list[str]]:
    """(session files found, problems): every file named like a session id must decode.

    The file provider's layout is ``<dir>/<sid[0]>/<sid[1]>/<sid>``; spares
    (``.<sid>.spare``) and temp files (``.<sid>.tmp.<random>``) are not
    sessions and are skipped.
    """
    from gosession_tornado import codec

    found = 0
    problems: list[str] = []
    for path in directory.rglob("*"):
        if not path.is_file() or not _SID.match(path.name):
            continue
        found += 1
        try:
            record = codec.decode(path.read_bytes())
            if not isinstance(record, dict) or not isinstance(record.get("data"), dict):
                problems.append(f"{path.name[:8]}…: not a session record")
        except Exception as exc:
            problems.append(f"{path.name[:8]}…: {type(exc).__name__}: {exc}")
    return found, problems


async def _read_all(directory: pathlib.Path, sids: list[str]) -> dict[str, Any]:
    from gosession_tornado import SessionManager

    manager = SessionManager("file", {"cookie_name": "sid", "provider_config": str(directory)})
    await manager.start()
    try:
        return {sid: await manager.read(sid) for sid in sids}
    finally:
        await manager.close()


async def writer_crash(directory: pathlib.Path, *, kills: int = 30, sessions: int = 4,
                       seed: int | None = None) -> dict[str, Any]:
    """Kill the writer *kills* times at random moments; check the files after each kill."""
    from gosession_tornado import SessionManager

    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, a local directory
    sids = [SessionManager("memory").new_sid() for _ in range(sessions)]
    acked: dict[str, int] = dict.fromkeys(sids, 0)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    problems: list[str] = []
    lost: list[str] = []
    kill_after: list[float] = []
    acks_total = 0
    unacked_seen = 0
    started = time.monotonic()
    for round_ in range(kills):
        start = max(acked.values())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "reliability.file_faults", "writer", str(directory), str(start), *sids,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=str(ROOT),
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if line.strip() != b"READY":
                err = await proc.stderr.read()
                raise RuntimeError(f"the writer did not start: {line!r} {err[-2000:]!r}")
            # the first round waits for a few acknowledged saves, the others kill at any moment
            delay = rng.uniform(0.05, 0.5) if round_ else 0.5
            kill_after.append(round(delay, 3))
            await asyncio.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            rest = await proc.stdout.read()
            await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for raw in (line + rest).splitlines():
            parts = raw.decode().split()
            if len(parts) == 3 and parts[0] == "ACK":
                acks_total += 1
                acked[parts[1]] = max(acked[parts[1]], int(parts[2]))
        found, bad = check_session_files(directory)
        problems += [f"after kill {round_ + 1}: {p}" for p in bad]
        data = await _read_all(directory, sids)
        for sid in sids:
            record = data[sid]
            if acked[sid] == 0:
                continue
            if record is None:
                lost.append(f"after kill {round_ + 1}: session {sid[:8]}… missing "
                            f"(acknowledged n={acked[sid]})")
                continue
            n = record.get("n")
            if not isinstance(n, int) or n < acked[sid]:
                lost.append(f"after kill {round_ + 1}: session {sid[:8]}… has n={n!r}, acknowledged "
                            f"n={acked[sid]}")
            elif n > acked[sid]:
                unacked_seen += 1
            if record.get("pad") != "x" * PAD:
                problems.append(f"after kill {round_ + 1}: session {sid[:8]}… has a damaged value")
            acked[sid] = max(acked[sid], n if isinstance(n, int) else 0)
    found, bad = check_session_files(directory)
    return {
        "kills": kills, "sessions": sessions, "acknowledged_saves": acks_total,
        "last_acknowledged": sorted(acked.values()), "session_files": found,
        "kill_after_s": kill_after, "problems": problems, "lost": lost,
        "saves_applied_but_not_acknowledged": unacked_seen, "seconds": round(time.monotonic() - started, 2),
    }


def writer_crash_result(fig: dict[str, Any]) -> dict[str, Any]:
    """*fig* (from :func:`writer_crash`) as a ``fault`` result for :mod:`reliability.report`."""
    import datetime

    survived = not fig["problems"] and not fig["lost"]
    notes = (
        f"file: a separate writer process saving {fig['sessions']} sessions (a counter and a 256 KiB "
        f"value each, {fig['sessions']} saves per batch) was SIGKILLed {fig['kills']} times at random "
        f"moments ({min(fig['kill_after_s'])}-{max(fig['kill_after_s'])} s after it started); after "
        f"every kill each session file decoded ({len(fig['problems'])} problems) and each session held "
        f"its last acknowledged save or a later one ({len(fig['lost'])} lost; "
        f"{fig['acknowledged_saves']} saves acknowledged in all, {fig['saves_applied_but_not_acknowledged']} "
        "times a save the kill cut off before its acknowledgement was there)."
    )
    return {
        "kind": "fault", "provider": "file", "where": "a directory of the run", "processes": 1,
        "clients": 1, "sessions": fig["sessions"], "requests": fig["acknowledged_saves"],
        "statuses": {}, "violations": {"lost update": len(fig["lost"])} if fig["lost"] else {},
        "fault": {
            "name": "writer-killed", "fault": "the writing process SIGKILLed mid-write",
            "injected": fig["kills"], "outage_s": None, "status_503": 0, "first_503_s": None,
            "recovery_s": None, "survived": survived, "notes": notes, "figures": fig,
        },
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
    }


# ---------------------------------------------------------------- a read-only or full save directory


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise OSError(f"mount {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def _umount(path: pathlib.Path) -> None:
    for _ in range(50):
        proc = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode == 0 or "not mounted" in proc.stderr:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


def _is_mounted(path: pathlib.Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        return any(line.split()[1] == target for line in mounts)


async def _open_tmpfs(workdir: pathlib.Path, unique: str) -> StoreSetup:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        raise StoreUnavailableError("file-tmpfs: mounting a tmpfs needs root and mount(8)")
    mountpoint = pathlib.Path(tempfile.mkdtemp(prefix="gosession-tmpfs-"))
    try:
        _mount("-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(mountpoint))
    except OSError as exc:
        mountpoint.rmdir()  # noqa: ASYNC240 - an empty local directory
        raise StoreUnavailableError(f"file-tmpfs: {exc}") from exc

    async def cleanup() -> None:
        for _ in range(3):  # a read-only bind mount over it, then the tmpfs itself
            if _is_mounted(mountpoint):
                _umount(mountpoint)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()  # noqa: ASYNC240 - an empty local directory

    save = mountpoint / "sessions"
    return StoreSetup(
        provider="file",
        config={"provider": "file", "cookie_name": "sid", "provider_config": str(save),
                "provider_timeout": 1.0},
        client_side=False, shared=True, where="a private 32 MiB tmpfs", cleanup=cleanup,
        details={"unique": unique, "mountpoint": str(mountpoint), "save_path": str(save)},
    )


if "file-tmpfs" not in STORES:
    register_store("file-tmpfs", _open_tmpfs)


class DirReadOnlyFull(Fault):
    """The save directory read-only, then writable; full, then not (see the module docstring)."""

    name = "dir-readonly-full"
    description = "save directory remounted read-only, then filled up (ENOSPC), each healed under load"
    allowed_statuses = frozenset({503})
    warmup = 1.0
    outage = 2.0
    settle = 1.5

    def __init__(self) -> None:
        self.timeline = Timeline()
        self.t_inject: list[float] = []
        self.t_healed: list[float] = []
        self.probes: list[dict[str, Any]] = []
        self.errors: list[str] = []

    async def before(self, ctx: RunContext) -> None:
        if "mountpoint" not in ctx.setup.details:
            raise RuntimeError("dir-readonly-full needs the file-tmpfs store")
        self.timeline.attach(ctx.model)

    async def _probe_until_refused(
        self, ctx: RunContext, what: str, before: Callable[[], None] | None = None, tries: int = 20
    ) -> None:
        """:meth:`_probe_write` until a write is refused (at most *tries* times, *before* each).

        Under load, space comes back while the directory is "full": the load's
        destroys and regenerates delete session files, and a small write may fit
        in what they freed before the filler takes it again. So the filler is
        topped up (*before*) and the probe sent again; what is recorded is the
        last probe, with the number of tries.
        """
        probe: dict[str, Any] = {}
        for attempt in range(1, tries + 1):
            if before is not None:
                await asyncio.to_thread(before)
            probe = await self._probe_write(ctx, what)
            probe["tries"] = attempt
            if probe["status"] >= 500:
                break
            await asyncio.sleep(0.05)
        self.probes.append(probe)

    async def _probe_write(self, ctx: RunContext, what: str) -> dict[str, Any]:
        """One write request now; its status, and any path or id its body leaks."""
        save_path = ctx.setup.details["save_path"]
        conn = Connection("127.0.0.1", ctx.servers[0].port, timeout=10)
        try:
            resp = await conn.request("GET", "/op/set?k=k0&v=probe")
        finally:
            conn.close()
        body = resp.body.decode("utf-8", "replace")
        leaks = [w for w in (save_path, ctx.setup.details["mountpoint"], "/sessions") if w in body]
        if re.search(r"[0-9a-f]{32}", body) and resp.status >= 500:
            leaks.append("a session id")
        return {"during": what, "status": resp.status, "leaks": leaks, "body": body[:120]}

    async def during(self, ctx: RunContext) -> None:
        mountpoint = pathlib.Path(ctx.setup.details["mountpoint"])
        save = pathlib.Path(ctx.setup.details["save_path"])
        await asyncio.sleep(self.warmup)
        # read-only: the tmpfs remounted read-only (retried: a file open for writing holds it)
        self.t_inject.append(time.monotonic())
        for attempt in range(500):
            try:
                await asyncio.to_thread(_mount, "-o", "remount,ro", str(mountpoint))
                break
            except OSError:
                if attempt == 499:
                    raise
                await asyncio.sleep(0.005)
        ctx.mark("read-only", attempts=attempt + 1)
        await asyncio.sleep(0.3)
        await self._probe_until_refused(ctx, "read-only")
        await asyncio.sleep(self.outage - 0.3)
        await asyncio.to_thread(_mount, "-o", "remount,rw", str(mountpoint))  # writable again
        self.t_healed.append(time.monotonic())
        ctx.mark("writable")
        await asyncio.sleep(self.settle)
        # full: a filler file takes every free block
        filler = mountpoint / "filler"
        self.t_inject.append(time.monotonic())
        await asyncio.to_thread(_fill, filler)
        ctx.mark("full")
        await asyncio.sleep(0.3)
        await self._probe_until_refused(ctx, "full", before=lambda: _fill(filler))
        await asyncio.sleep(self.outage - 0.3)
        filler.unlink(missing_ok=True)  # open() itself may have met ENOSPC
        self.t_healed.append(time.monotonic())
        ctx.mark("space again")
        await asyncio.sleep(self.settle)
        found, problems = check_session_files(save)
        self.errors = problems
        self.session_files = found
        self.logged = _logged_errors(ctx)

    def summary(self, ctx: RunContext) -> dict[str, Any]:
        tl = self.timeline
        n503 = sum(1 for i, r in enumerate(tl.received) if tl.status[i] == 503)
        recovery = []
        for healed in self.t_healed:
            oks = [r for i, r in enumerate(tl.received) if tl.status[i] == 200 and tl.sent[i] >= healed]
            recovery.append(min(oks) - healed if oks else float("inf"))
        first = []
        for start, healed in zip(self.t_inject, self.t_healed):
            fails = [r for i, r in enumerate(tl.received) if tl.status[i] == 503 and start <= r < healed]
            if fails:
                first.append(min(fails) - start)
        logged = getattr(self, "logged", {})
        fig = {
            "probes": self.probes, "session_files": getattr(self, "session_files", 0),
            "undecodable_files": self.errors, "logged": logged,
            "slowest_request_s": round(max((r - s for s, r in zip(tl.sent, tl.received)), default=0.0), 3),
        }
        statuses = ", ".join(f"{p['during']}: {p['status']} (try {p.get('tries', 1)})" for p in self.probes)
        violations = dict(ctx.model.violations)
        acked = ctx.model.counts.get("acknowledged_writes", 0)
        kept = (f"{acked} acknowledged writes, none lost" if not violations
                else f"{acked} acknowledged writes; violations: {violations}")
        notes = (
            f"file on a 32 MiB tmpfs: the save directory read-only for {self.outage:g} s (remounted "
            f"read-only), then full for {self.outage:g} s (ENOSPC): {n503} requests answered 503 (writes; "
            f"reads kept working), a write request got {statuses} with a generic body "
            f"({sum(len(p['leaks']) for p in self.probes)} paths or ids in it); the server log has "
            f"{logged.get('read-only', 0)} 'Read-only file system' and {logged.get('full', 0)} 'No space "
            f"left' errors; first 200 {max(recovery) if recovery else None:.3f} s after the directory was "
            f"writable again; {fig['session_files']} session files all decode "
            f"({len(self.errors)} problems); {kept}."
        )
        return {
            "fault": self.description, "injected": len(self.t_inject), "outage_s": self.outage,
            "status_503": n503, "first_503_s": round(max(first), 3) if first else None,
            "recovery_s": round(max(recovery), 3) if recovery else None, "notes": notes, "figures": fig,
        }


def _fill(path: pathlib.Path) -> None:
    """Append to *path* until the file system is full (ENOSPC); again to take what was freed since."""
    try:
        # unbuffered: nothing is left in a buffer for close() to fail on, and an
        # ENOSPC from open() itself (the sessions already filled it) counts as full
        with open(path, "ab", buffering=0) as f:
            for size in (65536, 4096):  # large blocks, then the last pages
                block = b"\0" * size
                try:
                    while f.write(block):
                        pass
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise


def _logged_errors(ctx: RunContext) -> dict[str, int]:
    counts = {"read-only": 0, "full": 0}
    for server in ctx.servers:
        try:
            text = server.log_path.read_text(errors="replace")
        except OSError:
            continue
        counts["read-only"] += text.count("Read-only file system")
        counts["full"] += text.count("No space left on device")
    return counts


if DirReadOnlyFull.name not in FAULTS:
    register_fault(DirReadOnlyFull.name, DirReadOnlyFull)


def main(argv: list[str] | None = None) -> int:
    """``python -m reliability.file_faults writer DIR START SID...`` (the writer), ``crash [--kills N]``."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "writer":
        return _writer_main(args[1:])
    if args and args[0] == "crash":
        kills = int(args[args.index("--kills") + 1]) if "--kills" in args else 30
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="gosession-writer-"))
        try:
            fig = asyncio.run(writer_crash(tmp / "sessions", kills=kills))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(json.dumps(fig, indent=1))
        print(writer_crash_result(fig)["fault"]["notes"])
        return 0 if not fig["problems"] and not fig["lost"] else 1
    print(main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
