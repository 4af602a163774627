"""Split stage: a string field's ink (a cheque amount, a date) -> one piece per digit.

`split_string` splits by geometry alone: connected pieces, specks and hairlines of the border at the
interior's edge dropped, pieces of one broken digit merged (overlapping columns), separators
(. , - / =) and trailing strokes dropped (small against the string's digit height, or a thin slanted
line), and touching digits split at the thinnest column near where an even split would cut. Where
that geometry is unsure, the digit model gives a second opinion (`refine_string`): merge two
neighbours or split a wide piece when the model reads the result as digits more surely; a wide piece
it still reads unsurely is tried at more columns (`_resplit`). The model is the splitter's own,
shipped beside the reader and trained to doubt squeezed pairs, or by DIGITREADER_SPLITTER the
reading model or another file (`splitter_model`); it is loaded once per process (`default_scorer`);
without it, geometry alone.

The cut stage (`cut.py`) cuts the string field's window out of the page, takes its box lines out,
and hands the ink to this module; each piece's crop is made by `piece_crop`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from digitreader.pipeline.normalize import label_pieces, normalize_ink
from digitreader.pipeline.prepare import median
from digitreader.settings import Settings, get_settings

try:  # a piece's pen width in C (_split.c), built at install; without it, numpy's
    from digitreader.pipeline import _split
except ImportError:  # pragma: no cover - depends on the install
    _split = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


@dataclass
class Piece:
    x0: int
    y0: int
    x1: int
    y1: int
    mask: np.ndarray  # bool, window-sized
    crop: np.ndarray | None = None  # its MNIST-form crop, once made
    score: float | None = None  # the splitter model's log-probability that it is one digit, once asked
    joined_right: bool = False  # cut from the piece to its right (they were one connected piece)

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def h(self) -> int:
        return self.y1 - self.y0


def merge_pieces(a: Piece, b: Piece) -> Piece:
    right = a if a.x1 > b.x1 else b
    return Piece(
        min(a.x0, b.x0), min(a.y0, b.y0), max(a.x1, b.x1), max(a.y1, b.y1), a.mask | b.mask,
        joined_right=right.joined_right,
    )  # fmt: skip


#: A '/' leans further than this (degrees from the horizontal; 90 = upright) unless it is one of a
#: date's two separators (`_date_slashes`): a '1' may lean, but seldom this far.
SLASH_ANGLE = 57.0
#: A date's two separators, alike and at a date's places, may stand this upright.
DATE_SLASH_ANGLE = 68.0


def _slash_angle(p: Piece) -> float | None:
    """The lean (degrees from the horizontal) of a thin straight rising stroke, or None for any other piece."""
    ys, xs = np.nonzero(p.mask)
    if ys.size < 5:
        return None
    cov = np.cov(np.stack([xs.astype(float), ys.astype(float)]))
    evals, evecs = np.linalg.eigh(cov)
    if evals[1] <= 0 or evals[0] / evals[1] > 0.06:
        return None
    vx, vy = evecs[:, 1]
    if vx * vy >= 0:  # x up while y down: '/'
        return None
    return math.degrees(math.atan2(abs(vy), abs(vx)))


def _slash_leans(pieces: list[Piece], med_h: float) -> list[tuple[int, float]]:
    """(index, lean) of each piece that could be a '/': between two others, shorter than the digits
    (0.92 of their height), a thin straight rising stroke leaning further than `DATE_SLASH_ANGLE`.
    Measured once for the lone-slash test (`SLASH_ANGLE`) and `_date_slashes`."""
    leans = []
    for i, p in enumerate(pieces[1:-1], start=1):
        if p.h <= 0.92 * med_h:
            angle = _slash_angle(p)
            if angle is not None and angle < DATE_SLASH_ANGLE:
                leans.append((i, angle))
    return leans


def _date_slashes(pieces: list[Piece], med_h: float, leans: list[tuple[int, float]] | None = None) -> set[int]:
    """The two separators of a date written with slashes ('26/07/1982', '1982/07/26'), by index.

    Slashes are often written more upright than a lone '/' may be (`SLASH_ANGLE`), as steep as a
    leaning '1'. Two alike strokes (the same lean within 4 degrees), shorter than the digits, that cut
    the string into a date's groups (day and month of one or two pieces and a year at least two digits
    wide, in either order) are taken as a date's separators; one such stroke alone stays a digit.
    `leans`: `_slash_leans` of the pieces, when already measured.
    """
    if leans is None:
        leans = _slash_leans(pieces, med_h)
    if len(leans) != 2 or abs(leans[0][1] - leans[1][1]) > 4.0:
        return set()
    (i, _), (j, _) = leans
    first, mid, last = pieces[:i], pieces[i + 1 : j], pieces[j + 1 :]

    def short(g: list[Piece]) -> bool:  # a day or a month: one or two digits
        return 1 <= len(g) <= 2

    def year(g: list[Piece]) -> bool:  # two or four digits: wider than one digit
        return 1 <= len(g) <= 4 and g[-1].x1 - g[0].x0 >= 1.2 * med_h

    if short(mid) and ((short(first) and year(last)) or (year(first) and short(last))):
        return {i, j}
    return set()


def _drop_edge_remnants(pieces: list[Piece], inner: tuple[int, int, int, int]) -> list[Piece]:
    """Pieces without what line removal left of the field's border: hairlines at its edge.

    A slanted or anti-aliased border spreads over two columns, neither covered enough to be taken
    as the line, so a one- or two-pixel sliver (or a corner) of it survives along the interior's
    edge and would be read as a '1'. Such a sliver touches an edge of the interior and is far
    thinner than the pen strokes of the field's digits (under 0.4 of their median pen width, about
    2 pixels against 8-13 at 150 dpi); a digit written against the border keeps its pen's width,
    a thin '1' beside a bold '9' included (`_stroke_width` measures strokes, not ink per column).
    """
    x0, y0, x1, y1 = inner
    field_h = max(1, y1 - y0)
    thick = [_stroke_width(p) for p in pieces]
    strokes = [t for p, t in zip(pieces, thick, strict=True) if p.h >= 0.5 * field_h]
    if not strokes:
        return pieces
    pen = median(strokes)
    margin = max(2, int(0.06 * field_h))

    def remnant(p: Piece, t: float) -> bool:
        at_edge = p.x0 <= x0 + margin or p.x1 >= x1 - margin or p.y0 < y0 or p.y1 > y1
        return at_edge and t < 0.4 * pen

    return [p for p, t in zip(pieces, thick, strict=True) if not remnant(p, t)]


def split_string(mask: np.ndarray, inner: tuple[int, int, int, int]) -> list[Piece]:
    """Digits of a string field's ink (lines already removed), left to right."""
    x0, y0, x1, y1 = inner
    field_h = max(1, y1 - y0)
    n, labels, stats = label_pieces(mask.astype(np.uint8))
    pieces: list[Piece] = []
    speck = max(3, int((0.07 * field_h) ** 2))
    for i, (x, y, w, h, area) in enumerate(stats.tolist()):
        if i == 0 or area < speck or max(w, h) < 0.12 * field_h:
            continue
        cx, cy = x + w / 2, y + h / 2
        if not (x0 <= cx <= x1 and y0 <= cy <= y1):
            continue  # mostly outside the field: a neighbour's ink or a stray line
        if w > 3.5 * h and h < 0.25 * field_h:
            continue  # a line remnant
        pieces.append(Piece(x, y, x + w, y + h, labels == i))
    pieces = _drop_edge_remnants(pieces, inner)
    if not pieces:
        return []
    pieces.sort(key=lambda p: p.x0)
    heights = np.array([p.h for p in pieces], float)
    tall = heights[heights >= 0.4 * field_h]
    med_h = median(tall) if tall.size else float(heights.max())
    # Merge a small piece into the digit whose columns it shares (a broken digit, a 5's detached
    # bar, the two bars of '='); two full-height pieces are two digits, however close.
    merged: list[Piece] = []
    for p in pieces:
        if merged:
            q = merged[-1]
            overlap = min(q.x1, p.x1) - max(q.x0, p.x0)
            small = min(p.h, q.h) < 0.6 * med_h
            narrow = p if p.w < q.w else q
            # One piece standing above the other (a 5's detached top stroke over its bowl), sharing
            # columns, and together no wider than a digit.
            upper, lower = (p, q) if p.y0 + p.h / 2 < q.y0 + q.h / 2 else (q, p)
            stacked = (
                overlap > 0
                and min(p.h, q.h) < 0.8 * med_h
                and upper.y1 <= lower.y0 + 0.5 * lower.h
                and max(q.x1, p.x1) - min(q.x0, p.x0) <= 0.95 * max(med_h, q.h, p.h)
            )
            if (small and overlap >= 0.3 * narrow.w) or overlap >= 0.85 * narrow.w or stacked:
                merged[-1] = merge_pieces(q, p)
                continue
        merged.append(p)
    heights = np.array([p.h for p in merged], float)
    tall = heights[heights >= 0.4 * field_h]
    med_h = median(tall) if tall.size else float(heights.max())
    tall_pieces = [p for p in merged if p.h >= 0.5 * med_h]
    # A '/' stands between digits (dates) and is shorter than them; a slanted '1' may stand anywhere.
    leans = _slash_leans(tall_pieces, med_h)
    slashes = {i for i, angle in leans if angle < SLASH_ANGLE} | _date_slashes(tall_pieces, med_h, leans)
    digits = [p for i, p in enumerate(tall_pieces) if i not in slashes]
    single = [p.w for p in digits if 0.3 * p.h <= p.w <= 1.1 * p.h]
    est_w = max(median(single) if len(single) >= 2 else 0.0, 0.7 * med_h)
    out: list[Piece] = []
    for p in digits:
        k = _touching_count(p, est_w)
        parts = _split_touching(p, k) if k >= 2 else [p]
        # A split is right only when every part is digit-sized (not a 5's bar or a 2's tail).
        if k >= 2 and not (
            all(q.h >= 0.6 * med_h and q.w >= 0.25 * med_h for q in parts)
            and not _hanging(parts, med_h)
            and (p.w >= 2.0 * est_w or _thin_necks(p, parts))
        ):
            parts = [p]
        out.extend(parts)
    return out


def _stroke_width(p: Piece) -> float:
    """The pen's width: the median length of the piece's horizontal ink runs, or of its vertical ones
    where that is less (a horizontal stroke's runs are long). In C (`_split.c`: the same value) where
    it was built."""
    m = p.mask
    h, w = m.shape
    if (
        _split is not None
        and m.dtype == np.bool_
        and m.flags.c_contiguous
        and 0 <= p.x0 < p.x1 <= w
        and 0 <= p.y0 < p.y1 <= h
    ):
        return _split.stroke_width(m.view(np.uint8), w, p.x0, p.y0, p.x1, p.y1)
    return _stroke_width_py(p)


def _stroke_width_py(p: Piece) -> float:
    """`_stroke_width` with numpy."""
    sub = p.mask[p.y0 : p.y1, p.x0 : p.x1]
    widths = []
    for a in (sub, sub.T):
        # Rows laid end to end with a paper column on each side: one flat diff finds every run.
        padded = np.zeros((a.shape[0], a.shape[1] + 2), np.int8)
        padded[:, 1:-1] = a
        d = np.diff(padded.ravel())
        runs = np.flatnonzero(d == -1) - np.flatnonzero(d == 1)
        if runs.size:
            widths.append(median(runs))
    return min(widths) if widths else 1.0


def _hole_spans(p: Piece) -> list[tuple[int, int]]:
    """Column ranges (piece coordinates) of the loops of a piece (the holes of a 0, 6, 8, 9)."""
    sub = p.mask[p.y0 : p.y1, p.x0 : p.x1].astype(np.uint8)
    contours, hierarchy = cv2.findContours(sub, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    spans = []
    if hierarchy is not None:
        for cnt, h in zip(contours, hierarchy[0], strict=True):
            if h[3] >= 0 and cv2.contourArea(cnt) >= 4:  # a hole: a contour with a parent
                x, _, w, _ = cv2.boundingRect(cnt)
                spans.append((x, x + w))
    return spans


def _thin_necks(p: Piece, parts: list[Piece]) -> bool:
    """Touching digits meet at a neck about one pen stroke thick; a cut through a digit is thicker.

    A cut through a loop (the hole of a wide 0) is never a neck between two digits.
    """
    prof = p.mask[:, p.x0 : p.x1].sum(axis=0)
    pen = _stroke_width(p)
    holes = _hole_spans(p)
    for q in parts[1:]:
        c = q.x0 - p.x0
        lo, hi = max(0, c - 1), min(prof.size, c + 2)
        if hi <= lo or float(prof[lo:hi].min()) > 1.8 * pen:
            return False
        if any(a + 1 < c < b - 1 for a, b in holes):
            return False
    return True


def _touching_count(p: Piece, est_w: float) -> int:
    """How many digits a piece holds: 1 unless it is much wider than a digit and has a thin neck."""
    if p.w < 1.35 * est_w or p.w <= p.h:
        return 1
    return max(2, int(round(p.w / est_w)))


def _split_touching(p: Piece, k: int) -> list[Piece]:
    """Split a piece holding k touching digits at the thinnest columns near the even cuts."""
    prof = _ink_profile(p)
    cuts = [0]
    for i in range(1, k):
        e = int(round(i * p.w / k))
        r = max(2, int(0.3 * p.w / k))
        lo, hi = max(cuts[-1] + 2, e - r), min(p.w - 2, e + r)
        cuts.append(lo + int(np.argmin(prof[lo:hi])) if hi > lo else e)
    cuts.append(p.w)
    out = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        m = np.zeros_like(p.mask)
        m[:, p.x0 + a : p.x0 + b] = p.mask[:, p.x0 + a : p.x0 + b]
        ys, xs = np.nonzero(m)
        if ys.size == 0:
            continue
        out.append(Piece(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, m, joined_right=True))
    if out:
        out[-1].joined_right = p.joined_right
    return out


#: Scores crops: (N, 28, 28) uint8 MNIST-form crops -> (N,) log-probability that each is one digit.
DigitScorer = Callable[[np.ndarray], np.ndarray]

_scorer_cache: dict[str, DigitScorer | None] = {}


#: The string splitter's own model (`training.ship --splitter`).
SPLITTER_MODEL = Path(__file__).resolve().parents[1] / "models" / "splitter" / "model.onnx"


def splitter_model(settings: Settings | None = None, reader: str | Path | None = None) -> str | Path | None:
    """The model whose second opinion splits string fields (`refine_string`), by `settings.splitter`
    (DIGITREADER_SPLITTER): "shipped" (default), the splitter's own model, trained like the reader
    plus touching pairs as "not a digit" so that it doubts a squeezed pair the reader reads as one
    digit (the reading model `reader` when that file is missing); "reader", the model reading the
    digits (`reader`; None: DIGITREADER_MODEL_PATH, else the shipped reader); or an ONNX file's path.
    """
    choice = (settings.splitter if settings is not None else get_settings().splitter).strip()
    if choice == "reader":
        return reader
    if choice == "shipped":
        return SPLITTER_MODEL if SPLITTER_MODEL.exists() else reader
    return Path(choice).expanduser()


def check_splitter(settings: Settings) -> None:
    """Raise ModelError (exit 5) when DIGITREADER_SPLITTER names a file that is not there: a batch would
    read every string field without the splitter's second opinion, with only a warning."""
    choice = settings.splitter.strip()
    if choice in ("reader", "shipped"):
        return
    if not Path(choice).expanduser().is_file():
        from digitreader.errors import ModelError

        raise ModelError(
            f"DIGITREADER_SPLITTER={choice}: no such model file",
            code="missing",
            hint="set it to shipped (the default), reader, or an ONNX model file's path",
        )


def default_scorer(model_path: str | Path | None = None) -> DigitScorer | None:
    """A digit model as a `DigitScorer`, loaded once per process and path, or None when it cannot
    load. `model_path`: the model (`splitter_model` chooses the splitter's); None: DIGITREADER_MODEL_PATH,
    else the shipped reader."""
    key = str(model_path) if model_path is not None else "default"
    if key not in _scorer_cache:
        try:
            from digitreader.pipeline.recognize import Predictor

            predictor = Predictor.load(model_path)
            temperature = float(predictor.info.temperature)

            def score(crops: np.ndarray) -> np.ndarray:
                z = predictor.logits(crops).astype(np.float64) / temperature
                z -= z.max(axis=1, keepdims=True)
                logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
                return np.asarray(logp[:, :10].max(axis=1))

            _scorer_cache[key] = score
        except Exception as exc:  # no model, no onnxruntime: segmentation still works on geometry
            if model_path is not None:
                log.warning("string splitting with the default model: %s cannot load (%s)", model_path, exc)
                _scorer_cache[key] = default_scorer()
            else:
                log.warning("string splitting without the model (%s)", exc)
                _scorer_cache[key] = None
    return _scorer_cache[key]


def _ink_profile(p: Piece) -> np.ndarray:
    """Ink per column of a piece (piece coordinates), smoothed over 3 columns."""
    prof = p.mask[:, p.x0 : p.x1].sum(axis=0).astype(float)
    return np.convolve(prof, np.ones(3) / 3, "same")


def _mid_cuts(p: Piece, med_h: float) -> list[int]:
    """Candidate columns (piece coordinates) to split a piece holding two touching digits.

    The lowest-ink columns of its middle part (20-80 % of its width), not through a loop.
    """
    return _lowest_cuts(p, med_h, _ink_profile(p), _hole_spans(p))


def _all_cuts(p: Piece, med_h: float) -> list[int]:
    """`_mid_cuts`, `_more_cuts` and `_loop_cuts`, the piece's profile and loops measured once."""
    prof, holes = _ink_profile(p), _hole_spans(p)
    first = _lowest_cuts(p, med_h, prof, holes)
    more = _more_cuts(p, med_h, prof, holes, first)
    return first + more + _loop_cuts(p, med_h, prof, holes, first + more)


def _lowest_cuts(p: Piece, med_h: float, prof: np.ndarray, holes: list[tuple[int, int]]) -> list[int]:
    lo, hi = max(2, int(0.2 * p.w)), min(p.w - 2, int(math.ceil(0.8 * p.w)))
    if hi <= lo:
        return []
    order = lo + np.argsort(prof[lo:hi], kind="stable")
    return _spaced(order.tolist(), lo, hi, holes, 0.15 * med_h, [], 2)


def _spaced(
    candidates: list[int], lo: int, hi: int, holes: list[tuple[int, int]], gap: float, taken: list[int], most: int
) -> list[int]:
    """The first `most` of `candidates` (columns, best first) in [lo, hi), outside every loop and at
    least `gap` from each other and from the columns `taken` already."""
    cuts: list[int] = []
    for c in candidates:
        if not lo <= c < hi or any(a + 1 < c < b - 1 for a, b in holes):
            continue
        if any(abs(c - d) < gap for d in taken + cuts):
            continue
        cuts.append(c)
        if len(cuts) == most:
            break
    return cuts


def _more_cuts(p: Piece, med_h: float, prof: np.ndarray, holes: list[tuple[int, int]], taken: list[int]) -> list[int]:
    """Further candidate columns for a piece the first cuts did not split well: every local minimum
    of its ink profile (15-85 % of its width), and a pen width beside each loop (a digit touching a
    0, 6, 8 or 9 meets it at the loop's outer stroke, which is rarely the lowest-ink column)."""
    lo, hi = max(2, int(0.15 * p.w)), min(p.w - 2, int(math.ceil(0.85 * p.w)))
    if hi <= lo:
        return []
    pen = _stroke_width(p)
    found = [c for c in range(lo, hi) if prof[c] <= prof[c - 1] and prof[c] < prof[c + 1]]
    for a, b in holes:
        found += [int(a - pen), int(b + pen)]
    found.sort(key=lambda c: prof[c] if 0 <= c < p.w else 0.0)
    return _spaced(found, lo, hi, holes, 0.1 * med_h, taken, 4)


def _loop_cuts(p: Piece, med_h: float, prof: np.ndarray, holes: list[tuple[int, int]], taken: list[int]) -> list[int]:
    """A column through each loop, where it has least ink (15-85 % of the piece's width). Two touching
    digits can close paper in between them (a 3 pressed against a 3 closes the second one's bowl, a
    2's tail run into a 3), which looks like a loop; the other cuts never go through a loop."""
    lo, hi = max(2, int(0.15 * p.w)), min(p.w - 2, int(math.ceil(0.85 * p.w)))
    cuts: list[int] = []
    for a, b in holes:
        a, b = max(lo, a + 2), min(hi, b - 1)
        if b <= a:
            continue
        c = a + int(np.argmin(prof[a:b]))
        if not any(abs(c - d) < 0.1 * med_h for d in taken + cuts):
            cuts.append(c)
    return cuts


def cut_at(p: Piece, c: int) -> list[Piece]:
    out = []
    for a, b in ((p.x0, p.x0 + c), (p.x0 + c, p.x1)):
        m = np.zeros_like(p.mask)
        m[:, a:b] = p.mask[:, a:b]
        x, y, w, h = cv2.boundingRect(m[:, a:b].view(np.uint8))
        if w == 0:
            return []
        out.append(Piece(a + x, y, a + x + w, y + h, m))
    out[0].joined_right = True
    out[1].joined_right = p.joined_right
    return out


#: A hypothesis other than the geometric one must beat it by this much (sum of log-probabilities).
MARGIN = 0.1
#: Merging two pieces with paper between them costs this much per digit height of gap.
GAP_COST = 6.0
#: A piece this many digit heights wide holds two digits unless the model is sure otherwise.
WIDE = 1.6
WIDE_BONUS = 3.0
#: A piece shorter than this many digit heights is likely a fragment: merging it counts for more
#: (0.85: a 9's loop come apart from its stem measures 0.84; 0.8 until session 6).
SHORT = 0.85
SHORT_BONUS = 2.0


#: A part of a split this narrow (digit heights) can only be a '1', and a '1' stands as tall as the
#: digits beside it: a shorter one is a stroke cut off a digit (a 7's bar, a 2's or a 4's side), read
#: as a '1' as surely as a real one. Sets 2024-2029 (before: 0.25 and 0.8, in the second look only):
#: four amounts and dates with a '1' that was a cut-off stroke ("335.75" read 335175), none broken;
#: the validation pages read the same.
ONE_WIDE = 0.3
ONE_TALL = 0.85


def _digit_sized(parts: list[Piece], med_h: float) -> bool:
    """Whether the two parts of a candidate split could each be a digit: over half a digit height
    tall, not a hairline, and a part only a '1' is this narrow (`ONE_WIDE`) as tall as a '1' stands
    (`ONE_TALL`)."""
    return (
        len(parts) == 2
        and all(
            q.h >= 0.55 * med_h and q.w >= 0.12 * med_h and (q.w >= ONE_WIDE * med_h or q.h >= ONE_TALL * med_h)
            for q in parts
        )
        and not _hanging(parts, med_h)
    )


def _hanging(parts: list[Piece], med_h: float) -> bool:
    """Whether a short part of a split (under 0.75 of a digit height) ends high above the others'
    bottom (by over a quarter of a digit height): a 9's loop cut off its stem, read as a '0' as
    surely as a real one, or a 4's top; not a digit of its own. Digits of a string stand on one line."""
    bottom = max(q.y1 for q in parts)
    return any(q.h < 0.75 * med_h and bottom - q.y1 > 0.25 * med_h for q in parts)


def _wide_prior(w: float, med_h: float) -> float:
    """Geometry's prior for splitting: a piece far wider than a digit is tall holds two (the model
    reads many squeezed pairs as one digit)."""
    return WIDE_BONUS if w >= WIDE * med_h else 0.0


def refine_string(pieces: list[Piece], ink: np.ndarray, scorer: DigitScorer) -> list[Piece]:
    """Second opinion of the digit model on a string's split, where the geometry is unsure.

    Two neighbours that could be one digit (a 5 whose top stroke came loose, a 4 or a wide 0 in
    two pieces) are merged when the model reads the merged crop as a digit more surely than both
    parts; a wide piece that could hold two touching digits (a 1 pressed against a 3) is split at
    its thinnest middle column when the model reads both halves more surely than the whole.
    "More surely" is the sum of log-probabilities of "a digit", by at least `MARGIN`, with the
    geometry's priors added: a gap between two pieces counts against merging them (`GAP_COST`), a
    piece `WIDE` digit heights wide counts for splitting it (`WIDE_BONUS`), a short piece counts for
    merging it (`SHORT_BONUS`), because the model reads digit fragments and squeezed pairs as digits
    with high confidence.
    """
    if not pieces:
        return pieces
    hs = np.array([p.h for p in pieces], float)
    med_h = median(hs[hs >= 0.75 * hs.max()])
    # Splits: pieces wide enough to hold a narrow digit and another one.
    split_cands: list[tuple[int, list[Piece]]] = []
    for i, p in enumerate(pieces):
        if p.w >= 0.75 * med_h and p.h >= 0.6 * med_h:
            for c in _mid_cuts(p, med_h):
                parts = cut_at(p, c)
                if _digit_sized(parts, med_h):
                    split_cands.append((i, parts))
    # Merges: neighbours close together and no wider than a wide digit.
    merge_cands: list[int] = []
    for i in range(len(pieces) - 1):
        a, b = pieces[i], pieces[i + 1]
        gap = 0.25 if min(a.w, b.w) < 0.2 * med_h else 0.12
        wide = WIDE if a.joined_right else 1.25
        if b.x0 - a.x1 <= gap * med_h and max(a.x1, b.x1) - min(a.x0, b.x0) <= wide * med_h:
            merge_cands.append(i)
    if not split_cands and not merge_cands:
        return _resplit(pieces, ink, scorer, med_h)
    merged = [merge_pieces(pieces[i], pieces[i + 1]) for i in merge_cands]
    # Only the pieces a candidate would replace need the model's score.
    involved = sorted({i for i, _ in split_cands} | {j for i in merge_cands for j in (i, i + 1)})
    every = [pieces[i] for i in involved] + [q for _, parts in split_cands for q in parts] + merged
    crops: list[np.ndarray] = []
    for p in every:
        if p.crop is None:
            p.crop = piece_crop(ink, p)
        crops.append(p.crop)
    lp = scorer(np.stack(crops))
    for p, v in zip(every, lp.tolist(), strict=True):
        p.score = v
    base = np.zeros(len(pieces), lp.dtype)
    base[involved] = lp[: len(involved)]
    k = len(involved)
    best_split: dict[int, tuple[float, list[Piece]]] = {}
    for i, parts in split_cands:
        prior = _wide_prior(pieces[i].w, med_h)
        gain = float(lp[k] + lp[k + 1] - base[i]) + prior
        k += 2
        if gain > MARGIN and gain > best_split.get(i, (-1e9, []))[0]:
            best_split[i] = (gain, parts)
    gains = []
    for j, i in enumerate(merge_cands):
        a, b = pieces[i], pieces[i + 1]
        # Geometry's prior: joining two pieces with paper between them is less likely right, the
        # wider the gap (the model reads many fragments, and a fragment plus a 1, as a digit).
        prior = -GAP_COST * max(0, b.x0 - a.x1) / med_h
        prior += SHORT_BONUS if min(a.h, b.h) < SHORT * med_h else 0.0
        gains.append((float(lp[k + j] - base[i] - base[i + 1]) + prior, i, merged[j]))
    take: dict[int, Piece] = {}
    used: set[int] = set()
    for gain, i, m in sorted(gains, key=lambda g: -g[0]):
        if gain <= MARGIN or i in used or i + 1 in used or i in best_split or i + 1 in best_split:
            continue
        take[i] = m
        used.update((i, i + 1))
    out: list[Piece] = []
    for i, p in enumerate(pieces):
        if i in take:
            out.append(take[i])
        elif i in used:
            continue
        elif i in best_split:
            out.extend(best_split[i][1])
        else:
            out.append(p)
    return _resplit(out, ink, scorer, med_h)


#: A piece the model reads as a digit less surely than this (log-probability; about 90 %) and at
#: least `NARROW_PAIR` digit heights wide is tried at more cuts.
UNSURE = -0.1
#: Two touching digits can be this narrow: a "1" against another "1" or a "9" (two upright 1s
#: pressed together measured 0.48, two written half over each other 0.37; 0.5 until session 7). A
#: single slanted '1' this wide stays whole: cut upright, its parts are shorter than `_digit_sized`'s
#: slivers must be.
NARROW_PAIR = 0.35
#: A piece narrower than `NARROW_ONE` digit heights is split only into two parts `PAIR_OF_ONES` of
#: a digit height tall or more (two 1s pressed together measured 0.96-1.04; a narrow 4 cut in two,
#: 0.85 and 0.89, each read as a '1').
NARROW_ONE = 0.5
PAIR_OF_ONES = 0.93


def _resplit(pieces: list[Piece], ink: np.ndarray, scorer: DigitScorer, med_h: float) -> list[Piece]:
    """Second look at the pieces the model still reads unsurely after `refine_string`'s first pass.

    A piece read unsurely is most often two touching digits, cut at the wrong column (the first
    split or the merge of its bad halves) or not offered for a split at all (a narrow pair such as
    "11", which the first pass, asking for 0.75 of a digit height, leaves alone): it is tried at
    every candidate cut (`_all_cuts`: `_mid_cuts`, `_more_cuts` and, through loops, `_loop_cuts`:
    two touching digits can close a false loop between them). Two neighbours cut from one connected
    piece, either read unsurely, are joined again and tried at every other cut of the whole. A
    candidate replaces its pieces where its halves read more surely, by `MARGIN`, than they did.
    """
    tall = [i for i, p in enumerate(pieces) if p.h >= 0.6 * med_h]
    singles = [i for i in tall if pieces[i].w >= NARROW_PAIR * med_h]
    pairs = [i for i in tall if i + 1 < len(pieces) and pieces[i].joined_right and pieces[i + 1].h >= 0.6 * med_h]
    unscored = [pieces[j] for j in sorted(set(singles + pairs + [i + 1 for i in pairs])) if pieces[j].score is None]
    if unscored:
        crops = []
        for p in unscored:
            if p.crop is None:
                p.crop = piece_crop(ink, p)
            crops.append(p.crop)
        for p, v in zip(unscored, scorer(np.stack(crops)).tolist(), strict=True):
            p.score = v
    score = [p.score if p.score is not None else 0.0 for p in pieces]
    # (first piece replaced, how many, the pieces replacing them, prior)
    cands: list[tuple[int, int, list[Piece], float]] = []

    def offer(i: int, n: int, p: Piece, prior: float, avoid: int | None = None) -> None:
        # A piece narrower than half a digit height holds two digits only as two 1s side by side,
        # each as tall as a digit; a narrow 4 or 7 cut in two gives shorter strokes, read as '1's.
        tall = PAIR_OF_ONES * med_h if p.w < NARROW_ONE * med_h else 0.0
        for c in _all_cuts(p, med_h):
            if avoid is not None and abs(c - avoid) <= 1:
                continue
            parts = cut_at(p, c)
            # This second look tries many columns, and a short stroke cut off a digit's edge (a 3's
            # tips, a 4's side) is read as a '1' as surely as a real one: slivers must be tall
            # (`_digit_sized`).
            if _digit_sized(parts, med_h) and min(q.h for q in parts) >= tall:
                cands.append((i, n, parts, prior))

    for i in singles:
        if score[i] < UNSURE:
            offer(i, 1, pieces[i], _wide_prior(pieces[i].w, med_h))
    for i in pairs:
        if min(score[i], score[i + 1]) < UNSURE:
            a, b = pieces[i], pieces[i + 1]
            union = merge_pieces(a, b)
            cands.append((i, 2, [union], 0.0))
            offer(i, 2, union, 0.0, avoid=b.x0 - union.x0)
    if not cands:
        return pieces
    every = [q for _, _, parts, _ in cands for q in parts]
    crops = []
    for q in every:
        q.crop = piece_crop(ink, q)
        crops.append(q.crop)
    lp = scorer(np.stack(crops))
    for q, v in zip(every, lp.tolist(), strict=True):
        q.score = v
    gains = []
    k = 0
    for i, n, parts, prior in cands:
        gain = float(lp[k : k + len(parts)].sum()) - sum(score[i : i + n]) + prior
        k += len(parts)
        if gain > MARGIN:
            gains.append((gain, i, n, parts))
    take: dict[int, tuple[int, list[Piece]]] = {}
    used: set[int] = set()
    for _, i, n, parts in sorted(gains, key=lambda g: -g[0]):
        if used.isdisjoint(range(i, i + n)):
            take[i] = (n, parts)
            used.update(range(i, i + n))
    out: list[Piece] = []
    i = 0
    while i < len(pieces):
        if i in take:
            n, parts = take[i]
            out.extend(parts)
            i += n
        else:
            out.append(pieces[i])
            i += 1
    return out


def piece_crop(ink: np.ndarray, p: Piece) -> np.ndarray:
    """A piece's MNIST-form crop; normalize_ink only looks inside the mask's box, so cut to it first."""
    return normalize_ink(ink[p.y0 : p.y1, p.x0 : p.x1], p.mask[p.y0 : p.y1, p.x0 : p.x1])
