"""Fast decoding of the PNG pages scanners write: 8-bit greyscale or RGB, not interlaced.

A 300-dpi A4 page is ~8.7 million pixels; decoding it is the largest single cost of a page. OpenCV
(libpng + zlib) spends most of that time inflating the data and undoing the row filters. Here the
data is inflated with libdeflate (the `deflate` package, about twice as fast as zlib) and the rows
are unfiltered in place by a small C loop (`_png.c`: runs of Paeth rows eight at a time in SSE2
lanes, Sub rows sixteen bytes at a time; four Paeth rows at a time in plain C elsewhere): the same
pixels as OpenCV's for greyscale (RGB is converted to grey by `cv2.cvtColor`, within one grey level of
libpng's own conversion). On a 300-dpi A4 page, inflating takes about 23-28 ms and unfiltering 4-5
(17 before the SSE2 lanes); OpenCV takes 60-90 ms for the whole.

`decode_png(data)` returns None for anything else (palette, 16-bit, alpha, interlaced, a damaged
stream, or the C part not built): the loader then decodes the file with OpenCV as before, and
Pillow reports what is wrong with a damaged one.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import numpy as np

try:  # the C half, built at install time (optional: no compiler, no fast path)
    from digitreader.pipeline import _png
except ImportError:  # pragma: no cover - depends on how the package was installed
    _png = None  # type: ignore[assignment]

try:
    import deflate as _deflate
except ImportError:  # pragma: no cover - a runtime dependency, but the fallback costs nothing
    _deflate = None  # type: ignore[assignment]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Colour types handled here: 0 greyscale, 2 RGB (8 bits a sample).
CHANNELS = {0: 1, 2: 3}


def inflate(data: Any, size: int) -> Any:
    """A zlib stream inflated by libdeflate to exactly `size` bytes (a bytearray), or None when
    libdeflate is not installed or the stream is damaged, fails its Adler-32 or inflates to more."""
    if _deflate is None:
        return None
    try:
        return _deflate.zlib_decompress(data, size)  # checks the stream's Adler-32
    except (_deflate.DeflateError, ValueError, MemoryError):
        return None


def available() -> bool:
    """True when the fast path can run (the C extension is built and libdeflate is installed)."""
    return _png is not None and _deflate is not None


def _chunks(data: bytes) -> tuple[bytes, list[memoryview]] | None:
    """(IHDR payload, IDAT payloads) of a PNG, or None when its chunk structure is broken."""
    view = memoryview(data)
    pos, end = len(SIGNATURE), len(data)
    ihdr: bytes | None = None
    idat: list[memoryview] = []
    while pos + 8 <= end:
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        start = pos + 8
        if start + length + 4 > end:
            return None
        if kind == b"IHDR":
            ihdr = bytes(view[start : start + length])
        elif kind == b"IDAT":
            idat.append(view[start : start + length])
        elif kind == b"IEND":
            break
        pos = start + length + 4
    if ihdr is None or len(ihdr) != 13 or not idat:
        return None
    return ihdr, idat


#: Compressed streams up to this size are gathered in a buffer kept per thread (`_joined`).
REUSE_LIMIT = 64 << 20
_local = threading.local()


def _joined(parts: list[memoryview]) -> memoryview | bytes:
    """The IDAT payloads as one buffer, for libdeflate (which takes the whole stream at once).

    A page's stream is several megabytes in dozens of chunks; `b"".join` puts it in fresh memory
    each time, and the operating system's zeroing of those new pages costs about as much again as
    the copy (~3 ms a 300-dpi page). Gathered in a buffer kept by the thread, the pages are reused.
    """
    n = sum(len(p) for p in parts)
    if n > REUSE_LIMIT:
        return b"".join(parts)
    buf: bytearray | None = getattr(_local, "buf", None)
    if buf is None or len(buf) < n:
        buf = _local.buf = bytearray(n)
    pos = 0
    for p in parts:
        buf[pos : pos + len(p)] = p
        pos += len(p)
    return memoryview(buf)[:n]


def decode_png(data: bytes, *, gray: bool = True) -> np.ndarray | None:
    """Pixels of an 8-bit greyscale or RGB non-interlaced PNG, or None (decode it another way).

    `gray`: an RGB page is returned converted to grey (`normalize.colour_to_gray`: OpenCV's BT.601
    weights where it holds no colour), else as (h, w, 3) RGB.
    """
    if not available() or not data.startswith(SIGNATURE):
        return None
    parts = _chunks(data)
    if parts is None:
        return None
    ihdr, idat = parts
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", ihdr)
    channels = CHANNELS.get(colour)
    if channels is None or depth != 8 or compression or filtering or interlace or not width or not height:
        return None
    stride = width * channels
    size = height * (stride + 1)
    raw = inflate(_joined(idat), size)
    if raw is None or len(raw) != size:
        return None
    try:
        _png.unfilter(raw, height, stride, channels)
    except ValueError:
        return None
    pixels = np.frombuffer(raw, np.uint8, count=height * stride).reshape(height, width, channels)
    if channels == 1:
        return pixels[:, :, 0]
    if not gray:
        return pixels
    from digitreader.pipeline.normalize import colour_to_gray

    return colour_to_gray(pixels, rgb=True)
