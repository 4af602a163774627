"""Which process is reading a batch: a lock per batch, held by the embedded run that reads it.

Two `digitreader submit scans/` of the same folder at once (a clerk's run beside the morning's cron
job), or two re-runs of one interrupted batch, would otherwise both read every pending document. The
run that registers or resumes a batch holds its `BatchLock` until the batch is finished; another run
of the same submission finds it held, waits for it (polling, so Ctrl-C and SIGTERM still stop it),
then reads whatever the first left. The lock goes with its process: a run killed by SIGKILL or the
OOM killer leaves nothing behind, and the one waiting takes the batch over.

- SQLite: a POSIX record lock (`fcntl.lockf`) on byte `batch id` of `<file>.batch-lock`, beside the
  database. One file for every batch, opened once per process and never closed while this process
  lives (closing any descriptor of a file drops every record lock the process holds on it).
- PostgreSQL: a session advisory lock (`BATCH_LOCK_CLASS`, batch id) on a connection of its own,
  held for the run.
- Other databases, an in-memory SQLite, or a system without `fcntl`: no lock (runs of one batch
  may then both read a document; the results are still right, as before).

`batch_in_progress` tells `digitreader status` whether a batch marked running is being read right
now, or was left by a process that is gone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from digitreader.errors import DatabaseError

log = logging.getLogger(__name__)

#: First key of the PostgreSQL advisory locks on batches (the second is the batch id): a number
#: derived from the project's name, in int4's range.
BATCH_LOCK_CLASS = zlib.crc32(b"digitreader.batches") & 0x7FFFFFFF

_TRIES = 3
_files_lock = threading.Lock()
_files: dict[str, int] = {}  # lock file -> descriptor, kept open for the life of this process
_held: set[tuple[str, int]] = set()  # (lock file, batch id) this process holds


def sqlite_batch_lock_path(engine: Engine) -> Path | None:
    """`<file>.batch-lock` beside a SQLite database file; None for an in-memory database or a URI."""
    db = engine.url.database
    if engine.dialect.name != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).expanduser().with_name(Path(db).name + ".batch-lock")


def _descriptor(path: Path) -> int:
    key = str(path)
    fd = _files.get(key)
    if fd is None:
        try:
            fd = os.open(key, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise DatabaseError(
                f"cannot open the batch lock file {path}: {exc.strerror or exc}",
                hint="the database's folder must be writable to read scans into it (DIGITREADER_HOME)",
            ) from exc
        _files[key] = fd
    return fd


class BatchLock:
    """The lock on one batch, for one run. `try_acquire(batch_id)` is what `store.register_batch`
    calls (through its `claim` argument) before it hands a batch over; `release()` (or leaving the
    `with` block) gives it back."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.batch_id: int | None = None
        self._path = sqlite_batch_lock_path(engine)
        self._conn: Connection | None = None
        self._kind = self._which()

    def _which(self) -> str:
        if self._path is not None:
            try:
                import fcntl  # noqa: F401
            except ImportError:  # pragma: no cover - not POSIX
                return "none"
            return "sqlite"
        return "postgresql" if self.engine.dialect.name == "postgresql" else "none"

    @property
    def enforced(self) -> bool:
        """False where this database has no such lock (see the module's docstring)."""
        return self._kind != "none"

    def try_acquire(self, batch_id: int) -> bool:
        """Take the lock on `batch_id` if no other run holds it. A lock already held by this object is
        given back first (one batch per run)."""
        if self.batch_id == batch_id:
            return True
        self.release()
        if self._kind == "sqlite":
            got = self._try_sqlite(batch_id)
        elif self._kind == "postgresql":
            got = self._try_postgresql(batch_id)
        else:
            got = True
        if got:
            self.batch_id = batch_id
        return got

    def acquire(
        self, batch_id: int, poll: float = 0.25, tick: Callable[[], None] | None = None, every: float = 1.0
    ) -> None:
        """Wait until the lock on `batch_id` is free, and take it. Polls, so that Ctrl-C and SIGTERM
        (which the CLI turns into KeyboardInterrupt) stop the wait; `tick` is called about every
        `every` seconds meanwhile (to show how far the other run is)."""
        last = time.monotonic()
        while not self.try_acquire(batch_id):
            time.sleep(poll)
            if tick is not None and time.monotonic() - last >= every:
                tick()
                last = time.monotonic()

    def _try_sqlite(self, batch_id: int) -> bool:
        import fcntl

        assert self._path is not None
        key = (str(self._path), batch_id)
        with _files_lock:
            if key in _held:  # another run in this process (POSIX record locks never conflict within one)
                return False
            fd = _descriptor(self._path)
            # A few tries: `batch_in_progress` (digitreader status) holds a free batch's lock for a moment.
            for attempt in range(_TRIES):
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, batch_id)
                except OSError as exc:
                    if exc.errno not in (errno.EACCES, errno.EAGAIN):
                        # No record locks here (ENOLCK: some network filesystems): go on without
                        # them, as on a database that has none, rather than wait for ever.
                        log.warning("no batch locks on %s (%s): runs of one batch are not kept apart",
                                    self._path, exc.strerror or exc)  # fmt: skip
                        self._kind = "none"
                        return True
                    if attempt + 1 < _TRIES:
                        time.sleep(0.02)
                    continue
                _held.add(key)
                return True
            return False

    def _try_postgresql(self, batch_id: int) -> bool:
        try:
            if self._conn is None:
                self._conn = self.engine.connect()
                self._conn.execute(text("SELECT set_config('application_name', :n, false)"),
                                   {"n": _application_name()})  # fmt: skip
            got = bool(
                self._conn.execute(
                    text("SELECT pg_try_advisory_lock(:cls, :id)"), {"cls": BATCH_LOCK_CLASS, "id": batch_id}
                ).scalar()
            )
            self._conn.commit()  # the lock is the session's, not the transaction's
        except DBAPIError as exc:
            self._close()
            raise DatabaseError(f"cannot lock batch {batch_id}: {exc.orig}") from exc
        return got

    def release(self) -> None:
        """Give the lock back (nothing when none is held). Never raises: a lock that cannot be given
        back goes with its connection or its process."""
        batch_id, self.batch_id = self.batch_id, None
        if batch_id is None:
            return
        if self._kind == "sqlite":
            import fcntl

            assert self._path is not None
            with _files_lock:
                fd = _files.get(str(self._path))
                if fd is not None:
                    with contextlib.suppress(OSError):
                        fcntl.lockf(fd, fcntl.LOCK_UN, 1, batch_id)
                _held.discard((str(self._path), batch_id))
        elif self._kind == "postgresql" and self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.execute(
                    text("SELECT pg_advisory_unlock(:cls, :id)"), {"cls": BATCH_LOCK_CLASS, "id": batch_id}
                )
                self._conn.commit()
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None

    def __enter__(self) -> BatchLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def holder(engine: Engine, batch_id: int) -> str | None:
    """Who holds `batch_id`'s lock, for people ("process 1234", "process 1234 on host-b"); None when
    nobody does, or where it cannot be told (SQLite off Linux, another database)."""
    path = sqlite_batch_lock_path(engine)
    if path is not None:
        if not sys.platform.startswith("linux"):
            return None
        import fcntl

        try:
            with _files_lock:
                fd = _descriptor(path)
            # struct flock on Linux: short type, short whence, off_t start, off_t len, pid_t pid.
            probe = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, batch_id, 1, 0)
            l_type, _, _, _, pid = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, probe))
        except (OSError, DatabaseError):
            return None
        return f"process {pid}" if l_type != fcntl.F_UNLCK and pid > 0 else None
    if engine.dialect.name == "postgresql":
        try:
            name = _pg_lock_owner(engine, batch_id)
        except DatabaseError:
            return None
        return _describe(name) if name else None
    return None


def _pg_lock_owner(engine: Engine, batch_id: int) -> str | None:
    """The `application_name` of the session holding `batch_id`'s advisory lock ("" when it has none),
    None when no session holds it. Asked of pg_locks, so that asking never stands in a run's way."""
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT coalesce(a.application_name, '') FROM pg_locks l "
                    "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.classid = :cls AND l.objid = :id AND l.objsubid = 2 "
                    "AND l.granted"
                ),
                {"cls": BATCH_LOCK_CLASS, "id": batch_id},
            ).first()
    except DBAPIError as exc:
        raise DatabaseError(f"cannot ask for batch {batch_id}'s lock: {exc.orig}") from exc
    return None if row is None else str(row[0])


def _application_name() -> str:
    """What the lock's PostgreSQL connection calls itself, for `holder` to read back."""
    return f"digitreader:{os.getpid()}@{socket.gethostname()}"[:63]


def _describe(application_name: str) -> str | None:
    who, _, host = application_name.removeprefix("digitreader:").partition("@")
    if not application_name.startswith("digitreader:") or not who.isdigit():
        return None
    return f"process {who}" + (f" on {host}" if host and host != socket.gethostname() else "")


def batch_in_progress(engine: Engine, batch_id: int) -> bool | None:
    """Whether a run holds `batch_id`'s lock now: True (another process is reading it), False (none:
    a batch marked running was left by a process that ended), None where there is no such lock."""
    lock = BatchLock(engine)
    if not lock.enforced:
        return None
    if lock._kind == "postgresql":
        return _pg_lock_owner(engine, batch_id) is not None
    try:
        got = lock.try_acquire(batch_id)
    except DatabaseError:
        return None  # the lock file cannot be opened (a read-only folder): unknown
    if got:
        lock.release()
    if not lock.enforced:
        return None  # the filesystem has no record locks: unknown
    return not got
