"""Engines and sessions from the settings.

SQLite (the embedded default): the home directory is created, WAL journal, foreign keys on and a
busy timeout, so a reader (status, review page) never blocks the writer for long. The schema is
brought to the latest migration automatically the first time a SQLite file is used; other
databases must be upgraded explicitly (`digitreader db upgrade`) and are only checked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from digitreader.errors import DatabaseError
from digitreader.settings import Settings

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_checked: set[str] = set()


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    # Set once, when the file is new (it stays in WAL mode): setting it again on every connection asks
    # for a lock that a process creating the file at that moment may hold ("database is locked").
    if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str) -> Engine:
    """A new engine for `url` (SQLite: creates the folder, sets the pragmas)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"bad database URL {url!r}: {exc}", hint="check DIGITREADER_DATABASE_URL") from exc
    kwargs: dict[str, Any] = {"future": True}
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:" and not db.startswith("file:"):
            try:
                Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseError(
                    f"cannot create the folder for the database {db}: {exc}", hint="check DIGITREADER_HOME"
                ) from exc
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise DatabaseError(f"cannot use database URL {parsed!r}: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def get_engine(settings: Settings, *, check_schema: bool = True) -> Engine:
    """The process-wide engine for the settings' database, its schema upgraded (SQLite) or checked.

    Raises `DatabaseError` when the database is unreachable or its schema is not the latest.
    """
    url = settings.resolved_database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        if check_schema and url not in _checked:
            from digitreader.db.migrate import ensure_schema

            ensure_schema(engine)
            _checked.add(url)
    return engine


def dispose_engines() -> None:
    """Close every cached engine (tests; before forking)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _checked.clear()


def session_factory(settings: Settings) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(settings), expire_on_commit=False, future=True)


@contextmanager
def session_scope(settings: Settings | None = None, *, engine: Engine | None = None) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any error.

    Database failures come out as `DatabaseError` (exit code 6).
    """
    if engine is None:
        if settings is None:
            raise ValueError("session_scope needs settings or an engine")
        engine = get_engine(settings)
    session = Session(bind=engine, expire_on_commit=False, future=True)
    try:
        yield session
        session.commit()
    except IntegrityError:
        session.rollback()
        raise
    except DBAPIError as exc:  # unreachable, locked, not a database, wrong schema...
        session.rollback()
        raise DatabaseError(f"database error: {exc.orig}", hint=_hint(engine)) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _hint(engine: Engine) -> str:
    if is_sqlite(engine):
        return "check that the database file is writable and not on a network share (DIGITREADER_HOME)"
    return "check that the server is running and DIGITREADER_DATABASE_URL is right"


def wrap_db_errors(exc: SQLAlchemyError, engine: Engine) -> DatabaseError:
    """Turn a SQLAlchemy error into the user-facing `DatabaseError`."""
    orig = getattr(exc, "orig", None) or exc
    return DatabaseError(f"database error: {orig}", hint=_hint(engine))
