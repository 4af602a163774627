"""Schema and migrations on real SQLite and real PostgreSQL (127.0.0.1:5432, a throwaway database)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, Table, create_engine, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from digitreader.db import Batch, Digit, Document, Field, Page
from digitreader.db.migrate import alembic_config, current_revision, ensure_schema, head_revision, upgrade
from digitreader.db.models import Base
from digitreader.db.session import get_engine, make_engine, session_scope
from digitreader.errors import DatabaseError
from digitreader.settings import Settings

PG_ADMIN_URL = os.environ.get("DIGITREADER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TABLES = {"batches", "documents", "pages", "fields", "digits", "model_versions", "corrections", "alembic_version"}


def _pg_available() -> bool:
    try:
        eng = create_engine(PG_ADMIN_URL)
        with eng.connect():
            pass
        eng.dispose()
        return True
    except OperationalError:
        return False


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (CREATE DATABASE ... then DROP)."""
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (CI must have it)")
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name = f"digitreader_test_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        from digitreader.db.session import dispose_engines

        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _sample_document(session: Session) -> Document:
    batch = Batch()
    doc = Document(batch=batch, path="a.png", sha256="0" * 64, status="done", page_count=1)
    page = Page(document=doc, number=1, width=100, height=200)
    field = Field(page=page, ordinal=0, name="account", kind="boxes", x=1, y=2, w=3, h=4, value="7", flags=[])
    Digit(field=field, position=0, x=1, y=2, w=3, h=4, label=7, confidence=0.99, crop=bytes(784), top3=[[7, 0.99]])
    session.add(batch)
    session.flush()
    return doc


def _check_schema(engine: Engine) -> None:
    assert set(inspect(engine).get_table_names()) >= TABLES
    assert current_revision(engine) == head_revision()
    # The migrations and the models describe the same schema (types compared too).
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_sqlite_upgrade_from_empty_and_idempotent(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'x.sqlite'}")  # the folder is created
    assert current_revision(engine) is None
    before, after = upgrade(engine)
    assert (before, after) == (None, head_revision())
    _check_schema(engine)
    assert upgrade(engine) == (after, after)  # second run: nothing to do
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    # Down to nothing and back up again.
    command.downgrade(alembic_config(engine), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    _check_schema(engine)


def test_sqlite_created_on_first_use(settings: Settings) -> None:
    engine = get_engine(settings)
    assert (settings.home / "digitreader.sqlite").exists()
    _check_schema(engine)


def test_duplicates_are_refused(settings: Settings) -> None:
    engine = get_engine(settings)
    with session_scope(engine=engine) as s:
        doc = _sample_document(s)
        doc_id, batch_id = doc.id, doc.batch_id
    for dup in (
        lambda s: Page(document_id=doc_id, number=1, width=1, height=1),
        lambda s: Document(batch_id=batch_id, path="b.png", sha256="0" * 64),
        lambda s: Field(
            page_id=s.scalar(select(Page.id)), ordinal=0, name="x", kind="boxes", x=0, y=0, w=1, h=1, flags=[]
        ),
        lambda s: Digit(field_id=s.scalar(select(Field.id)), position=0, x=0, y=0, w=1, h=1),
    ):
        with pytest.raises(IntegrityError), session_scope(engine=engine) as s:
            s.add(dup(s))
    with session_scope(engine=engine) as s:
        assert s.scalar(select(Digit.label)) == 7
        assert len(s.scalars(select(Page)).all()) == 1


def test_cascade_delete_on_sqlite(settings: Settings) -> None:
    engine = get_engine(settings)
    with session_scope(engine=engine) as s:
        _sample_document(s)
    with session_scope(engine=engine) as s:
        s.execute(cast(Table, Page.__table__).delete())  # foreign keys with ON DELETE CASCADE are enforced
    with session_scope(engine=engine) as s:
        assert s.scalars(select(Digit)).all() == []
        assert s.scalars(select(Field)).all() == []


def test_unreachable_database_is_a_database_error(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none", _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(DatabaseError) as info:
        get_engine(s)
    assert info.value.exit_code == 6


@pytest.mark.integration
def test_postgres_upgrade_from_empty(pg_url: str) -> None:
    engine = make_engine(pg_url)
    assert current_revision(engine) is None
    with pytest.raises(DatabaseError, match="db upgrade"):
        ensure_schema(engine)  # a server database is never upgraded behind the user's back
    upgrade(engine)
    _check_schema(engine)
    assert upgrade(engine)[0] == head_revision()
    with session_scope(engine=engine) as s:
        doc_id = _sample_document(s).id
    with pytest.raises(IntegrityError), session_scope(engine=engine) as s:
        s.add(Page(document_id=doc_id, number=1, width=1, height=1))
    with session_scope(engine=engine) as s:
        s.execute(cast(Table, Document.__table__).delete())
    with session_scope(engine=engine) as s:
        assert s.scalars(select(Digit)).all() == []
    engine.dispose()
