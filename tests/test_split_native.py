"""A string piece's pen width in C (`pipeline/_split.c`) against numpy's (`split._stroke_width_py`): the
very same value, so the very same splits."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from digitreader.pipeline import split
from digitreader.pipeline.cut import cut_field
from digitreader.pipeline.fields import find_fields
from digitreader.pipeline.load import load_pages
from digitreader.pipeline.prepare import prepare_page
from digitreader.pipeline.split import Piece, _stroke_width, _stroke_width_py
from digitreader.settings import Settings

pytestmark = pytest.mark.skipif(split._split is None, reason="the C extension was not built (no C compiler)")


def _random_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Strokes of random widths (pen lines and blobs), sometimes noise, sometimes all ink or none."""
    kind = int(rng.integers(0, 10))
    if kind == 0:
        return np.zeros((h, w), bool)
    if kind == 1:
        return np.ones((h, w), bool)
    if kind == 2:
        return rng.random((h, w)) < rng.random()
    img = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 6))):
        p, q = (int(rng.integers(0, w)), int(rng.integers(0, h))), (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p, q, 1, int(rng.integers(1, 12)))
    return img.astype(bool)


def test_random_masks_and_boxes_give_the_same_width() -> None:
    rng = np.random.default_rng(2026)
    widths = set()
    for i in range(4000):
        h, w = int(rng.integers(1, 90)), int(rng.integers(1, 160))
        mask = _random_mask(rng, h, w)
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))
        p = Piece(x0, y0, x1, y1, mask)
        want = _stroke_width_py(p)
        got = split._split.stroke_width(mask.view(np.uint8), w, x0, y0, x1, y1)
        assert isinstance(got, float) and got == want, f"case {i}: {got} != {want}"
        assert _stroke_width(p) == want
        widths.add(want)
    assert 1.0 in widths and any(v != int(v) for v in widths)  # inkless boxes; even counts' halves


def test_bad_boxes_are_refused_and_left_to_numpy() -> None:
    mask = np.zeros((10, 20), bool)
    mask[2:8, 3:6] = True
    with pytest.raises(ValueError, match="inside"):
        split._split.stroke_width(mask.view(np.uint8), 20, 0, 0, 21, 10)
    with pytest.raises(ValueError, match="inside"):
        split._split.stroke_width(mask.view(np.uint8), 20, 5, 0, 5, 10)
    # A piece reaching past its mask, or a mask that is a view, takes the numpy way: the same answer.
    assert _stroke_width(Piece(0, 0, 25, 12, mask)) == _stroke_width_py(Piece(0, 0, 25, 12, mask)) == 3.0
    view = np.zeros((10, 40), bool)[:, ::2]
    view[2:8, 3:6] = True
    assert _stroke_width(Piece(0, 0, 20, 10, view)) == 3.0


def test_every_piece_of_generated_pages_gets_the_same_width(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from digitreader.synth import generate

    seen: list[float] = []

    def both(p: Piece) -> float:
        want = _stroke_width_py(p)
        m = p.mask
        assert split._split.stroke_width(m.view(np.uint8), m.shape[1], p.x0, p.y0, p.x1, p.y1) == want
        seen.append(want)
        return want

    monkeypatch.setattr(split, "_stroke_width", both)
    for f in generate(tmp_path, pages=8, seed=93, kind="mixed", style="rough", data_dir=data_dir):
        for page in load_pages(f, Settings()):
            prepared = prepare_page(page)
            for region in find_fields(prepared):
                if region.kind != "boxes":
                    cut_field(prepared, region)
    assert len(seen) >= 30 and len(set(seen)) >= 5
