"""Fast decoding of the TIFF pages scanners write: 8-bit greyscale or RGB in strips, uncompressed or
Deflate, with or without the horizontal predictor.

Pillow decodes such a page through libtiff and zlib (about 70 ms for a 300-dpi A4 page here); the
strips are inflated with libdeflate instead (`png.inflate`, as for PNG), the predictor undone
with numpy, and the pixels are Pillow's own. Tags are read from the frame Pillow has already parsed
(`Image.tag_v2`), so multi-page files go page by page as before.

`decode_frame(data, im)` returns None for anything else (LZW, JPEG or CCITT compression, tiles,
other bit depths, planar or alpha samples, a strip that does not inflate to its size):
the loader then decodes the frame with Pillow, which also reports what is wrong with a damaged one.
Except for damaged Deflate data: a strip that zlib rejects (a bad header, bad codes, a checksum that
does not match) raises `DamagedStrip`, and the page fails. Pillow's libtiff fails some of these too,
but inflates data corrupt past its header without a word, giving a band of garbage.
"""

from __future__ import annotations

import mmap
import zlib
from typing import Any

import numpy as np

from digitreader.pipeline.png import inflate

#: TIFF tags read here (baseline TIFF 6.0 numbers).
WIDTH, HEIGHT, BITS, COMPRESSION, PHOTOMETRIC = 256, 257, 258, 259, 262
FILL_ORDER, STRIP_OFFSETS, ORIENTATION, SAMPLES, ROWS_PER_STRIP, STRIP_BYTES = 266, 273, 274, 277, 278, 279
PLANAR, PREDICTOR, EXTRA_SAMPLES, SAMPLE_FORMAT, TILE_WIDTH = 284, 317, 338, 339, 322
#: Compression: 1 none, 8 Deflate (Adobe), 32946 Deflate (the older code).
DEFLATE = (8, 32946)


class DamagedStrip(ValueError):
    """A strip's Deflate data is corrupt (zlib reports a data error); its message says which strip."""


def _check_stream(strip: Any, index: int) -> None:
    """Raise `DamagedStrip` when zlib finds the strip's data corrupt. A stream that is only cut short
    or lacks its checksum (some writers) is not raised for: Pillow decodes those as it always has."""
    try:
        zlib.decompressobj().decompress(bytes(strip))
    except zlib.error as exc:
        raise DamagedStrip(f"strip {index + 1} of its Deflate data is damaged ({exc})") from exc


def _one(tags: Any, tag: int, default: int) -> int:
    v = tags.get(tag, default)
    if isinstance(v, tuple):
        if not v or any(x != v[0] for x in v):
            return -1
        v = v[0]
    return int(v)


def decode_frame(data: bytes | mmap.mmap, im: Any) -> np.ndarray | None:
    """The current frame of the TIFF `im` (a Pillow image, parsed from `data`, the file's bytes or the
    file mapped into memory) as Pillow would give it (`np.asarray`: (h, w) grey, (h, w, 3) RGB) as
    stored, not turned by its Orientation tag (the caller turns it), or None (decode it with Pillow).
    Each strip is sliced out of `data` as bytes: nothing keeps a
    reference into a mapped file once this returns."""
    if getattr(im, "format", None) != "TIFF" or im.mode not in ("L", "RGB"):
        return None
    tags = im.tag_v2
    width, height = _one(tags, WIDTH, 0), _one(tags, HEIGHT, 0)
    spp = _one(tags, SAMPLES, 1)
    compression = _one(tags, COMPRESSION, 1)
    photometric = _one(tags, PHOTOMETRIC, -1)
    predictor = _one(tags, PREDICTOR, 1)
    if (
        width <= 0
        or height <= 0
        or (width, height) not in (im.size, im.size[::-1])  # Pillow 13 gives a turned page its turned size
        or _one(tags, BITS, 1) != 8
        or spp != {"L": 1, "RGB": 3}[im.mode]
        or (spp, photometric) not in ((1, 0), (1, 1), (3, 2))
        or compression not in (1, *DEFLATE)
        or predictor not in (1, 2)
        or (predictor == 2 and compression == 1)  # not defined uncompressed; Pillow ignores it, libtiff not
        or _one(tags, PLANAR, 1) != 1
        or _one(tags, FILL_ORDER, 1) != 1
        or _one(tags, ORIENTATION, 1) not in range(1, 9)
        or _one(tags, SAMPLE_FORMAT, 1) != 1
        or EXTRA_SAMPLES in tags
        or TILE_WIDTH in tags
    ):
        return None
    offsets, counts = tags.get(STRIP_OFFSETS), tags.get(STRIP_BYTES)
    if not isinstance(offsets, tuple) or not isinstance(counts, tuple) or len(offsets) != len(counts):
        return None
    rows = min(_one(tags, ROWS_PER_STRIP, height), height)
    if rows <= 0 or len(offsets) != -(-height // rows):
        return None
    stride = width * spp
    out = np.empty(height * stride, np.uint8)
    for i, (off, n) in enumerate(zip(offsets, counts, strict=True)):
        size = min(rows, height - i * rows) * stride
        if off < 0 or n < 0 or off + n > len(data):
            return None
        strip: Any = data[off : off + n]
        if compression in DEFLATE:
            inflated = inflate(strip, size)
            if inflated is None:
                _check_stream(strip, i)
            strip = inflated
        if strip is None or len(strip) < size:
            return None
        out[i * rows * stride : i * rows * stride + size] = np.frombuffer(strip, np.uint8, count=size)
    pixels = out.reshape(height, width, spp)
    if predictor == 2:  # each sample stored as its difference from the same sample to its left
        np.cumsum(pixels, axis=1, dtype=np.uint8, out=pixels)
    if spp == 1:
        grey = pixels[:, :, 0]
        return 255 - grey if photometric == 0 else grey  # WhiteIsZero: Pillow gives the inverse
    return pixels
