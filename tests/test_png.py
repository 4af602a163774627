"""The fast PNG decoder (libdeflate + C unfiltering) against PNGs written here with every row filter,
against OpenCV on the same files, and its fallbacks (None) for what it does not handle."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from digitreader.pipeline import png
from digitreader.pipeline.load import load_pages
from digitreader.pipeline.normalize import colour_to_gray
from digitreader.settings import Settings


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _filter_row(kind: int, row: np.ndarray, prev: np.ndarray, bpp: int) -> bytes:
    """One row filtered with PNG filter `kind` (the encoder's side, written out from the spec)."""
    r = row.astype(np.int32)
    p = prev.astype(np.int32)
    left = np.concatenate([np.zeros(bpp, np.int32), r[:-bpp]])
    upleft = np.concatenate([np.zeros(bpp, np.int32), p[:-bpp]])
    if kind == 0:
        out = r
    elif kind == 1:
        out = r - left
    elif kind == 2:
        out = r - p
    elif kind == 3:
        out = r - (left + p) // 2
    else:
        out = r - np.array([_paeth(a, b, c) for a, b, c in zip(left, p, upleft, strict=True)], np.int32)
    return bytes([kind]) + (out % 256).astype(np.uint8).tobytes()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_png(img: np.ndarray, filters: list[int], *, colour: int | None = None, interlace: int = 0) -> bytes:
    """A PNG of `img` (h, w) grey or (h, w, 3) RGB whose row y uses filter filters[y % len(filters)]."""
    h, w = img.shape[:2]
    bpp = 1 if img.ndim == 2 else img.shape[2]
    colour = (0 if bpp == 1 else 2) if colour is None else colour
    flat = img.reshape(h, w * bpp)
    prev = np.zeros(w * bpp, np.uint8)  # the first row's "row above" is zeros, as the spec says
    rows = []
    for y in range(h):
        rows.append(_filter_row(filters[y % len(filters)], flat[y], prev, bpp))
        prev = flat[y]
    raw = b"".join(rows)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, interlace)
    return png.SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def page() -> np.ndarray:
    """A grey image with paper, strokes and noise, odd width (no row is a multiple of anything)."""
    rng = np.random.default_rng(7)
    img = np.full((61, 97), 235, np.uint8)
    cv2.line(img, (3, 5), (90, 50), 20, 3)
    cv2.circle(img, (40, 30), 15, 60, 2)
    return np.clip(img.astype(np.int16) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(params=[True, False], ids=["lanes", "plain"])
def lanes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways _png.c unfilters: with its SSE2 lanes (where built with SSE2, as on every x86-64), and
    in plain C alone (`unfilter(..., lanes=False)`, as on a CPU without SSE2): the same bytes."""
    from digitreader.pipeline import _png

    if not request.param:

        class Plain:
            @staticmethod
            def unfilter(buf: bytearray, height: int, stride: int, bpp: int) -> None:
                _png.unfilter(buf, height, stride, bpp, False)

        monkeypatch.setattr(png, "_png", Plain)
    return bool(request.param)


@pytest.mark.parametrize("filters", [[0], [1], [2], [3], [4], [4, 1, 2, 3, 0], [2, 4, 3, 1, 0, 4]])
def test_every_row_filter_gives_the_pixels_back(page: np.ndarray, filters: list[int], lanes: bool) -> None:
    data = write_png(page, filters)
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert ref is not None and np.array_equal(ref, page)  # a valid PNG
    out = png.decode_png(data)
    assert out is not None and out.dtype == np.uint8 and np.array_equal(out, page)


PAETH_RUNS = [[4], [4, 4, 1], [4, 4, 4, 2], [4, 4, 4, 4, 3], [4] * 7 + [0], [4] * 8 + [1], [4] * 9 + [2],
              [4] * 16 + [0], [4] * 17 + [3]]  # fmt: skip


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 97])
@pytest.mark.parametrize("filters", PAETH_RUNS)
def test_runs_of_paeth_rows_decoded_together(width: int, filters: list[int], lanes: bool) -> None:
    # Runs of Paeth rows are decoded together, each row a pixel behind the one above: up to eight in
    # one vector with the lanes (_png.c, paeth_simd, eight columns a block), up to four without them
    # (paeth_wave). Every run length below, at and past eight, pages narrower than the run and
    # around a block's width, on noise that takes each of the predictor's three choices.
    img = np.random.default_rng(width).integers(0, 256, (41, width), dtype=np.uint8)
    img[5:9] = 200  # flat rows too: ties between the choices
    img[20:30, : width // 2] = 0
    out = png.decode_png(write_png(img, filters))
    assert out is not None and np.array_equal(out, img)


@pytest.mark.parametrize("width", [1, 15, 16, 17, 31, 32, 33, 97])
def test_sub_rows_across_vector_blocks(width: int, lanes: bool) -> None:
    # Sub rows are a running sum, done sixteen bytes at a time with the lanes (sub_row_simd): the
    # sum carried from block to block and into the bytes after the last whole block; the first row
    # (whose Paeth is a Sub) too.
    img = np.random.default_rng(width + 100).integers(0, 256, (9, width), dtype=np.uint8)
    for filters in ([1], [4, 1], [1, 2]):
        out = png.decode_png(write_png(img, filters))
        assert out is not None and np.array_equal(out, img)


def test_pages_one_after_another_share_the_stream_buffer(page: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    # The compressed stream is gathered in a buffer the thread keeps (png._joined): a smaller page
    # after a larger one must read only its own stream, and a stream over the limit is joined afresh.
    big = cv2.resize(page, (page.shape[1] * 6, page.shape[0] * 5), interpolation=cv2.INTER_CUBIC)
    small = page[:20, :30].copy()
    for img in (big, small, big, small):
        out = png.decode_png(write_png(img, [4, 1, 2]))
        assert out is not None and np.array_equal(out, img)
    monkeypatch.setattr(png, "REUSE_LIMIT", 10)
    out = png.decode_png(write_png(big, [4, 2]))
    assert out is not None and np.array_equal(out, big)


@pytest.mark.parametrize("filters", [[1], [3], [4], [4, 3, 2, 1, 0]])
def test_rgb_rows_unfilter_per_pixel(page: np.ndarray, filters: list[int]) -> None:
    rgb = np.stack([page, 255 - page, np.roll(page, 5, axis=1)], axis=2)
    data = write_png(rgb, filters)
    out = png.decode_png(data, gray=False)
    assert out is not None and np.array_equal(out, rgb)
    grey = png.decode_png(data)
    assert grey is not None and grey.shape == page.shape
    # A page with colour is grey by its darkest channel (`normalize.colour_to_gray`), not luminance.
    assert np.array_equal(grey, colour_to_gray(rgb, rgb=True))
    assert np.array_equal(
        grey, np.maximum(rgb.min(axis=2), np.clip(2 * cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(int) - 255, 0, 255))
    )
    # One without colour (three equal channels) is its luminance, as libpng's own conversion makes it.
    data = write_png(np.stack([page, page, page], axis=2), filters)
    grey = png.decode_png(data)
    ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert ref is not None and grey is not None
    assert np.abs(grey.astype(int) - ref.astype(int)).max() <= 1  # rounding of the grey conversion


def test_opencv_written_pages_decode_identically(page: np.ndarray, lanes: bool) -> None:
    big = cv2.resize(page, (page.shape[1] * 9, page.shape[0] * 7), interpolation=cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".png", big)  # libpng's own adaptive choice of filters
    assert ok
    out = png.decode_png(buf.tobytes())
    assert out is not None and np.array_equal(out, big)


def test_what_it_does_not_handle_is_left_to_opencv(page: np.ndarray) -> None:
    good = write_png(page, [4, 1])
    assert png.decode_png(write_png(page, [1], interlace=1)) is None  # Adam7
    assert png.decode_png(good[:-40]) is None  # cut short
    assert png.decode_png(b"GIF89a" + good[6:]) is None  # not a PNG
    corrupt = bytearray(good)
    corrupt[len(good) // 2] ^= 0x55  # inside the compressed data: the Adler-32 (or inflate) fails
    assert png.decode_png(bytes(corrupt)) is None
    # An unknown filter type (7) in the first row.
    ihdr = struct.pack(">IIBBBBB", 3, 2, 8, 0, 0, 0, 0)
    raw = bytes([7, 1, 2, 3, 0, 1, 2, 3])
    bad_filter = png.SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")
    assert png.decode_png(bad_filter) is None
    ok, pal = cv2.imencode(".png", (page > 128).astype(np.uint8) * 255, [cv2.IMWRITE_PNG_BILEVEL, 1])
    assert ok and png.decode_png(pal.tobytes()) is None  # 1 bit a pixel
    ok, deep = cv2.imencode(".png", page.astype(np.uint16) * 257)
    assert ok and png.decode_png(deep.tobytes()) is None  # 16 bits a sample


def test_unfilter_refuses_a_short_buffer() -> None:
    from digitreader.pipeline import _png

    with pytest.raises(ValueError, match="smaller"):
        _png.unfilter(bytearray(10), 3, 4, 1)


def test_loader_reads_png_pages_through_the_fast_path(tmp_path: Path, page: np.ndarray) -> None:
    f = tmp_path / "page.png"
    f.write_bytes(write_png(page, [4, 2, 1]))
    (p,) = list(load_pages(f, Settings(_env_file=None)))  # type: ignore[call-arg]
    assert np.array_equal(p.gray, page) and p.gray.flags.c_contiguous
    # A damaged file still gets the loader's specific error, not a silent wrong page.
    bad = tmp_path / "bad.png"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x55
    bad.write_bytes(bytes(data))
    from digitreader.errors import InputError

    with pytest.raises(InputError):
        list(load_pages(bad, Settings(_env_file=None)))  # type: ignore[call-arg]
