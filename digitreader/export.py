"""Results of a batch as JSON ("digitreader.results/v1") or CSV (one row per field).

JSON shape (docs/architecture.md; extra keys may be added, none removed):

    {"schema": "digitreader.results/v1", "batch": ID, "documents": [{"path", "sha256",
      "status": "done"|"needs_review"|"failed", "error": null|{"code", "message"},
      "pages": [{"number", "width", "height", "fields": [{"name", "kind", "bbox": [x, y, w, h],
        "value", "confidence", "needs_review", "digits": [{"position", "bbox", "label",
        "confidence", "needs_review"}]}]}]}]}

Boxes are in pixels of the page as submitted (before deskew). A digit's `label` is null for a blank
cell. Extra keys: batch-level "status", "created_at", "model_version", "model_precision" (fp32 or
int8: the model file that read the batch, embedded runs), "threshold"; field "flags";
digit "blank", "non_digit", "top3", "reviewed" and "corrected" (a reviewer's correction, when there is
one); field "reviewed"; document "warnings": what the image decoders said of damaged data while its
pages were read ("page 1: Corrupt JPEG data: premature end of data segment"; empty for a whole scan):
the document was read as far as its data decodes, and digits on a lost part of a page are missing.
CSV: the same, joined with " | ", in the "warnings" column of each of the document's rows. Page
"rotation": degrees clockwise the page was turned to be read (0, 90, 180 or 270: a page scanned upside
down or on its side; its boxes are still in the page as submitted).

Only documents read are exported (done, needs_review, failed): those of a batch still running, or
interrupted, that are not read yet are left out, and counted in the batch-level "unread" (0 once the
batch has ended).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from typing import Any, NamedTuple, TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from digitreader.db.models import Batch, Correction, Digit, Document, Field, Page, iso_utc
from digitreader.db.store import current_status, get_batch

log = logging.getLogger(__name__)

SCHEMA = "digitreader.results/v1"
CSV_COLUMNS = (
    "batch",
    "document",
    "sha256",
    "status",
    "page",
    "field",
    "kind",
    "value",
    "confidence",
    "flag",
    "flags",
    "error",
    "warnings",
)


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 6)


#: The statuses of a document read; the others (pending, processing) are not read yet.
READ = ("done", "needs_review", "failed")


class Exported(NamedTuple):
    """What `write_csv` wrote: the rows (the header not counted), the batch's documents not read yet
    and left out (`unread`), and the batch's status as it stands (running, interrupted, done...)."""

    rows: int
    unread: int
    status: str


def _documents(session: Session, batch_id: int) -> Iterator[Document]:
    """The batch's documents with everything below them loaded (a few queries, not one per row);
    those not read yet too (see `_read`)."""
    stmt = (
        select(Document)
        .where(Document.batch_id == batch_id)
        .order_by(Document.id)
        .options(
            selectinload(Document.pages)
            .selectinload(Page.fields)
            .selectinload(Field.digits)
            .selectinload(Digit.corrections)
        )
    )
    yield from session.scalars(stmt)


def _read(session: Session, batch: Batch) -> tuple[list[Document], int]:
    """The batch's documents read, and how many are not read yet (a batch still running, or
    interrupted), from one list: a document that ends meanwhile is in one or the other, never both."""
    docs = list(_documents(session, batch.id))
    read = [d for d in docs if d.status in READ]
    return read, len(docs) - len(read)


def _latest_correction(d: Digit) -> Correction | None:
    return d.corrections[-1] if d.corrections else None


def digit_json(d: Digit) -> dict[str, Any]:
    out: dict[str, Any] = {
        "position": d.position,
        "bbox": [d.x, d.y, d.w, d.h],
        "label": None if d.blank else d.label,
        "confidence": _round(d.confidence),
        "needs_review": bool(d.needs_review),
        "blank": bool(d.blank),
        "non_digit": bool(d.non_digit),
        "top3": d.top3,
    }
    corr = _latest_correction(d)
    out["reviewed"] = corr is not None  # a reviewer confirmed or corrected this digit
    if corr is not None:
        out["corrected"] = {
            "label": corr.new_label,
            "by": corr.reviewer,
            "at": iso_utc(corr.created_at),
        }
    return out


def field_json(f: Field) -> dict[str, Any]:
    return {
        "name": f.name,
        "kind": f.kind,
        "bbox": [f.x, f.y, f.w, f.h],
        "value": f.value,
        "confidence": _round(f.confidence),
        "needs_review": bool(f.needs_review),
        "flags": list(f.flags or []),
        "reviewed": any(d.corrections for d in f.digits),  # a reviewer checked some of its digits
        "digits": [digit_json(d) for d in f.digits],
    }


def document_json(doc: Document) -> dict[str, Any]:
    return {
        "path": doc.path,
        "sha256": doc.sha256,
        "status": doc.status,
        "error": None if doc.status != "failed" else {"code": doc.error_code, "message": doc.error_message},
        "warnings": list(doc.warnings or []),
        "page_count": doc.page_count,
        "pages": [
            {
                "number": p.number,
                "width": p.width,
                "height": p.height,
                "rotation": p.rotation or 0,
                "fields": [field_json(f) for f in p.fields],
            }
            for p in doc.pages
        ],
    }


def export_json(session: Session, batch_id: int) -> dict[str, Any]:
    """The batch as the "digitreader.results/v1" document: its documents read, and in "unread" how
    many are not read yet (left out). Raises NotFoundError for a bad id."""
    batch = get_batch(session, batch_id)
    status = current_status(session, batch)  # before the documents: "running" with none unread, at worst
    docs, unread = _read(session, batch)
    return {
        "schema": SCHEMA,
        "batch": batch.id,
        "status": status,
        "created_at": iso_utc(batch.created_at),
        "model_version": batch.model_version,
        "model_precision": (batch.options or {}).get("precision"),  # fp32 or int8: the file that read
        "threshold": batch.threshold,
        "unread": unread,
        "documents": [document_json(d) for d in docs],
    }


def csv_rows(session: Session, batch_id: int) -> Iterator[dict[str, Any]]:
    """One row per field of each document read (see `export_json`); a document with no field gets one
    row with empty field columns: a failed one with its error, and one read with none found (a page of
    printed text) too, so that every document read has a row."""
    batch = get_batch(session, batch_id)
    yield from _csv_rows(batch, _read(session, batch)[0])


def _csv_rows(batch: Batch, docs: list[Document]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        base = {"batch": batch.id, "document": doc.path, "sha256": doc.sha256, "status": doc.status}
        if doc.status == "failed" or not any(p.fields for p in doc.pages):
            err = f"{doc.error_code}: {doc.error_message}" if doc.status == "failed" else ""
            yield {
                **base,
                "page": "",
                "field": "",
                "kind": "",
                "value": "",
                "confidence": "",
                "flag": "",
                "flags": "",
                "error": err,
                "warnings": "" if doc.status == "failed" else " | ".join(doc.warnings or []),
            }
            continue
        for p in doc.pages:
            for f in p.fields:
                yield {
                    **base,
                    "page": p.number,
                    "field": f.name,
                    "kind": f.kind,
                    "value": f.value,
                    "confidence": "" if f.confidence is None else f"{f.confidence:.4f}",
                    "flag": "review" if f.needs_review else "",
                    "flags": " ".join(f.flags or []),
                    "error": "",
                    "warnings": " | ".join(doc.warnings or []),
                }


def write_csv(session: Session, batch_id: int, out: TextIO) -> Exported:
    """Write the CSV (header + one row per field of each document read) to `out`; returns the number
    of rows, of documents not read yet (left out) and the batch's status."""
    batch = get_batch(session, batch_id)
    status = current_status(session, batch)
    docs, unread = _read(session, batch)
    writer = csv.DictWriter(out, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    n = 0
    for row in _csv_rows(batch, docs):
        writer.writerow(row)
        n += 1
    return Exported(n, unread, status)


def export_csv(session: Session, batch_id: int) -> str:
    buf = io.StringIO()
    write_csv(session, batch_id, buf)
    return buf.getvalue()
