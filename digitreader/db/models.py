"""The schema as SQLAlchemy 2 models. Alembic migrations (`migrations/`) own the tables; these
classes describe them for the code. Change both in one commit (a test checks they agree).

Hierarchy: Batch 1-n Document 1-n Page 1-n Field 1-n Digit; Correction n-1 Digit.
Duplicate-proofing: a document is unique per (batch, sha256); pages per (document, number);
fields per (page, order); digits per (field, position). Storing a document's results deletes its
previous pages first (in the same transaction), so storing twice never duplicates rows.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: Deterministic constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Status values (plain strings, so new ones need no migration).
BATCH_STATUSES = ("running", "done", "partial", "failed", "interrupted")
DOCUMENT_STATUSES = ("pending", "processing", "done", "needs_review", "failed")
#: Documents in these states have results and are skipped by a later submit unless --force.
DOCUMENT_FINISHED_OK = ("done", "needs_review")
MODEL_STATUSES = ("candidate", "active", "retired")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso_utc(value: dt.datetime | None) -> str | None:
    """A stored time as ISO 8601 with its offset, in UTC ("2026-12-06T16:15:47.315202+00:00"), for JSON.
    The database keeps UTC: SQLite gives it back without an offset, PostgreSQL in its session's zone."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Batch(Base):
    """One `digitreader submit` (or one distributed submission)."""

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    mode: Mapped[str] = mapped_column(String(16), default="embedded")  # embedded | distributed
    template: Mapped[str | None] = mapped_column(Text)  # template file used, if any
    threshold: Mapped[float | None] = mapped_column(Float)  # override of the model's review threshold
    model_version: Mapped[str | None] = mapped_column(String(64))
    seconds: Mapped[float | None] = mapped_column(Float)  # wall time of the last run over the batch
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # e.g. {"force": true, "inputs": [...]}

    documents: Mapped[list[Document]] = relationship(
        back_populates="batch", cascade="all, delete-orphan", passive_deletes=True, order_by="Document.id"
    )


class Document(Base):
    """One submitted file. `status`: pending -> processing -> done | needs_review | failed."""

    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("batch_id", "sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    page_count: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: Distributed: when its page task was put on the broker (a resumed batch queues only the others).
    queued_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    seconds: Mapped[float | None] = mapped_column(Float)  # processing time of this document
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # stage -> seconds (summed over pages)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: What the image decoders said of damaged data while its pages were read (a list of "page N:
    #: message"); None when nothing, or when the document failed (its error says why).
    warnings: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))

    batch: Mapped[Batch] = relationship(back_populates="documents")
    pages: Mapped[list[Page]] = relationship(
        back_populates="document", cascade="all, delete-orphan", passive_deletes=True, order_by="Page.number"
    )


class FileHash(Base):
    """What a file held when it was last hashed: its SHA-256 while the file at `path` keeps the stat
    `stamp` (size, modification and change times, device, inode). A later submit that finds the file
    with the same stamp does not read it again (`pipeline.hashcache`: rsync's quick check). A cache:
    a row deleted only costs hashing the file again."""

    __tablename__ = "file_hashes"

    path: Mapped[str] = mapped_column(Text, primary_key=True)  # absolute, as `db_text` stores it
    stamp: Mapped[str] = mapped_column(String(120))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    hashed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class Page(Base):
    __tablename__ = "pages"
    __table_args__ = (UniqueConstraint("document_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # from 1
    width: Mapped[int] = mapped_column(Integer)  # page as submitted
    height: Mapped[int] = mapped_column(Integer)
    skew_degrees: Mapped[float | None] = mapped_column(Float)
    #: Degrees clockwise the page was turned to be read (0, 90, 180, 270): scanned upside down or on
    #: its side (pipeline/orient.py). Boxes are still in the page as submitted.
    rotation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    document: Mapped[Document] = relationship(back_populates="pages")
    fields: Mapped[list[Field]] = relationship(
        back_populates="page", cascade="all, delete-orphan", passive_deletes=True, order_by="Field.ordinal"
    )


class Field(Base):
    """A digit field. `flags`: why it needs review, e.g. ["low_confidence", "length", "pattern"]."""

    __tablename__ = "fields"
    __table_args__ = (UniqueConstraint("page_id", "ordinal"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)  # from 0, reading order on the page
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # boxes | string
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    value: Mapped[str] = mapped_column(String(256), default="")
    confidence: Mapped[float | None] = mapped_column(Float)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    length: Mapped[int | None] = mapped_column(Integer)  # template rule
    pattern: Mapped[str | None] = mapped_column(String(256))  # template rule
    # Migration 0003: the field's strip of the page (greyscale JPEG, ~72 px high) and the page region
    # it shows, [x, y, w, h] in page-as-submitted pixels. NULL for rows stored before 0003.
    strip: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    strip_box: Mapped[list[Any] | None] = mapped_column(JSON)

    page: Mapped[Page] = relationship(back_populates="fields")
    digits: Mapped[list[Digit]] = relationship(
        back_populates="field", cascade="all, delete-orphan", passive_deletes=True, order_by="Digit.position"
    )

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)


class Digit(Base):
    """One digit slot. `label` is None for a blank cell; `top3` is [[label, probability], ...]
    over the model's 11 classes (10 = not a digit); `non_digit` is set when the model's first
    choice was "not a digit" (then `label` is its best digit and the digit is flagged)."""

    __tablename__ = "digits"
    __table_args__ = (
        UniqueConstraint("field_id", "position"),
        # "has this field a flagged digit?", asked per flagged field by the review queue (migration 0007)
        Index("ix_digits_field_id_needs_review", "field_id", "needs_review"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    field_id: Mapped[int] = mapped_column(ForeignKey("fields.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # from 0
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    h: Mapped[int] = mapped_column(Integer)
    crop: Mapped[bytes | None] = mapped_column(LargeBinary)  # 784 bytes, 28x28 uint8 row-major; None if blank
    blank: Mapped[bool] = mapped_column(Boolean, default=False)
    label: Mapped[int | None] = mapped_column(Integer)
    confidence: Mapped[float | None] = mapped_column(Float)
    top3: Mapped[list[Any] | None] = mapped_column(JSON)
    non_digit: Mapped[bool] = mapped_column(Boolean, default=False)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    model_version: Mapped[str | None] = mapped_column(String(64))

    field: Mapped[Field] = relationship(back_populates="digits")
    corrections: Mapped[list[Correction]] = relationship(
        back_populates="digit", cascade="all, delete-orphan", passive_deletes=True, order_by="Correction.id"
    )

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)


class ModelVersion(Base):
    """A recognition model known to this database (the registry; the review issue extends it)."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str | None] = mapped_column(Text)
    threshold: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="candidate", index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())
    # Migration 0002 (review/retraining): the model it was fine-tuned from, when it last went
    # live, and the promotion gate's last decision ({"passed", "reasons", "metrics"...}).
    parent_version: Mapped[str | None] = mapped_column(String(64))
    promoted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    gate: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Correction(Base):
    """A reviewer's correction of one digit (written by the review page, read by retraining)."""

    __tablename__ = "corrections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digit_id: Mapped[int] = mapped_column(ForeignKey("digits.id", ondelete="CASCADE"), index=True)
    old_label: Mapped[int | None] = mapped_column(Integer)
    new_label: Mapped[int | None] = mapped_column(Integer)  # None = "this cell is blank"
    reviewer: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, server_default=func.now(), index=True
    )
    model_version: Mapped[str | None] = mapped_column(String(64))
    # Migration 0002: the digit (and its field/document) before this correction, so `undo` can
    # restore it exactly; and where the correction came from (web, cli).
    previous: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    source: Mapped[str | None] = mapped_column(String(16))

    digit: Mapped[Digit] = relationship(back_populates="corrections")
