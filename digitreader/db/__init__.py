"""Storage: SQLAlchemy 2 models (`models`), engines and sessions (`session`), Alembic (`migrate`),
and the queries/writes the pipeline, CLI, workers and review page share (`store`)."""

from digitreader.db.models import (
    Base,
    Batch,
    Correction,
    Digit,
    Document,
    Field,
    ModelVersion,
    Page,
)
from digitreader.db.session import dispose_engines, get_engine, make_engine, session_scope

__all__ = [
    "Base",
    "Batch",
    "Correction",
    "Digit",
    "Document",
    "Field",
    "ModelVersion",
    "Page",
    "dispose_engines",
    "get_engine",
    "make_engine",
    "session_scope",
]
