"""The shortcuts segmentation takes for speed give the answers of the plain definitions they replace."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from digitreader.pipeline.cut import _digit_components, _has_tall_piece
from digitreader.pipeline.normalize import BLANK_EXTENT, is_blank, label_pieces
from digitreader.pipeline.prepare import ink_levels, median


def _levels_by_definition(flat: np.ndarray) -> tuple[float, float]:
    """ink_levels as first written: medians of the paper sample itself."""
    sample = flat[::7, ::7]
    paper = sample[sample > 200]
    if paper.size > 100:
        med = float(np.median(paper))
        noise = 1.4826 * float(np.median(np.abs(paper.astype(np.float32) - med)))
    else:
        med, noise = 255.0, 3.0
    return min(195.0, med - max(60.0, 8.0 * noise)), min(230.0, med - max(25.0, 4.0 * noise))


@pytest.mark.parametrize("seed", range(40))
def test_ink_levels_from_the_histogram_equal_the_medians(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(20, 400, 2))
    paper = rng.normal(rng.uniform(215, 252), rng.uniform(0.5, 12), (h, w))
    ink = rng.random((h, w)) < rng.uniform(0, 0.6)  # some pages are mostly ink: no paper sample
    flat = np.clip(np.where(ink, rng.uniform(0, 180, (h, w)), paper), 0, 255).astype(np.uint8)
    assert ink_levels(flat) == _levels_by_definition(flat)


def test_label_pieces_match_32_bit_labelling() -> None:
    rng = np.random.default_rng(3)
    mask = (rng.random((90, 300)) < 0.3).astype(np.uint8)
    n, labels, stats = label_pieces(mask)
    n32, labels32, stats32, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    assert labels.dtype == np.uint16
    assert n == n32 and np.array_equal(labels, labels32) and np.array_equal(stats, stats32)


def test_label_pieces_worst_case_fits_16_bits_or_falls_back() -> None:
    # Isolated pixels on every other row and column: the most 8-connected pieces a mask can hold.
    for h, w in ((509, 509), (600, 600)):  # 65 025 pieces: 16 bits; 90 000: 32 bits
        mask = np.zeros((h, w), np.uint8)
        mask[::2, ::2] = 1
        n, labels, _ = label_pieces(mask)
        assert n - 1 == ((h + 1) // 2) * ((w + 1) // 2)
        assert int(labels.max()) == n - 1  # no label wrapped around
        assert labels.dtype == (np.uint16 if n < 65535 else np.int32)


@pytest.mark.parametrize("seed", range(60))
def test_tall_piece_shortcut_never_contradicts_the_blank_test(seed: int) -> None:
    rng = np.random.default_rng(seed)
    win = np.zeros((60, 52), np.uint8)
    for _ in range(int(rng.integers(0, 6))):  # strokes and specks, some crossing the cell's edge
        x0, y0 = (int(v) for v in rng.integers(0, 50, 2))
        x1, y1 = x0 + int(rng.integers(-20, 20)), y0 + int(rng.integers(-30, 30))
        cv2.line(win, (x0, y0), (x1, y1), 1, int(rng.integers(1, 4)))
    cell, inner = (10, 12, 32, 36), (10, 12, 42, 48)
    _, labels, stats = label_pieces(win)
    keep = _digit_components(labels, stats, inner, cell)
    mask = keep[labels][12:48, 10:42]
    if _has_tall_piece(stats, keep, inner, BLANK_EXTENT):
        assert not is_blank(mask)


@pytest.mark.parametrize("seed", range(30))
def test_median_equals_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    ints = rng.integers(0, 500, n)
    floats = rng.normal(30, 10, n)
    assert median(ints) == float(np.median(ints))
    assert median(ints.tolist()) == float(np.median(ints))
    assert median(floats) == float(np.median(floats))
