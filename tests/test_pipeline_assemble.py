"""assemble: values, confidences and review flags from recognized digits."""

from __future__ import annotations

import numpy as np
import pytest

from digitreader.pipeline.assemble import (
    FLAG_DAMAGED,
    FLAG_LENGTH,
    FLAG_LOW_CONFIDENCE,
    FLAG_NON_DIGIT,
    FLAG_PATTERN,
    Probs,
    assemble_page,
)
from digitreader.types import DigitSlot, FieldCut, PageCut


def _slot(pos: int, blank: bool = False) -> DigitSlot:
    crop = np.zeros((28, 28), np.uint8)
    if not blank:
        crop[8:20, 12:16] = 255
    return DigitSlot(position=pos, bbox=(10 * pos, 5, 9, 12), crop=crop, blank=blank)


def _onehot(label: int, p: float) -> np.ndarray:
    row = np.full(11, (1 - p) / 10, np.float32)
    row[label] = p
    return row


def _page(*fields: FieldCut) -> PageCut:
    return PageCut(number=1, width=100, height=50, fields=tuple(fields))


def test_values_skip_blanks_and_confidence_is_product() -> None:
    f = FieldCut("account", "boxes", (0, 0, 60, 20), tuple(_slot(i, blank=(i == 2)) for i in range(4)))
    probs = np.stack([_onehot(1, 0.99), _onehot(2, 0.98), _onehot(3, 0.97)])
    page = assemble_page(_page(f), Probs(probs), threshold=0.9)
    res = page.fields[0]
    assert res.value == "123"
    assert res.confidence == pytest.approx(0.99 * 0.98 * 0.97, rel=1e-5)
    assert not res.needs_review and res.flags == ()
    assert [d.label for d in res.digits] == [1, 2, None, 3]
    assert res.digits[2].blank and res.digits[2].confidence is None
    assert res.digits[0].top3[0] == (1, pytest.approx(0.99, rel=1e-5))
    assert res.digits[1].bbox == (10, 5, 9, 12)


def test_low_confidence_digit_flags_field_and_page() -> None:
    f = FieldCut("amount", "string", (0, 0, 60, 20), (_slot(0), _slot(1)))
    page = assemble_page(_page(f), np.stack([_onehot(4, 0.99), _onehot(7, 0.6)]), threshold=0.9)
    res = page.fields[0]
    assert res.digits[1].needs_review and not res.digits[0].needs_review
    assert res.flags == (FLAG_LOW_CONFIDENCE,)
    assert page.needs_review
    # The same digits pass under a lower threshold.
    assert not assemble_page(_page(f), np.stack([_onehot(4, 0.99), _onehot(7, 0.6)]), threshold=0.5).needs_review


def test_non_digit_keeps_best_digit_and_flags() -> None:
    f = FieldCut("x", "boxes", (0, 0, 60, 20), (_slot(0),))
    row = np.zeros(11, np.float32)
    row[10], row[8], row[3] = 0.7, 0.2, 0.1
    res = assemble_page(_page(f), np.stack([row]), threshold=0.1).fields[0]
    d = res.digits[0]
    assert d.non_digit and d.needs_review and d.label == 8
    assert d.confidence == pytest.approx(0.2)
    assert res.value == "8" and FLAG_NON_DIGIT in res.flags


def test_template_rules_length_and_pattern() -> None:
    f = FieldCut("date", "boxes", (0, 0, 60, 20), (_slot(0), _slot(1), _slot(2)), length=4, pattern=r"[0-3]\d{3}")
    res = assemble_page(_page(f), np.stack([_onehot(5, 1.0)] * 3), threshold=0.5).fields[0]
    assert res.value == "555"
    assert res.flags == (FLAG_LENGTH, FLAG_PATTERN) and res.needs_review
    ok = FieldCut("date", "boxes", (0, 0, 60, 20), (_slot(0), _slot(1)), length=2, pattern=r"\d\d")
    assert not assemble_page(_page(ok), np.stack([_onehot(5, 1.0)] * 2), threshold=0.5).needs_review


def test_empty_field_and_mismatched_recognition() -> None:
    f = FieldCut("optional", "boxes", (0, 0, 60, 20), (_slot(0, blank=True), _slot(1, blank=True)))
    res = assemble_page(_page(f), np.zeros((0, 11), np.float32), threshold=0.9).fields[0]
    assert res.value == "" and res.confidence is None and not res.needs_review
    with pytest.raises(ValueError, match="crops"):
        assemble_page(_page(f), np.zeros((1, 11), np.float32), threshold=0.9)


def test_a_page_read_from_damaged_data_flags_each_field_with_a_cell() -> None:
    """Sure digits of a page whose decoder reported damaged data still need a look at the paper, and so
    does a field of blank cells only: on the lost part of a page it reads empty whatever the paper holds
    (before, it was left unflagged, and the document could be `done` with the field silently empty). A
    field with no cell at all (a string field where nothing was cut) is flagged too, with one blank cell
    covering it for the review queue to show. The same page whole: nothing, and no such cell."""
    sure = FieldCut("account", "boxes", (0, 0, 60, 20), (_slot(0), _slot(1), _slot(2, blank=True)), length=2)
    empty = FieldCut("optional", "boxes", (0, 30, 60, 20), (_slot(0, blank=True), _slot(1, blank=True)))
    nothing = FieldCut("note", "string", (0, 60, 60, 20), ())
    probs = np.stack([_onehot(4, 0.999), _onehot(2, 0.999)])
    page = assemble_page(_page(sure, empty, nothing), Probs(probs), threshold=0.9, damaged=True)
    read, blank, none = page.fields
    assert read.value == "42" and read.flags == (FLAG_DAMAGED,) and read.needs_review
    assert not any(d.needs_review for d in read.digits)  # the digits themselves read surely
    assert blank.value == "" and blank.flags == (FLAG_DAMAGED,) and blank.needs_review
    assert all(d.blank and not d.needs_review for d in blank.digits)
    assert none.flags == (FLAG_DAMAGED,) and none.needs_review and none.value == ""
    assert [(d.position, d.bbox, d.blank) for d in none.digits] == [(0, (0, 60, 60, 20), True)]
    assert page.needs_review
    whole = assemble_page(_page(sure, empty, nothing), Probs(probs), threshold=0.9)
    assert not whole.needs_review and whole.fields[2].digits == ()


def test_a_string_field_with_no_cell_that_breaks_its_rule_gets_one_to_be_reviewed_by() -> None:
    """A template's string field where nothing was cut (left empty) and whose pattern wants digits: before,
    flagged with no digit row at all, so nothing could clear it and its document needed review for ever."""
    total = FieldCut("total", "string", (5, 6, 70, 20), (), pattern=r"\d+")
    res = assemble_page(_page(total), np.zeros((0, 11), np.float32), threshold=0.9).fields[0]
    assert res.flags == (FLAG_PATTERN,) and res.needs_review
    assert [(d.position, d.bbox, d.blank, d.label) for d in res.digits] == [(0, (5, 6, 70, 20), True, None)]
