"""Alembic environment. Runs on the engine passed in `config.attributes["engine"]` (how
`digitreader db upgrade` calls it), else on `sqlalchemy.url` / DIGITREADER_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from digitreader.db.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs table rebuilds for ALTER
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        from digitreader.db.session import make_engine
        from digitreader.settings import Settings

        url = config.get_main_option("sqlalchemy.url") or Settings().resolved_database_url
        engine = make_engine(url)
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            _in_one_sqlite_transaction(connection)
        else:  # PostgreSQL: Alembic runs the migrations in a transaction of its own
            _configure(connection)
            connection.commit()


def _in_one_sqlite_transaction(connection: Connection) -> None:
    """The migrations in one SQLite transaction: all of them, or none. pysqlite begins no transaction
    before DDL, so each CREATE TABLE committed alone, and a first run stopped halfway through making
    the schema (Ctrl-C) left tables without their `alembic_version`: every later command failed
    "table batches already exists". Here pysqlite's own transaction handling is off while an explicit
    BEGIN IMMEDIATE ... COMMIT (SQLAlchemy's commit) wraps the lot; anything raised rolls it back.

    Foreign keys are off meanwhile, as SQLite says to do for schema changes: Alembic's batch mode
    changes a table by copying it and dropping the old one, and with them on, dropping `documents`
    deleted every page, field and digit by their ON DELETE CASCADE (a downgrade of 0005 did). Before
    the commit `PRAGMA foreign_key_check` must find nothing, or the lot is rolled back."""
    dbapi = connection.connection.driver_connection
    assert dbapi is not None
    before = dbapi.isolation_level
    dbapi.isolation_level = None  # (pysqlite commits an open transaction as this is set: none is open yet)
    try:
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: first
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        _configure(connection)
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"the migration would leave rows pointing at nothing: {broken[:5]}")
        connection.commit()
    except BaseException:
        connection.rollback()  # before foreign keys go back on below: nothing of it may be committed
        raise
    finally:
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")  # as `session` turns them on for every connection
        connection.commit()
        dbapi.isolation_level = before


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
