"""The cut stage's C half (`pipeline/_cut.c`) against its Python original: box-line removal
(`cut._remove_lines_py`) and a box cell's whole mask (`cut._cell_mask`: faint strokes grown back,
lines removed, the cell's own pieces kept, the blank test).

The C versions must give the same pixels and the same blank decisions: on every window that
segmentation cuts from generated pages of every kind and style, and on random windows built to hit
the rules' edge cases (lines thicker than a pen, strokes along and across lines, ticks, faint
strokes, specks, interiors reaching past the window).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digitreader.pipeline import cut
from digitreader.pipeline.cut import _cell_mask, _cell_mask_native, _remove_lines_py, _Window, _window, remove_lines
from digitreader.pipeline.load import load_pages
from digitreader.pipeline.segment import segment_page
from digitreader.settings import Settings
from digitreader.types import PreparedPage

pytestmark = pytest.mark.skipif(cut._cut is None, reason="the C extension was not built (no C compiler)")


def _random_window(rng: np.random.Generator) -> tuple[_Window, int, bool, int | None]:
    """A window with a box (lines of random thickness, some broken or missing), strokes crossing and
    running along its lines, ticks at its bottom corners, and noise; its interior may reach past
    the window on any side."""
    h, w = int(rng.integers(8, 90)), int(rng.integers(8, 90))
    ink = np.zeros((h, w), bool)
    x0, y0 = int(rng.integers(-4, w // 2)), int(rng.integers(-4, h // 2))
    x1, y1 = int(rng.integers(x0 + 1, w + 5)), int(rng.integers(y0 + 1, h + 5))
    max_t = int(rng.integers(2, 9))
    t = int(rng.integers(1, max_t + 2))

    def hline(y: int, thick: int) -> None:
        ink[max(y, 0) : max(y + thick, 0), max(x0 - t, 0) : max(x1 + t, 0)] = True

    def vline(x: int, thick: int) -> None:
        ink[max(y0 - t, 0) : max(y1 + t, 0), max(x, 0) : max(x + thick, 0)] = True

    for side in range(4):
        if rng.random() < 0.85:
            thick = t + int(rng.integers(0, 2))
            if side < 2:
                hline(y0 - thick if side == 0 else y1, thick)
            else:
                vline(x0 - thick if side == 2 else x1, thick)
    if rng.random() < 0.3:  # ticks: short strokes rising from the bottom line at the interior's edges
        th = int(rng.integers(1, max(2, (y1 - y0)))) if y1 > y0 else 1
        for x in (x0 - t, x1):
            ink[max(y1 - th, 0) : max(y1, 0), max(x, 0) : max(x + t, 0)] = True
    for _ in range(int(rng.integers(0, 6))):  # strokes: across, along, anywhere
        a, b = rng.integers(0, [h, w]), rng.integers(0, [h, w])
        n = int(max(abs(a - b).max(), 1))
        for k in range(n + 1):
            r, c = (a + (b - a) * k / n).round().astype(int)
            ink[max(r - 1, 0) : r + 1, max(c - 1, 0) : c + 1] = True
    if rng.random() < 0.4:  # a bar lying along the top line, inside
        ink[max(y0, 0) : max(y0 + int(rng.integers(1, 4)), 0), max(x0 + 2, 0) : max(x1 - 2, 0)] = True
    ink ^= rng.random((h, w)) < float(rng.choice([0.0, 0.01, 0.05]))
    pen = None if rng.random() < 0.5 else int(rng.integers(1, max_t + 1))
    return _Window(0, 0, ink, (x0, y0, x1, y1)), max_t, bool(rng.random() < 0.5), pen


def test_random_windows_give_the_same_pixels() -> None:
    rng = np.random.default_rng(2026)
    changed = 0
    for i in range(3000):
        win, max_t, ticks, pen = _random_window(rng)
        level = float(rng.choice([0.6, 0.5, 0.8]))
        want = _remove_lines_py(win, max_t, level, ticks, pen)
        got = remove_lines(win, max_t, level, ticks, pen)
        assert got.dtype == bool and got.shape == win.ink.shape
        assert np.array_equal(got, want), f"case {i}: inner {win.inner}, max_t {max_t}, ticks {ticks}, pen {pen}"
        assert not np.shares_memory(got, win.ink)
        changed += int(not np.array_equal(want, win.ink))
    assert changed > 1500  # the cases do take lines out, not only copy the window


def test_a_window_without_lines_or_interior_is_copied() -> None:
    ink = np.zeros((10, 12), bool)
    ink[2:5, 3:9] = True
    for inner in [(3, 2, 3, 8), (20, 2, 30, 8), (-9, -9, -1, -1)]:  # empty, right of it, above-left of it
        out = remove_lines(_Window(0, 0, ink, inner), max_t=3)
        assert np.array_equal(out, ink) and not np.shares_memory(out, ink)


def test_a_non_contiguous_window_is_read_as_its_pixels() -> None:
    rng = np.random.default_rng(7)
    win, max_t, ticks, pen = _random_window(rng)
    big = np.zeros((win.ink.shape[0], 2 * win.ink.shape[1]), bool)
    big[:, ::2] = win.ink
    view = _Window(0, 0, big[:, ::2], win.inner)
    assert np.array_equal(remove_lines(view, max_t, 0.6, ticks, pen), _remove_lines_py(win, max_t, 0.6, ticks, pen))


def test_bad_buffers_are_refused() -> None:
    ink = np.zeros((4, 5), np.uint8)
    with pytest.raises(ValueError, match="height \\* width"):
        cut._cut.remove_lines(ink, np.zeros((4, 4), np.uint8), 4, 5, 0, 0, 5, 4, 3, 0.6, False, -1)
    with pytest.raises(ValueError, match="height \\* width"):
        cut._cut.remove_lines(ink, ink.copy(), 5, 5, 0, 0, 5, 4, 3, 0.6, False, -1)


@pytest.mark.parametrize(
    ("kind", "style", "dpi", "seed"),
    [("form", "scan", 300, 61), ("cheque", "rough", 200, 62), ("mixed", "rough", 150, 63)],
)
def test_every_window_of_generated_pages(
    tmp_path: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    style: str,
    dpi: int,
    seed: int,
) -> None:
    from digitreader.synth import generate

    files = generate(tmp_path, pages=3, seed=seed, kind=kind, style=style, dpi=dpi, data_dir=data_dir)
    seen: list[tuple[bool, bool]] = []

    def both(win: _Window, max_t: int, level: float = 0.6, ticks: bool = False, pen: int | None = None) -> np.ndarray:
        want = _remove_lines_py(win, max_t, level, ticks, pen)
        got = remove_lines(win, max_t, level, ticks, pen)
        assert np.array_equal(got, want), f"window at {win.x0},{win.y0} inner {win.inner}, pen {pen}"
        seen.append((ticks, not np.array_equal(want, win.ink)))
        return got

    monkeypatch.setattr(cut, "remove_lines", both)
    monkeypatch.setattr(cut, "_cell_mask_native", lambda *a: None)  # box cells' windows too, through _cell_mask
    for f in files:
        for page in load_pages(f, Settings()):
            segment_page(page)
    assert len(seen) > 20  # a cheque has a few fields, a form dozens
    assert sum(changed for _, changed in seen) > 0.8 * len(seen)  # box lines were taken out of most


def _python_cell_mask(
    prepared: PreparedPage, win: _Window, cell: tuple[int, int, int, int], max_t: int, pen: int | None
) -> tuple[np.ndarray, bool]:
    """`_cell_mask` with the Python line removal: the reference, all in Python."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cut, "remove_lines", _remove_lines_py)
        return _cell_mask(prepared, win, cell, max_t, pen)


def _random_page(rng: np.random.Generator) -> tuple[PreparedPage, list[tuple[int, int, int, int]]]:
    """A small page and its cells: a row of boxes, digits' strokes strong and faint across and along
    the lines, specks, all cut off by the page's edges here and there."""
    h, w = int(rng.integers(40, 110)), int(rng.integers(60, 220))
    gray = np.full((h, w), 250, np.uint8)
    cw, ch = int(rng.integers(12, 40)), int(rng.integers(14, 45))
    x0, y0, t = int(rng.integers(-8, 20)), int(rng.integers(-8, 20)), int(rng.integers(1, 4))
    line = int(rng.choice([30, 120, 190]))  # dark, grey or faint box lines
    for k in range(int(rng.integers(1, 7)) + 1):
        x = x0 + k * cw
        gray[max(y0, 0) : max(y0 + ch + t, 0), max(x, 0) : max(x + t, 0)] = line
    gray[max(y0, 0) : max(y0 + t, 0), max(x0, 0) :] = line
    gray[max(y0 + ch, 0) : max(y0 + ch + t, 0), max(x0, 0) :] = line
    for _ in range(int(rng.integers(2, 14))):  # strokes, some faint
        a, b = rng.integers(0, [h, w]), rng.integers(0, [h, w])
        tone = int(rng.choice([20, 150, 215]))
        n = int(max(abs(a - b).max(), 1))
        for k in range(n + 1):
            r, c = (a + (b - a) * k / n).round().astype(int)
            gray[max(r - 1, 0) : r + 1, max(c - 1, 0) : c + 1] = tone
    for _ in range(int(rng.integers(0, 10))):  # blobs from a speck to a third of a cell
        bh, bw = int(rng.integers(1, ch // 3 + 2)), int(rng.integers(1, cw // 3 + 2))
        r, c = int(rng.integers(0, h)), int(rng.integers(0, w))
        gray[r : r + bh, c : c + bw] = int(rng.choice([20, 150]))
    for _ in range(int(rng.integers(0, 40)) if rng.random() < 0.3 else 0):  # dust: many dots, none big
        d = int(rng.integers(2, 5))
        r, c = int(rng.integers(0, h)), int(rng.integers(0, w))
        gray[r : r + d, c : c + d] = 30
    for _ in range(int(rng.integers(0, 4))):  # strokes standing along a wall, inside its cell
        k, sw, sh = int(rng.integers(0, 7)), int(rng.integers(1, 4)), int(rng.integers(ch // 3, ch + 1))
        x = x0 + k * cw + t + int(rng.integers(0, 3)) if rng.random() < 0.5 else x0 + (k + 1) * cw - sw - 1
        top = y0 + t + int(rng.integers(0, max(ch - sh, 1)))
        gray[max(top, 0) : max(top + sh, 0), max(x, 0) : max(x + sw, 0)] = 40
    specks = rng.random((h, w)) < float(rng.choice([0.0, 0.01, 0.03]))
    gray[specks] = 60
    weak = float(rng.choice([200.0, 225.5, 231.0]))
    ink = np.where(gray < 160, 255, 0).astype(np.uint8)
    prepared = PreparedPage(0, gray, ink, np.eye(2, 3), w, h, dpi=150.0, levels=(160.0, weak))
    return prepared, [(x0 + k * cw + t, y0 + t, cw - t, ch - t) for k in range(7)]


def test_cell_masks_of_random_pages_are_the_same() -> None:
    rng = np.random.default_rng(2027)
    blanks = digits = 0
    for i in range(600):
        prepared, cells = _random_page(rng)
        for cell in cells:
            x, y, w, h = cell
            if x + w <= 0 or y + h <= 0 or x >= prepared.gray.shape[1] or y >= prepared.gray.shape[0]:
                continue
            win = _window(prepared, cell, 0.22 * w, 0.3 * h)
            max_t, pen = int(rng.integers(2, 8)), None if rng.random() < 0.5 else int(rng.integers(1, 4))
            got = _cell_mask_native(prepared, win, cell, max_t, pen)
            if x < 0 or y < 0:  # the interior starts before the window: left to the Python version
                assert got is None
                continue
            want = _python_cell_mask(prepared, win, cell, max_t, pen)
            assert got is not None
            assert got[1] == want[1], f"page {i}, cell {cell}: blank {got[1]}, Python says {want[1]}"
            assert got[0].dtype == bool and np.array_equal(got[0], want[0]), f"page {i}, cell {cell}"
            blanks += want[1]
            digits += not want[1]
    assert blanks > 300 and digits > 300  # both decisions were exercised


def test_cell_masks_of_generated_pages_are_the_same(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from digitreader.synth import generate

    files = generate(tmp_path, pages=3, seed=64, kind="mixed", style="rough", dpi=300, data_dir=data_dir)
    seen: list[bool] = []

    def both(
        prepared: PreparedPage, win: _Window, cell: tuple[int, int, int, int], max_t: int, pen: int | None
    ) -> tuple[np.ndarray, bool] | None:
        got = _cell_mask_native(prepared, win, cell, max_t, pen)
        want = _python_cell_mask(prepared, win, cell, max_t, pen)
        assert got is not None and got[1] == want[1] and np.array_equal(got[0], want[0]), f"cell {cell}"
        seen.append(want[1])
        return got

    monkeypatch.setattr(cut, "_cell_mask_native", both)
    for f in files:
        for page in load_pages(f, Settings()):
            segment_page(page)
    assert len(seen) > 40 and 0 < sum(seen) < len(seen)  # blank cells and digits both


def test_cell_mask_refuses_an_interior_before_its_window() -> None:
    z = np.zeros((6, 6), np.uint8)
    with pytest.raises(ValueError, match="must not start"):
        cut._cut.cell_mask(z, z, z.copy(), 6, 6, 200.0, -1, 0, 4, 4, 4, 4, 3, -1)
    with pytest.raises(ValueError, match="height \\* width"):
        cut._cut.cell_mask(z, z[:5], z.copy(), 6, 6, 200.0, 0, 0, 4, 4, 4, 4, 3, -1)
