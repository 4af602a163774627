"""Generator of crops that hold no digit, as segmentation would produce them (label 10).

Kinds: empty boxes (blank or faint noise), box-line fragments (corners, edges, T-junctions, parallel
lines), specks, stray strokes (dashes, underlines, tildes), punctuation-like blobs (dots, commas,
colons, smudges). Each is drawn on a cell-sized canvas in ink-high form and passed through
`digitreader.pipeline.normalize.normalize_ink`, so it looks exactly like what the runtime sees.

Vertical single straight strokes are deliberately *not* generated: normalized, they are
indistinguishable from a "1".
"""

from __future__ import annotations

import logging
import math
from typing import Literal, overload

import cv2
import numpy as np

from digitreader.pipeline.normalize import normalize_ink

log = logging.getLogger(__name__)

KINDS = ("empty", "box_lines", "specks", "stroke", "punctuation")
_C = 64  # canvas size


def _empty(rng: np.random.Generator) -> np.ndarray:
    ink = np.zeros((_C, _C), np.float32)
    if rng.random() < 0.5:  # faint paper noise, below the ink level
        ink += np.abs(rng.normal(0, rng.uniform(2, 8), ink.shape)).astype(np.float32)
        ink = np.where(ink < 20, 0, ink)
    return ink


def _box_lines(rng: np.random.Generator) -> np.ndarray:
    ink = np.zeros((_C, _C), np.float32)
    t = int(rng.integers(2, 6))
    m = int(rng.integers(2, 14))
    kind = rng.integers(5)
    lo, hi = m, _C - 1 - m
    if kind == 0:  # corner (L in any orientation)
        cx, cy = (lo if rng.random() < 0.5 else hi), (lo if rng.random() < 0.5 else hi)
        ex = int(rng.uniform(lo, hi)) if rng.random() < 0.5 else (hi if cx == lo else lo)
        ey = int(rng.uniform(lo, hi)) if rng.random() < 0.5 else (hi if cy == lo else lo)
        cv2.line(ink, (cx, cy), (ex, cy), 255.0, t)
        cv2.line(ink, (cx, cy), (cx, ey), 255.0, t)
    elif kind == 1:  # horizontal edge, maybe with a stub of the side walls
        y = lo if rng.random() < 0.5 else hi
        cv2.line(ink, (lo, y), (hi, y), 255.0, t)
        for x in (lo, hi):
            if rng.random() < 0.6:
                cv2.line(ink, (x, y), (x, y + int(rng.uniform(4, 20)) * (1 if y == lo else -1)), 255.0, t)
    elif kind == 2:  # T junction or cross of two cell borders
        x, y = int(rng.uniform(lo, hi)), int(rng.uniform(lo, hi))
        cv2.line(ink, (lo, y), (hi, y), 255.0, t)
        cv2.line(ink, (x, y), (x, hi if rng.random() < 0.5 else lo), 255.0, t)
    elif kind == 3:  # two parallel lines (top and bottom of a row of boxes)
        cv2.line(ink, (lo, lo), (hi, lo), 255.0, t)
        cv2.line(ink, (lo, hi), (hi, hi), 255.0, t)
    else:  # a whole empty box outline
        cv2.rectangle(ink, (lo, lo), (hi, hi), 255.0, t)
    return ink


def _specks(rng: np.random.Generator) -> np.ndarray:
    ink = np.zeros((_C, _C), np.float32)
    n = int(rng.integers(2, 9))
    r = rng.uniform(0.8, 2.5)
    for _ in range(n):
        centre = (int(rng.integers(4, _C - 4)), int(rng.integers(4, _C - 4)))
        cv2.circle(ink, centre, max(1, round(r * rng.uniform(0.7, 1.3))), 255.0, -1)
    return ink


def _stroke(rng: np.random.Generator) -> np.ndarray:
    """Dashes, underlines, tildes: strokes that run mostly horizontally."""
    ink = np.zeros((_C, _C), np.float32)
    t = int(rng.integers(2, 6))
    angle = math.radians(rng.uniform(-30, 30))
    length = rng.uniform(20, 56)
    cx, cy = _C / 2 + rng.uniform(-8, 8), _C / 2 + rng.uniform(-12, 12)
    n = 24
    s = np.linspace(-0.5, 0.5, n) * length
    amp = rng.uniform(0, 6) if rng.random() < 0.6 else 0.0
    wob = amp * np.sin(s / length * 2 * math.pi * rng.uniform(0.5, 1.5) + rng.uniform(0, 6.3))
    pts = np.stack([cx + s * math.cos(angle) - wob * math.sin(angle),
                    cy + s * math.sin(angle) + wob * math.cos(angle)], 1)  # fmt: skip
    cv2.polylines(ink, [pts.astype(np.int32)], False, 255.0, t)
    if rng.random() < 0.3:  # a second parallel stroke: "="
        cv2.polylines(ink, [(pts + [0, rng.uniform(8, 16)]).astype(np.int32)], False, 255.0, t)
    return ink


def _punctuation(rng: np.random.Generator) -> np.ndarray:
    ink = np.zeros((_C, _C), np.float32)
    r = int(rng.integers(3, 7))
    cx, cy = int(_C / 2 + rng.uniform(-6, 6)), int(_C / 2 + rng.uniform(-6, 6))
    kind = rng.integers(4)
    if kind == 0:  # dot
        cv2.circle(ink, (cx, cy), r, 255.0, -1)
    elif kind == 1:  # comma: dot with a short tail
        cv2.circle(ink, (cx, cy), r, 255.0, -1)
        cv2.line(ink, (cx + r // 2, cy), (cx - r, cy + 3 * r), 255.0, max(2, r // 2))
    elif kind == 2:  # colon / two dots side by side
        d = int(rng.uniform(3, 6) * r)
        if rng.random() < 0.5:
            cv2.circle(ink, (cx, cy - d // 2), r, 255.0, -1)
            cv2.circle(ink, (cx, cy + d // 2), r, 255.0, -1)
        else:
            cv2.circle(ink, (cx - d // 2, cy), r, 255.0, -1)
            cv2.circle(ink, (cx + d // 2, cy), r, 255.0, -1)
    else:  # an irregular smudge
        pts = np.stack([cx + rng.normal(0, 2 * r, 7), cy + rng.normal(0, 1.2 * r, 7)], 1).astype(np.int32)
        cv2.fillPoly(ink, [cv2.convexHull(pts)], 255.0)
    return ink


_MAKERS = {"empty": _empty, "box_lines": _box_lines, "specks": _specks, "stroke": _stroke,
           "punctuation": _punctuation}  # fmt: skip
_WEIGHTS = np.array([0.12, 0.30, 0.18, 0.22, 0.18])


@overload
def generate_nondigits(n: int, seed: int, *, return_kinds: Literal[False] = False) -> np.ndarray: ...


@overload
def generate_nondigits(n: int, seed: int, *, return_kinds: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...


def generate_nondigits(n: int, seed: int, *, return_kinds: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """`n` normalized (28, 28) uint8 non-digit crops; the same seed gives the same crops. With
    `return_kinds`, also each crop's kind (an index into `KINDS`)."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(len(KINDS), size=n, p=_WEIGHTS / _WEIGHTS.sum())
    out = np.zeros((n, 28, 28), np.uint8)
    for i, k in enumerate(kinds):
        ink = _MAKERS[KINDS[k]](rng)
        if rng.random() < 0.5:
            ink = cv2.GaussianBlur(ink, (0, 0), rng.uniform(0.5, 1.5))
        out[i] = normalize_ink(np.clip(ink, 0, 255).astype(np.uint8))
    return (out, kinds) if return_kinds else out
