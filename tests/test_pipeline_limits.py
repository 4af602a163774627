"""Per-document time limit of the embedded pipeline (DIGITREADER_DOCUMENT_TIME_LIMIT)."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import select

from digitreader.db import session_scope
from digitreader.db.models import Document
from digitreader.db.session import get_engine
from digitreader.pipeline.process import process_batch, segment_document
from digitreader.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TIFF = ROOT / "examples" / "scans" / "scan-0002-00001.tif"  # a real multi-page TIFF
ZERO = ROOT / "tests" / "data" / "empty.png"


def test_segment_document_stops_at_its_time_limit(settings: Settings) -> None:
    cut = segment_document(TIFF, settings, None, 0.001)
    assert cut.failed and cut.error_code == "timeout"
    assert "DIGITREADER_DOCUMENT_TIME_LIMIT" in (cut.error_message or "")
    # Without a limit the same document segments fine.
    full = segment_document(TIFF, settings, None, None)
    assert not full.failed and len(full.pages) >= 2


def test_a_document_over_the_limit_fails_alone(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(TIFF, folder / "slow.tif")
    shutil.copy(ZERO, folder / "empty.png")
    limited = settings.model_copy(update={"document_time_limit": 0.001, "workers": 1})
    report = process_batch([folder], limited)
    codes = {Path(d.path).name: d.error_code for d in report.processed}
    assert codes == {"slow.tif": "timeout", "empty.png": "empty_file"}
    with session_scope(engine=get_engine(limited)) as s:
        rows = s.execute(select(Document.path, Document.status, Document.error_code)).all()
    assert sorted((Path(p).name, st, c) for p, st, c in rows) == [
        ("empty.png", "failed", "empty_file"),
        ("slow.tif", "failed", "timeout"),
    ]


def test_hash_inputs_in_threads_keeps_order_and_reports_unreadable(tmp_path: Path) -> None:
    """Files are hashed on several threads; results keep the input order, and a path that cannot be
    read (here a folder) is reported as unreadable instead of stopping the batch."""
    import hashlib
    import os

    from digitreader.pipeline.process import hash_inputs

    paths = []
    for i in range(12):
        p = tmp_path / f"f{i:02d}.bin"
        p.write_bytes(os.urandom(1000 + 70_000 * i))
        paths.append(p)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    paths.insert(5, folder)
    for threads in (1, 4):
        files, bad = hash_inputs(paths, threads=threads)
        assert [f.path for f in files] == [str(p) for p in paths if p != folder]
        assert all(f.sha256 == hashlib.sha256(Path(f.path).read_bytes()).hexdigest() for f in files)
        assert [f.size_bytes for f in files] == [Path(f.path).stat().st_size for f in files]
        assert len(bad) == 1 and bad[0][0] == str(folder) and bad[0][1]
