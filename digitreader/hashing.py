"""SHA-256 of files: the one implementation (models, datasets, submitted documents)."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def sha256_file_and_size(path: str | Path) -> tuple[str, int]:
    """(hex SHA-256, size in bytes) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    return sha256_file_and_size(path)[0]
