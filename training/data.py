"""Datasets: MNIST (IDX gzip, SHA-256 checked), the Kaggle digit-recognizer CSV, labelled image folders.

Every loader returns a `Dataset`: (N, 28, 28) uint8 images in the MNIST form (ink high) and int64
labels (0-9, 10 = not a digit; None for unlabelled data). Problems with a file raise `DatasetError`
with a stable code: missing, truncated, checksum, malformed.

The validation split is carved from the 60k MNIST training images with a fixed seed
(`train_val_split`). The 10k test set is only ever used for the final report, never to choose
anything (architecture, epochs, temperature, threshold).
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import struct
import tempfile
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from digitreader.errors import DatasetError
from digitreader.hashing import sha256_file
from digitreader.pipeline.normalize import normalize_digit

log = logging.getLogger(__name__)

MNIST_FILES: dict[str, tuple[str, str]] = {
    # split -> (images file, labels file)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: The published SHA-256 of the original gzip files.
KNOWN_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_COUNTS = {"train": 60_000, "test": 10_000}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
#: Folder names of an image folder that mean "not a digit" (label 10).
NON_DIGIT_DIRS = {"10", "x", "non-digit", "nondigit", "none"}


@dataclass(frozen=True)
class Dataset:
    """Images in the MNIST form and their labels (None when unlabelled)."""

    images: np.ndarray  # (N, 28, 28) uint8, ink high
    labels: np.ndarray | None  # (N,) int64: 0-9, 10 = not a digit
    source: str
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> sha256

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: np.ndarray) -> Dataset:
        labels = None if self.labels is None else self.labels[index]
        return Dataset(self.images[index], labels, self.source, self.checksums)


def resolve_data_dir(data_dir: Path | str | None) -> Path:
    """The folder holding mnist/: the argument, else DIGITREADER_DATA_DIR (via Settings)."""
    if data_dir is None:
        from digitreader.settings import get_settings

        data_dir = get_settings().data_dir
    if data_dir is None:
        raise DatasetError(
            "no data folder given",
            code="missing",
            hint="pass --data-dir DIR (the folder holding mnist/) or set DIGITREADER_DATA_DIR",
        )
    return Path(data_dir).expanduser()


def _mnist_folder(data_dir: Path) -> Path:
    # Accept both DIR (holding mnist/) and DIR/mnist itself.
    return data_dir if (data_dir / MNIST_FILES["test"][0]).exists() else data_dir / "mnist"


def _sums_file(folder: Path) -> dict[str, str]:
    sums: dict[str, str] = {}
    path = folder / "SHA256SUMS"
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def read_idx(path: Path) -> np.ndarray:
    """Decode one gzip-compressed IDX file (uint8 data); DatasetError when truncated or malformed."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile, OSError, Exception) as exc:  # zlib.error is not an OSError
        code = "truncated" if isinstance(exc, EOFError) else "malformed"
        raise DatasetError(
            f"{path}: cannot decompress ({exc})",
            code=code,
            hint="re-download the file (or delete it and use --download)",
        ) from exc
    if len(raw) < 8:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes)", code="truncated")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
        raise DatasetError(f"{path}: not an IDX uint8 file (magic {raw[:4].hex()})", code="malformed")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header", code="truncated")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "malformed"
        raise DatasetError(
            f"{path}: {len(raw) - header} data bytes, the header promises {expected - header}",
            code=what,
            hint="re-download the file",
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _check_file(path: Path, sums: dict[str, str]) -> str:
    if not path.exists():
        raise DatasetError(
            f"missing MNIST file: {path}",
            code="missing",
            hint="point --data-dir / DIGITREADER_DATA_DIR at the folder holding mnist/, or pass --download",
        )
    digest = sha256_file(path)
    known = KNOWN_SHA256.get(path.name)
    listed = sums.get(path.name)
    if digest != known or (listed is not None and listed != digest):
        read_idx(path)  # a truncated file says so more usefully than a checksum mismatch
        raise DatasetError(
            f"{path}: SHA-256 {digest[:16]}... does not match the published {known[:16] if known else '?'}...",
            code="checksum",
            hint="the file is corrupt or not the original MNIST; re-download it",
        )
    return digest


def download_mnist(folder: Path, names: Iterable[str] | None = None, mirrors: Iterable[str] | None = None) -> None:
    """Download the MNIST files missing from `folder` (verified before they are moved in place).

    `mirrors`: base URLs tried in order for each file (default: DIGITREADER_MNIST_MIRROR, comma-separated,
    else `MIRRORS`); a mirror whose file fails its SHA-256 is skipped for the next one.
    """
    if mirrors is None:
        env = os.environ.get("DIGITREADER_MNIST_MIRROR", "")
        mirrors = [m.strip() for m in env.split(",") if m.strip()] or MIRRORS
    mirrors = [m if m.endswith("/") else m + "/" for m in mirrors]
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or KNOWN_SHA256:
        target = folder / name
        if target.exists():
            continue
        last: Exception | None = None
        for mirror in mirrors:
            try:
                log.info("downloading %s%s", mirror, name)
                with (
                    urllib.request.urlopen(mirror + name, timeout=60) as resp,
                    tempfile.NamedTemporaryFile(dir=folder, delete=False) as tmp,
                ):
                    shutil.copyfileobj(resp, tmp)
                if sha256_file(Path(tmp.name)) != KNOWN_SHA256[name]:
                    os.unlink(tmp.name)
                    raise DatasetError(f"downloaded {name} fails its SHA-256", code="checksum")
                os.replace(tmp.name, target)
                break
            except Exception as exc:  # try the next mirror
                last = exc
        else:
            raise DatasetError(
                f"cannot download {name}: {last}",
                code="missing",
                hint="no internet here? copy the four MNIST gzip files into " + str(folder),
            )


def load_mnist(split: str = "train", data_dir: Path | str | None = None, *, download: bool = False) -> Dataset:
    """The MNIST `split` ("train" or "test") from DATA_DIR/mnist, SHA-256 verified."""
    if split not in MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    folder = _mnist_folder(resolve_data_dir(data_dir))
    names = MNIST_FILES[split]
    if download and not all((folder / n).exists() for n in names):
        download_mnist(folder, names)
    sums = _sums_file(folder)
    checksums = {n: _check_file(folder / n, sums) for n in names}
    images = read_idx(folder / names[0])
    labels = read_idx(folder / names[1])
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{folder}: images {images.shape} and labels {labels.shape} do not match", code="malformed")
    return Dataset(images.copy(), labels.astype(np.int64), f"mnist:{split}", checksums)


def load_kaggle_csv(path: Path | str) -> Dataset:
    """Kaggle digit-recognizer CSV: `label,pixel0..pixel783` (train) or `pixel0..pixel783` (test)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"missing CSV file: {path}", code="missing")
    with open(path, encoding="utf-8") as f:
        header = f.readline().strip().split(",")
    pixels = [f"pixel{i}" for i in range(784)]
    if header == ["label", *pixels]:
        labelled = True
    elif header == pixels:
        labelled = False
    else:
        raise DatasetError(
            f"{path}: header is not the Kaggle digit-recognizer layout (label,pixel0..pixel783 or pixel0..pixel783)",
            code="malformed",
        )
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise DatasetError(f"{path}: unreadable row ({exc})", code="malformed") from exc
    if data.shape[0] == 0:
        raise DatasetError(f"{path}: no rows", code="truncated")
    if data.shape[1] != len(header):
        raise DatasetError(f"{path}: rows have {data.shape[1]} columns, the header {len(header)}", code="malformed")
    px = data[:, 1:] if labelled else data
    if px.min() < 0 or px.max() > 255:
        raise DatasetError(f"{path}: pixel values outside 0..255", code="malformed")
    labels = data[:, 0] if labelled else None
    if labels is not None and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{path}: labels outside 0..9", code="malformed")
    images = px.astype(np.uint8).reshape(-1, 28, 28)
    return Dataset(images, labels, f"kaggle:{path.name}", {path.name: sha256_file(path)})


def load_image_folder(root: Path | str) -> Dataset:
    """Labelled images DIR/<digit>/*.png (any size, grey or colour, either polarity), normalized.

    A sub-folder named 10, x or non-digit holds crops that are not digits (label 10).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"not a folder: {root}", code="missing")
    images: list[np.ndarray] = []
    labels: list[int] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        name = sub.name.lower()
        if name in NON_DIGIT_DIRS:
            label = 10
        elif name.isdigit() and len(name) == 1:
            label = int(name)
        else:
            log.warning("skipping %s: not a digit folder (0-9, or x for non-digits)", sub)
            continue
        for f in sorted(sub.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            if img is None:
                raise DatasetError(f"{f}: not a readable image", code="malformed")
            images.append(normalize_digit(img))
            labels.append(label)
    if not images:
        raise DatasetError(f"{root}: no images in DIR/<digit>/ sub-folders", code="missing")
    return Dataset(np.stack(images), np.asarray(labels, np.int64), f"folder:{root}")


def train_val_split(n: int, val_size: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-seed split of range(n) into (train, validation) index arrays, both sorted."""
    if not 0 < val_size < n:
        raise ValueError(f"val_size must be in (0, {n})")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])
