"""Alembic, configured in code: works from any working directory, no alembic.ini needed.

The migrations live in `migrations/` at the top of the project (beside the `digitreader` package);
`alembic -c migrations/alembic.ini ...` works too for developers who want the Alembic CLI.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from digitreader.errors import DatabaseError

log = logging.getLogger(__name__)


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
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise DatabaseError(f"the migrations have {len(heads)} heads; expected exactly one")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    """The database's Alembic revision (None for an empty database)."""
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except DBAPIError as exc:
        raise DatabaseError(
            f"cannot use the database {engine.url.render_as_string(hide_password=True)}: {exc.orig}",
            hint="check that the server is running and DIGITREADER_DATABASE_URL is right",
        ) from exc


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply migrations up to `revision`. Returns (revision before, revision after)."""
    before = current_revision(engine)
    try:
        command.upgrade(alembic_config(engine), revision)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"migration failed: {getattr(exc, 'orig', None) or exc}") from exc
    after = current_revision(engine)
    if before != after:
        log.info("database upgraded from %s to %s", before, after)
    return before, after


def ensure_schema(engine: Engine) -> None:
    """SQLite: upgrade to head (first use of a new file creates the schema). Others: check only."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if engine.dialect.name == "sqlite":
        upgrade(engine)
        return
    if current is None and inspect(engine).get_table_names():
        raise DatabaseError(
            "the database has tables but no digitreader schema version",
            hint="point DIGITREADER_DATABASE_URL at an empty database or a digitreader one",
        )
    raise DatabaseError(
        f"the database schema is at revision {current or 'empty'}, the code needs {head}",
        hint="run: digitreader db upgrade",
    )
