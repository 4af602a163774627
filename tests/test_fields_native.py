"""The fields stage's C half (`pipeline/_fields.c`): the line image against OpenCV's morphology
(`fields._line_image_cv`), and a piece examined as a frame or a tick row against the Python
(`fields._frame_py`, `fields._ticks_py`).

The line image must be the same pixels: on the masks of generated pages (both passes' bridges), and
on random masks of every size down to one pixel, with kernels longer than the mask, odd and even
(OpenCV's even kernels shift by one), and lines running into the borders. A piece must give the same
field or none: on every piece of generated pages and on random combs, squares, strings and tick
rows with broken, missing and extra walls, strokes and noise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from digitreader.pipeline import fields
from digitreader.pipeline.fields import _frame, _frame_py, _Geom, _line_image_cv, _ticks, _ticks_py, line_image
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


def _random_piece(rng: np.random.Generator) -> np.ndarray:
    """A piece of a line image (0/1): a row of boxes or a tick row at 150 dpi, its walls sometimes
    broken, missing, doubled or joined by a stroke, with noise; now and then just strokes."""
    kind = rng.choice(["comb", "ticks", "strokes"], p=[0.55, 0.35, 0.1])
    cells, pitch = int(rng.integers(1, 12)), int(rng.integers(8, 60))
    t, ch = int(rng.integers(1, 6)), int(rng.integers(10, 70))
    if rng.random() < 0.15:  # one wide box: a string field
        cells, pitch = 1, int(rng.integers(2 * ch, 6 * ch))
    h = ch + 2 * t + int(rng.integers(0, 8))
    w = cells * pitch + t + int(rng.integers(0, 8))
    sub = np.zeros((h, w), np.uint8)
    if kind == "comb":
        sub[:t] = 1
        sub[ch + t : ch + 2 * t] = 1
        for k in range(cells + 1):
            if rng.random() < 0.85:  # a wall (some missing)
                x = k * pitch + int(rng.integers(-2, 3) if 0 < k < cells else 0)
                sub[: ch + 2 * t, max(x, 0) : max(x + t + int(rng.integers(0, 2)), 0)] = 1
    elif kind == "ticks":
        base = h - t
        sub[base:] = 1
        tick_h = int(rng.integers(2, max(3, ch // 2)))
        for k in range(cells + 1):
            if rng.random() < 0.9:
                x = k * pitch + int(rng.integers(-1, 2))
                sub[max(base - tick_h, 0) : base, max(x, 0) : max(x + t, 0)] = 1
    for _ in range(int(rng.integers(0, 6))):  # strokes: digits in the cells, text beside
        a, b = rng.integers(0, [h, w]), rng.integers(0, [h, w])
        n = int(max(abs(a - b).max(), 1))
        for k in range(n + 1):
            r, c = (a + (b - a) * k / n).round().astype(int)
            sub[r, c] = 1
    sub ^= (rng.random((h, w)) < float(rng.choice([0.0, 0.0, 0.02, 0.1]))).astype(np.uint8)
    return sub


def test_random_pieces_give_the_same_fields() -> None:
    rng = np.random.default_rng(2026)
    kinds: dict[str, int] = {}
    for i in range(4000):
        sub = _random_piece(rng)
        g = _Geom(ppm=float(rng.choice([150.0, 200.0, 300.0])) / 25.4)
        x0, y0 = int(rng.integers(0, 2000)), int(rng.integers(0, 2000))
        for c_version, py_version in ((_frame, _frame_py), (_ticks, _ticks_py)):
            got, want = c_version(sub, x0, y0, g), py_version(sub, x0, y0, g)
            assert got == want, f"case {i}: {py_version.__name__} on a {sub.shape} piece"
            kind = "none" if want is None else want.kind
            kinds[kind] = kinds.get(kind, 0) + 1
    assert all(kinds.get(k, 0) > 50 for k in ("boxes", "square", "string", "ticks", "none")), kinds


def test_every_piece_of_generated_pages_gives_the_same_field(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from digitreader.synth import generate

    seen = {"frame": 0, "ticks": 0}

    Examine = Callable[[np.ndarray, int, int, _Geom], "fields._Found | None"]

    def both(c_version: Examine, py_version: Examine, name: str) -> Examine:
        def check(sub: np.ndarray, x0: int, y0: int, g: _Geom) -> fields._Found | None:
            got = c_version(sub, x0, y0, g)
            assert got == py_version(sub, x0, y0, g)
            seen[name] += 1
            return got

        return check

    monkeypatch.setattr(fields, "_frame", both(_frame, _frame_py, "frame"))
    monkeypatch.setattr(fields, "_ticks", both(_ticks, _ticks_py, "ticks"))
    for f in generate(tmp_path, pages=4, seed=74, kind="mixed", style="rough", data_dir=data_dir):
        for page in load_pages(f, Settings()):
            fields.find_fields(prepare_page(page))
    assert seen["frame"] > 40 and seen["ticks"] > 20


def test_a_line_covering_exactly_line_cover_counts_in_both() -> None:
    # A comb of 5 cells, 50 px wide, whose top line misses 10 of its 50 columns: exactly 0.8 covered.
    sub = np.zeros((40, 50), np.uint8)
    sub[:2, :40] = 1
    sub[37:39] = 1
    for x in (0, 12, 24, 36, 48):
        sub[:39, x : x + 2] = 1
    sub[:2, 38:48] = 0
    g = _Geom(ppm=150 / 25.4)
    want = _frame_py(sub, 0, 0, g)
    assert want is not None and want.kind == "boxes"
    assert _frame(sub, 0, 0, g) == want


def test_faint_pixels_tested_one_by_one_match_the_whole_page_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`faint_line_mask` tests a few faint pixels one by one (`_blackhat_at`) and many by closing the
    whole page: the same mask either way, at the page's edges too (OpenCV's default border)."""
    rng = np.random.default_rng(5)
    gray = np.full((90, 120), 250, np.uint8)
    gray[10:12, :] = 205  # a thin light line, along the top edge's neighbourhood
    gray[40:44, 5:115] = 210  # a line 4 pixels wide
    gray[60:75, :] = cv2.GaussianBlur(np.full((15, 120), 200, np.uint8), (0, 0), 3)  # a soft band
    gray[:, 0:2] = 215  # a light line along the left edge
    gray = np.clip(gray.astype(int) + rng.integers(-6, 7, gray.shape), 0, 255).astype(np.uint8)
    ink = np.zeros_like(gray)
    ink[40:44, 50:60] = 255
    ys, xs = np.nonzero(np.ones_like(gray))
    for k in (3, 5):
        full = cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, np.ones((k, k), np.uint8))
        assert np.array_equal(fields._blackhat_at(gray, ys, xs, k), full[ys, xs].astype(np.int32))
    masks = []
    for local in (10**9, -1):
        monkeypatch.setattr(fields, "FAINT_LOCAL", local)
        masks.append(fields.faint_line_mask(gray, 229.0, ink))
    assert np.array_equal(masks[0], masks[1])
    assert masks[0][10:12, 20:100].mean() > 200 and masks[0][41:43, 10:40].mean() > 200
    assert not masks[0][40:44, 50:60].any()  # already ink
