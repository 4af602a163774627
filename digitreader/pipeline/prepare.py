"""Prepare stage: deskew, illumination correction and binarization of one page.

- Scanner artifacts first: a bilevel (1-bit) scan is softened back to grey (`soften_bilevel`), a
  dark margin around the sheet is made paper (`fill_margins`), streaks and creases along the scan
  are taken out (`remove_streaks`).
- Illumination: the paper level is estimated with a grey-level closing (removes the dark ink) on a
  reduced copy, smoothed and divided out, so shadows and uneven light become flat white paper.
- Skew: measured from the page's own lines (form boxes, printed text, writing) by a projection
  profile over sampled ink pixels, ±15° (on to ±45° where the profile still sharpens at 15°),
  refined to 0.05°.
- Binarization: a threshold on the background-normalized page set from the measured paper noise
  (locally adaptive, because the background division is local), followed by hysteresis so faint
  pencil strokes connected to clearly inked pixels are kept while isolated noise is not.

`PreparedPage.to_original` maps prepared coordinates back to the page as submitted.
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

from digitreader.settings import Settings
from digitreader.types import PageImage, PreparedPage

try:  # the skew's projection profiles in C (_prepare.c), built at install; without it, numpy's
    from digitreader.pipeline import _prepare
except ImportError:  # pragma: no cover - depends on the install
    _prepare = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: Working resolution (dots per inch) for the page-level estimates (skew, background).
ANALYSIS_DPI = 75.0
#: The prepared page is reduced by an integer factor to at least this resolution: 150 dpi keeps a
#: handwritten digit 30-60 px tall (more than the 20 px of the MNIST form) and is 4x cheaper than 300.
WORK_DPI = 150.0
#: The skew is searched within this many degrees either way ...
MAX_SKEW = 15.0
#: ... and, where the sharpest profile lies at that edge (a sheet fed at an angle, laid crooked on
#: the glass), on to this many: beyond 45 degrees a page is a quarter turn the other way (`orient.py`).
WIDE_SKEW = 45.0


#: The longest sheet this tool is for, in mm (A3 is 420, US tabloid 432): a file whose stated dpi makes
#: its page longer is not believed. Cameras and many programs write 72 or 96 dpi whatever the pixels
#: are: a 300-dpi A4 page (3508 pixels) "at 72 dpi" would be a sheet 1.24 m long, and read at that
#: scale no field was found.
MAX_SHEET_MM = 460.0


def plausible_dpi(width: int, height: int, dpi: float | None) -> bool:
    """Whether the file's stated dpi can be the page's: 72-1200, and the page no longer than
    `MAX_SHEET_MM` at that resolution."""
    if not dpi or not 72 <= dpi <= 1200:
        return False
    return max(width, height) * 25.4 / dpi <= MAX_SHEET_MM


def px_per_mm(width: int, height: int, dpi: float | None) -> float:
    """Pixels per millimetre: from the file's dpi when plausible (`plausible_dpi`), else from the page
    size (A4/letter)."""
    if dpi and plausible_dpi(width, height, dpi):
        return dpi / 25.4
    long_side = max(width, height)
    # Assume a page whose long side is A4 (297 mm); cheques and small slips are rarely without dpi.
    return max(long_side / 297.0, 2.0)


def estimate_background(gray: np.ndarray, ppm: float) -> np.ndarray:
    """Paper level of a page (same size as `gray`), estimated on a reduced copy."""
    f = max(1, int(round(ppm * 25.4 / ANALYSIS_DPI)))
    small = cv2.resize(gray, (max(1, gray.shape[1] // f), max(1, gray.shape[0] // f)), interpolation=cv2.INTER_AREA)
    k = max(3, int(round(5.0 * ppm / f)) | 1)  # 5 mm: wider than any pen stroke
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    bg = cv2.morphologyEx(small, cv2.MORPH_CLOSE, kernel)
    # Smooth on a further reduced copy (the paper level varies slowly): two box filters ~ a Gaussian.
    tiny = cv2.resize(bg, (max(1, bg.shape[1] // 4), max(1, bg.shape[0] // 4)), interpolation=cv2.INTER_AREA)
    kb = max(3, k // 4 * 2 + 1)
    tiny = cv2.blur(cv2.blur(tiny, (kb, kb)), (kb, kb))
    return cv2.resize(tiny, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)


#: A margin is darker than this share of the paper's level (the 90th percentile of the page's grey).
MARGIN_DARK = 0.6
#: ... and covers at least this share of the image's outermost rows and columns.
MARGIN_FRAME = 0.25
#: ... and each of its pieces at least this share of the page ...
MARGIN_AREA = 0.005
#: ... meeting paper: this share of the paper's level, `MARGIN_RING_MM` beyond its edge (a shadow of
#: uneven light darkens the page gradually, and there it is still as dark as the edge's level).
MARGIN_PAPER = 0.8
MARGIN_RING_MM = 2.0


def fill_margins(gray: np.ndarray, ppm: float) -> np.ndarray:
    """The dark margins of a scan made paper: the scanner's lid or bed around a smaller sheet (a
    cheque, a form on A3), black or grey, straight while the sheet lies skewed. Left in, they were
    read as ink: the skew was measured from their straight edges rather than from the form's lines
    (0 instead of the sheet's 2.6 degrees), and not one field of a slightly skewed form was found.

    A margin is dark (`MARGIN_DARK`), touches the image's edge, along at least `MARGIN_FRAME` of it
    in all, is large (`MARGIN_AREA`) and meets paper at its edge (`MARGIN_PAPER`): a page darkened
    gradually towards one side by uneven light is no margin (its darkest side was made paper, with
    the fields on it). Ink touching a margin goes with it. A page without one costs a look at its
    outermost pixels and a sparse sample."""
    h, w = gray.shape
    if h < 3 or w < 3:
        return gray
    paper = float(np.percentile(gray[::16, ::16], 90))
    level = MARGIN_DARK * paper
    frame = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    if paper < 64 or float((frame < level).mean()) < MARGIN_FRAME:
        return gray  # no dark margin (or no paper to speak of: an all-black page stays one)
    dark = (gray < level).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    big = [int(i) for i in edge if i and stats[i, cv2.CC_STAT_AREA] >= MARGIN_AREA * h * w]
    if not big:
        return gray
    k = max(3, int(round(MARGIN_RING_MM * ppm)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    lut = np.zeros(n, bool)
    for i in big:
        mask = (labels == i).astype(np.uint8)
        ring = cv2.dilate(mask, kernel) > mask
        lut[i] = bool(ring.any()) and float(np.median(gray[ring])) >= MARGIN_PAPER * paper
    if not lut.any():
        return gray
    out = gray.copy()
    out[lut[labels]] = int(round(paper))
    return out


#: Ink for the skew's measure and for finding streaks: darker than this on a background-normalized page.
DARK = 170

#: A straight line along the whole scan (dust on the scanner's glass or on its sensor, drawn as the
#: sheet moves past) is dark over this share of the image's height (or width, lying) ...
STREAK_SHARE = 0.9
#: ... and no wider than this (mm): a black bar is not a streak.
STREAK_WIDTH_MM = 2.0
#: A column of a streak whose paper level (its median, of 255) is under this shows nothing through.
STREAK_OPAQUE = 110.0
#: Beside a streak, columns darker than this (their median) are its shading.
STREAK_PAPER = 245.0


def remove_streaks(flat: np.ndarray, ppm: float) -> np.ndarray:
    """A background-normalized page without the streaks and creases along the whole scan (dust on
    the glass, a fold): each column of one (each row, lying) is divided by its own paper level (its
    median), as `flatten` divides out uneven light, so a crease's shading goes and the ink under it
    stays; where a streak is opaque (its level under `STREAK_OPAQUE`: nothing shows through), its
    columns are filled, row by row, with the darker of the pixels just beside it, so a line that
    crosses it (a box's edge) goes on across. Left in, a streak through a form joined its fields into
    one figure (2 to 8 of 8 found on a page it crossed); a crease, narrower than `flatten`'s 5 mm,
    was ink. A page without either costs two sums of its dark pixels."""
    h, w = flat.shape
    if h < 20 or w < 20:
        return flat
    _, dark = cv2.threshold(flat, DARK - 1, 1, cv2.THRESH_BINARY_INV)  # flat < DARK, as the skew's
    out = flat
    reach = max(1, int(round(STREAK_WIDTH_MM * ppm)))
    for axis, length in ((0, h), (1, w)):  # columns (a streak down the page), then rows
        counts = cv2.reduce(dark, axis, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
        hits = np.flatnonzero(counts >= STREAK_SHARE * length)
        if not hits.size:
            continue
        for run in np.split(hits, np.flatnonzero(np.diff(hits) > 1) + 1):
            a, b = int(run[0]), int(run[-1])
            if b - a + 1 > STREAK_WIDTH_MM * ppm:
                continue  # a black bar of the form, not a streak
            if out is flat:
                out = flat.copy()
            view = out if axis == 0 else out.T
            level = {c: float(np.median(view[:, c])) for c in range(a, b + 1)}
            # Its shading beyond the dark core (a crease's soft sides), as far as it darkens the paper.
            for step, start in ((-1, a - 1), (1, b + 1)):
                c = start
                while 0 <= c < counts.size and abs(c - start) < reach:
                    m = float(np.median(view[:, c]))
                    if m >= STREAK_PAPER:
                        break
                    level[c] = m
                    c += step
            opaque = [c for c, m in level.items() if m < STREAK_OPAQUE]
            for c, m in level.items():
                if m >= STREAK_OPAQUE:
                    view[:, c] = np.clip(view[:, c].astype(np.float32) * (255.0 / max(m, 1.0)), 0, 255).astype(np.uint8)
            if opaque:
                lo, hi = min(opaque), max(opaque)
                side_a, side_b = max(0, lo - 1), min(counts.size - 1, hi + 1)
                fill = np.minimum(view[:, side_a], view[:, side_b])
                view[:, lo : hi + 1] = fill[:, None]
    return out


def flatten(gray: np.ndarray, ppm: float) -> np.ndarray:
    """Illumination correction: divide by the paper level, so paper ~255 everywhere."""
    bg = estimate_background(gray, ppm)
    # cv2.max: np.maximum(bg, 1) is 10x slower.
    return cv2.divide(gray, cv2.max(bg, 1), scale=255)


def profile_scores(xc: np.ndarray, yc: np.ndarray, angles: np.ndarray, n_bins: int) -> np.ndarray:
    """Sharpness (sum of squared bin counts) of the ink's projection profile at each angle.

    In C (`_prepare.c`: the same float32 steps, so the same bins and scores) where it was built."""
    if _prepare is None:
        return _profile_scores_np(xc, yc, angles, n_bins)
    rad = [math.radians(a) for a in angles.tolist()]
    cos = np.array([math.cos(a) for a in rad], np.float32)
    sin = np.array([math.sin(a) for a in rad], np.float32)
    out = np.empty(len(rad), np.float64)
    x, y = np.ascontiguousarray(xc, np.float32), np.ascontiguousarray(yc, np.float32)
    _prepare.profile_scores(x, y, cos, sin, n_bins, out)
    return out


def _profile_scores_np(xc: np.ndarray, yc: np.ndarray, angles: np.ndarray, n_bins: int) -> np.ndarray:
    """`profile_scores` with numpy, all angles in one pass."""
    rad = [math.radians(a) for a in angles.tolist()]
    cos = np.array([math.cos(a) for a in rad], np.float32)[:, None]
    sin = np.array([math.sin(a) for a in rad], np.float32)[:, None]
    # Rotating the page by -angle straightens lines that are at +angle.
    r = (yc * cos + xc * sin + n_bins / 2).astype(np.int32)
    np.clip(r, 0, n_bins - 1, out=r)
    r += (np.arange(len(rad), dtype=np.int32) * n_bins)[:, None]
    h = np.bincount(r.ravel(), minlength=len(rad) * n_bins).reshape(len(rad), n_bins).astype(np.float64)
    return (h * h).sum(axis=1)


#: The look beyond `MAX_SKEW`: a coarse profile every `WIDE_STEP` degrees of this many ink points.
WIDE_POINTS = 2000
WIDE_STEP = 1.0


def _wide_skew(xc: np.ndarray, yc: np.ndarray, max_angle: float, n_bins: int) -> float:
    """The angle beyond `max_angle` (short of `WIDE_SKEW`, either way) where the ink's profile is
    sharper than anywhere within it, on a coarse grid of a sample of the points; 0.0 where there is
    none (nearly every page: the search within `max_angle` then goes on as before)."""
    n = len(xc)
    rng = np.random.default_rng(1)
    if n > WIDE_POINTS:
        pick = rng.choice(n, WIDE_POINTS, replace=False)
        xc, yc = xc[pick], yc[pick]
    # Each point moved within its pixel: ink filling a region of the pixel grid projects onto fewer,
    # fuller bins at 45 degrees (and at other steep rational slopes) than at the angles between, which
    # made a page of solid ink look turned 45 degrees.
    xc = xc + rng.uniform(-0.5, 0.5, len(xc)).astype(np.float32)
    yc = yc + rng.uniform(-0.5, 0.5, len(yc)).astype(np.float32)
    inner = np.arange(-max_angle, max_angle + 1e-9, WIDE_STEP)
    outer = np.arange(max_angle + WIDE_STEP, WIDE_SKEW + 1e-9, WIDE_STEP)
    angles = np.concatenate([inner, outer, -outer])
    scores = profile_scores(xc, yc, angles, n_bins)
    i = int(np.argmax(scores))
    # A peak at the look's far edge is no peak: a page with a large patch of solid ink (a shadow made
    # black by a fax's threshold) projected sharpest at 45 degrees, and was turned so.
    return float(angles[i]) if i >= len(inner) and abs(angles[i]) < WIDE_SKEW - 1e-6 else 0.0


def estimate_skew(flat: np.ndarray, ppm: float, max_angle: float = MAX_SKEW) -> float:
    """Skew in degrees (counter-clockwise as seen on screen) from a projection profile of the ink."""
    f = max(1, int(round(ppm * 25.4 / 100.0)))
    if flat.shape[0] // f < 2 or flat.shape[1] // f < 2:
        return 0.0  # a sliver of a page (a few rows or columns): no skew to see at 100 dpi
    small = cv2.resize(flat, (flat.shape[1] // f, flat.shape[0] // f), interpolation=cv2.INTER_AREA) if f > 1 else flat
    _, dark = cv2.threshold(small, DARK - 1, 1, cv2.THRESH_BINARY_INV)  # small < DARK
    points = cv2.findNonZero(dark)  # (x, y) in row-major order, as np.nonzero gives them
    if points is None or len(points) < 50:
        # A faint page (a light scan, a pale photocopy, pencil): its ink is lighter than `DARK` where it
        # is darkest, and the skew was taken as 0 (a form 2 degrees skewed then read 1 field of 8).
        # Its own strong-ink level (`ink_levels`) says what is ink, where there is enough of it to
        # be a page's lines (0.2 % of the page): a stroke or two is no skew to measure.
        _, dark = cv2.threshold(small, ink_levels(small)[0] - 1, 1, cv2.THRESH_BINARY_INV)
        points = cv2.findNonZero(dark)
        if points is not None and len(points) < 0.002 * small.size:
            return 0.0
    if points is None or len(points) < 50:
        return 0.0
    points = points.reshape(-1, 2)
    if len(points) > 8000:
        points = points[np.random.default_rng(0).choice(len(points), 8000, replace=False)]
    xc = points[:, 0].astype(np.float32) - small.shape[1] / 2
    yc = points[:, 1].astype(np.float32) - small.shape[0] / 2
    n_bins = int(math.hypot(*small.shape)) + 4
    best = 0.0
    if max_angle < WIDE_SKEW:
        best = _wide_skew(xc, yc, max_angle, n_bins)
    for span, step in ((max_angle if best == 0.0 else 1.0, 0.5), (0.5, 0.1), (0.1, 0.025)):
        cands = np.arange(best - span, best + span + 1e-9, step)
        best = float(cands[int(np.argmax(profile_scores(xc, yc, cands, n_bins)))])
    return round(best, 3)


def median(values: np.ndarray | list[float] | list[int]) -> float:
    """np.median of a short list or array (the same value) without numpy's per-call overhead (~30 us)."""
    v = sorted(values.tolist() if isinstance(values, np.ndarray) else values)
    mid = len(v) // 2
    return float(v[mid]) if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def cover(mask: np.ndarray, axis: int) -> np.ndarray:
    """`mask.mean(axis)` of a non-empty 0/1 mask (bool or uint8): the share covered in each row (axis=1)
    or column (axis=0), the same float64 values (exact sums over the count) without numpy's overhead."""
    counts = cv2.reduce(mask.view(np.uint8), axis, cv2.REDUCE_SUM, dtype=cv2.CV_32S)
    return counts.ravel() / mask.shape[axis]


def _weighted_median(values: np.ndarray, counts: np.ndarray) -> float:
    """np.median of the sample holding each of the sorted `values` `counts` times (the same number)."""
    n = int(counts.sum())
    cum = np.cumsum(counts)
    lo = float(values[int(np.searchsorted(cum, (n - 1) // 2, side="right"))])
    hi = float(values[int(np.searchsorted(cum, n // 2, side="right"))])
    return (lo + hi) / 2


#: Ink this far below paper, where it is darkest, is what the ink levels are made for.
NOMINAL_CONTRAST = 220.0
#: A page whose darkest ink (the darkest `FAINT_QUANTILE` of its pixels) is nearer to paper than
#: `FAINT_BELOW` levels is faint; nearer than `FAINT_MIN`, it holds no ink to speak of (a blank sheet).
FAINT_QUANTILE = 0.001
FAINT_BELOW = 110.0
FAINT_MIN = 40.0


def ink_levels(flat: np.ndarray) -> tuple[float, float]:
    """(strong, weak) grey levels of a background-normalized page, from its paper noise."""
    # The median paper level and its median absolute deviation, from the histogram of a sample.
    hist = np.bincount(flat[::7, ::7].ravel(), minlength=256)
    counts = hist[201:256]
    if int(counts.sum()) > 100:
        levels = np.arange(201, 256, dtype=np.float64)
        med = _weighted_median(levels, counts)
        dev = np.abs(levels - med)
        order = np.argsort(dev, kind="stable")
        noise = 1.4826 * _weighted_median(dev[order], counts[order])
    else:
        med, noise = 255.0, 3.0
    # The levels below are for ink about 220 levels darker than paper where it is darkest. A faint
    # page (a light scan, a pale copy, pencil) has its darkest ink (the darkest 0.1 %) less than half
    # as far from paper: the levels are brought closer to paper by as much, as if the page had been
    # scanned with more contrast (a form scanned at 35 % contrast then read 1 field in 4).
    scale = 1.0
    total = int(hist.sum())
    if total:
        darkest = float(np.searchsorted(np.cumsum(hist), FAINT_QUANTILE * total))
        contrast = med - darkest
        if FAINT_MIN <= contrast < FAINT_BELOW:
            scale = contrast / NOMINAL_CONTRAST
    strong = min(255.0 - 60.0 * scale, med - max(60.0 * scale, 8.0 * noise))
    weak = min(255.0 - 25.0 * scale, med - max(25.0 * scale, 4.0 * noise))
    return strong, weak


def binarize(flat: np.ndarray, levels: tuple[float, float] | None = None) -> np.ndarray:
    """Ink mask (uint8 0/255) of a background-normalized page; keeps faint strokes (hysteresis).

    `levels`: the page's (strong, weak) `ink_levels`, when already measured."""
    strong, weak = levels or ink_levels(flat)
    _, weak_mask = cv2.threshold(flat, weak, 255, cv2.THRESH_BINARY_INV)
    _, strong_mask = cv2.threshold(flat, strong, 255, cv2.THRESH_BINARY_INV)
    # Hysteresis (local form): keep weak pixels near a strong one, i.e. the faint edges and thin
    # parts of real strokes, and drop isolated noise. A dilation is far cheaper than labelling.
    near = cv2.dilate(strong_mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    return cv2.bitwise_and(weak_mask, near)


#: A bilevel scan (1 bit a pixel: a fax, a scanner's black-and-white mode, dithered or thresholded)
#: holds only black and white in at least this share of its pixels ...
BILEVEL_SHARE = 0.99
#: ... and is softened by a Gaussian this wide (sigma, mm) before it is reduced.
BILEVEL_BLUR_MM = 0.1


#: A bilevel page is dithered where at least this share of its black pixels stand alone (no black
#: pixel beside them, up, down, left or right): dots drawing grey, where a thresholded page's black
#: comes in strokes.
DITHER_ALONE = 0.1


def dithered(gray: np.ndarray) -> bool:
    """Whether a bilevel page draws its greys with scattered dots, judged on two bands of 64 rows."""
    h = gray.shape[0]
    bands = [gray[a : a + 64] for a in (h // 3, 2 * h // 3) if a + 64 <= h] or [gray]
    alone = black = 0
    for band in bands:
        b = np.pad(band < 128, 1)
        core = b[1:-1, 1:-1]
        near = b[:-2, 1:-1] | b[2:, 1:-1] | b[1:-1, :-2] | b[1:-1, 2:]
        alone += int(np.count_nonzero(core & ~near))
        black += int(np.count_nonzero(core))
    return black > 0 and alone >= DITHER_ALONE * black


def soften_bilevel(gray: np.ndarray, ppm: float, ppm_y: float | None = None) -> np.ndarray:
    """A dithered scan made grey again. A scanner's black-and-white mode, dithered, draws grey (a
    form's light lines, the thin edge of a stroke) as scattered black dots, and its paper's faint tone
    as dots too: reduced, the dots were specks of ink and the light lines broken (75 of 216 fields
    wrong, 2 now). A blur of `BILEVEL_BLUR_MM` brings back the grey the dots stand for. A page in
    black and white only (`BILEVEL_SHARE`) is dithered where its dots stand alone (`dithered`); any
    other page, a thresholded one included, is returned as it is, after a look at a sparse sample.
    `ppm_y`: the rows' pixels per mm, where they differ from the columns' (`ppm`): a fax in normal
    mode."""
    s = gray[::7, ::7]
    if s.size < 100 or np.count_nonzero((s > 0) & (s < 255)) > (1.0 - BILEVEL_SHARE) * s.size:
        return gray
    if not dithered(gray):
        return gray  # thresholded: softened, 4 of 216 fields more were lost, and 2 of a fax's
    return cv2.GaussianBlur(gray, (0, 0), BILEVEL_BLUR_MM * ppm, sigmaY=BILEVEL_BLUR_MM * (ppm_y or ppm))


def work_factor(ppm: float) -> int:
    """Integer reduction from the page's resolution to the working resolution (>= WORK_DPI)."""
    return max(1, int(ppm * 25.4 / WORK_DPI + 0.02))


def prepare_page(page: PageImage, settings: Settings | None = None, rotation: int = 0) -> PreparedPage:
    """Reduce to the working resolution, flatten the light, deskew and binarize a page.

    The prepared page is at ~150-300 dpi (an integer reduction of the scan); `to_original` maps its
    coordinates back to the page as submitted, including that reduction. `rotation` (0, 90, 180 or
    270): the page is turned that many degrees clockwise first (`orient.py`: a page scanned upside
    down or sideways); `to_original` maps back through the turn too.
    """
    # Square pixels (`load.square_pixels`): a fax's rows were resampled to its horizontal resolution.
    ppm0 = px_per_mm(page.width, int(round(page.height / page.y_scale)), page.dpi)
    r = max(1, page.reduction)  # the loader may have decoded the page already reduced
    gray = soften_bilevel(page.gray, ppm0 / r)
    # No more than the page's narrow side: a sliver of a few pixels is not reduced to nothing.
    f2 = max(1, min(work_factor(ppm0 / r), *gray.shape))
    if f2 > 1:
        gray = cv2.resize(gray, (gray.shape[1] // f2, gray.shape[0] // f2), interpolation=cv2.INTER_AREA)
    f = r * f2
    ppm = ppm0 / f
    gray = fill_margins(gray, ppm)
    scale_back = np.array([[f, 0.0, 0.0], [0.0, f * page.y_scale, 0.0]])
    if rotation % 360:
        turned = turn(gray, rotation)
        scale_back = scale_back @ unturn_matrix(rotation, gray.shape[1], gray.shape[0])
        gray = turned
    flat = unskewed = remove_streaks(flatten(gray, ppm), ppm)
    skew = estimate_skew(flat, ppm)
    h, w = flat.shape
    m: np.ndarray = np.eye(2, 3)
    if abs(skew) >= 0.05:
        m, (nw, nh) = straightening(w, h, skew)
        flat = cv2.warpAffine(
            flat, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=255
        )
        inv = cv2.invertAffineTransform(m).astype(np.float64)
        to_original = scale_back @ np.vstack([inv, [0.0, 0.0, 1.0]])
    else:
        skew = 0.0
        to_original = scale_back
    levels = ink_levels(flat)
    ink = binarize(flat, levels)
    return PreparedPage(
        number=page.number,
        gray=flat,
        ink=ink,
        to_original=to_original,
        width=page.width,
        height=page.height,
        skew_degrees=skew,
        dpi=ppm * 25.4,
        levels=levels,
        unskewed=unskewed,
        deskew=m,
    )


def straightening(w: int, h: int, skew: float) -> tuple[np.ndarray, tuple[int, int]]:
    """The (2, 3) affine that turns a `w` x `h` image by -`skew` degrees about its centre onto a canvas
    large enough to keep its corners, and that canvas's size (width, height)."""
    m = cv2.getRotationMatrix2D((w / 2, h / 2), -skew, 1.0)
    a = math.radians(abs(skew))
    nw = int(math.ceil(w * math.cos(a) + h * math.sin(a)))
    nh = int(math.ceil(h * math.cos(a) + w * math.sin(a)))
    m[0, 2] += (nw - w) / 2
    m[1, 2] += (nh - h) / 2
    return m, (nw, nh)


def turn(img: np.ndarray, rotation: int) -> np.ndarray:
    """`img` turned `rotation` degrees clockwise (a multiple of 90), contiguous."""
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, not {rotation}")
    return np.ascontiguousarray(np.rot90(img, k=-(rotation // 90) % 4))


def unturn_matrix(rotation: int, width: int, height: int) -> np.ndarray:
    """(3, 3) affine: a point of an image `width` x `height` turned `rotation` degrees clockwise (by
    `turn`) -> the same point of the image before the turn. Points are pixel edges: (0, 0) is the
    image's corner, (width, height) the opposite one."""
    k = (rotation // 90) % 4
    if k == 0:
        m = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    elif k == 1:  # turned clockwise: x' = height - y, y' = x
        m = [[0.0, 1.0, 0.0], [-1.0, 0.0, float(height)]]
    elif k == 2:
        m = [[-1.0, 0.0, float(width)], [0.0, -1.0, float(height)]]
    else:  # x' = y, y' = width - x
        m = [[0.0, -1.0, float(width)], [1.0, 0.0, 0.0]]
    return np.vstack([np.array(m), [0.0, 0.0, 1.0]])


def map_box(
    to_original: np.ndarray, box: tuple[int, int, int, int], width: int, height: int
) -> tuple[int, int, int, int]:
    """A prepared-page box -> the axis-aligned box of its corners on the page as submitted (clipped)."""
    x, y, w, h = box
    (a, b, c), (d, e, f) = to_original.tolist()
    xs = [a * px + b * py + c for px, py in ((x, y), (x + w, y), (x, y + h), (x + w, y + h))]
    ys = [d * px + e * py + f for px, py in ((x, y), (x + w, y), (x, y + h), (x + w, y + h))]
    x0 = max(0, int(math.floor(min(xs))))
    y0 = max(0, int(math.floor(min(ys))))
    x1 = min(width, int(math.ceil(max(xs))))
    y1 = min(height, int(math.ceil(max(ys))))
    return (x0, y0, max(0, x1 - x0), max(0, y1 - y0))
