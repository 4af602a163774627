"""Assemble: recognized digits -> field values, confidences and review flags.

A digit is flagged for review when its confidence is under the threshold, or when the model's first
choice is "not a digit" (class 10) for a cell the blank test called non-blank. Its `label` is then
still the most likely *digit* (so the value stays a digit string) and `non_digit` is set.

A field's value is its non-blank digits in order (blank cells skipped); its confidence is the
product of its digits' confidences (the chance, under independence, that the whole value is right;
None for a field with no digits). A field is flagged when any digit is, or when it breaks its
template rule: `length` (number of digits) or `pattern` (regex the value must match in full).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Protocol, cast

import numpy as np

from digitreader.types import NON_DIGIT, BBox, FieldCut, FieldKind, PageCut

log = logging.getLogger(__name__)

#: Field flags (stored in `fields.flags`, in this order).
FLAG_LOW_CONFIDENCE = "low_confidence"
FLAG_NON_DIGIT = "non_digit"
FLAG_LENGTH = "length"
FLAG_PATTERN = "pattern"
#: The field's page was read from damaged image data (the decoder said so: `DocumentCut.warnings`):
#: a reviewer checks each of its digits (a field read empty: its cells) against the paper, as for a
#: template rule's flag.
FLAG_DAMAGED = "damaged_image"


class HasProbs(Protocol):
    """What assembling needs from a recognition result: calibrated probabilities (N, 11)."""

    @property
    def probs(self) -> np.ndarray: ...


@dataclass(frozen=True)
class Probs:
    """A slice of a recognition result (one page's rows of a batch spanning pages and documents)."""

    probs: np.ndarray


@dataclass(frozen=True)
class DigitResult:
    position: int
    bbox: BBox  # page-as-submitted pixels
    blank: bool
    label: int | None  # 0-9; None for a blank cell
    confidence: float | None  # calibrated probability of `label`; None for a blank cell
    top3: tuple[tuple[int, float], ...] = ()  # over the 11 classes (10 = not a digit)
    non_digit: bool = False
    needs_review: bool = False
    crop: np.ndarray | None = None  # (28, 28) uint8; None for a blank cell


@dataclass(frozen=True)
class FieldResult:
    name: str
    kind: FieldKind
    bbox: BBox
    value: str
    confidence: float | None
    needs_review: bool
    flags: tuple[str, ...]
    digits: tuple[DigitResult, ...]
    length: int | None = None
    pattern: str | None = None
    strip: bytes | None = None  # the field's strip of the page (JPEG), set by process.assemble_document
    strip_box: BBox | None = None  # the page region the strip shows (page-as-submitted pixels)


@dataclass(frozen=True)
class PageResult:
    number: int
    width: int
    height: int
    fields: tuple[FieldResult, ...]
    skew_degrees: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    rotation: int = 0  # degrees clockwise the page was turned to be read (PageCut.rotation)

    @property
    def needs_review(self) -> bool:
        return any(f.needs_review for f in self.fields)

    def digits(self) -> list[DigitResult]:
        return [d for f in self.fields for d in f.digits]


def count_crops(cut: PageCut) -> int:
    """Number of non-blank slots of a page: the rows its recognition must have."""
    return sum(1 for f in cut.fields for s in f.slots if not s.blank)


def _digit(slot_position: int, bbox: BBox, crop: np.ndarray, p: np.ndarray, threshold: float) -> DigitResult:
    order = np.argsort(-p)
    top3 = tuple((int(k), round(float(p[k]), 6)) for k in order[:3])
    non_digit = int(order[0]) == NON_DIGIT
    label = int(np.argmax(p[:NON_DIGIT]))
    confidence = float(p[label])
    return DigitResult(
        position=slot_position,
        bbox=bbox,
        blank=False,
        label=label,
        confidence=confidence,
        top3=top3,
        non_digit=non_digit,
        needs_review=non_digit or confidence < threshold,
        crop=crop,
    )


def assemble_field(cut: FieldCut, probs: np.ndarray, threshold: float, *, damaged: bool = False) -> FieldResult:
    """One field; `probs` holds one row per non-blank slot, in slot order. `damaged`: its page was read
    from damaged image data; each field with a cell there (read or blank) is flagged (`FLAG_DAMAGED`)."""
    digits: list[DigitResult] = []
    row = 0
    for slot in cut.slots:
        if slot.blank:
            digits.append(DigitResult(position=slot.position, bbox=slot.bbox, blank=True, label=None, confidence=None))
            continue
        digits.append(_digit(slot.position, slot.bbox, slot.crop, probs[row], threshold))
        row += 1
    read = [d for d in digits if not d.blank]
    value = "".join(str(d.label) for d in read)
    # Every read (non-blank) digit has a confidence (see _digit).
    confidence = float(np.prod(cast(list[float], [d.confidence for d in read]))) if read else None
    flags: list[str] = []
    if any(d.needs_review and not d.non_digit for d in read):
        flags.append(FLAG_LOW_CONFIDENCE)
    if any(d.non_digit for d in read):
        flags.append(FLAG_NON_DIGIT)
    if cut.length is not None and len(value) != cut.length:
        flags.append(FLAG_LENGTH)
    if cut.pattern is not None and not _matches(cut.pattern, value):
        flags.append(FLAG_PATTERN)
    # A field of blank cells only is flagged too: on a lost part of the page it reads empty whatever the
    # paper holds (a reviewer confirms a cell empty or types the digits).
    if damaged:
        flags.append(FLAG_DAMAGED)
    if flags and not digits:
        # No cell at all (a string field with no ink) and yet to be reviewed: one blank cell covering the
        # field, the one the review queue shows (its strip) to be confirmed empty. Without it nothing
        # could clear the field, and its document needed review for ever.
        digits.append(DigitResult(position=0, bbox=cut.bbox, blank=True, label=None, confidence=None))
    return FieldResult(
        name=cut.name,
        kind=cut.kind,
        bbox=cut.bbox,
        value=value,
        confidence=confidence,
        needs_review=bool(flags),
        flags=tuple(flags),
        digits=tuple(digits),
        length=cut.length,
        pattern=cut.pattern,
    )


def _matches(pattern: str, value: str) -> bool:
    try:
        return re.fullmatch(pattern, value) is not None
    except re.error:
        log.warning("template pattern %r is not a valid regular expression; field flagged", pattern)
        return False


def assemble_page(
    cut: PageCut, recognition: HasProbs | np.ndarray, threshold: float, *, damaged: bool = False
) -> PageResult:
    """Digits of one page -> its fields' values, confidences and flags.

    `recognition` holds calibrated probabilities (N, 11) for the page's non-blank crops in the order
    of `cut.crops()` (a `Recognition`, a `Probs` slice, or the array itself); (N, 10) for a
    digits-only model works too (then nothing is ever "not a digit"). `damaged`: the page was read
    from damaged image data (see `assemble_field`).
    """
    probs = np.asarray(recognition if isinstance(recognition, np.ndarray) else recognition.probs)
    expected = count_crops(cut)
    if probs.shape[0] != expected or (expected and probs.shape[1] < NON_DIGIT):
        raise ValueError(f"page {cut.number}: {expected} crops but recognition has shape {probs.shape}")
    fields: list[FieldResult] = []
    row = 0
    for fcut in cut.fields:
        n = sum(1 for s in fcut.slots if not s.blank)
        fields.append(assemble_field(fcut, probs[row : row + n], threshold, damaged=damaged))
        row += n
    return PageResult(
        number=cut.number,
        width=cut.width,
        height=cut.height,
        fields=tuple(fields),
        skew_degrees=cut.skew_degrees,
        timings=dict(cut.timings),
        rotation=cut.rotation,
    )
