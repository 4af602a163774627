"""Crop -> the MNIST form. The one implementation, used by segmentation, `predict` and training.

MNIST form: ink high (0 = paper, 255 = full ink), the ink's bounding box scaled to fit 20x20
keeping its aspect ratio (anti-aliased), then placed in a 28x28 field so that its centre of mass
sits at (14, 14) in pixel-index coordinates, where MNIST's own digits have it.

A masked uint8 crop (every crop segmentation cuts) is done by the C half (`_normalize.c`) where it
was built, within one grey level of the numpy/OpenCV version here (`_normalize_ink_cv`), which
`tests/test_normalize_native.py` holds it to.
"""

from __future__ import annotations

import cv2
import numpy as np

try:  # masked crops in C (_normalize.c), built at install; without a C compiler, OpenCV's here
    from digitreader.pipeline import _normalize
except ImportError:  # pragma: no cover - depends on the install
    _normalize = None  # type: ignore[assignment]

SIZE = 28
BOX = 20
#: `is_blank`: a cell holds a digit when a piece of ink spans this fraction of its height or width.
BLANK_EXTENT = 0.25
_GROW = np.ones((3, 3), np.uint8)


#: A colour page is one whose sample holds at least `COLOUR_SHARE` of pixels darker in their darkest
#: channel than in their luminance by `COLOUR_GAP` levels or more (a grey page's colour noise, a
#: JPEG's chroma, stays within a few levels).
COLOUR_GAP = 16
COLOUR_SHARE = 0.001


def is_colourful(image: np.ndarray, rgb: bool = False) -> bool:
    """Whether a (h, w, 3) BGR (RGB with `rgb`) page holds colour, from a sparse sample (every 8th
    pixel each way: 0.1 ms on a 300-dpi A4 page)."""
    h, w = image.shape[:2]
    if h < 8 or w < 8:
        s = np.ascontiguousarray(image)
    else:
        s = cv2.resize(image, (w // 8, h // 8), interpolation=cv2.INTER_NEAREST)
    lum = cv2.cvtColor(s, cv2.COLOR_RGB2GRAY if rgb else cv2.COLOR_BGR2GRAY)
    return int(np.count_nonzero(cv2.subtract(lum, _darkest(s)) >= COLOUR_GAP)) >= COLOUR_SHARE * lum.size


def _darkest(image: np.ndarray) -> np.ndarray:
    """Each pixel's darkest channel of a (h, w, 3) uint8 image."""
    a, b, c = cv2.split(image)
    return cv2.min(cv2.min(a, b), c)


def colour_to_gray(image: np.ndarray, rgb: bool = False) -> np.ndarray:
    """A (h, w, 3) uint8 BGR (RGB with `rgb`) page -> grey, dark where any of its colours is dark.

    By luminance alone, a form printed in a light colour (a dropout red or blue, a green) came out
    with its lines at grey 160-200, paler than ink: its boxes half lost, 29-36 of 216 fields were
    read wrong. On a colour page (`is_colourful`) a pixel is as dark as its darkest channel, but never
    more than twice as dark as its luminance says (`2 * luminance - 255`): a yellow highlighter, dark
    only in blue, stays lighter than ink. A page without colour is its luminance, as before."""
    lum = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY if rgb else cv2.COLOR_BGR2GRAY)
    if not is_colourful(image, rgb):
        return lum
    # OpenCV's own loops (13 ms on a 300-dpi A4 page with its threads; a plain C loop took 18-27).
    floor = cv2.addWeighted(lum, 2.0, lum, 0.0, -255.0)  # saturated: 2 * lum - 255, at least 0
    return cv2.max(_darkest(image), floor)


def to_gray(image: np.ndarray) -> np.ndarray:
    """Any uint8/uint16/float image, grey or colour (BGR/BGRA), -> uint8 grey."""
    img = image
    if img.ndim == 3:
        if img.shape[2] == 4:
            # Composite on white so transparent areas become paper.
            alpha = img[..., 3:4].astype(np.float32) / (255.0 if img.dtype == np.uint8 else 65535.0)
            rgb = img[..., :3].astype(np.float32)
            white = 255.0 if img.dtype == np.uint8 else 65535.0
            img = (rgb * alpha + white * (1 - alpha)).astype(img.dtype)
        if img.shape[2] < 3:
            img = img[..., 0]
        elif img.dtype == np.uint8:
            img = colour_to_gray(np.ascontiguousarray(img[..., :3]))
        else:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype == bool:
        img = np.where(img, 255, 0).astype(np.uint8)
    elif img.dtype != np.uint8:
        f = img.astype(np.float32)
        hi = float(f.max()) if f.size else 1.0
        img = np.clip(f * (255.0 / (hi if hi > 1.0 else 1.0)), 0, 255).astype(np.uint8)
    return img


def ink_from_gray(gray: np.ndarray, polarity: str = "auto") -> np.ndarray:
    """Grey image -> ink-high uint8 with the paper level removed.

    polarity: "dark" (dark ink on light paper), "light" (light ink on dark), or "auto" (decided by
    the border, which is paper in any sensible crop, falling back to the median).
    """
    g = to_gray(gray)
    if polarity == "auto":
        border = np.concatenate([g[0, :], g[-1, :], g[:, 0], g[:, -1]]) if min(g.shape) > 2 else g.ravel()
        paper = float(np.median(border))
        polarity = "dark" if paper >= float(np.median(g)) - 1 and paper > 96 else "light"
        if paper > 96:
            polarity = "dark"
    ink = (255 - g) if polarity == "dark" else g.copy()
    # Remove the paper level (the most common value) and stretch the ink to full range.
    bg = float(np.median(ink))
    ink_f = np.clip(ink.astype(np.float32) - bg, 0, None)
    hi = float(np.percentile(ink_f[ink_f > 0], 99)) if np.any(ink_f > 0) else 0.0
    if hi <= 0:
        return np.zeros_like(g)
    return np.clip(ink_f * (255.0 / hi), 0, 255).astype(np.uint8)


def label_pieces(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected pieces of a uint8 mask: (count with the background, labels, stats as OpenCV gives them).

    Labels are 16-bit where they fit (a mask of H x W pixels has at most ceil(H/2) * ceil(W/2) pieces):
    OpenCV computes the statistics of a 16-bit labelling 2-3x faster than of a 32-bit one (OpenCV 5.0).
    """
    h, w = mask.shape
    ltype = cv2.CV_16U if ((h + 1) // 2) * ((w + 1) // 2) < 65535 else cv2.CV_32S
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=ltype)
    return n, labels, stats


def ink_mask(ink: np.ndarray, level: float = 0.3) -> np.ndarray:
    """Binary mask (bool) of the pixels that carry ink, ignoring specks far smaller than the main ink."""
    if ink.size == 0 or int(ink.max()) == 0:
        return np.zeros(ink.shape, bool)
    mask = (ink >= max(1.0, level * float(ink.max()))).astype(np.uint8)
    n, labels, stats = label_pieces(mask)
    if n <= 2:
        return mask.astype(bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(n, bool)
    keep[1:] = areas >= max(2, 0.02 * areas.max())
    return keep[labels]


def normalize_ink(ink: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Ink-high crop (any size) -> 28x28 uint8 MNIST form. An inkless crop gives zeros.

    `mask`, when given, says which pixels belong to the digit (e.g. after box lines and other
    components were removed); ink outside it (grown by one pixel to keep anti-aliasing) is dropped.

    A uint8 crop with a mask (every crop that segmentation cuts) is done in C (`_normalize.c`: the
    same steps, within one grey level of `_normalize_ink_cv`, about 20 times faster) where it was built.
    """
    if mask is not None and _normalize is not None and ink.dtype == np.uint8 and ink.ndim == 2:
        if mask.shape != ink.shape:
            raise ValueError(f"normalize_ink: the mask is {mask.shape}, the crop {ink.shape}")
        out = np.empty((SIZE, SIZE), np.uint8)
        m = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
        if _normalize.normalize_masked(np.ascontiguousarray(ink), m, out, ink.shape[0], ink.shape[1]):
            return out
    return _normalize_ink_cv(ink, mask)


def _normalize_ink_cv(ink: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """`normalize_ink` with numpy and OpenCV: every crop without the C extension, and crops without a
    mask, of another type, or over 60 times larger than 20 pixels."""
    ink_f = ink.astype(np.float32)
    if mask is not None:
        m = mask.astype(bool)
        ink_f *= cv2.dilate(m.view(np.uint8), _GROW)  # 0 outside the mask grown by one pixel
    else:
        m = ink_mask(ink)
    x0, y0, w, h = cv2.boundingRect(m.view(np.uint8))
    if w == 0:
        return np.zeros((SIZE, SIZE), np.uint8)
    box = ink_f[y0 : y0 + h, x0 : x0 + w]
    scale = BOX / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(box, (nw, nh), interpolation=interp)
    total = float(small.sum())
    if total <= 0:
        return np.zeros((SIZE, SIZE), np.uint8)
    cy = float((small.sum(axis=1) * np.arange(nh)).sum() / total)
    cx = float((small.sum(axis=0) * np.arange(nw)).sum() / total)
    # Translate so the centre of mass lands on (14, 14) in pixel-index coordinates: that is where it
    # sits in MNIST itself (mean over the test set: 13.99, 14.01; LeCun's "centre of the 28x28 field"),
    # clamped so the 20x20 box stays inside the field.
    tx = min(max(SIZE / 2 - cx, 0.0), SIZE - nw)
    ty = min(max(SIZE / 2 - cy, 0.0), SIZE - nh)
    m_aff = np.array([[1, 0, tx], [0, 1, ty]], dtype=np.float32)
    out: np.ndarray = cv2.warpAffine(small, m_aff, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderValue=0.0)
    peak = float(out.max())
    if peak > 0:
        out *= 255.0 / max(peak, 1e-6) if peak < 255.0 * 0.6 else 1.0
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def normalize_digit(image: np.ndarray, polarity: str = "auto") -> np.ndarray:
    """A single-digit image of any size, grey or colour, either polarity -> 28x28 MNIST form."""
    return normalize_ink(ink_from_gray(image, polarity))


def is_blank(
    mask: np.ndarray,
    *,
    min_extent: float = BLANK_EXTENT,
    min_area_fraction: float = 0.004,
) -> bool:
    """Blank test for a cell/slot given its ink mask (bool, the cell's inner area).

    A cell holds a digit when some connected piece of ink is tall or wide enough (extent relative to
    the cell: a faint thin "1" is tall, so it is kept even though its ink mass is tiny), or when the
    ink mass is clearly more than specks. Specks and dust are blank.
    """
    m = mask.astype(np.uint8)
    if not m.any():
        return True
    h, w = m.shape
    n, _, stats = label_pieces(m)
    if n <= 1:
        return True
    comp_h = stats[1:, cv2.CC_STAT_HEIGHT] / max(h, 1)
    comp_w = stats[1:, cv2.CC_STAT_WIDTH] / max(w, 1)
    extent = np.maximum(comp_h, comp_w)
    if float(extent.max()) >= min_extent:
        return False
    area = float(stats[1:, cv2.CC_STAT_AREA].sum()) / float(h * w)
    return area < max(min_area_fraction * 4, 0.02) or float(extent.max()) < min_extent / 2
