"""MNIST test digits for sample scans, read straight from the IDX gzip files (no torch needed).

Only the *test* split is ever used here: generated scans must never contain training digits.
"""

from __future__ import annotations

import gzip
import logging
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from digitreader.errors import DatasetError

log = logging.getLogger(__name__)

TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"

#: A digit source: (label, rng) -> ink-high uint8 image of that digit (any size, paper = 0).
DigitSource = Callable[[int, np.random.Generator], np.ndarray]


def read_idx(path: Path) -> np.ndarray:
    """Read one gzip IDX file (unsigned bytes) into a numpy array of its declared shape."""
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as exc:
        raise DatasetError(
            f"MNIST file missing: {path}", hint="set DIGITREADER_DATA_DIR to the folder holding mnist/"
        ) from exc
    except (OSError, EOFError) as exc:
        raise DatasetError(f"MNIST file unreadable or truncated: {path} ({exc})") from exc
    if len(data) < 4:
        raise DatasetError(f"MNIST file too short: {path}")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetError(f"not an unsigned-byte IDX file: {path}")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    expected = int(np.prod(dims))
    if body.size != expected:
        raise DatasetError(f"MNIST file truncated: {path} has {body.size} values, header says {expected}")
    return body.reshape(dims)


class MnistTestDigits:
    """Default digit source: a random MNIST *test* image of the requested label."""

    def __init__(self, data_dir: Path | str) -> None:
        base = Path(data_dir)
        folder = base / "mnist" if (base / "mnist").is_dir() else base
        self.images = read_idx(folder / TEST_IMAGES)
        self.labels = read_idx(folder / TEST_LABELS)
        if len(self.images) != len(self.labels):
            raise DatasetError(f"MNIST test images and labels differ in count in {folder}")
        self.by_label = [np.flatnonzero(self.labels == d) for d in range(10)]
        log.debug("loaded %d MNIST test digits from %s", len(self.labels), folder)

    def __call__(self, label: int, rng: np.random.Generator) -> np.ndarray:
        idx = self.by_label[label]
        return self.images[int(idx[rng.integers(len(idx))])]
