"""Sheets stage: two cheques laid on a flatbed's glass, each turned its own way, scanned as one page."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from digitreader.pipeline.document import DocumentCut
from digitreader.pipeline.load import load_pages
from digitreader.pipeline.prepare import prepare_page
from digitreader.pipeline.process import segment_document
from digitreader.pipeline.recognize import Predictor
from digitreader.pipeline.sheets import SHEET_TURN, find_sheets
from digitreader.settings import Settings

SCANS = Path(__file__).resolve().parents[1] / "examples" / "scans"
#: Two 300-dpi cheques of the sample scans: a JPEG, and the first page of a PDF.
CHEQUES = (SCANS / "scan-0001-00002.jpg", SCANS / "scan-0004-00001.pdf")


def _turned(g: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """`g` turned `degrees` counter-clockwise on a canvas that keeps its corners, and where it lies."""
    h, w = g.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    a = np.radians(abs(degrees))
    nw, nh = int(w * np.cos(a) + h * np.sin(a)) + 1, int(h * np.cos(a) + w * np.sin(a)) + 1
    m[0, 2] += (nw - w) / 2
    m[1, 2] += (nh - h) / 2
    on = cv2.warpAffine(np.full_like(g, 255), m, (nw, nh), flags=cv2.INTER_NEAREST) > 0
    return cv2.warpAffine(g, m, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=255), on


def _flatbed(
    cheques: list[tuple[np.ndarray, float]], turns: tuple[float, float], path: Path
) -> list[tuple[int, int, int, int]]:
    """The cheques (each with its own skew) laid on a white A4 flatbed (300 dpi), one above the other,
    turned to `turns` degrees; saved to `path`. Returns where each lies (x, y, w, h) on the page."""
    bed = np.full((3508, 2480), 252, np.uint8)
    places = []
    for (g, skew), degrees, (x, y) in zip(cheques, turns, ((180, 300), (320, 1900)), strict=True):
        img, on = _turned(g, degrees - skew)
        h, w = img.shape
        bed[y : y + h, x : x + w][on] = img[on]
        places.append((x, y, w, h))
    Image.fromarray(bed).save(path, dpi=(300, 300))
    return places


def _values(cut: DocumentCut, predictor: Predictor) -> list[str]:
    """Each field's value as the model reads it, blank cells left out, over every page."""
    out = []
    for field in (f for p in cut.pages for f in p.fields):
        crops = [s.crop for s in field.slots if not s.blank]
        labels = predictor.predict(np.stack(crops)).labels.tolist() if crops else []
        out.append("".join(str(v) for v in labels))
    return out


@pytest.fixture(scope="module")
def cheques() -> list[tuple[np.ndarray, float]]:
    """The two sample cheques' pages and their own skews (the sample scans lie 2-3 degrees turned)."""
    from digitreader.settings import get_settings

    pages = [next(iter(load_pages(p, get_settings()))) for p in CHEQUES]
    return [(page.gray, prepare_page(page).skew_degrees) for page in pages]


def test_two_cheques_each_turned_its_own_way_are_each_read_as_alone(
    cheques: list[tuple[np.ndarray, float]], tmp_path: Path, settings: Settings
) -> None:
    """Two cheques on the glass, one turned 5 degrees one way, the other 3 the other way. The page
    was deskewed by one angle, and the other cheque, left 8 degrees turned, lost both its fields (2
    of the 4 were found). Each sheet is now straightened on its own (`sheets.py`): all 4 fields are
    found, sheet by sheet, each box on its own cheque on the page as submitted, and they read as the
    cheques alone digit for digit but one at most (the second cheque's last date digit is a faint 1
    over the cheque's grey pattern, as pale as the pattern: the page's grey levels decide it)."""
    predictor = Predictor.load(None, settings)
    alone = []
    for i, (g, _) in enumerate(cheques):
        path = tmp_path / f"alone-{i}.png"
        Image.fromarray(g).save(path, dpi=(300, 300))
        alone.append(_values(segment_document(path, settings, None, None), predictor))
    assert [len(v) for v in alone] == [2, 2], alone

    path = tmp_path / "flatbed.png"
    places = _flatbed(cheques, (5.0, -3.0), path)
    cut = segment_document(path, settings, None, None)
    assert not cut.failed
    got = _values(cut, predictor)
    want = alone[0] + alone[1]
    assert len(got) == 4 and [len(v) for v in got] == [len(v) for v in want], (got, want)
    differ = sum(a != b for u, v in zip(got, want, strict=True) for a, b in zip(u, v, strict=True))
    assert differ <= 1, (got, want)
    fields = cut.pages[0].fields
    for field, (x, y, w, h) in zip(fields, [places[0]] * 2 + [places[1]] * 2, strict=True):
        fx, fy, fw, fh = field.bbox
        assert x <= fx and y <= fy and fx + fw <= x + w and fy + fh <= y + h, (field.bbox, (x, y, w, h))
        for slot in field.slots:
            sx, sy, sw, sh = slot.bbox
            assert fx - 5 <= sx and sx + sw <= fx + fw + 5 and fy - 5 <= sy and sy + sh <= fy + fh + 5


def test_sheets_at_one_angle_are_read_at_the_page_s_angle(
    cheques: list[tuple[np.ndarray, float]], tmp_path: Path
) -> None:
    """Two cheques turned the same way are two sheets, and neither is turned from the page's deskew:
    the page is read as one (no sheet straightened on its own)."""
    from digitreader.settings import get_settings

    path = tmp_path / "flatbed.png"
    _flatbed(cheques, (4.0, 4.0), path)
    prepared = prepare_page(next(iter(load_pages(path, get_settings()))))
    sheets = find_sheets(prepared)
    assert len(sheets) == 2
    assert all(abs(s.turn) < SHEET_TURN for s in sheets), [s.turn for s in sheets]


def test_two_cheques_turned_apart_are_two_sheets_with_their_turns(
    cheques: list[tuple[np.ndarray, float]], tmp_path: Path
) -> None:
    """The page is deskewed by one cheque's angle; the other is found turned from it by the difference
    (8 degrees), the sheet above holding the first cheque's ink and the one below the second's."""
    from digitreader.settings import get_settings

    path = tmp_path / "flatbed.png"
    places = _flatbed(cheques, (5.0, -3.0), path)
    prepared = prepare_page(next(iter(load_pages(path, get_settings()))))
    sheets = find_sheets(prepared)
    assert len(sheets) == 2
    turns = sorted(abs(s.turn) for s in sheets)
    assert turns[0] < 0.5 and abs(turns[1] - 8.0) < 0.5, turns
    # Each cheque's centre, on the prepared page, lies on its own sheet.
    back = np.vstack([prepared.to_original, [0.0, 0.0, 1.0]])
    to_prepared = np.linalg.inv(back)
    for sheet, (x, y, w, h) in zip(sheets, places, strict=True):
        cx, cy, _ = to_prepared @ np.array([x + w / 2, y + h / 2, 1.0])
        assert sheet.holds(cx, cy)


def test_a_form_is_one_sheet(settings: Settings) -> None:
    """The sample A4 form, its rows of fields in blocks of ink apart, is one sheet: none is straightened
    on its own (the same fields as the page's, from the prepared page as a whole)."""
    from digitreader.pipeline.fields import find_fields
    from digitreader.pipeline.segment import fields_on_sheets

    prepared = prepare_page(next(iter(load_pages(SCANS / "scan-0001-00001.jpg", settings))), settings)
    regions = find_fields(prepared, settings)
    assert len(regions) == 27
    assert all(abs(s.turn) < SHEET_TURN for s in find_sheets(prepared))
    assert fields_on_sheets(prepared, regions, settings) is None
