"""Crops to the MNIST form in C (`pipeline/_normalize.c`) against the numpy/OpenCV version
(`normalize._normalize_ink_cv`).

OpenCV rounds its float sums in its own order, so the C version is not bit for bit the same: it must
be within one grey level everywhere, and the same in most crops, on every crop that segmentation
cuts from generated pages and on random crops of every size and shape (shrunk and grown).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from digitreader.pipeline import cut, normalize, split
from digitreader.pipeline.load import load_pages
from digitreader.pipeline.normalize import _normalize_ink_cv, normalize_ink
from digitreader.pipeline.segment import segment_page
from digitreader.settings import Settings

pytestmark = pytest.mark.skipif(normalize._normalize is None, reason="the C extension was not built (no C compiler)")


def _native(ink: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.full((28, 28), 7, np.uint8)
    assert normalize._normalize.normalize_masked(ink, mask.view(np.uint8), out, *ink.shape)
    return out


def test_random_crops_within_one_grey_level() -> None:
    rng = np.random.default_rng(2026)
    differing = 0
    for i in range(3000):
        h, w = int(rng.integers(1, 140)), int(rng.integers(1, 140))
        if rng.random() < 0.1:  # a dash or a stroke: extreme aspect ratios
            h = int(rng.integers(1, 4))
        ink: np.ndarray = (rng.random((h, w)) * 255).astype(np.uint8)
        if rng.random() < 0.5:
            ink = np.asarray(cv2.GaussianBlur(ink, (5, 5), 0), np.uint8)
        if rng.random() < 0.3:
            ink = (ink // 4).astype(np.uint8)  # faint: stretched to a peak of 255
        mask = rng.random((h, w)) < rng.random()
        want = _normalize_ink_cv(ink, mask)
        got = _native(ink, mask)
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 1, f"case {i}: {h}x{w}, {int(diff.max())} grey levels apart"
        differing += bool(diff.any())
    assert differing < 0.2 * 3000


def test_an_empty_mask_or_inkless_crop_gives_zeros() -> None:
    ink = np.full((12, 9), 200, np.uint8)
    assert not normalize_ink(ink, np.zeros((12, 9), bool)).any()
    assert not normalize_ink(np.zeros((12, 9), np.uint8), np.ones((12, 9), bool)).any()


def test_crops_it_does_not_take_go_to_opencv() -> None:
    rng = np.random.default_rng(3)
    long = (rng.random((3, 2000)) * 255).astype(np.uint8)  # 100 times wider than the 20-pixel box
    mask = np.ones(long.shape, bool)
    out = np.empty((28, 28), np.uint8)
    assert not normalize._normalize.normalize_masked(long, mask.view(np.uint8), out, *long.shape)
    assert np.array_equal(normalize_ink(long, mask), _normalize_ink_cv(long, mask))
    floats = long.astype(np.float32)
    assert np.array_equal(normalize_ink(floats, mask), _normalize_ink_cv(floats, mask))


def test_a_mask_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="the mask is"):
        normalize_ink(np.zeros((5, 6), np.uint8), np.zeros((6, 5), bool))


def test_every_crop_of_generated_pages(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from digitreader.synth import generate

    files = generate(tmp_path, pages=4, seed=81, kind="mixed", style="rough", dpi=300, data_dir=data_dir)
    files += generate(tmp_path / "forms", pages=2, seed=82, kind="form", dpi=200, data_dir=data_dir)
    seen: list[int] = []

    def both(ink: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        got = normalize_ink(ink, mask)
        if mask is not None:
            diff = np.abs(got.astype(int) - _normalize_ink_cv(ink, mask).astype(int))
            assert diff.max() <= 1
            seen.append(int(np.count_nonzero(diff)))
        return got

    monkeypatch.setattr(cut, "normalize_ink", both)
    monkeypatch.setattr(split, "normalize_ink", both)
    for f in files:
        for page in load_pages(f, Settings()):
            segment_page(page)
    assert len(seen) > 200
    assert sum(1 for n in seen if n == 0) > 0.9 * len(seen)  # most crops are the very same bytes
    assert sum(seen) < 0.001 * 784 * len(seen)  # and few pixels anywhere differ
