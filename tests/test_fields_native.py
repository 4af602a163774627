"""The line image in C (`pipeline/_fields.c`) against OpenCV's morphology (`fields._line_image_cv`).

The C version must give the same pixels: on the masks of generated pages (both passes' bridges),
and on random masks of every size down to one pixel, with kernels longer than the mask, odd and
even (OpenCV's even kernels shift by one), and lines running into the borders.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from digitreader.pipeline import fields
from digitreader.pipeline.fields import _Geom, _line_image_cv, line_image
from digitreader.pipeline.load import load_pages
from digitreader.pipeline.prepare import prepare_page
from digitreader.settings import Settings

pytestmark = pytest.mark.skipif(fields._fields is None, reason="the C extension was not built (no C compiler)")


def _native(mask: np.ndarray, bridge: int, len_h: int, len_v: int) -> np.ndarray:
    out = np.full_like(mask, 7)  # not zeros: the C clears it
    fields._fields.line_image(mask, out, mask.shape[0], mask.shape[1], bridge, len_h, len_v)
    return out


def test_random_masks_give_opencvs_pixels() -> None:
    rng = np.random.default_rng(2026)
    lines = 0
    for i in range(3000):
        h, w = int(rng.integers(1, 70)), int(rng.integers(1, 70))
        mask = np.where(rng.random((h, w)) < float(rng.choice([0.05, 0.3, 0.7, 0.97])), 255, 0).astype(np.uint8)
        for _ in range(int(rng.integers(0, 4))):  # lines with gaps, some reaching a border
            r, c = int(rng.integers(0, h)), int(rng.integers(0, w))
            mask[r, int(rng.integers(0, w)) :] = 255
            mask[int(rng.integers(0, h)) :, c] = 255
            mask[r, c] = 0
        bridge, len_h, len_v = (int(v) for v in rng.integers(1, [8, 30, 30]))
        want = _line_image_cv(mask, bridge, len_h, len_v)
        got = _native(mask, bridge, len_h, len_v)
        assert np.array_equal(got, want), f"case {i}: {h}x{w}, bridge {bridge}, lengths {len_h}, {len_v}"
        lines += int(want.any())
    assert lines > 1000  # most cases keep some line


def test_bad_arguments_are_refused() -> None:
    mask = np.zeros((4, 5), np.uint8)
    with pytest.raises(ValueError, match="height \\* width"):
        fields._fields.line_image(mask, np.zeros((4, 4), np.uint8), 4, 5, 3, 9, 9)
    with pytest.raises(ValueError, match="at least 1"):
        fields._fields.line_image(mask, mask.copy(), 4, 5, 0, 9, 9)


@pytest.mark.parametrize(
    ("kind", "style", "dpi", "seed"),
    [("form", "scan", 300, 71), ("cheque", "rough", 200, 72), ("mixed", "rough", 150, 73)],
)
def test_generated_pages_give_opencvs_pixels(
    tmp_path: Path, data_dir: Path, kind: str, style: str, dpi: int, seed: int
) -> None:
    from digitreader.synth import generate

    for f in generate(tmp_path, pages=2, seed=seed, kind=kind, style=style, dpi=dpi, data_dir=data_dir):
        for page in load_pages(f, Settings()):
            prepared = prepare_page(page)
            assert prepared.levels is not None
            _, faint = cv2.threshold(prepared.gray, prepared.levels[1], 255, cv2.THRESH_BINARY_INV)
            mask = cv2.bitwise_or(prepared.ink, faint)
            g = _Geom(ppm=(prepared.dpi or 150.0) / 25.4)
            for bridge in (3, g.mm(1.5)):  # find_fields' two passes
                want = _line_image_cv(mask, bridge, g.mm(3.0), g.mm(1.8))
                assert np.count_nonzero(want) > 1000
                assert np.array_equal(line_image(mask, g, bridge), want)
