"""Cut stage: a field -> its digit slots (box cells or digits split from a string), each normalized.

A cell first takes back the faint strokes of its digit that the page's binarization dropped (every
weak-level stroke touching its ink: a pale pen keeps its whole digit, not only the pixels near its
darker spots). Box lines are removed without eating strokes that cross them: the rows/columns of a
line next to a cell are found by their coverage, taken out of the ink, and put back wherever ink
continues on both sides of the line (a stroke crossing it); where a stroke runs along the line, the
band of covered rows is thicker than the line, and only the line's own rows are taken
(`_line_cores`). What is left is split into connected pieces, and a cell keeps the pieces that lie
mostly inside it (so a neighbour's digit that pokes in is ignored).

A string field's window is cut out of the page the same way, its box lines taken out, and its ink
split into one piece per digit by the split stage (`split.py`: geometry, then the splitter model's
second opinion).

Box-line removal and a box cell's whole mask have a C half (`_cut.c`: `remove_lines`, `cell_mask`),
used where it was built; the Python here (`_remove_lines_py`, `_cell_mask`) is how they work, and
the reference `tests/test_cut_native.py` holds the C to.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from digitreader.pipeline.normalize import BLANK_EXTENT, is_blank, label_pieces, normalize_ink
from digitreader.pipeline.prepare import cover, map_box
from digitreader.pipeline.split import (
    DigitScorer,
    Piece,
    default_scorer,
    piece_crop,
    refine_string,
    split_string,
    splitter_model,
)
from digitreader.types import BBox, DigitSlot, FieldCut, FieldRegion, PreparedPage

try:  # box-line removal in C (_cut.c), built at install; without a C compiler, the same in Python
    from digitreader.pipeline import _cut
except ImportError:  # pragma: no cover - depends on the install
    _cut = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

EMPTY = np.zeros((28, 28), np.uint8)


@dataclass
class _Window:
    x0: int
    y0: int
    ink: np.ndarray  # bool, the window's ink
    inner: tuple[int, int, int, int]  # x0, y0, x1, y1 of the cell/field interior, window coordinates


def _window(prepared: PreparedPage, box: BBox, mx: float, my: float) -> _Window:
    H, W = prepared.ink.shape
    x, y, w, h = box
    X0, Y0 = max(0, int(x - mx)), max(0, int(y - my))
    X1, Y1 = min(W, int(math.ceil(x + w + mx))), min(H, int(math.ceil(y + h + my)))
    ink = prepared.ink[Y0:Y1, X0:X1] > 0
    return _Window(X0, Y0, ink, (x - X0, y - Y0, x + w - X0, y + h - Y0))


def _line_runs(hit: list[bool], lo: int, hi: int) -> list[int]:
    return [i for i in range(max(lo, 0), min(hi, len(hit))) if hit[i]]


def _grow1(flags: np.ndarray) -> np.ndarray:
    """A 1-D bool array dilated by one element on each side."""
    out = flags.copy()
    out[1:] |= flags[:-1]
    out[:-1] |= flags[1:]
    return out


def remove_lines(
    win: _Window, max_t: int, level: float = 0.6, ticks: bool = False, pen: int | None = None
) -> np.ndarray:
    """The window's ink without the box lines bordering its interior; crossing strokes are kept.
    `ticks`: a box cell, whose bottom line may be a tick row's (`_remove_ticks`). `pen`: the box
    lines' thickness measured along the whole field (`_field_pen`), for a top or bottom line whose
    opposite line this cell does not show.

    Done in C (`_cut.c`, the same steps and pixels as `_remove_lines_py`) where it was built."""
    if _cut is None:
        return _remove_lines_py(win, max_t, level, ticks, pen)
    ink = np.ascontiguousarray(win.ink, dtype=bool)
    out = ink.copy()
    h, w = ink.shape
    x0, y0, x1, y1 = (int(v) for v in win.inner)
    pen_c = -1 if pen is None else pen
    _cut.remove_lines(ink.view(np.uint8), out.view(np.uint8), h, w, x0, y0, x1, y1, max_t, level, ticks, pen_c)
    return out


def _remove_lines_py(
    win: _Window, max_t: int, level: float = 0.6, ticks: bool = False, pen: int | None = None
) -> np.ndarray:
    """`remove_lines` in Python: how it works, step by step (`_cut.c` follows it)."""
    ink = win.ink
    x0, y0, x1, y1 = win.inner
    h, w = ink.shape
    cx0, cx1, cy0, cy1 = max(x0, 0), min(x1, w), max(y0, 0), min(y1, h)
    if cx1 <= cx0 or cy1 <= cy0:
        return ink.copy()
    row_hit = (cover(ink[:, cx0:cx1], 1) >= level).tolist()
    col_hit = (cover(ink[cy0:cy1, :], 0) >= level).tolist()
    rows = _line_runs(row_hit, y0 - max_t, y0 + 2) + _line_runs(row_hit, y1 - 2, y1 + max_t)
    cols = _line_runs(col_hit, x0 - max_t, x0 + 2) + _line_runs(col_hit, x1 - 2, x1 + max_t)
    row_bands = _bands(rows)
    rows = _line_cores(ink[:, cx0:cx1], row_bands, pen if len(row_bands) == 1 else None)
    cols = _line_cores(ink[cy0:cy1, :].T, _bands(cols))
    out = ink.copy()
    out[rows, :] = False
    out[:, cols] = False
    col_bands = _bands(cols)
    if ticks:
        col_bands += _remove_ticks(ink, out, win.inner, max_t, set(cols))
    # Put back the line pixels where ink continues on both sides (within a pixel) of the line: a
    # stroke crossing it. Rows first, then columns and ticks (whose sides may be strokes the rows
    # put back; outside a tick's rows nothing was taken, so putting back there changes nothing).
    for band in _bands(rows):
        a, b = band[0] - 1, band[-1] + 1
        if a < 0 or b >= h:
            continue
        cross = _grow1(out[a]) & _grow1(out[b])
        out[band[0] : band[-1] + 1] |= ink[band[0] : band[-1] + 1] & cross
    for band in col_bands:
        a, b = band[0] - 1, band[-1] + 1
        if a < 0 or b >= w:
            continue
        cross = (_grow1(out[:, a]) & _grow1(out[:, b]))[:, None]
        out[:, band[0] : band[-1] + 1] |= ink[:, band[0] : band[-1] + 1] & cross
    return out


def _remove_ticks(
    ink: np.ndarray, out: np.ndarray, inner: tuple[int, int, int, int], max_t: int, walls: set[int]
) -> list[list[int]]:
    """Take out (in `out`, in place) the ticks of a tick row: short strokes rising from the bottom
    line just outside the interior's left and right edges, where no wall stands. A digit touching
    a tick would otherwise keep it as a tail (a 0 with a tick read as a 9). A tick is a run of
    columns inked in the lowest rows of the interior; it is taken out as high as the shorter of the
    cell's ticks reaches (a digit touching one tick makes its columns' ink run higher). Returns the
    ticks' column bands, for `remove_lines` to put back where a stroke crosses them."""
    x0, y0, x1, y1 = inner
    h, w = ink.shape
    k = max(3, (y1 - y0) // 6)
    if y1 - k < 0 or y1 > h:
        return []
    low = cover(ink[y1 - k : y1, :], 0) >= 0.9
    hits = _line_runs(low.tolist(), x0 - max_t, x0 + 1) + _line_runs(low.tolist(), x1 - 1, x1 + max_t)
    bands = [b for b in _bands([c for c in hits if c not in walls]) if len(b) <= max_t]
    if not bands:
        return []
    col = ink[:y1, :][::-1]  # rows upwards from the bottom line

    def reach(c: int) -> int:
        stop = np.flatnonzero(~col[:, c])
        return int(stop[0]) if stop.size else y1

    tick_h = min(int(np.median([reach(c) for c in b])) for b in bands)
    if tick_h >= 0.6 * (y1 - y0):
        return []  # as tall as a wall: not a tick
    for b in bands:
        out[y1 - tick_h : y1, b[0] : b[-1] + 1] = False
    return bands


def _line_cores(ink: np.ndarray, bands: list[list[int]], other_ref: int | None = None) -> list[int]:
    """The rows of the line bands along a cell's two opposite sides (`ink`'s rows; columns are
    passed transposed) that are the lines themselves (`_line_core`).

    A line is as thick as most columns of its band show, plus a row for anti-aliasing, and at most
    two rows thicker than the thinner of the two sides (the same pen drew both, and a stroke along
    one side may cover most of its columns); `other_ref` (the field's pen, `_field_pen`) stands in
    for an opposite side the cell does not show.
    """
    if all(len(b) <= 3 for b in bands):  # no band thicker than a line can be: nothing to measure
        return [r for b in bands for r in b]
    ts = [_line_thickness(ink, b) for b in bands]
    ref = min(ts if other_ref is None else [*ts, other_ref])
    return [r for b, t in zip(bands, ts, strict=True) for r in _line_core(ink, b, _core_rows(len(b), t, ref))]


def _core_rows(band: int, t: int, ref: int) -> int:
    """How many rows of a line band of `band` rows (most columns `t`) are the line, when the thinner
    side's line is `ref` rows: `t` plus a row, at most `ref + 2`; and at most `ref + 1` when the band
    is three rows thicker than a real line (`ref` ≥ 2; a one-row "band" is a digit's stroke) or more:
    a 7's bar lying along the top line covers most of its columns, so `t` measures the bar, and
    `ref + 2` rows of a 6-row band would take it all."""
    core = min(t + 1, ref + 2)
    return min(core, ref + 1) if ref >= 2 and band >= ref + 3 else core


def _line_thickness(ink: np.ndarray, band: list[int]) -> int:
    """Rows of ink that most columns of a line band hold: the lower quartile of its columns' counts
    (`int(np.percentile(counts, 25))`, without its overhead)."""
    counts = np.count_nonzero(ink[band[0] : band[-1] + 1], axis=0)
    counts = counts[counts > 0]
    if counts.size == 0:
        return len(band)
    q = 0.25 * (counts.size - 1)
    k = int(q)
    lo, hi = np.partition(counts, [k, min(k + 1, counts.size - 1)])[[k, min(k + 1, counts.size - 1)]].tolist()
    return int(lo + (q - k) * (hi - lo))


def _line_core(ink: np.ndarray, band: list[int], t: int) -> list[int]:
    """The rows of a band of line rows (`ink`'s rows `band`, consecutive) that are the line itself.

    A stroke running along a box line (a 7's bar under the top line, a 0's side against a wall)
    makes the band of covered rows thicker than the line, `t` rows: when the band is thicker by
    more than a row, the line is its best-covered run of `t` rows, and the rest is the stroke, kept.
    """
    if len(band) <= max(3, t + 1):
        return band
    sub = ink[band[0] : band[-1] + 1]
    cover = np.count_nonzero(sub, axis=1).astype(float)
    run = np.convolve(cover, np.ones(t), "valid")
    k = int(np.argmax(run))
    return band[k : k + t]


def _bands(idx: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in sorted(set(idx)):
        if out and i == out[-1][-1] + 1:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _crop(prepared: PreparedPage, win: _Window, mask: np.ndarray) -> np.ndarray:
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    gray = prepared.gray[win.y0 + y : win.y0 + y + h, win.x0 + x : win.x0 + x + w]
    return normalize_ink(255 - gray, mask[y : y + h, x : x + w])


def _digit_components(
    labels: np.ndarray, stats: np.ndarray, inner: tuple[int, int, int, int], cell: BBox
) -> np.ndarray:
    """Which connected pieces of a cell's window (bool per label, 0 = paper) belong to its digit."""
    _, _, w, h = cell
    ix0, iy0, ix1, iy1 = inner
    keep = np.zeros(len(stats), bool)
    min_area = max(2, int(0.0015 * w * h))
    band_x, band_y = 0.14 * w, 0.14 * h
    inside_counts: list[int] = []
    for i, (cx, cy, cw, ch, area) in enumerate(stats.tolist()):
        if i == 0 or area < min_area:
            continue
        # Remnants of a box line (a faint or broken wall the line removal did not take): pieces lying
        # entirely in the band along one edge of the cell and thin on average along it. A piece along
        # a wall standing over half the cell's height needs to be thinner still (under 0.08 of the
        # cell's width, ~3 px at 150 dpi) to be a remnant: a '1' written against the wall, which the
        # wall's removal thinned, is wider.
        near_lr = cx >= ix1 - band_x or cx + cw <= ix0 + band_x
        near_tb = cy >= iy1 - band_y or cy + ch <= iy0 + band_y
        thin_lr = area <= (0.08 if ch >= 0.5 * (iy1 - iy0) else 0.1) * w * ch
        if (near_lr and thin_lr) or (near_tb and area <= 0.1 * h * cw):
            continue
        if not inside_counts:  # pixels of each piece inside the cell, counted once for all pieces
            inside_counts = np.bincount(labels[iy0:iy1, ix0:ix1].ravel(), minlength=len(stats)).tolist()
        inside = inside_counts[i]
        # Mostly inside; or a digit pushed through the top/bottom line: within the cell's columns.
        columns = min(cx + cw, ix1) - max(cx, ix0)
        if inside >= 0.5 * area or (inside >= 0.2 * area and columns >= 0.7 * cw):
            keep[i] = True
    return keep


def _has_tall_piece(stats: np.ndarray, keep: np.ndarray, inner: tuple[int, int, int, int], extent: float) -> bool:
    """Whether a kept piece lies wholly inside the cell and spans `extent` of its height or width.

    Such a piece is a connected piece of the cell's own mask too, so `is_blank` would say "not blank"
    for it; the cell is a digit without labelling its mask again.
    """
    ix0, iy0, ix1, iy1 = inner
    h, w = max(iy1 - iy0, 1), max(ix1 - ix0, 1)
    for i in np.flatnonzero(keep).tolist():
        x, y, cw, ch, _ = stats[i].tolist()
        if x >= ix0 and y >= iy0 and x + cw <= ix1 and y + ch <= iy1 and max(ch / h, cw / w) >= extent:
            return True
    return False


def _grow_faint(prepared: PreparedPage, win: _Window) -> _Window:
    """The window's ink with every faint (weak-level) stroke that touches it: hysteresis by
    connected pieces, where the page's binarization only reaches a few pixels from strong ink."""
    if prepared.levels is None:
        return win
    h, w = win.ink.shape
    gray = prepared.gray[win.y0 : win.y0 + h, win.x0 : win.x0 + w]
    weak = gray < prepared.levels[1]
    n, labels = cv2.connectedComponents(weak.view(np.uint8), connectivity=8)
    if n <= 2:
        return win
    keep = np.bincount(labels[win.ink], minlength=n) > 0
    keep[0] = False
    return _Window(win.x0, win.y0, win.ink | keep[labels], win.inner)


def _max_line(ppm: float) -> int:
    """The thickest box line looked for (rows or columns): 1.2 mm at the page's `ppm` pixels per mm."""
    return max(2, int(round(1.2 * ppm)))


def _field_pen(prepared: PreparedPage, cells: tuple[BBox, ...], max_t: int, level: float = 0.6) -> int | None:
    """The thickness (rows) of a row of boxes' top or bottom line, measured across the whole field:
    the lower quartile of the columns' counts of faint-or-darker pixels in the band along the cells'
    top (and bottom) edge, where the band is inked across `level` of the field's columns; the thinner
    of the two. A digit's bar lying along one cell's line covers a few columns of the field, not most.
    None without grey levels or such a line."""
    if prepared.levels is None or not cells:
        return None
    gray = prepared.gray
    x0 = max(0, int(min(c[0] for c in cells)))
    x1 = min(gray.shape[1], int(max(c[0] + c[2] for c in cells)))
    y0 = int(min(c[1] for c in cells))
    y1 = int(max(c[1] + c[3] for c in cells))
    out = []
    for a, b in ((y0 - max_t, y0 + 2), (y1 - 2, y1 + max_t)):
        a, b = max(0, a), min(gray.shape[0], b)
        if b - a < 2 or x1 - x0 < 4:
            continue
        faint = gray[a:b, x0:x1] < prepared.levels[1]
        if np.count_nonzero(faint.any(axis=0)) < level * (x1 - x0):
            continue
        out.append(max(1, _line_thickness(faint, list(range(b - a)))))
    return min(out) if out else None


def _cell_mask(
    prepared: PreparedPage, win: _Window, cell: BBox, max_t: int, pen: int | None
) -> tuple[np.ndarray, bool]:
    """A box cell's digit (its window's mask, bool) and whether the cell is blank: faint strokes grown
    back (`_grow_faint`), the box lines taken out (`remove_lines`), the pieces that are the cell's own
    kept (`_digit_components`), then the blank test. `_cut.cell_mask` does the same in C."""
    win = _grow_faint(prepared, win)
    digit = remove_lines(win, max_t=max_t, ticks=True, pen=pen)
    ix0, iy0, ix1, iy1 = win.inner
    _, labels, stats = label_pieces(digit.view(np.uint8))
    keep = _digit_components(labels, stats, win.inner, cell)
    mask = keep[labels]
    blank = not _has_tall_piece(stats, keep, win.inner, BLANK_EXTENT) and is_blank(mask[iy0:iy1, ix0:ix1])
    return mask, blank


def _cell_mask_native(
    prepared: PreparedPage, win: _Window, cell: BBox, max_t: int, pen: int | None
) -> tuple[np.ndarray, bool] | None:
    """`_cell_mask` in C (`_cut.cell_mask`), or None where it does not apply (no C extension, a
    page without grey levels, an interior starting outside its window)."""
    ix0, iy0, ix1, iy1 = (int(v) for v in win.inner)
    if _cut is None or prepared.levels is None or ix0 < 0 or iy0 < 0:
        return None
    h, w = win.ink.shape
    ink = np.ascontiguousarray(win.ink, dtype=bool).view(np.uint8)
    gray = np.ascontiguousarray(prepared.gray[win.y0 : win.y0 + h, win.x0 : win.x0 + w])
    out = np.empty((h, w), np.uint8)
    _, _, cw, ch = (int(v) for v in cell)
    pen_c = -1 if pen is None else pen
    blank = _cut.cell_mask(ink, gray, out, h, w, prepared.levels[1], ix0, iy0, ix1, iy1, cw, ch, max_t, pen_c)
    return out.view(bool), blank


def _cell_slot(prepared: PreparedPage, cell: BBox, position: int, ppm: float, pen: int | None = None) -> DigitSlot:
    x, y, w, h = cell
    win = _window(prepared, cell, 0.22 * w, 0.3 * h)
    max_t = _max_line(ppm)
    mask, blank = _cell_mask_native(prepared, win, cell, max_t, pen) or _cell_mask(prepared, win, cell, max_t, pen)
    box = map_box(prepared.to_original, cell, prepared.width, prepared.height)
    if blank:
        return DigitSlot(position=position, bbox=box, crop=EMPTY.copy(), blank=True)
    return DigitSlot(position=position, bbox=box, crop=_crop(prepared, win, mask), blank=False)


@dataclass
class StringPieces:
    """A string field's geometric split, before the model's second opinion (`refine_string`)."""

    x0: int  # the window's origin on the prepared page
    y0: int
    height: int  # of the field's interior, prepared-page pixels
    pieces: list[Piece]  # window coordinates, left to right
    ink: np.ndarray  # the window's grey ink (255 - grey): what the crops are cut from


def string_pieces(prepared: PreparedPage, region: FieldRegion) -> StringPieces:
    """Cut a string field's window out of the page, take its box lines out and split its ink into
    pieces by geometry alone (`split_string`). Also what `training.pagecrops` cuts its negatives from."""
    inner = region.cells[0] if region.cells else region.bbox
    h = inner[3]
    win = _window(prepared, inner, 0.05 * h, 0.3 * h)
    ppm = (prepared.dpi or 150.0) / 25.4
    digit = remove_lines(win, max_t=_max_line(ppm))
    pieces = split_string(digit, win.inner)
    ink = 255 - prepared.gray[win.y0 : win.y0 + digit.shape[0], win.x0 : win.x0 + digit.shape[1]]
    return StringPieces(win.x0, win.y0, h, pieces, ink)


def _string_slots(prepared: PreparedPage, region: FieldRegion, scorer: DigitScorer | None = None) -> list[DigitSlot]:
    sp = string_pieces(prepared, region)
    pieces = sp.pieces
    if scorer is not None:
        pieces = refine_string(pieces, sp.ink, scorer)
    slots = []
    for i, p in enumerate(pieces):
        box = (sp.x0 + p.x0, sp.y0 + p.y0, p.w, p.h)
        slots.append(
            DigitSlot(
                position=i,
                bbox=map_box(prepared.to_original, box, prepared.width, prepared.height),
                crop=p.crop if p.crop is not None else piece_crop(sp.ink, p),
                blank=False,
            )
        )
    return slots


def cut_field(
    prepared: PreparedPage,
    region: FieldRegion,
    name: str | None = None,
    scorer: DigitScorer | None | str = "default",
) -> FieldCut:
    """Digit slots of one field, boxes in page-as-submitted coordinates, crops in the MNIST form.

    `scorer` gives the digit model's second opinion on string splits ("default": the splitter's model
    by the process settings, `splitter_model`, when it loads; None: geometry alone).
    """
    if isinstance(scorer, str):
        scorer = default_scorer(splitter_model())
    ppm = (prepared.dpi or 150.0) / 25.4
    if region.kind == "boxes":
        pen = _field_pen(prepared, region.cells, _max_line(ppm))
        slots = [_cell_slot(prepared, c, i, ppm, pen) for i, c in enumerate(region.cells)]
    else:
        slots = _string_slots(prepared, region, scorer)
    return FieldCut(
        name=name or region.name or "",
        kind=region.kind,
        bbox=map_box(prepared.to_original, region.bbox, prepared.width, prepared.height),
        slots=tuple(slots),
        length=region.length,
        pattern=region.pattern,
    )
