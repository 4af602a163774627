"""Inputs: a file found as it was when it was last hashed is not read again (rsync's quick check).

A submitted file is known by its SHA-256, so that content read before is skipped. A hot folder
submitted every 15 minutes holds mostly files read before, and hashing them all again reads every
byte of them each time: gigabytes of scans, on a network share. So the database remembers each file's
hash with the file's stat *stamp* (`models.FileHash`): size, modification and change times, device
and inode. A later submit that finds the file with the same stamp takes the hash from there and does
not read the file.

- The change time cannot be set by hand (`touch -d` and `cp -p` set the modification time, not it):
  a file rewritten with the same size and modification time still shows a new stamp, and a file
  replaced by another shows a new inode.
- A file modified less than `RACY_SECONDS` before it was hashed is hashed and not remembered: a
  second change in the same tick of the file system's clock could leave its stamp as it was (git's
  "racy" files). So is a file whose stamp changed while it was read (a scanner still writing it).
- `submit --force` trusts no stamp: every file is read and hashed again (and remembered anew).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from digitreader.db import session_scope, store
from digitreader.hashing import sha256_file_and_size

#: A file modified less than this many seconds before it was hashed is not remembered. Longer than the
#: coarsest file-system clock met in practice (FAT's 2 s modification times).
RACY_SECONDS = 3.0


def stamp(st: os.stat_result) -> str:
    """What a file's stat says of its content: size, modification and change times (ns), device, inode."""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_dev}:{st.st_ino}"


def cache_key(path: Path) -> str:
    """The path a file's hash is remembered under: absolute (not resolved: the stamp's device and inode
    tell a symlink's new target), as the database can store it."""
    return store.db_text(os.path.abspath(path))


class HashCache:
    """The SHA-256 of a submission's files: remembered where a file's stamp is unchanged, else read.

    `HashCache.load(engine, paths)` stats the files and looks them up (one query per 10,000 files);
    `sha256(path)` gives a file's (hex SHA-256, size); `save(engine)` remembers the files hashed since.
    Thread-safe for `sha256` (files are hashed on several threads).
    """

    def __init__(self, hits: dict[Path, tuple[str, int]] | None = None) -> None:
        self.hits = hits or {}
        self.hashed: list[tuple[str, str, str, int]] = []  # (key, stamp, sha256, size), to remember

    @classmethod
    def load(cls, engine: Any, paths: Sequence[Path], *, trust: bool = True) -> HashCache:
        """The cache for `paths`: the files whose stamp is what it was when they were hashed are hits.
        `trust=False` (`submit --force`): no hits, every file is hashed."""
        if not trust or not paths:
            return cls()
        stamps: dict[Path, tuple[str, str]] = {}
        for p in paths:
            try:
                stamps[p] = (cache_key(p), stamp(os.stat(p)))
            except OSError:
                continue  # hashing says why
        with session_scope(engine=engine) as s:
            known = store.known_file_hashes(s, [key for key, _ in stamps.values()])
        hits = {}
        for p, (key, now) in stamps.items():
            row = known.get(key)
            if row is not None and row[0] == now:
                hits[p] = (row[1], row[2])
        return cls(hits)

    def sha256(self, path: Path) -> tuple[str, int]:
        """(hex SHA-256, size in bytes) of a file: remembered if it is a hit, else read (and remembered
        unless it was changing). Raises OSError where the file cannot be read."""
        hit = self.hits.get(path)
        if hit is not None:
            return hit
        before = os.stat(path)
        started = time.time_ns()
        digest, size = sha256_file_and_size(path)
        after = os.stat(path)
        changed_lately = started - max(after.st_mtime_ns, after.st_ctime_ns) < RACY_SECONDS * 1e9
        if stamp(after) == stamp(before) and size == after.st_size and not changed_lately:
            self.hashed.append((cache_key(path), stamp(after), digest, size))  # list.append: thread-safe
        return digest, size

    def save(self, engine: Any) -> None:
        """Remember the files hashed since the last save (one transaction; none when there are none)."""
        rows, self.hashed = self.hashed, []
        if not rows:
            return
        with session_scope(engine=engine) as s:
            store.save_file_hashes(s, rows)
