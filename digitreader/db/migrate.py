"""Alembic, configured in code: works from any working directory, no alembic.ini needed.

The migrations live in `migrations/` at the top of the project (beside the `digitreader` package);
`alembic -c migrations/alembic.ini ...` works too for developers who want the Alembic CLI.

`upgrade` runs under a lock that every process upgrading the same database takes
(`migration_lock`), so that two commands started together on a new SQLite file (two clerks'
`submit`s, or `submit` beside the review page) do not both create the schema: the second waits, then
finds it at head.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING


class _OnlyWhenDebugging(logging.Filter):
    """Alembic announces its plugins and its context at INFO on every connection it configures (nine
    lines on each command run with -v, and in each worker process); digitreader says what it migrated
    itself ("database upgraded from ... to ..."). Alembic's own lines show with -vv (DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or logging.getLogger().isEnabledFor(logging.DEBUG)


# Before alembic is imported: importing it announces its plugins.
for _name in ("alembic.runtime.plugins", "alembic.runtime.migration"):
    logging.getLogger(_name).addFilter(_OnlyWhenDebugging())

from sqlalchemy import Engine, inspect, text  # noqa: E402
from sqlalchemy.exc import DBAPIError, SQLAlchemyError  # noqa: E402

from digitreader.errors import DatabaseError  # noqa: E402

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

#: The migrations' head revision, known without loading Alembic (a test checks that it is Alembic's
#: head): a command that finds its database there goes on without importing Alembic, about 0.13 s of
#: each command's start. Alembic is imported where the schema is checked in full or upgraded.
SCHEMA_HEAD = "0008"


def migrations_dir() -> Path:
    """The folder holding env.py and versions/ (the project's top-level `migrations/`)."""
    here = Path(__file__).resolve()
    installed = Path(sys.prefix) / "share" / "digitreader" / "migrations"  # non-editable install
    for cand in (here.parents[2] / "migrations", here.parent / "migrations", installed):
        if (cand / "env.py").is_file():
            return cand
    raise DatabaseError(
        "the Alembic migrations folder was not found next to the digitreader package",
        hint="reinstall digitreader (pip install .) or run it from its source tree",
    )


def alembic_config(engine: Engine | None = None, url: str | None = None) -> Config:
    """An Alembic Config pointing at our migrations; pass `engine` to run on its connection."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise DatabaseError(f"the migrations have {len(heads)} heads; expected exactly one")
    return heads[0]


def known_revision(revision: str) -> bool:
    """Whether `revision` is one of this code's migrations (not one a newer release added)."""
    from alembic.script import ScriptDirectory

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except Exception:  # alembic.util.CommandError: "Can't locate revision identified by ..."
        return False


def newer_schema(revision: str) -> DatabaseError:
    """The error for a database at a revision this code does not know (a newer release made it)."""
    return DatabaseError(
        f"the database schema is at revision {revision}, newer than this digitreader knows (up to "
        f"{head_revision()}): a newer release made or upgraded it",
        hint="upgrade digitreader to the release that uses this database (or point DIGITREADER_DATABASE_URL "
        "at another one)",
    )


def current_revision(engine: Engine) -> str | None:
    """The database's Alembic revision (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except DBAPIError as exc:
        raise _unreachable(engine, exc) from exc


def _unreachable(engine: Engine, exc: DBAPIError) -> DatabaseError:
    if engine.dialect.name == "sqlite":
        # A SQLite file in WAL mode needs write access to it and its folder even to be read (-wal, -shm).
        hint = (
            "check that the database file and its folder can be written by this user (even reading needs it) "
            "and that DIGITREADER_DATABASE_URL / DIGITREADER_HOME is right"
        )
    else:
        hint = "check that the server is running and DIGITREADER_DATABASE_URL is right"
    return DatabaseError(
        f"cannot use the database {engine.url.render_as_string(hide_password=True)}: {exc.orig}", hint=hint
    )


#: The PostgreSQL advisory lock `migration_lock` holds (a number derived from the project's name).
PG_LOCK_KEY = zlib.crc32(b"digitreader.migrations")


def sqlite_lock_path(engine: Engine) -> Path | None:
    """The lock file beside a SQLite database file (`<file>.migrate-lock`, as SQLite keeps `-wal`
    and `-shm` beside it); None for an in-memory database or a URI."""
    db = engine.url.database
    if engine.dialect.name != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).expanduser().with_name(Path(db).name + ".migrate-lock")


@contextlib.contextmanager
def migration_lock(engine: Engine, *, required: bool = True) -> Iterator[bool]:
    """Held while the schema is upgraded: one process at a time upgrades a given database; the others
    wait for it. SQLite: an exclusive `flock` on `sqlite_lock_path` (POSIX; elsewhere no lock);
    PostgreSQL: a session advisory lock (`PG_LOCK_KEY`) on a connection of its own; other databases:
    none. Yields True, or, with `required=False` where the SQLite lock file cannot be opened (a
    read-only folder), False: the caller goes on without the lock (a database that needs no upgrade
    can still be read)."""
    lock_file = sqlite_lock_path(engine)
    if lock_file is not None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield True
            return
        try:
            fh = open(lock_file, "a+b")  # noqa: SIM115 - closed below, after the upgrade
        except OSError as exc:
            if not required:
                yield False
                return
            raise DatabaseError(
                f"cannot open the migration lock file {lock_file}: {exc.strerror or exc}",
                hint="the database's folder must be writable to create or upgrade its schema (DIGITREADER_HOME)",
            ) from exc
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file is closed, or the process ends
            yield True
        return
    if engine.dialect.name == "postgresql":
        try:
            conn = engine.connect()
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
        except DBAPIError as exc:
            raise _unreachable(engine, exc) from exc
        try:
            yield True
        finally:
            with contextlib.suppress(SQLAlchemyError):
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})
            conn.close()
        return
    yield True


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply migrations up to `revision`, under `migration_lock`. Returns (revision before, revision
    after): a process that waited for another's upgrade finds the database there already."""
    with migration_lock(engine):
        return _upgrade(engine, revision)


def _upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    from alembic import command

    before = current_revision(engine)
    if before is not None and not known_revision(before):
        raise newer_schema(before)
    try:
        command.upgrade(alembic_config(engine), revision)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"migration failed: {getattr(exc, 'orig', None) or exc}") from exc
    after = current_revision(engine)
    if before != after:
        log.info("database upgraded from %s to %s", before, after)
    return before, after


def _at_head(engine: Engine) -> bool:
    """Whether the database's schema is at `SCHEMA_HEAD`, read with SQL alone (no Alembic). False for
    anything else (an empty database, another revision): `ensure_schema` then looks in full."""
    try:
        conn = engine.connect()
    except DBAPIError as exc:
        raise _unreachable(engine, exc) from exc
    with conn:
        try:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        except DBAPIError:  # no such table
            return False
    return rows == [SCHEMA_HEAD]


def ensure_schema(engine: Engine) -> None:
    """SQLite: upgrade to head (first use of a new file creates the schema). Others: check only.

    On SQLite the first look is taken under `migration_lock` too: processes that open a new file at
    the same moment (its first connections set WAL mode, which a file being created by another
    process can refuse with "database is locked") take turns, and the later ones find the schema made."""
    if engine.dialect.name == "sqlite":
        with migration_lock(engine, required=False) as locked:
            if _at_head(engine) or current_revision(engine) == head_revision():
                return
            if locked:
                _upgrade(engine)
                return
        upgrade(engine)  # without a lock file it cannot take: says so (DatabaseError)
        return
    if _at_head(engine):
        return
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is not None and not known_revision(current):
        raise newer_schema(current)
    if current is None and inspect(engine).get_table_names():
        raise DatabaseError(
            "the database has tables but no digitreader schema version",
            hint="point DIGITREADER_DATABASE_URL at an empty database or a digitreader one",
        )
    raise DatabaseError(
        f"the database schema is at revision {current or 'empty'}, the code needs {head}",
        hint="run: digitreader db upgrade",
    )
