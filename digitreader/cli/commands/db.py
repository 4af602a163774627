"""`digitreader db upgrade|current`: apply or show the database migrations."""

from __future__ import annotations

import logging

import typer

from digitreader.cli.output import err
from digitreader.settings import get_settings

log = logging.getLogger(__name__)

db_app = typer.Typer(
    name="db",
    help=(
        "Manage the database schema (Alembic migrations).\n\n"
        "The embedded SQLite database is upgraded automatically on first use; a server database "
        "(DIGITREADER_DATABASE_URL=postgresql+psycopg://...) must be upgraded once per release:\n\n"
        "  digitreader db upgrade"
    ),
    no_args_is_help=True,
)


@db_app.command("upgrade")
def upgrade_cmd(
    revision: str = typer.Option("head", "--revision", "-r", help="Target revision (default: the latest)."),
) -> None:
    """Apply the migrations to the configured database (idempotent).

    Example:  DIGITREADER_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/digitreader digitreader db upgrade
    """
    from digitreader.db.migrate import upgrade
    from digitreader.db.session import get_engine

    settings = get_settings()
    engine = get_engine(settings, check_schema=False)
    before, after = upgrade(engine, revision)
    where = engine.url.render_as_string(hide_password=True)
    if before == after:
        err.print(f"database {where} is already at revision {after}")
    else:
        err.print(f"database {where} upgraded: {before or 'empty'} -> {after}")
    typer.echo(after or "")


@db_app.command("current")
def current_cmd() -> None:
    """Print the database's schema revision and whether it is the latest.

    Example:  digitreader db current
    """
    from digitreader.db.migrate import current_revision, head_revision, known_revision, newer_schema
    from digitreader.db.session import get_engine

    settings = get_settings()
    engine = get_engine(settings, check_schema=False)
    cur, head = current_revision(engine), head_revision()
    typer.echo(cur or "empty")
    if cur is not None and not known_revision(cur):
        raise newer_schema(cur)
    err.print("up to date" if cur == head else f"behind: latest is {head} (run: digitreader db upgrade)")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app)
