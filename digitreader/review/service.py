"""Review of flagged digits: the queue, corrections and undo. Used by the web page and the CLI alike.

A *correction* is a reviewer's answer for one digit: a label 0-9 (the model's own label = "accept")
or `None` for "not a digit / blank" (the `x` key). Applying one, in one transaction:

- stores a `corrections` row (who, when, old and new label, the model version that read the digit,
  the digit's previous state for undo, and where it came from: web or cli);
- updates the digit (label, blank, needs_review = False), its field (value, confidence, flags,
  needs_review: template rules re-checked on the new value) and its document (`done` when none of
  its fields needs review any more, else `needs_review`).

A field flagged only by a template rule (length/pattern) has no flagged digit; the queue then holds
its lowest-confidence digit not yet reviewed, one at a time. The rule is re-checked after every
correction: the field is clear as soon as its value satisfies the rule, or once every digit of it has
been reviewed (the rule flag then stays in `flags`, the field no longer needs review).

A flagged field *read empty* (the cut found every cell blank: no cell has a crop; a rule wants a value,
or its page was read from damaged image data) comes to the queue through its cells, first position
first, one at a time: the reviewer confirms the cell empty (`None`) or types the digit the cut missed
(the cell then holds that digit, with no confidence and no crop). It is clear once a cell was confirmed
empty or every cell was seen (or as soon as its value satisfies its rule, as above).

`undo` deletes the reviewer's latest correction and restores exactly what was there before it.
Corrections feed retraining (`training/corrections.py`): the latest correction of a digit is its
ground truth.
"""

from __future__ import annotations

import getpass
import io
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import numpy as np
from sqlalchemy import and_, func, or_, select, union_all
from sqlalchemy.orm import Session, aliased

from digitreader.db.models import Correction, Digit, Document, Field, Page, iso_utc, utcnow
from digitreader.db.store import can_be_id, get_batch, hold_document
from digitreader.errors import ChangedMeanwhileError, NotFoundError, UsageError
from digitreader.pipeline.assemble import FLAG_DAMAGED
from digitreader.settings import Settings
from digitreader.types import BBox

log = logging.getLogger(__name__)

ORDERS = ("confidence", "margin")
#: Field flags that come from the digits (re-derived after a correction); the others (template rules,
#: a damaged scan) need every digit of the field seen once.
DIGIT_FLAGS = ("low_confidence", "non_digit")


def reviewer_name(settings: Settings | None = None, override: str | None = None) -> str:
    """Who is correcting: the explicit name, else settings.reviewer (DIGITREADER_REVIEWER), else the OS user."""
    if override:
        return override.strip()[:128]
    if settings is not None and settings.reviewer:
        return settings.reviewer[:128]
    try:
        return getpass.getuser()[:128]
    except Exception:  # no user name (some containers)
        return "unknown"


def parse_label(text: object) -> int | None:
    """'0'..'9' (or the int) -> int; 'x' (or 'blank', 'none', '-'; JSON null) -> None ("not a digit /
    blank"). Anything else (10, '10', true, 7.0, '') raises UsageError."""
    if text is None:
        return None
    if isinstance(text, bool):  # a JSON true/false: Python's bools are ints
        raise UsageError(f"label {str(text).lower()} is not a digit: use a digit 0-9, or x for 'not a digit / blank'")
    if isinstance(text, int):
        if 0 <= text <= 9:
            return text
        raise UsageError(f"label {text} is not a digit 0-9 (use x for 'not a digit / blank')")
    if not isinstance(text, str):
        raise UsageError(f"label {text!r}: use a digit 0-9, or x for 'not a digit / blank'")
    t = text.strip().lower()
    if t in ("x", "blank", "none", "-"):
        return None
    if len(t) == 1 and t in "0123456789":
        return int(t)
    raise UsageError(f"label {text!r}: use a digit 0-9, or x for 'not a digit / blank'")


def parse_id(value: object, what: str = "digit_id") -> int:
    """A row id from a request: an int (not a bool) or a string of decimal digits. Raises UsageError for
    anything else (true, 44.9, 'abc'); an id no row can have is left to the lookup (NotFoundError)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,30}\s*", value):
        return int(value)
    shown = str(value).lower() if isinstance(value, bool) else repr(value)
    raise UsageError(f"{what} {shown} is not a whole number")


# ------------------------------------------------------------------------------------------ queue


@dataclass(frozen=True)
class QueueItem:
    """One flagged digit with what a reviewer needs to decide."""

    digit_id: int
    batch_id: int
    document_id: int
    document: str  # path as submitted
    page: int
    field_id: int
    field: str
    kind: str
    position: int
    label: int | None  # the model's best digit
    confidence: float | None
    margin: float | None  # top-1 minus top-2 probability
    top3: list[list[float]]  # [[label, probability], ...]; label 10 = not a digit
    non_digit: bool
    model_version: str | None
    bbox: tuple[int, int, int, int]
    #: The document's warnings: what the image decoder said of damaged data on its pages ("page 1:
    #: Corrupt JPEG data: ..."): the scan may lack a part of a page, so check it against the paper.
    warnings: tuple[str, ...] = ()
    #: Why it is in the queue, in words (`why_queued`): the model unsure of it, or its field flagged
    #: by a template rule or a damaged scan (then each of the field's digits comes once).
    why: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bbox"] = list(self.bbox)
        d["warnings"] = list(self.warnings)
        return d


def _margin(top3: list[Any] | None) -> float | None:
    if not top3:
        return None
    if len(top3) < 2:
        return float(top3[0][1])
    return float(top3[0][1]) - float(top3[1][1])


def _first_unreviewed(other: Any, *where: Any, order: Sequence[Any]) -> Any:
    """Correlated scalar subquery: of the outer field (flagged: `needs_review`), its first digit `other`
    (an alias of Digit) not yet reviewed that meets `where`, in `order`; else NULL."""
    reviewed = select(Correction.id).where(Correction.digit_id == other.id).exists()
    return (
        select(other.id)
        .where(other.field_id == Field.id, ~reviewed, Field.needs_review.is_(True), *where)
        .order_by(*order)
        .limit(1)
        .correlate(Field)
        .scalar_subquery()
    )


def _any_flagged_digit() -> Any:
    """Correlated EXISTS: the outer field has a digit flagged itself (the model unsure of it)."""
    flagged = aliased(Digit)
    # correlate(Field): else this subquery takes a `fields` of its own, and any flagged digit anywhere in
    # the database keeps every rule-only field out of the queue.
    return (
        select(flagged.id).where(flagged.field_id == Field.id, flagged.needs_review.is_(True)).correlate(Field).exists()
    )


def _any_crop() -> Any:
    """Correlated EXISTS: the outer field has a cell with a crop (the cut read something in it)."""
    cropped = aliased(Digit)
    return select(cropped.id).where(cropped.field_id == Field.id, cropped.crop.is_not(None)).correlate(Field).exists()


def _rule_digit() -> Any:
    """Correlated scalar subquery: for a flagged field, its lowest-confidence non-blank digit not yet
    reviewed; else NULL. The queue takes it of a field flagged only by a template rule (length/pattern)
    or a damaged scan: none of its digits flagged itself (`_queued_ids`)."""
    other = aliased(Digit)
    return _first_unreviewed(
        other,
        other.blank.is_(False),
        other.crop.is_not(None),
        order=(other.confidence.is_not(None), other.confidence, other.id),
    )


def _empty_field_cell() -> Any:
    """Correlated scalar subquery: for a flagged field, its first cell (lowest position) not yet
    reviewed; else NULL. The queue takes it of a field read empty (none of its cells has a crop: the cut
    found them all blank; `_queued_ids`)."""
    other = aliased(Digit)
    return _first_unreviewed(other, order=(other.position, other.id))


def read_empty(field: Field) -> bool:
    """Whether the cut found every cell of `field` blank (none has a crop; a digit a reviewer typed into
    one has none either). A field with no cell at all is not "read empty": it has nothing to show."""
    return bool(field.digits) and all(d.crop is None for d in field.digits)


def why_queued(
    *,
    flagged: bool,
    non_digit: bool,
    flags: Sequence[str],
    value: str,
    length: int | None,
    pattern: str | None,
    empty: bool = False,
) -> str:
    """Why a digit is in the review queue, for the reviewer: `flagged` (the digit's own flag: the model
    unsure of it, or taking it for no digit), else the reasons its field is flagged. `empty`: a cell of
    a field read empty (`value` then holds what reviewers typed into its cells so far)."""
    if flagged:
        return "the model takes it for no digit" if non_digit else "the model is unsure of it"
    if empty:
        wants = []
        if "length" in flags and length is not None:
            wants.append(f"{length} digit{'s' if length != 1 else ''}")
        if "pattern" in flags:
            wants.append(f"a value matching {pattern}")
        parts = ["the field was read empty" + (f", {value} typed in so far" if value else "")]
        if wants:
            parts.append("its template wants " + " and ".join(wants))
        if FLAG_DAMAGED in flags:
            parts.append("its page was read from damaged image data")
        ask = (
            "type this cell's digit, or x where the field ends"
            if value
            else "confirm it is empty (x) or type the digit"
        )
        return "; ".join(parts) + ": " + ask
    reasons = []
    if "length" in flags and length is not None:
        reasons.append(f"the field should hold {length} digit{'s' if length != 1 else ''}, {len(value)} read")
    if "pattern" in flags:
        reasons.append(f"the field's value {value or '(empty)'} does not match its pattern {pattern}")
    if FLAG_DAMAGED in flags:
        reasons.append("its page was read from damaged image data")
    if not reasons:
        return "its field is flagged"
    return "; ".join(reasons) + ": each digit of the field comes here once"


def _queued_ids(batch_id: int | None) -> Any:
    """The ids of the digits in the queue (see `_queue_stmt`). The rule's and the empty field's digit are
    looked up once per flagged field (in SQL, not per digit of the batch: that took 190 ms on 300 pages)."""
    flagged_fields = _flagged_fields(batch_id)
    # correlate(None): inside the outer statement (which joins `fields` too) each of these must keep a
    # `fields` of its own; the scalar subqueries in them correlate to it.
    return union_all(
        select(Digit.id).where(Digit.needs_review.is_(True), Digit.blank.is_(False)),
        select(_rule_digit()).select_from(Field).where(*flagged_fields, ~_any_flagged_digit()).correlate(None),
        select(_empty_field_cell()).select_from(Field).where(*flagged_fields, ~_any_crop()).correlate(None),
    )


def _queue_stmt(batch_id: int | None, field: str | None) -> Any:
    """Digits to review: the flagged ones, one digit of each field flagged only by a template rule
    (`_rule_digit`), so that field can be reviewed too, and one cell of each flagged field read empty
    (`_empty_field_cell`)."""
    stmt = (
        select(
            Digit,
            Field.name,
            Field.kind,
            Page.number,
            Document.id,
            Document.path,
            Document.batch_id,
            Document.warnings,
            Field.flags,
            Field.value,
            Field.length,
            Field.pattern,
        )
        .join(Field, Digit.field_id == Field.id)
        .join(Page, Field.page_id == Page.id)
        .join(Document, Page.document_id == Document.id)
        .where(Digit.id.in_(_queued_ids(batch_id)))
    )
    if batch_id is not None:
        stmt = stmt.where(Document.batch_id == batch_id)
    if field:
        stmt = stmt.where(Field.name == field)
    return stmt


def _left_stmt(batch_id: int | None, field: str | None) -> Any:
    """How many digits are still to come through the queue: the flagged ones, every digit not yet
    reviewed of a field flagged only by a template rule or a damaged scan (the queue shows one at a
    time), and every cell not yet seen of a flagged field read empty (an `x` ends such a field sooner).
    Each field-level test runs once per flagged field (an uncorrelated IN), not once per digit."""
    fields = _flagged_fields(batch_id, field)
    reviewed = select(Correction.id).where(Correction.digit_id == Digit.id).exists()
    by_rule = select(Field.id).where(*fields, ~_any_flagged_digit()).correlate(None)
    read_empty = select(Field.id).where(*fields, ~_any_crop()).correlate(None)
    flagged = select(Field.id).where(*fields).correlate(None)
    return select(func.count(Digit.id)).where(
        or_(
            and_(Digit.field_id.in_(flagged), Digit.needs_review.is_(True), Digit.blank.is_(False)),
            and_(Digit.field_id.in_(by_rule), Digit.blank.is_(False), Digit.crop.is_not(None), ~reviewed),
            and_(Digit.field_id.in_(read_empty), ~reviewed),
        )
    )


def _flagged_fields(batch_id: int | None, field: str | None = None) -> list[Any]:
    """Conditions on `Field`: flagged, of batch `batch_id` and named `field` where given."""
    where: list[Any] = [Field.needs_review.is_(True)]
    if batch_id is not None:
        pages = select(Page.id).join(Document, Page.document_id == Document.id).where(Document.batch_id == batch_id)
        where.append(Field.page_id.in_(pages))
    if field:
        where.append(Field.name == field)
    return where


def list_queue(
    session: Session,
    *,
    batch_id: int | None = None,
    field: str | None = None,
    order: str = "confidence",
    limit: int | None = None,
    offset: int = 0,
) -> list[QueueItem]:
    """Flagged digits still to review, hardest first: lowest confidence, or smallest top-2 margin.

    Ties are broken by digit id, so the order is stable between calls.
    """
    if order not in ORDERS:
        raise UsageError(f"order must be one of {', '.join(ORDERS)}")
    if batch_id is not None:
        get_batch(session, batch_id)  # NotFoundError: none, or an id no batch can have
    stmt = _queue_stmt(batch_id, field)
    if order == "confidence":
        # NULL confidence (should not happen for a non-blank digit) first: it surely needs a look.
        stmt = stmt.order_by(Digit.confidence.is_not(None), Digit.confidence, Digit.id)
        if limit is not None:
            stmt = stmt.limit(limit).offset(offset)
        rows = list(session.execute(stmt).all())
    else:

        def key(r: Any) -> tuple[float, int]:
            m = _margin(r[0].top3)
            return (-1.0 if m is None else m, r[0].id)

        rows = sorted(session.execute(stmt).all(), key=key)
        rows = rows[offset : offset + limit if limit is not None else None]
    return [
        QueueItem(
            digit_id=d.id,
            batch_id=batch,
            document_id=doc_id,
            document=path,
            page=page,
            field_id=d.field_id,
            field=fname,
            kind=kind,
            position=d.position,
            label=d.label,
            confidence=d.confidence,
            margin=_margin(d.top3),
            top3=[[int(a), float(b)] for a, b in (d.top3 or [])],
            non_digit=bool(d.non_digit),
            model_version=d.model_version,
            bbox=d.bbox,
            warnings=tuple(said or ()),
            why=why_queued(
                flagged=bool(d.needs_review),
                non_digit=bool(d.non_digit),
                flags=flags or (),
                value=value or "",
                length=length,
                pattern=pattern,
                empty=d.crop is None,  # only a cell of a field read empty comes without a crop
            ),
        )
        for d, fname, kind, page, doc_id, path, batch, said, flags, value, length, pattern in rows
    ]


def queue_counts(session: Session, *, batch_id: int | None = None, field: str | None = None) -> dict[str, int]:
    """What is left and what was done: digits still to review (`_left_stmt`: more than the queue shows
    at once, which holds one digit of a field flagged by its rule), corrections made (same filters),
    documents still needing review."""
    left = session.scalar(_left_stmt(batch_id, field)) or 0
    corr = (
        select(func.count(func.distinct(Correction.digit_id)))
        .join(Digit, Correction.digit_id == Digit.id)
        .join(Field, Digit.field_id == Field.id)
        .join(Page, Field.page_id == Page.id)
        .join(Document, Page.document_id == Document.id)
    )
    docs = select(func.count()).select_from(Document).where(Document.status == "needs_review")
    if batch_id is not None:
        corr = corr.where(Document.batch_id == batch_id)
        docs = docs.where(Document.batch_id == batch_id)
    if field:
        corr = corr.where(Field.name == field)
    return {
        "left": int(left),
        "reviewed": int(session.scalar(corr) or 0),
        "documents_left": int(session.scalar(docs) or 0),
    }


def queue_fields(session: Session, batch_id: int | None = None) -> list[tuple[str, int]]:
    """Field names with flagged digits (for the filter), with how many each."""
    stmt = _queue_stmt(batch_id, None).subquery()
    rows = session.execute(select(stmt.c.name, func.count()).group_by(stmt.c.name).order_by(stmt.c.name)).all()
    return [(str(n), int(c)) for n, c in rows]


def queue_batches(session: Session) -> list[tuple[int, int]]:
    """Batches with flagged digits, newest first, with how many each."""
    stmt = _queue_stmt(None, None).subquery()
    rows = session.execute(
        select(stmt.c.batch_id, func.count()).group_by(stmt.c.batch_id).order_by(stmt.c.batch_id.desc())
    ).all()
    return [(int(b), int(c)) for b, c in rows]


# ------------------------------------------------------------------------------------ corrections


class _Unchecked(Enum):
    UNCHECKED = "unchecked"


#: `apply_correction(expected=UNCHECKED)`: no check of what the reviewer saw (the CLI's `review label`).
UNCHECKED = _Unchecked.UNCHECKED


@dataclass(frozen=True)
class CorrectionResult:
    correction_id: int
    digit_id: int
    old_label: int | None
    new_label: int | None
    accepted: bool  # the reviewer kept the digit's label (a blank cell blank)
    field_value: str
    field_needs_review: bool
    document_id: int
    document_status: str
    reviewer: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hold_document(session: Session, digit_id: int) -> None:
    """`store.hold_document` on the document of `digit_id`, before anything of it is read: a
    correction re-derives the field's value and the document's status from all their digits, so two
    corrections in one document at once (two reviewers, two tabs) must run one after the other."""
    if not can_be_id(session, digit_id):
        return  # no such digit: `_get_digit` says so
    doc_id = session.scalar(
        select(Page.document_id)
        .join(Field, Field.page_id == Page.id)
        .join(Digit, Digit.field_id == Field.id)
        .where(Digit.id == digit_id)
    )
    if doc_id is not None:
        hold_document(session, doc_id)


def _get_digit(session: Session, digit_id: int) -> Digit:
    d = _find_digit(session, digit_id, lock=True)
    if d is None:
        raise NotFoundError(f"digit {digit_id} does not exist", hint="digitreader review list shows the queue")
    return d


def _find_digit(session: Session, digit_id: int, *, lock: bool = False) -> Digit | None:
    if not can_be_id(session, digit_id):
        return None
    return session.get(Digit, digit_id, with_for_update=lock and _locks(session))


def _locks(session: Session) -> bool:
    bind = session.get_bind()
    return bind.dialect.name != "sqlite"  # SQLite serializes writers itself


def _rule_ok(pattern: str | None, value: str) -> bool:
    if pattern is None:
        return True
    try:
        return re.fullmatch(pattern, value) is not None
    except re.error:
        return False


def refresh_field(field: Field) -> None:
    """Re-derive a field's value, confidence and flags from its digits (after a correction or undo)."""
    read = [d for d in field.digits if not d.blank and d.label is not None]
    field.value = "".join(str(d.label) for d in read)
    confs = [1.0 if d.corrections or d.confidence is None else float(d.confidence) for d in read]
    field.confidence = float(np.prod(confs)) if confs else None
    flags: list[str] = []
    if any(d.needs_review and not d.non_digit for d in field.digits if not d.blank):
        flags.append("low_confidence")
    if any(d.needs_review and d.non_digit for d in field.digits if not d.blank):
        flags.append("non_digit")
    if field.length is not None and len(field.value) != field.length:
        flags.append("length")
    if field.pattern is not None and not _rule_ok(field.pattern, field.value):
        flags.append("pattern")
    if FLAG_DAMAGED in (field.flags or []):  # the scan stays as it was read: a record, not a digit's state
        flags.append(FLAG_DAMAGED)
    field.flags = flags
    # A template-rule or damaged-scan flag alone stops needing review once a reviewer has seen every
    # digit of the field (each non-blank digit corrected or accepted): the flag stays in `flags` as a
    # record. A field read empty has no digit read to see: its cells come one at a time, and it is seen
    # once a reviewer confirmed a cell empty (the field ends there) or saw every cell.
    digit_flags = any(fl in DIGIT_FLAGS for fl in flags)
    if read_empty(field):
        seen = [d for d in field.digits if d.corrections]
        all_reviewed = len(seen) == len(field.digits) or any(d.blank for d in seen)
    else:
        all_reviewed = all(d.corrections for d in read)
    field.needs_review = digit_flags or (bool(flags) and not all_reviewed)


def fit_typed_string(session: Session, field: Field) -> None:
    """A string field read empty (the one blank cell `assemble` gives a string field where nothing was
    cut) takes its digits typed one cell at a time: while it needs review, one cell not yet seen follows
    the last cell seen (added, with the field's box, after a digit was typed into the last one), so the
    queue offers the next digit until an `x` ends the field or its rule is met. Cells not yet seen
    beyond that one (left by an undo, or after the end) are dropped. Refreshes the field."""
    if field.kind != "string" or not read_empty(field):
        refresh_field(field)
        return
    cells = sorted(field.digits, key=lambda c: c.position)
    seen = [i for i, c in enumerate(cells) if c.corrections]
    last_seen = seen[-1] if seen else -1
    ended = any(cells[i].blank for i in seen)
    keep = last_seen + 1 if ended else last_seen + 2  # ended: no cell after the last seen
    for cell in cells[max(keep, 1) :]:
        field.digits.remove(cell)
        session.delete(cell)
    if not ended and last_seen == len(cells) - 1:
        last = cells[last_seen]
        field.digits.append(Digit(position=last.position + 1, x=field.x, y=field.y, w=field.w, h=field.h,
                                  crop=None, blank=True, label=None, model_version=last.model_version))  # fmt: skip
    refresh_field(field)
    if not field.needs_review:  # the rule met: the cell offered for the next digit goes too
        unseen = [c for c in field.digits if not c.corrections and c.position > 0]
        for cell in unseen:
            field.digits.remove(cell)
            session.delete(cell)
        refresh_field(field)
    session.flush()


def refresh_document(session: Session, document_id: int) -> str:
    """`done` when none of the document's fields needs review, else `needs_review` (failed stays failed)."""
    doc = session.get(Document, document_id)
    assert doc is not None
    if doc.status in ("done", "needs_review"):
        flagged = session.scalar(
            select(func.count())
            .select_from(Field)
            .join(Page, Field.page_id == Page.id)
            .where(Page.document_id == document_id, Field.needs_review.is_(True))
        )
        doc.status = "needs_review" if flagged else "done"
    return doc.status


def _snapshot(d: Digit, f: Field, doc: Document) -> dict[str, Any]:
    return {
        "digit": {"label": d.label, "blank": d.blank, "needs_review": d.needs_review},
        "field": {"value": f.value, "confidence": f.confidence, "flags": list(f.flags or []),
                  "needs_review": f.needs_review},
        "document": {"status": doc.status},
    }  # fmt: skip


def apply_correction(
    session: Session,
    digit_id: int,
    label: int | None,
    *,
    reviewer: str,
    source: str = "cli",
    expected: int | None | _Unchecked = UNCHECKED,
) -> CorrectionResult:
    """Record the reviewer's label for a digit (None = not a digit / blank) and update field and document.

    `expected`: the digit's label as the reviewer saw it (None: blank), checked under the document's
    lock: when the digit changed since (another reviewer's correction, an undo), ChangedMeanwhileError
    and nothing is stored, so a page loaded before another reviewer's correction cannot overwrite it.

    A cell of a field read empty (`read_empty`: no cell has a crop) takes a correction too: None
    confirms it empty (accepted), a digit is one the cut missed (the cell then holds it, with no
    confidence and no crop, so retraining skips it).

    Raises NotFoundError for an unknown digit, UsageError for a label outside 0-9/None or a blank cell
    (no crop) of a field that has digits read, ChangedMeanwhileError (see `expected`).
    """
    if label is not None and not (isinstance(label, int) and not isinstance(label, bool) and 0 <= label <= 9):
        raise UsageError(f"label {label!r} is not a digit 0-9 (None = not a digit / blank)")
    _hold_document(session, digit_id)
    d = _get_digit(session, digit_id)
    f = d.field
    if d.crop is None and not read_empty(f):
        raise UsageError(f"digit {digit_id} is an empty cell of a field with digits read (nothing to review)")
    old = d.label if not d.blank else None
    if expected is not UNCHECKED and expected != old:
        raise ChangedMeanwhileError(d.id, expected, old, d.corrections[-1].reviewer if d.corrections else None)
    doc = f.page.document
    prev = _snapshot(d, f, doc)
    corr = Correction(
        digit_id=d.id,
        old_label=old,
        new_label=label,
        reviewer=reviewer,
        created_at=utcnow(),
        model_version=d.model_version,
        previous=prev,
        source=source,
    )
    session.add(corr)
    d.corrections.append(corr)
    d.label = label
    d.blank = label is None
    d.needs_review = False
    fit_typed_string(session, f)
    session.flush()
    status = refresh_document(session, doc.id)
    session.flush()
    log.info("digit %s: %s -> %s by %s (%s)", d.id, old, label, reviewer, source)
    return CorrectionResult(
        correction_id=corr.id,
        digit_id=d.id,
        old_label=old,
        new_label=label,
        accepted=old == label,  # None == None: a blank cell confirmed blank
        field_value=f.value,
        field_needs_review=f.needs_review,
        document_id=doc.id,
        document_status=status,
        reviewer=reviewer,
    )


@dataclass(frozen=True)
class UndoResult:
    correction_id: int
    digit_id: int
    label: int | None  # the digit's label again
    document_status: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def undo(session: Session, *, reviewer: str | None = None, correction_id: int | None = None) -> UndoResult:
    """Undo one correction: `correction_id`, else the latest one by `reviewer` (else the latest of all).

    Only a digit's latest correction can be undone (older ones are history under it). Raises
    NotFoundError when there is nothing to undo.
    """
    if correction_id is not None:
        corr = session.get(Correction, correction_id) if can_be_id(session, correction_id) else None
        if corr is None:
            raise NotFoundError(f"correction {correction_id} does not exist")
    else:
        stmt = select(Correction).order_by(Correction.id.desc()).limit(1)
        if reviewer is not None:
            # The reviewer's latest correction still standing: one another reviewer corrected again since
            # is history under theirs, no longer this reviewer's to take back (it was picked before, and
            # refused as not the digit's latest: the reviewer could undo nothing more).
            later = aliased(Correction)
            superseded = (
                select(later.id)
                .where(later.digit_id == Correction.digit_id, later.id > Correction.id)
                .correlate(Correction)
            )
            stmt = stmt.where(Correction.reviewer == reviewer, ~superseded.exists())
        corr = session.scalars(stmt).first()
        if corr is None:
            raise NotFoundError("nothing to undo" + (f" for {reviewer}" if reviewer else ""))
    corr_id, digit_id = corr.id, corr.digit_id
    _hold_document(session, digit_id)
    # Read again under the document's lock: another undo of the same correction (two tabs, two `review
    # undo --any`) may have taken it back while this one waited for the lock.
    session.expire_all()
    found = session.get(Correction, corr_id)
    if found is None:
        raise NotFoundError(f"nothing to undo: correction {corr_id} was undone meanwhile")
    corr = found
    d = _get_digit(session, digit_id)
    latest = max(c.id for c in d.corrections)
    if corr.id != latest:
        raise UsageError(f"correction {corr.id} is not the latest of digit {d.id}; undo correction {latest} first")
    prev = corr.previous or {}
    pd = prev.get("digit") or {"label": corr.old_label, "blank": False, "needs_review": True}
    d.label = pd["label"]
    d.blank = bool(pd["blank"])
    d.needs_review = bool(pd["needs_review"])
    d.corrections.remove(corr)
    session.delete(corr)
    session.flush()
    f = d.field
    fit_typed_string(session, f)
    session.flush()
    status = refresh_document(session, f.page.document_id)
    session.flush()
    log.info("undid correction %s of digit %s", corr.id, d.id)
    return UndoResult(corr.id, d.id, d.label, status)


def corrections_of(session: Session, digit_id: int) -> list[Correction]:
    return list(session.scalars(select(Correction).where(Correction.digit_id == digit_id).order_by(Correction.id)))


# ------------------------------------------------------------------------------------------ images


def crop_array(session: Session, digit_id: int) -> np.ndarray:
    """The stored 28x28 crop (ink high) of a digit. Raises NotFoundError."""
    d = _find_digit(session, digit_id)
    if d is None or d.crop is None:
        raise NotFoundError(f"digit {digit_id} has no crop")
    return np.frombuffer(d.crop, np.uint8).reshape(28, 28)


def _png(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - encoding a small uint8 array does not fail
        raise RuntimeError("PNG encoding failed")
    return bytes(buf)


def _paper(crop: np.ndarray, scale: int) -> np.ndarray:
    """Ink-high crop -> dark ink on white paper, enlarged (nearest neighbour: pixels stay visible)."""
    import cv2

    img = 255 - crop
    return cv2.resize(img, (28 * scale, 28 * scale), interpolation=cv2.INTER_NEAREST)


def crop_png(session: Session, digit_id: int, scale: int = 8) -> bytes:
    """PNG of a digit's crop, dark on white, enlarged `scale` times (1-16). A cell with no crop (a blank
    cell of a field read empty) is blank paper: its strip (`strip_png`) shows the cell on the page."""
    scale = max(1, min(int(scale), 16))
    d = _find_digit(session, digit_id)
    if d is None:
        raise NotFoundError(f"digit {digit_id} does not exist")
    crop = np.zeros((28, 28), np.uint8) if d.crop is None else np.frombuffer(d.crop, np.uint8).reshape(28, 28)
    return _png(_paper(crop, scale))


#: The highlight drawn around the digit in a field strip (BGR: orange) and its line width.
HIGHLIGHT_BGR = (0, 90, 255)
HIGHLIGHT_WIDTH = 2


def strip_box_in_image(strip_box: Sequence[int], image_size: tuple[int, int], bbox: Sequence[int]) -> BBox:
    """A page box `bbox` (x, y, w, h) mapped into a strip image of `image_size` (width, height) that
    shows the page region `strip_box`, clipped to the image."""
    sx0, sy0, sw, sh = (int(v) for v in strip_box)
    iw, ih = image_size
    fx, fy = iw / max(1, sw), ih / max(1, sh)
    x, y, w, h = (int(v) for v in bbox)
    x0 = min(max(0, int(round((x - sx0) * fx))), iw - 1)
    y0 = min(max(0, int(round((y - sy0) * fy))), ih - 1)
    x1 = min(max(x0, int(round((x + w - sx0) * fx)) - 1), iw - 1)
    y1 = min(max(y0, int(round((y + h - sy0) * fy)) - 1), ih - 1)
    return (x0, y0, x1 - x0 + 1, y1 - y0 + 1)


def _stored_strip(d: Digit) -> np.ndarray | None:
    """The field's stored strip of the page (BGR) with this digit's box highlighted; None when the
    field has no strip (stored before migration 0003, or none could be cut) or it cannot be decoded."""
    import cv2

    f = d.field
    if f.strip is None or not f.strip_box or len(f.strip_box) != 4:
        return None
    gray = cv2.imdecode(np.frombuffer(f.strip, np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None or gray.size == 0:
        log.warning("field %s: stored strip cannot be decoded; showing the crops instead", f.id)
        return None
    from digitreader.pipeline.prepare import turn

    rotation = int(f.page.rotation or 0)  # the strip is stored the way the page was read
    img = np.ascontiguousarray(cv2.cvtColor(turn(gray, -rotation % 360) if rotation else gray, cv2.COLOR_GRAY2BGR))
    x, y, w, h = strip_box_in_image(f.strip_box, (img.shape[1], img.shape[0]), d.bbox)
    cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), HIGHLIGHT_BGR, HIGHLIGHT_WIDTH)
    return turn(img, rotation) if rotation else img


def strip_png(session: Session, digit_id: int, scale: int = 3) -> bytes:
    """The field's strip of the page around the digit, the digit's box highlighted in orange.

    The strip stored with the field at segmentation time is shown at its stored size (`scale` does
    not apply). A field without one (results stored before migration 0003) gets a strip rebuilt from
    its digit crops side by side (blank cells as empty boxes, `scale` times enlarged), this digit framed.
    """
    import cv2

    d = _find_digit(session, digit_id)
    if d is None:
        raise NotFoundError(f"digit {digit_id} does not exist")
    stored = _stored_strip(d)
    if stored is not None:
        return _png(stored)
    scale = max(1, min(int(scale), 8))
    cell, gap = 28 * scale, 4
    digits = list(d.field.digits)
    width = len(digits) * (cell + gap) + gap
    img = np.full((cell + 2 * gap, width, 3), 255, np.uint8)
    for i, other in enumerate(digits):
        x = gap + i * (cell + gap)
        if other.crop is not None:
            tile = _paper(np.frombuffer(other.crop, np.uint8).reshape(28, 28), scale)
            img[gap : gap + cell, x : x + cell] = tile[:, :, None]
        else:
            cv2.rectangle(img, (x, gap), (x + cell - 1, gap + cell - 1), (220, 220, 220), 1)
        if other.id == d.id:
            cv2.rectangle(img, (x - 2, gap - 2), (x + cell + 1, gap + cell + 1), HIGHLIGHT_BGR, 3)
    return _png(img)


def digit_context(session: Session, digit_id: int) -> dict[str, Any]:
    """A digit with its field, page, document and correction history (for the page and `review show`)."""
    d = _find_digit(session, digit_id)
    if d is None:
        raise NotFoundError(f"digit {digit_id} does not exist")
    f = d.field
    doc = f.page.document
    return {
        "digit_id": d.id,
        "label": d.label,
        "blank": d.blank,
        "confidence": d.confidence,
        "top3": d.top3,
        "needs_review": d.needs_review,
        "model_version": d.model_version,
        "field": {"id": f.id, "name": f.name, "value": f.value, "needs_review": f.needs_review,
                  "flags": list(f.flags or []), "digit_ids": [x.id for x in f.digits]},
        "document": {"id": doc.id, "path": doc.path, "status": doc.status, "batch": doc.batch_id,
                     "page": f.page.number, "warnings": list(doc.warnings or [])},
        "corrections": [
            {"id": c.id, "old_label": c.old_label, "new_label": c.new_label, "reviewer": c.reviewer,
             "at": iso_utc(c.created_at), "source": c.source}
            for c in d.corrections
        ],
    }  # fmt: skip


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG (tests, templates)."""
    b = io.BytesIO(data)
    b.seek(16)
    return int.from_bytes(b.read(4), "big"), int.from_bytes(b.read(4), "big")
