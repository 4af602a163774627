"""Segmentation stages one by one (prepare, fields, cut) on small drawn pages with known answers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import pytest

from digitreader.pipeline.cut import _digit_components, _Window, cut_field, remove_lines
from digitreader.pipeline.fields import find_fields
from digitreader.pipeline.normalize import label_pieces
from digitreader.pipeline.prepare import estimate_skew, flatten, map_box, prepare_page
from digitreader.pipeline.split import Piece, _date_slashes, default_scorer, refine_string, split_string, splitter_model
from digitreader.types import BBox, FieldRegion, PageImage, PreparedPage

DPI = 150
PPM = DPI / 25.4


def _read_gray(path: Path) -> np.ndarray:
    """A test image as greyscale (failing the test if it cannot be read)."""
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None, path
    return img


def mm(v: float) -> int:
    return int(round(v * PPM))


def _blank(w_mm: float = 120, h_mm: float = 90, paper: int = 245) -> np.ndarray:
    return np.full((mm(h_mm), mm(w_mm)), paper, np.uint8)


def _comb(img: np.ndarray, x: float, y: float, n: int, cw: float = 8, ch: float = 10, tone: int = 30) -> None:
    x0, y0 = mm(x), mm(y)
    cv2.rectangle(img, (x0, y0), (x0 + mm(n * cw), y0 + mm(ch)), tone, 2)
    for i in range(1, n):
        cv2.line(img, (x0 + mm(i * cw), y0), (x0 + mm(i * cw), y0 + mm(ch)), tone, 2)


def _squares(img: np.ndarray, x: float, y: float, n: int, side: float = 7, gap: float = 2) -> None:
    for i in range(n):
        a = mm(x + i * (side + gap))
        cv2.rectangle(img, (a, mm(y)), (a + mm(side), mm(y) + mm(side * 1.3)), 30, 2)


def _ticks(img: np.ndarray, x: float, y: float, n: int, cw: float = 8) -> None:
    base = mm(y)
    cv2.line(img, (mm(x), base), (mm(x + n * cw), base), 30, 2)
    for i in range(n + 1):
        cv2.line(img, (mm(x + i * cw), base), (mm(x + i * cw), base - mm(3)), 30, 2)


def _rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    h, w = img.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(img, m, (w, h), borderValue=245)


def _form() -> np.ndarray:
    """A small form: a joined comb, separate squares, a tick row, a string box, plus distractors."""
    img = _blank()
    cv2.putText(img, "ACCOUNT FORM", (mm(5), mm(8)), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 30, 2)
    cv2.rectangle(img, (mm(95), mm(2)), (mm(115), mm(10)), 30, -1)  # a filled logo
    _comb(img, 10, 15, 6)
    _squares(img, 10, 32, 4)
    _ticks(img, 10, 58, 5)
    cv2.rectangle(img, (mm(60), mm(45)), (mm(110), mm(57)), 30, 2)  # a string box
    cv2.line(img, (mm(10), mm(80)), (mm(100), mm(80)), 30, 2)  # a signature line: not a field
    cv2.putText(img, "Sign here", (mm(10), mm(86)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 30, 1)
    return img


@pytest.mark.parametrize("angle", [-10.0, -4.0, 0.0, 2.5, 8.0])
def test_skew_is_measured_from_the_page_lines(angle: float) -> None:
    img = _rotate(_form(), angle)
    assert abs(estimate_skew(flatten(img, PPM), PPM) - angle) < 0.3


def test_flatten_removes_uneven_light() -> None:
    img = _form().astype(np.float32)
    ramp = np.linspace(0.55, 1.0, img.shape[1], dtype=np.float32)[None, :]  # a dark shadow on the left
    shaded = (img * ramp).astype(np.uint8)
    flat = flatten(shaded, PPM)
    paper = flat[mm(65) : mm(75), :]  # an empty band across the page
    assert paper.mean() > 240 and paper.std() < 6


def test_binarization_keeps_faint_pencil_and_drops_noise() -> None:
    img = _blank()
    cv2.line(img, (mm(20), mm(20)), (mm(25), mm(50)), 190, 2)  # faint pencil stroke (grey 190 on 245)
    noisy = np.clip(img.astype(np.int16) + np.random.default_rng(0).normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    prepared = prepare_page(PageImage(1, noisy, dpi=DPI))
    stroke = prepared.ink[mm(25) : mm(45), mm(19) : mm(26)]
    assert (stroke > 0).any(axis=1).mean() > 0.9  # the stroke is there on (almost) every row
    elsewhere = prepared.ink[mm(60) :, :]
    assert (elsewhere > 0).mean() < 0.001


def test_to_original_maps_back_to_the_submitted_page() -> None:
    img = _rotate(_form(), 6.0)
    prepared = prepare_page(PageImage(1, img, dpi=DPI))
    assert abs(prepared.skew_degrees - 6.0) < 0.3
    # The comb's top-left corner in the submitted page, found through the prepared page.
    fields = find_fields(prepared)
    comb = next(f for f in fields if f.kind == "boxes" and len(f.cells) == 6)
    x, y, w, h = map_box(prepared.to_original, comb.bbox, prepared.width, prepared.height)
    m = cv2.getRotationMatrix2D((img.shape[1] / 2, img.shape[0] / 2), 6.0, 1.0)
    cx, cy = m @ np.array([mm(10 + 24), mm(15 + 5), 1.0])  # the comb's centre on the rotated page
    assert x <= cx <= x + w and y <= cy <= y + h


def test_fields_found_with_kinds_cells_and_order() -> None:
    prepared = prepare_page(PageImage(1, _form(), dpi=DPI))
    fields = find_fields(prepared)
    summary = [(f.kind, len(f.cells)) for f in fields]
    # Order: comb (y=15), squares (y=32), then one row: ticks (writing area above y=58, x=10) and
    # the string box (y=45-57, x=60), left to right. The logo, text and signature line are not fields.
    assert summary == [("boxes", 6), ("boxes", 4), ("boxes", 5), ("string", 1)]
    widths = [c[2] for c in fields[0].cells]
    assert max(widths) - min(widths) <= 3


FIELDS = Path(__file__).parent / "data" / "fields"


def test_tick_row_with_digits_written_down_into_the_ticks() -> None:
    """A real tick row (tests/data/fields/README.md) whose digits reach down among the ticks, filling
    much of the ticks' band, once taken for printed text and missed."""
    img = _read_gray(FIELDS / "ticks-23056.png")
    fields = find_fields(prepare_page(PageImage(1, img, dpi=300)))
    assert [(f.kind, len(f.cells)) for f in fields] == [("boxes", 6)]


def _prepared_fixture(name: str) -> PreparedPage:
    gray = _read_gray(FIELDS / f"{name}.png")
    ink = _read_gray(FIELDS / f"{name}.ink.png")
    h, w = gray.shape
    return PreparedPage(1, gray, ink, np.array([[1.0, 0, 0], [0, 1.0, 0]]), w, h, 0.0, dpi=DPI)


def test_tick_row_with_digit_strokes_in_most_cells() -> None:
    """A prepared tick row (150 dpi) where four digits reach down among the ticks: four strokes off
    the grid of six cells."""
    fields = find_fields(_prepared_fixture("ticks-281062"))
    assert [(f.kind, len(f.cells)) for f in fields] == [("boxes", 6)]


def _assert_centres_in(boxes: Sequence[BBox], centres: list[tuple[int, int]]) -> None:
    """Each centre lies in the box of the same rank (as many boxes as centres, both in order)."""
    for (x, y, w, h), (cx, cy) in zip(boxes, centres, strict=True):
        assert x <= cx <= x + w and y <= cy <= y + h, (boxes, centres)


def test_tick_row_whose_first_tick_a_digit_hides() -> None:
    """A prepared tick row of 8 cells (150 dpi) whose first digit, an 8, is written over the row's
    first tick: the tick's columns are as wide as the 8, so it is not taken for a tick, but the base
    line runs on a pitch beyond the first tick found. Every cell is found, each true digit's centre
    in its own cell."""
    fields = find_fields(_prepared_fixture("ticks-878"))
    assert [(f.kind, len(f.cells)) for f in fields] == [("boxes", 8)]
    _assert_centres_in(fields[0].cells, TICKS_878_CENTRES)


#: The true cells' centres (fixture pixels, from the page's truth; digits 8, 7, 8, then blanks).
TICKS_878_CENTRES = [(54, 76), (102, 76), (149, 76), (196, 76), (243, 76), (291, 76), (338, 76), (385, 76)]


def test_faint_broken_boxes_on_a_patterned_cheque() -> None:
    """A cheque's date boxes printed light grey on a wavy background pattern (prepared, 150 dpi):
    noise breaks their lines into pieces that form no frame until gaps up to 1.5 mm are bridged.
    The bold 'Date' beside them and the pattern are not fields."""
    fields = find_fields(_prepared_fixture("faint-date-150101"))
    assert [(f.kind, len(f.cells)) for f in fields] == [("boxes", 8)]
    # The true boxes' centres (fixture pixels, from the page's truth): one in each cell, in order.
    _assert_centres_in(fields[0].cells, FAINT_DATE_CENTRES)


FAINT_DATE_CENTRES = [(116, 69), (152, 69), (188, 69), (225, 69), (261, 69), (297, 69), (334, 69), (370, 69)]


def test_faint_broken_frame_around_bold_digits() -> None:
    """A light grey string box (prepared, 150 dpi, deskewed by 2.5°) whose bottom line came out broken
    (64 % of its row), around bold digits: the faint-box pass must run and find it, although the
    bold digits, which the line image keeps, are far darker than the box's lines."""
    fields = find_fields(_prepared_fixture("faint-string-96313"))
    assert [(f.kind, len(f.cells)) for f in fields] == [("string", 1)]
    _assert_centres_in([fields[0].bbox] * len(FAINT_STRING_CENTRES), FAINT_STRING_CENTRES)


#: The true digits' centres (fixture pixels, from the page's truth: 9, 6, 3, 1, 3).
FAINT_STRING_CENTRES = [(103, 76), (138, 74), (181, 78), (214, 75), (237, 74)]


@pytest.mark.parametrize("name", ["heading-account", "heading-savings", "micr-line"])
def test_printed_text_is_not_a_tick_row(name: str) -> None:
    """Bold printed text of real generated pages (prepared: 150 dpi, light flattened, with its ink):
    its letters stand on a line at a comb's pitch, but fit a grid of two cells with strokes left over."""
    assert find_fields(_prepared_fixture(name)) == []


def test_digit_stroke_does_not_make_a_wall() -> None:
    img = _blank()
    _comb(img, 10, 15, 5)
    # A '1' written tall in cell 2, touching the top and bottom lines.
    cv2.line(img, (mm(10 + 12), mm(15)), (mm(10 + 12), mm(25)), 30, 3)
    fields = find_fields(prepare_page(PageImage(1, img, dpi=DPI)))
    assert [(f.kind, len(f.cells)) for f in fields] == [("boxes", 5)]


def _digit_page() -> tuple[np.ndarray, FieldRegion]:
    img = _blank(60, 30)
    _comb(img, 5, 8, 3)
    # Cell 0: a '7' whose stroke runs down through the bottom line; cell 1: dust only; cell 2: a '0'.
    cv2.line(img, (mm(6.5), mm(10)), (mm(11), mm(10)), 20, 3)
    cv2.line(img, (mm(11), mm(10)), (mm(8), mm(21)), 20, 3)
    cv2.circle(img, (mm(17), mm(13)), 1, 60, -1)
    cv2.ellipse(img, (mm(25), mm(13)), (mm(2), mm(3.3)), 0, 0, 360, 20, 3)
    prepared = prepare_page(PageImage(1, img, dpi=DPI))
    (field,) = find_fields(prepared)
    return img, field


def test_cells_cut_blank_and_crossing_strokes() -> None:
    img, region = _digit_page()
    prepared = prepare_page(PageImage(1, img, dpi=DPI))
    cut = cut_field(prepared, region, name="f")
    assert [s.blank for s in cut.slots] == [False, True, False]
    seven = cut.slots[0].crop
    assert seven.shape == (28, 28) and seven.max() > 200
    # The part of the 7 below the bottom line was kept: its ink spans the 20-px box vertically,
    # and the box line (which would be a full-width bar) is not in the crop.
    rows = np.nonzero(seven.max(axis=1) > 60)[0]
    assert rows.max() - rows.min() >= 18
    assert (seven > 60).sum(axis=1).max() < 20
    assert not cut.slots[1].crop.any()


def test_stroke_along_a_cell_wall_is_kept() -> None:
    """A 7 whose bar runs along just under the cell's top line (as cut from a real page: the cell's
    interior was found below the bar, so the band of rows covered like a line is the line's 3 rows
    plus the bar's 4): the line is taken out, the bar is not, so the 7 is not cut down to a '1'."""
    ink = np.zeros((74, 37), bool)
    ink[9:12, 2:36] = True  # top line, 3 rows
    ink[61:64, 2:36] = True  # bottom line
    ink[9:64, 2:5] = True  # left wall
    ink[9:64, 32:35] = True  # right wall
    ink[12:16, 5:29] = True  # the 7's bar, against the top line
    for r in range(12, 45):  # its stem, down and to the left
        c = 24 - (r - 12) // 4
        ink[r, c - 2 : c + 3] = True
    out = remove_lines(_Window(0, 0, ink, (6, 14, 31, 60)), max_t=7)
    assert not out[9:12, 5:20].any() and not out[61:64].any()  # the lines are gone
    assert out[14:16, 5:29].mean() > 0.9  # the bar is kept (all but the two rows next to the line)
    assert out[20:40].any()  # and the stem


CELLS = Path(__file__).parent / "data" / "cells"


@pytest.mark.parametrize("name", sorted(p.name[: -len(".json")] for p in CELLS.glob("seven-bar-*.json")))
def test_seven_whose_bar_lies_on_the_top_line_keeps_it(name: str) -> None:
    """Real cells (tests/data/cells/README.md) where a 7's bar lies along the top line: the band of
    line-covered rows is 6 rows against the bottom line's 3, and taking 5 of them as the line (the
    thinner side plus two) took the whole bar, leaving a '1' read surely. The 7 keeps its bar: its
    largest piece spans most of the cell's width, not only the stem's."""
    meta = json.loads((CELLS / f"{name}.json").read_text())
    ink = _read_gray(CELLS / f"{name}.ink.png") > 0
    x0, y0, x1, y1 = meta["inner"]
    out = remove_lines(_Window(0, 0, ink, (x0, y0, x1, y1)), max_t=meta["max_t"], pen=meta.get("pen"))
    assert _widest_piece(out, (x0, y0, x1, y1)) >= 0.8 * (x1 - x0)


def _widest_piece(out: np.ndarray, inner: tuple[int, int, int, int]) -> int:
    """The width of the largest piece of a cell's ink (and the 8 rows above its interior)."""
    x0, y0, x1, y1 = inner
    _, _, stats, _ = cv2.connectedComponentsWithStats(out[y0 - 8 : y1, x0:x1].view(np.uint8), connectivity=8)
    return int(stats[1:, cv2.CC_STAT_WIDTH][np.argmax(stats[1:, cv2.CC_STAT_AREA])])


def test_a_lone_top_line_is_measured_by_the_field_s_pen() -> None:
    """The rough cell (tests/data/cells/README.md) whose faint box shows only its top line, with the
    7's bar lying on it: the band is 7 rows (bar and line) and the cell has no other side to measure
    the line by, so the whole band went and the 7 was read as a '1' (0.9997). With the pen measured
    along the whole field (3 rows), the bar stays; without it, it does not."""
    name = "seven-bar-lone-line-r0777-28"
    meta = json.loads((CELLS / f"{name}.json").read_text())
    ink = _read_gray(CELLS / f"{name}.ink.png") > 0
    inner = tuple(meta["inner"])
    assert meta["pen"] == 3
    without = remove_lines(_Window(0, 0, ink, inner), max_t=meta["max_t"])
    assert _widest_piece(without, inner) < 0.5 * (inner[2] - inner[0])  # a '1': the stem alone


def test_field_pen_is_the_box_line_not_a_digit_s_bar() -> None:
    """`cut._field_pen` on a drawn row of five boxes (3-px lines; a 7's 6-row bar on the first cell's
    top line): the lines' thickness, measured across the field; none where no line runs."""
    from digitreader.pipeline.cut import _field_pen
    from digitreader.types import PreparedPage

    gray = np.full((120, 400), 250, np.uint8)
    cells = tuple((20 + 60 * i + 3, 23, 54, 70) for i in range(5))
    gray[20:23, 20:323] = 200  # top line, faint
    gray[93:96, 20:323] = 200  # bottom line
    for i in range(6):
        gray[20:96, 20 + 60 * i : 23 + 60 * i] = 200  # walls
    gray[18:24, 26:70] = 40  # the 7's bar over the first cell's top line
    page = PreparedPage(number=1, gray=gray, ink=(gray < 192).astype(np.uint8) * 255,
                        to_original=np.eye(2, 3), width=400, height=120, levels=(192.0, 227.0))  # fmt: skip
    assert _field_pen(page, cells, max_t=7) == 3
    gray[93:96, 20:323] = 250  # a field with its top line only: still measured
    assert _field_pen(page, cells, max_t=7) == 3
    gray[20:23, 20:323] = 250  # no line at all (the bar alone covers a few columns, not most)
    assert _field_pen(page, cells, max_t=7) is None


@pytest.mark.parametrize("name", sorted(p.name[: -len(".json")] for p in CELLS.glob("tick-*.json")))
def test_tick_touching_a_digit_is_taken_out(name: str) -> None:
    """Real tick-row cells (tests/data/cells/README.md) where a 0 touches one of the ticks rising from
    the base line: the tick stayed on as a tail and the 0 was read as a 9 (0.97) or an 8. The ticks
    are taken out (as high as the shorter one reaches), so the 0 no longer reaches down to the base line."""
    meta = json.loads((CELLS / f"{name}.json").read_text())
    ink = _read_gray(CELLS / f"{name}.ink.png") > 0
    x0, y0, x1, y1 = meta["inner"]
    out = remove_lines(_Window(0, 0, ink, (x0, y0, x1, y1)), max_t=meta["max_t"], ticks=True)
    _, _, stats, _ = cv2.connectedComponentsWithStats(out[:y1].view(np.uint8), connectivity=8)
    zero = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
    bottom = int(zero[cv2.CC_STAT_TOP] + zero[cv2.CC_STAT_HEIGHT])
    assert bottom < y1 - 3, (bottom, y1)  # with the tick, the piece ran down to the base line


def test_one_written_against_a_wall_is_not_taken_for_its_remnant() -> None:
    """A real cell (tests/data/cells/README.md) whose '1' runs down along the left wall: the wall's
    removal thins it to ~3.3 px on average, which the rule for wall remnants (under 0.1 of the
    cell's width) dropped, so the cell read blank. Standing over half the cell's height, it stays."""
    meta = json.loads((CELLS / "one-on-wall-0779-73.json").read_text())
    ink = _read_gray(CELLS / "one-on-wall-0779-73.ink.png") > 0
    inner = tuple(meta["inner"])
    out = remove_lines(_Window(0, 0, ink, inner), max_t=meta["max_t"])
    _, labels, stats = label_pieces(out.view(np.uint8))
    keep = _digit_components(labels, stats, inner, (0, 0, *meta["cell_size"]))
    kept = stats[keep]
    assert len(kept) == 1 and kept[0][3] >= 0.5 * (inner[3] - inner[1]), stats.tolist()


def test_faint_digit_in_a_cell_is_cut_whole() -> None:
    """A pale "0" (grey 205 on 245: weak ink only) with one dark blot on it: the page's binarization
    keeps the pale stroke only near the blot; the cell takes every faint stroke touching its ink."""
    img = _blank(60, 30)
    _comb(img, 5, 8, 3)
    cv2.ellipse(img, (mm(17), mm(13)), (mm(2.2), mm(3.4)), 0, 0, 360, 205, 3)  # in cell 1 (13-21 mm)
    cv2.circle(img, (mm(17), mm(13 - 3.4)), 2, 110, -1)
    prepared = prepare_page(PageImage(1, img, dpi=DPI))
    (region,) = find_fields(prepared)
    zero = cut_field(prepared, region, name="f").slots[1]
    assert not zero.blank
    ring = zero.crop > 40
    # The whole ring: ink on the left and right sides and at the bottom, paper in the middle.
    assert ring[10:18, 3:10].any() and ring[10:18, 18:25].any() and ring[20:26, 10:18].any()
    assert not ring[12:16, 12:16].any()


def test_string_split_drops_separators_and_splits_touching_digits() -> None:
    h = 60
    mask = np.zeros((h + 20, 400), np.uint8)
    top, bot = 15, 15 + h

    def one(x: int) -> None:
        cv2.line(mask, (x, top), (x, bot), 1, 5)

    def zero(x: int) -> None:
        cv2.ellipse(mask, (x + 18, (top + bot) // 2), (18, h // 2), 0, 0, 360, 1, 5)

    one(20)
    zero(40)  # "10"
    cv2.line(mask, (95, bot - 6), (135, top + 6), 1, 5)  # "/" (about 50 degrees)
    zero(150)
    zero(196)  # "00" joined by the pen dragged from one zero to the next (a thin neck)
    cv2.line(mask, (186, (top + bot) // 2), (196, (top + bot) // 2), 1, 4)
    cv2.circle(mask, (235, bot - 2), 3, 1, -1)  # "."
    one(255)
    cv2.line(mask, (280, top + h // 2), (320, top + h // 2), 1, 4)  # trailing "-"
    pieces = split_string(mask.astype(bool), (0, 5, 400, h + 15))
    xs = [p.x0 for p in pieces]
    assert len(pieces) == 5, xs
    assert xs == sorted(xs)


def test_splitter_model_by_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from digitreader.pipeline import split
    from digitreader.settings import Settings

    reader = tmp_path / "reader.onnx"
    assert split.SPLITTER_MODEL.exists(), "the splitter's model is shipped"
    assert split.splitter_model(Settings(_env_file=None), reader) == split.SPLITTER_MODEL  # type: ignore[call-arg]
    assert split.splitter_model(Settings(splitter="reader", _env_file=None), reader) == reader  # type: ignore[call-arg]
    other = Settings(splitter=str(tmp_path / "mine.onnx"), _env_file=None)  # type: ignore[call-arg]
    assert split.splitter_model(other, reader) == tmp_path / "mine.onnx"
    monkeypatch.setattr(split, "SPLITTER_MODEL", tmp_path / "missing.onnx")  # not installed: the reader splits
    assert split.splitter_model(Settings(_env_file=None), reader) == reader  # type: ignore[call-arg]


STRINGS = Path(__file__).parent / "data" / "strings"


@pytest.mark.parametrize("name", sorted(p.name[: -len(".json")] for p in STRINGS.glob("*.json")))
def test_string_split_real_failures(name: str) -> None:
    """Real generated string fields that once were cut wrongly (tests/data/strings/README.md): a 5 whose
    top bar came loose, a 4 in two pieces, a wide 2, a 1 pressed against a 3. Each truth digit's
    centre must fall in exactly one piece, and the pieces must be as many as the digits, in order."""
    meta = json.loads((STRINGS / f"{name}.json").read_text())
    gray = _read_gray(STRINGS / f"{name}.png")
    ink = _read_gray(STRINGS / f"{name}.ink.png") > 0
    inner = cast(tuple[int, int, int, int], tuple(int(v) for v in meta["inner"]))
    digit = remove_lines(_Window(0, 0, ink, inner), max_t=7)
    scorer = default_scorer(splitter_model())
    assert scorer is not None, "the shipped splitter's model must load"
    pieces = refine_string(split_string(digit, inner), 255 - gray, scorer)
    spans = [(p.x0, p.x1) for p in pieces]
    assert len(pieces) == len(meta["value"]), spans
    for (a, b), cx in zip(spans, meta["centres_x"], strict=True):
        assert a <= cx <= b, (spans, meta["centres_x"])


def _strokes(layout: str, lean: dict[int, float] | None = None) -> list[Piece]:
    """Pieces of a drawn string, 60 px tall digits: 'd' a digit (a ring, never a straight stroke), '/'
    a straight rising stroke 48 px tall leaning 62 degrees from the horizontal (`lean` by index)."""
    pieces = []
    x = 0
    for i, ch in enumerate(layout):
        mask = np.zeros((80, 20 + 45 * len(layout)), np.uint8)
        if ch == "d":
            cv2.ellipse(mask, (x + 18, 40), (16, 30), 0, 0, 360, 1, 5)
        else:
            dx = int(round(48 / np.tan(np.radians((lean or {}).get(i, 62.0)))))
            cv2.line(mask, (x + 18 + dx // 2, 16), (x + 18 - dx // 2, 64), 1, 5)
        ys, xs = np.nonzero(mask)
        pieces.append(Piece(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, mask > 0))
        x += 45
    return pieces


@pytest.mark.parametrize(
    ("layout", "lean", "dropped"),
    [
        ("dd/dd/dddd", None, {2, 5}),  # day/month/year
        ("d/dd/dd", None, {1, 4}),  # a one-digit day, a two-digit year
        ("dddd/dd/dd", None, {4, 7}),  # year first
        ("dd/dddd", None, set()),  # one such stroke: a leaning '1' as far as anyone can tell
        ("d/ddd/dd", None, set()),  # three digits between them: not a date's month
        ("d/dd/d", None, set()),  # no group two digits wide: no year
        ("dd/dd/dddd", {5: 50.0}, set()),  # two strokes leaning differently: not a pair of separators
        ("dd/dd/dddd", {2: 75.0, 5: 75.0}, set()),  # upright strokes: 1s
    ],
)
def test_date_slashes(layout: str, lean: dict[int, float] | None, dropped: set[int]) -> None:
    """A date's two separators are dropped when they lean alike and cut the string into a date's
    groups, even as steep as a leaning '1'; a single steep stroke, or two at other places, stay."""
    assert _date_slashes(_strokes(layout, lean), med_h=60.0) == dropped


@pytest.mark.parametrize(("pitch", "found"), [(8.0, True), (25.0, True), (37.0, False), (45.0, False)])
def test_a_tick_row_s_cells_are_at_most_30_mm_wide(pitch: float, found: bool) -> None:
    """Ticks rising from a line 37 or 45 mm apart are no tick row: a cheque's wavy background pattern
    crossing its "Pay" line at even steps was taken for one (3 ticks 37 mm apart, cells 46 mm tall),
    and read as a field. Up to `fields.TICK_PITCH_MAX_MM` (30 mm) they still are one: a real tick row
    whose digits hide two ticks in three is found with cells 22 mm wide."""
    img = _blank(150, 40)
    _ticks(img, 10, 30, 4 if 4 * pitch < 130 else 3, cw=pitch)
    fields = find_fields(prepare_page(PageImage(1, img, dpi=DPI)))
    assert [f.kind for f in fields] == (["boxes"] if found else []), fields
