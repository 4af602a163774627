"""The shared MNIST normalization (`digitreader.pipeline.normalize`)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from digitreader.pipeline.normalize import is_blank, normalize_digit, normalize_ink


def _draw_seven(h: int = 120, w: int = 90, thickness: int = 9) -> np.ndarray:
    """A '7' in dark ink on light paper, with some margin."""
    img = np.full((h + 60, w + 60), 235, np.uint8)
    cv2.line(img, (30, 30), (30 + w, 30), 20, thickness)
    cv2.line(img, (30 + w, 30), (30 + w // 3, 30 + h), 20, thickness)
    return img


def _com(a: np.ndarray) -> tuple[float, float]:
    a = a.astype(np.float64)
    ys, xs = np.mgrid[: a.shape[0], : a.shape[1]]
    return float((a * ys).sum() / a.sum()), float((a * xs).sum() / a.sum())


def test_normalized_digit_has_mnist_geometry() -> None:
    out = normalize_digit(_draw_seven())
    assert out.shape == (28, 28) and out.dtype == np.uint8
    ys, xs = np.nonzero(out > 30)
    # The ink box fits 20x20 (plus a pixel of anti-aliasing) and its longer side is ~20.
    assert max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) in range(19, 23)
    cy, cx = _com(out)
    assert abs(cy - 14.0) < 0.6 and abs(cx - 14.0) < 0.6  # where MNIST has it
    # Ink high, paper zero at the corners.
    assert out.max() >= 200 and out[0, 0] == 0 and out[-1, -1] == 0


def test_polarity_is_detected() -> None:
    dark_on_light = _draw_seven()
    light_on_dark = 255 - dark_on_light
    a = normalize_digit(dark_on_light).astype(int)
    b = normalize_digit(light_on_dark).astype(int)
    assert np.abs(a - b).mean() < 3


def test_colour_and_16bit_inputs() -> None:
    g = _draw_seven()
    colour = cv2.cvtColor(g, cv2.COLOR_GRAY2BGR)
    deep = g.astype(np.uint16) * 257
    base = normalize_digit(g).astype(int)
    assert np.abs(normalize_digit(colour).astype(int) - base).mean() < 2
    assert np.abs(normalize_digit(deep).astype(int) - base).mean() < 2


def test_empty_crop_gives_zeros() -> None:
    assert not normalize_ink(np.zeros((40, 40), np.uint8)).any()
    assert not normalize_digit(np.full((40, 40), 240, np.uint8)).any()


@pytest.mark.parametrize(
    ("draw", "blank"),
    [
        (lambda m: None, True),
        (lambda m: cv2.circle(m, (20, 30), 1, 1, -1), True),  # a speck of dust
        (lambda m: cv2.line(m, (25, 8), (26, 52), 1, 1), False),  # a faint, thin "1"
        (lambda m: cv2.ellipse(m, (25, 30), (12, 18), 0, 0, 360, 1, 3), False),  # a "0"
    ],
)
def test_blank_test(draw, blank: bool) -> None:
    m = np.zeros((60, 50), np.uint8)
    draw(m)
    assert is_blank(m.astype(bool)) is blank


def test_scanned_mnist_digit_normalizes_back_to_mnist(data_dir) -> None:
    """A test digit printed large (dark on paper, blurred like a scan) comes back close to its MNIST form."""
    from digitreader.synth.mnist import MnistTestDigits

    src = MnistTestDigits(data_dir)
    for i in (0, 1, 2, 3, 4):
        mnist = src.images[i]
        big = cv2.resize(mnist, (112, 112), interpolation=cv2.INTER_CUBIC)
        scan = 245 - (big.astype(np.float32) * 0.85)
        scan = cv2.GaussianBlur(np.pad(scan, 30, constant_values=245), (0, 0), 1.2).astype(np.uint8)
        out = normalize_digit(scan).astype(np.float32)
        ref = mnist.astype(np.float32)
        corr = float(np.corrcoef(out.ravel(), ref.ravel())[0, 1])
        assert corr > 0.85, (i, corr)


def test_faint_short_one_and_dust_in_a_tall_cell() -> None:
    m = np.zeros((80, 60), np.uint8)
    cv2.line(m, (30, 25), (31, 50), 1, 1)  # a short, faint "1": a third of the cell tall
    assert not is_blank(m.astype(bool))
    d = np.zeros((80, 60), np.uint8)
    for x, y in ((10, 10), (40, 60), (25, 70)):
        cv2.circle(d, (x, y), 1, 1, -1)  # scattered dust
    assert is_blank(d.astype(bool))
