"""Fields stage: find box ("comb") fields and string fields on a prepared page, without a template.

How: long horizontal and vertical strokes are extracted by morphological opening (box lines survive,
handwriting and printed text mostly do not); each connected piece of that line image is examined
with row/column coverage profiles:

- a *frame* has a top and a bottom line and walls spanning between them: several cells = a joined
  comb; one wide cell = a string field; one squarish cell = a square, and squares standing in a
  row are grouped into one box field;
- a *tick row* is a base line with evenly spaced short ticks rising from it (cells above the line).

Lines that are not fields (signature lines, rules), logos (filled), printed text and writing never
form such structures. Cell walls are regularized (equal widths), so a digit stroke that happens to
span a cell is not taken for a wall. Boxes printed so light that noise breaks their lines (faint
grey on a patterned cheque) get a second pass with wider gaps bridged, only on pages where a piece
of faint lines formed no frame. Fields come out ordered top-to-bottom, left-to-right.

The line image and the examination of its pieces (`_frame`, `_ticks`) have a C half (`_fields.c`),
used where it was built; the Python here (`_line_image_cv`, `_frame_py`, `_ticks_py`) is how they
work, and the reference `tests/test_fields_native.py` holds the C to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from digitreader.pipeline.prepare import cover, ink_levels, median
from digitreader.settings import Settings
from digitreader.types import BBox, FieldRegion, PreparedPage

try:  # the line image in C (_fields.c), built at install; without a C compiler, OpenCV's morphology
    from digitreader.pipeline import _fields
except ImportError:  # pragma: no cover - depends on the install
    _fields = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LINE_COVER = 0.8  # a row is a box line when this fraction of the structure's width is inked
WALL_COVER = 0.92  # a column is a cell wall when this fraction of the cell height is inked
#: The widest cell of a tick row (mm): ticks farther apart are a pattern's strokes crossing a line (a
#: cheque's wavy background across its "Pay" line, 37 mm). A real tick row whose digits hide two ticks
#: in three is found with cells 22 mm wide (read wrong, and flagged: better than missed).
TICK_PITCH_MAX_MM = 30.0
_ROW3 = np.ones((3, 1), np.uint8)
_COL3 = np.ones((1, 3), np.uint8)


@dataclass(frozen=True)
class _Geom:
    ppm: float  # prepared-page pixels per mm

    def mm(self, v: float) -> int:
        return max(1, int(round(v * self.ppm)))

    @cached_property
    def frame_mm(self) -> tuple[int, int, int, int, int, int]:
        """The lengths `_frame` holds a piece against, for its C half."""
        return self.mm(1.5), self.mm(4.5), self.mm(30), self.mm(3.0), self.mm(0.8), self.mm(2.0)

    @cached_property
    def ticks_mm(self) -> tuple[int, int, int, int, int, int]:
        """The lengths `_ticks` holds a piece against, for its C half (one unused)."""
        return self.mm(1.5), self.mm(1.3), self.mm(1.2), self.mm(4.0), self.mm(TICK_PITCH_MAX_MM), 0


def line_image(ink: np.ndarray, g: _Geom, bridge: int = 3) -> np.ndarray:
    """Horizontal and vertical line pieces of the ink (uint8 0/255); gaps under `bridge` pixels along
    a line are closed first.

    Done in C (`_fields.c`: the same pixels as `_line_image_cv`, by runs of ink) where it was built."""
    len_h, len_v = g.mm(3.0), g.mm(1.8)
    if _fields is None:
        return _line_image_cv(ink, bridge, len_h, len_v)
    mask = np.ascontiguousarray(ink, dtype=np.uint8)
    out = np.empty_like(mask)
    _fields.line_image(mask, out, mask.shape[0], mask.shape[1], bridge, len_h, len_v)
    return out


def _line_image_cv(ink: np.ndarray, bridge: int, len_h: int, len_v: int) -> np.ndarray:
    """`line_image` with OpenCV's morphology: a closing by `bridge` pixels, then an opening by `len_h`
    (`len_v`) pixels, along the rows (columns); the two joined."""
    bridge_h = cv2.morphologyEx(ink, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (bridge, 1)))
    horiz = cv2.morphologyEx(bridge_h, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (len_h, 1)))
    bridge_v = cv2.morphologyEx(ink, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (1, bridge)))
    vert = cv2.morphologyEx(bridge_v, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (1, len_v)))
    return cv2.bitwise_or(horiz, vert)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True as (start, end_exclusive)."""
    padded = np.zeros(flags.size + 2, bool)
    padded[1:-1] = flags
    edges = np.flatnonzero(padded[1:] != padded[:-1]).tolist()  # start, end, start, end, ...
    return list(zip(edges[0::2], edges[1::2], strict=True))


def _fit_grid(walls: list[tuple[int, int]], min_cell: float) -> list[tuple[int, int]]:
    """Walls of a comb as an even grid between its first and last wall.

    Candidates that do not sit on the grid (a digit stroke that spans a cell) are dropped; grid
    positions without a candidate (a faint or broken wall) are filled in. The number of cells is the
    one whose grid best explains the candidates.
    """
    if len(walls) <= 2:
        return walls
    centre = [(a + b) / 2 for a, b in walls]
    first, last = centre[0], centre[-1]
    interior = centre[1:-1]
    span = last - first
    thick = max(1, int(round(((walls[0][1] - walls[0][0]) + (walls[-1][1] - walls[-1][0])) / 2)))
    candidates = np.array(interior)
    best_match: list[int | None] = []
    best_n, best_score = 1, -0.3 * len(interior)
    for n in range(2, int(span / max(min_cell, 1.0)) + 1):
        pitch = span / n
        tol = 0.2 * pitch
        # The candidate nearest each grid position, and whether it is near enough.
        dist = np.abs(candidates[None, :] - (first + np.arange(1, n) * pitch)[:, None])
        nearest = dist.argmin(axis=1)
        near = dist[np.arange(n - 1), nearest] <= tol
        match: list[int | None] = [j if ok else None for j, ok in zip(nearest.tolist(), near.tolist(), strict=True)]
        matched = int(near.sum())
        missing = (n - 1) - matched
        score = matched - 1.0 * missing - 0.3 * (len(interior) - matched)
        if score > best_score:
            best_n, best_score, best_match = n, score, match
    if best_n == 1:
        return [walls[0], walls[-1]]
    out = [walls[0]]
    pitch = span / best_n
    for i, m in enumerate(best_match, start=1):
        if m is not None:
            out.append(walls[m + 1])
        else:
            c = first + i * pitch
            out.append((int(round(c - thick / 2)), int(round(c - thick / 2)) + thick))
    out.append(walls[-1])
    return out


@dataclass
class _Found:
    kind: str  # boxes | string | square
    bbox: BBox
    cells: list[BBox]


def _frame(sub: np.ndarray, x0: int, y0: int, g: _Geom) -> _Found | None:
    """A frame (closed box structure) in one connected piece of the line image (0/1), or None.

    Done in C (`_fields.frame`: the same steps and arithmetic as `_frame_py`) where it was built."""
    if _fields is None:
        return _frame_py(sub, x0, y0, g)
    return _piece_in_c(_fields.frame, sub, x0, y0, g.frame_mm)


def _piece_in_c(examine: Callable[..., Any], sub: np.ndarray, x0: int, y0: int, mm: tuple[int, ...]) -> _Found | None:
    """A piece examined by `_fields.frame` or `_fields.ticks`: (kind, bbox, cells) or None."""
    h, w = sub.shape
    found = examine(np.ascontiguousarray(sub, np.uint8), h, w, x0, y0, mm)
    return None if found is None else _Found(*found)


def _frame_py(sub: np.ndarray, x0: int, y0: int, g: _Geom) -> _Found | None:
    """`_frame` in Python: how it works, step by step (`_fields.c` follows it)."""
    h, w = sub.shape
    rows = cover(cv2.dilate(sub, _ROW3), 1)  # sub is 0/1
    hl = [r for r in _runs(rows >= LINE_COVER)]
    if len(hl) < 2:
        return None
    top, bottom = hl[0], hl[-1]
    # A digit stroke lying along a line thickens it: the line is as thick as the thinner of the two.
    t_line = min(top[1] - top[0], bottom[1] - bottom[0])
    if t_line > g.mm(1.5) + 2:
        return None  # a solid block (logo), not a frame
    top = (top[0], min(top[1], top[0] + t_line + 1))
    bottom = (max(bottom[0], bottom[1] - t_line - 1), bottom[1])
    inner_h = bottom[0] - top[1]
    if inner_h < g.mm(4.5) or inner_h > g.mm(30):
        return None
    if float((rows[top[1] : bottom[0]] >= 0.95).mean()) > 0.85:
        return None  # solid inside: a filled block
    band = sub[top[1] : bottom[0]]
    cols = cover(cv2.dilate(band, _COL3), 0)
    walls = _runs(cols >= WALL_COVER)
    walls = [wl for wl in walls if wl[1] - wl[0] <= g.mm(3.0) + 2]  # two walls of touching squares: wide
    # Two squares that nearly touch give two walls with a sliver of paper between: one separator,
    # whose outer edges bound the cells on either side.
    merged: list[tuple[int, int]] = []
    for wl in walls:
        if merged and wl[0] - merged[-1][1] < g.mm(0.8):
            merged[-1] = (merged[-1][0], wl[1])
        else:
            merged.append(wl)
    walls = merged
    if len(walls) < 2:
        return None
    walls = _fit_grid(walls, max(g.mm(3.0), 0.45 * inner_h))
    cells: list[BBox] = []
    for a, b in zip(walls[:-1], walls[1:], strict=True):
        cw = b[0] - a[1]
        if cw < g.mm(2.0):
            continue
        cells.append((x0 + a[1], y0 + top[1], cw, inner_h))
    if not cells:
        return None
    fx, fy = x0 + walls[0][0], y0 + top[0]
    bbox = (fx, fy, x0 + walls[-1][1] - fx, y0 + bottom[1] - fy)
    if len(cells) == 1:
        c = cells[0]
        kind = "string" if c[2] > 1.8 * c[3] else "square"
        return _Found(kind, bbox, cells)
    widths = np.array([c[2] for c in cells], float)
    if widths.max() > 1.6 * median(widths):
        return None  # irregular: a table, not a comb
    return _Found("boxes", bbox, cells)


def _ticks(sub: np.ndarray, x0: int, y0: int, g: _Geom) -> _Found | None:
    """A tick row (base line with short ticks rising from it) in one piece of the line image (0/1),
    or None. Done in C (`_fields.ticks`: the same steps and arithmetic as `_ticks_py`) where it was
    built."""
    if _fields is None:
        return _ticks_py(sub, x0, y0, g)
    return _piece_in_c(_fields.ticks, sub, x0, y0, g.ticks_mm)


def _ticks_py(sub: np.ndarray, x0: int, y0: int, g: _Geom) -> _Found | None:
    """`_ticks` in Python: how it works, step by step (`_fields.c` follows it)."""
    h, w = sub.shape
    rows = cover(cv2.dilate(sub, _ROW3), 1)  # sub is 0/1
    hl = _runs(rows >= LINE_COVER)
    if not hl:
        return None
    base = hl[-1]
    if base[1] - base[0] > g.mm(1.5) + 2:
        return None
    probe = g.mm(1.3)
    if base[0] < probe:
        return None
    band = sub[base[0] - probe : base[0]]
    cols = cover(band, 0)
    ticks = [t for t in _runs(cols >= 0.9) if t[1] - t[0] <= g.mm(1.2)]
    if len(ticks) < 3:
        return None
    raw = set(ticks)
    ticks = _fit_grid(ticks, g.mm(4.0))
    # Three cells or more, every tick of the grid really there (none filled in) and no more strokes
    # off the grid than cells: a comb, even with digits written down into the ticks' band (printed
    # letters seldom line up so: their strokes fit a grid of two cells with several left over).
    whole = len(ticks) >= 4 and all(t in raw for t in ticks) and len(raw) - len(ticks) <= len(ticks) - 1
    centres = np.array([(a + b) / 2 for a, b in ticks])
    gaps = np.diff(centres)
    if len(gaps) < 2:
        return None
    pitch = median(gaps)
    if gaps.max() > 1.4 * pitch or gaps.min() < 0.7 * pitch:
        return None
    if pitch < g.mm(4.0):
        return None  # letters of printed text standing on their baseline
    if pitch > g.mm(TICK_PITCH_MAX_MM):
        return None  # a cheque's background pattern crossing its "Pay" line: no digit's cell is so wide
    between = np.ones(w, bool)
    for a, b in ticks:
        between[max(0, a - 2) : b + 2] = False
    between[: ticks[0][0]] = False
    between[ticks[-1][1] :] = False
    if between.any() and (np.count_nonzero(band, axis=0) > 0)[between].mean() > (0.6 if whole else 0.35):
        return None  # the space between ticks is full: text or a drawing, not a tick row
    ticks = _hidden_end_ticks(sub[base[0] : base[1]], ticks, pitch)
    cell_h = int(round(1.25 * pitch))
    top = y0 + base[0] - cell_h
    cells = [(x0 + a[1], top, b[0] - a[1], cell_h) for a, b in zip(ticks[:-1], ticks[1:], strict=True)]
    bbox = (x0 + ticks[0][0], top, ticks[-1][1] - ticks[0][0], base[1] - base[0] + cell_h)
    return _Found("ticks", bbox, cells)


def _hidden_end_ticks(base: np.ndarray, ticks: list[tuple[int, int]], pitch: float) -> list[tuple[int, int]]:
    """The ticks of a tick row with those at its ends that a digit hides added back: where the base
    line (`base`: its rows of the piece) runs on beyond the first or last tick found by 0.8 of a
    pitch or more, a digit written over the end tick made it too wide to be taken for a tick; the
    grid goes on to the line's end, a pitch at a time."""
    line = _runs(base.max(axis=0) > 0)
    left = next((a for a, b in line if a <= ticks[0][0] < b), ticks[0][0])
    right = next((b for a, b in line if a <= ticks[-1][1] - 1 < b), ticks[-1][1])
    t = ticks[0][1] - ticks[0][0]
    starts = [
        max(0, int(round(ticks[0][0] - k * pitch))) for k in range(int((ticks[0][0] - left) / pitch + 0.2), 0, -1)
    ]
    t_last = ticks[-1][1] - ticks[-1][0]
    ends = [
        min(base.shape[1], int(round(ticks[-1][1] + k * pitch)))
        for k in range(1, int((right - ticks[-1][1]) / pitch + 0.2) + 1)
    ]
    return [(a, a + t) for a in starts] + ticks + [(b - t_last, b) for b in ends]


def _group_cells(parts: list[_Found]) -> list[_Found]:
    """Box structures standing in a row with cell-sized gaps become one box field.

    Separate squares are found one by one (or a few at a time where they nearly touch); joined into
    one field here. A lone square stays out: one box on its own is not a digit field.
    """
    parts = sorted(parts, key=lambda s: (s.bbox[0], s.bbox[1]))
    used = [False] * len(parts)
    out: list[_Found] = []
    for i, s in enumerate(parts):
        if used[i]:
            continue
        row = [s]
        used[i] = True
        extended = True
        while extended:
            extended = False
            last = row[-1]
            lx, ly, lw, lh = last.bbox
            cell_w = median([c[2] for c in last.cells])
            for j, t in enumerate(parts):
                if used[j]:
                    continue
                tx, ty, tw, th = t.bbox
                same_row = abs((ty + th / 2) - (ly + lh / 2)) < 0.3 * lh and abs(th - lh) < 0.25 * lh
                gap = tx - (lx + lw)
                if same_row and -3 <= gap < 0.9 * cell_w:
                    row.append(t)
                    used[j] = True
                    extended = True
                    break
        cells = [c for r in row for c in r.cells]
        if len(cells) < 2:
            continue
        x0 = row[0].bbox[0]
        y0 = min(r.bbox[1] for r in row)
        x1 = max(r.bbox[0] + r.bbox[2] for r in row)
        y1 = max(r.bbox[1] + r.bbox[3] for r in row)
        out.append(_Found("boxes", (x0, y0, x1 - x0, y1 - y0), cells))
    return out


def order_fields(regions: list[FieldRegion]) -> list[FieldRegion]:
    """Top-to-bottom, left-to-right: fields whose vertical centres are close form one row."""
    items = sorted(regions, key=lambda r: r.bbox[1] + r.bbox[3] / 2)
    rows: list[list[FieldRegion]] = []
    for r in items:
        cy = r.bbox[1] + r.bbox[3] / 2
        if rows:
            last = rows[-1]
            ref = np.mean([q.bbox[1] + q.bbox[3] / 2 for q in last])
            if abs(cy - ref) < 0.5 * min(q.bbox[3] for q in [*last, r]):
                last.append(r)
                continue
        rows.append([r])
    return [r for row in rows for r in sorted(row, key=lambda q: q.bbox[0])]


def _overlap(a: BBox, b: BBox) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _structures(lines: np.ndarray, g: _Geom, ticks: bool = True) -> tuple[list[_Found], list[BBox]]:
    """Frames, tick rows (unless `ticks` is False) and rows of squares in a line image; and the boxes
    of the pieces that looked like a frame but were not one (text, a broken box)."""
    # Pieces of the line image by their outer contours (several times cheaper than labelling the
    # page): each piece is its contour filled, so strokes inside a frame come with it while a
    # digit written above a tick row, touching nothing, stays out.
    contours, _ = cv2.findContours(lines, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    found: list[_Found] = []
    squares: list[_Found] = []
    rejected: list[BBox] = []
    # The sizes every piece is held against, in pixels (a page has hundreds of pieces, most of them
    # letters and strokes left out at the first test).
    min_w, max_h, cell_h, long_w = g.mm(2.5), g.mm(40), g.mm(4.5), g.mm(10)
    min_area, cell_w = g.mm(6), g.mm(3.5)
    for cnt in contours:
        x, y, w, h = cv2.boundingRect(cnt)
        if w < min_w or h > max_h or (h < cell_h and w < long_w):
            continue
        inside = np.zeros((h, w), np.uint8)
        cv2.drawContours(inside, [cnt], -1, 1, thickness=-1, offset=(-x, -y))
        sub = cv2.bitwise_and(inside, lines[y : y + h, x : x + w])  # 0/1: 1 & 255 = 1
        area = int(cv2.countNonZero(sub))
        if area < min_area:
            continue
        # Cheap tests first: a frame is at least a cell tall and its outline alone has about
        # (w + h) * 2 pixels; a tick row is long and mostly line.
        frame_like = h >= cell_h and w >= cell_w and area >= 1.5 * (w + h)
        ticks_like = ticks and w >= long_w and area >= 0.8 * w
        if not (frame_like or ticks_like):
            continue
        fd = _frame(sub, x, y, g) if frame_like else None
        if fd is None and frame_like:
            rejected.append((x, y, w, h))
        if fd is None and ticks_like:
            fd = _ticks(sub, x, y, g)
        if fd is None:
            continue
        if fd.kind in ("square", "boxes"):
            squares.append(fd)
        else:
            found.append(fd)
    return found + _group_cells(squares), rejected


#: A faint pixel (lighter than the page's ink, darker than its weak level) counts for the line image
#: only on a thin line: at least this share of the paper-to-weak-level contrast darker than the page
#: closed by a 3 x 3 square (a line 1-2 pixels wide at the working resolution), or by a 5 x 5 one
#: and then by `FAINT_EDGE` of its own darkness (a line up to 4 pixels wide, with sharp edges: a box
#: printed light). Not inside a soft, wide shadow: the back of the sheet showing through.
FAINT_SHARP = 0.5
FAINT_EDGE = 0.7
_SQUARE3 = np.ones((3, 3), np.uint8)
_SQUARE5 = np.ones((5, 5), np.uint8)


#: Up to this many faint pixels outside the ink (a clean page has some dozens) are tested one by one
#: (`_blackhat_at`: 0.1-0.3 ms for 50) rather than by closing the whole page (5-6 ms on one core at
#: 150 dpi; one by one costs as much at about 500).
FAINT_LOCAL = 512


def _blackhat_at(gray: np.ndarray, ys: np.ndarray, xs: np.ndarray, k: int) -> np.ndarray:
    """`cv2.morphologyEx(gray, MORPH_BLACKHAT, ones((k, k)))` at the points (ys, xs) only, int32: the
    same values, from each point's (2k - 1)-square patch (outside the page counts as nothing, as
    OpenCV's default border makes it)."""
    r = k // 2
    h, w = gray.shape
    off = np.arange(-2 * r, 2 * r + 1)
    rows, cols = ys[:, None] + off, xs[:, None] + off
    patch = gray[np.clip(rows, 0, h - 1)[:, :, None], np.clip(cols, 0, w - 1)[:, None, :]]
    outside = ~(((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
    patch[outside] = 0  # never the largest of a dilation
    dilated = sliding_window_view(patch, (k, k), axis=(1, 2)).max(axis=(-2, -1))  # at p + (-r..r)
    inner = ~outside[:, r : 3 * r + 1, r : 3 * r + 1]
    closed = np.where(inner, dilated, 255).min(axis=(1, 2))  # 255: never the smallest of an erosion
    return closed.astype(np.int32) - gray[ys, xs].astype(np.int32)


def _sharp_edged(depth: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """Whether a 5 x 5 closing took back `FAINT_EDGE` of each pixel's own darkness (`depth`, int32, of
    pixels `grey`): the edge of a printed line, not of a shadow. In whole tenths, as both paths of
    `faint_line_mask` test it."""
    own = 255 - grey.astype(np.int32)
    return depth * 10 >= np.rint(own * FAINT_EDGE * 10).astype(np.int32)


def faint_line_mask(gray: np.ndarray, weak: float, ink: np.ndarray | None = None) -> np.ndarray:
    """The page's faint pixels (under `weak`) that lie on a thin line (`FAINT_SHARP`, `FAINT_EDGE`),
    uint8 0/255; those already in `ink` (the page's ink mask, when given) are left out, as the caller
    has them.

    Before, every pixel under the weak level counted: where the back of a sheet showed through at
    20-25 % of its darkness, its boxes' soft shadows, 20-40 levels under paper, joined the front's
    boxes into pieces that formed no field (a page of 27 fields lost 10), and 42-79 of 216 fields were
    read wrong (20-35 now)."""
    _, faint = cv2.threshold(gray, weak, 255, cv2.THRESH_BINARY_INV)
    if ink is not None:
        faint = cv2.bitwise_and(faint, cv2.bitwise_not(ink))
    level = int(max(1.0, round(FAINT_SHARP * (255.0 - weak))))
    points = cv2.findNonZero(faint)
    if points is None:
        return faint
    if len(points) <= FAINT_LOCAL:
        points = points.reshape(-1, 2)
        xs, ys = points[:, 0], points[:, 1]
        thin = _blackhat_at(gray, ys, xs, 3) >= level
        out = np.zeros_like(faint)
        out[ys[thin], xs[thin]] = 255
        ys, xs = ys[~thin], xs[~thin]
        if len(ys):
            depth = _blackhat_at(gray, ys, xs, 5)
            sharp = (depth >= level) & _sharp_edged(depth, gray[ys, xs])
            out[ys[sharp], xs[sharp]] = 255
        return out
    depth3 = cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, _SQUARE3)
    _, thin_mask = cv2.threshold(depth3, level - 1, 255, cv2.THRESH_BINARY)
    keep = cv2.bitwise_and(faint, thin_mask)
    rest = cv2.bitwise_and(faint, cv2.bitwise_not(thin_mask))
    # The faint pixels on a line 3-4 pixels wide: kept where a 5 x 5 closing takes back nearly all of
    # their darkness (a printed line's edge is sharp; a shadow's is not).
    depth5 = cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, _SQUARE5)
    _, wide = cv2.threshold(depth5, level - 1, 255, cv2.THRESH_BINARY)
    found = cv2.findNonZero(cv2.bitwise_and(rest, wide))
    if found is not None:
        found = found.reshape(-1, 2)
        xs, ys = found[:, 0], found[:, 1]
        sharp = _sharp_edged(depth5[ys, xs].astype(np.int32), gray[ys, xs])
        keep[ys[sharp], xs[sharp]] = 255
    return keep


def find_fields(prepared: PreparedPage, settings: Settings | None = None) -> list[FieldRegion]:
    """Box and string fields on a prepared page, ordered top-to-bottom, left-to-right (unnamed)."""
    ppm = (prepared.dpi or 150.0) / 25.4
    # Lines are found in the ink and the faint thin lines: a faint box line is long and straight,
    # noise is not, so it survives the opening even where hysteresis dropped it from the ink.
    strong, weak = prepared.levels or ink_levels(prepared.gray)
    mask = cv2.bitwise_or(prepared.ink, faint_line_mask(prepared.gray, weak, prepared.ink))
    g = _Geom(ppm=ppm)
    lines = line_image(mask, g)
    found, rejected = _structures(lines, g)

    def faint_lines(box: BBox, img: np.ndarray) -> bool:
        """Whether the lines along the box's outline are faint (paler than strong ink); the digits
        inside, which bold strokes bring into the line image, are not measured."""
        x, y, w, h = box
        on = img[y : y + h, x : x + w] > 0
        edge = np.zeros_like(on)
        k = max(2, g.mm(0.5))
        edge[:k], edge[-k:], edge[:, :k], edge[:, -k:] = True, True, True, True
        on_line = prepared.gray[y : y + h, x : x + w][on & edge]
        return bool(on_line.size) and float(np.median(on_line)) > strong

    if any(faint_lines(b, lines) for b in rejected):
        # Pieces of faint lines that form no frame: light grey boxes (on a patterned cheque) whose
        # lines noise broke. Once more with gaps up to 1.5 mm bridged, keeping only new frames
        # drawn in faint lines (a bold printed word bridged into a "box" is dark) where no field
        # was found. Few pages have such pieces, so the second pass costs little on average.
        wide = line_image(mask, g, bridge=g.mm(1.5))
        taken = [fd.bbox for fd in found]
        for fd in _structures(wide, g, ticks=False)[0]:
            if faint_lines(fd.bbox, wide) and not any(_overlap(fd.bbox, b) for b in taken):
                found.append(fd)

    regions = []
    for fd in found:
        kind = "string" if fd.kind == "string" else "boxes"
        cells = tuple(tuple(int(v) for v in c) for c in fd.cells)
        regions.append(FieldRegion(kind=kind, bbox=tuple(int(v) for v in fd.bbox), cells=cells))  # type: ignore[arg-type]
    ordered = order_fields(regions)
    log.debug("page %d: %d fields", prepared.number, len(ordered))
    return ordered
