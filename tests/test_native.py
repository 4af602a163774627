"""The install builds the stages' C halves (a C compiler is part of the supported setup). Without
them every stage falls back to its Python version, the same results slower, with a warning, and the
parity tests skip: this is where a build that lost one is noticed, and where whole pages are
segmented both ways."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from digitreader.pipeline import cut, fields, native, normalize, png, prepare, split
from digitreader.pipeline.load import load_pages
from digitreader.pipeline.segment import segment_page
from digitreader.settings import Settings


def test_every_c_extension_is_built() -> None:
    assert native.missing() == []
    assert png.available()  # _png, with libdeflate
    assert cut._cut is not None and fields._fields is not None
    assert normalize._normalize is not None and prepare._prepare is not None and split._split is not None


def test_a_missing_c_half_is_named_and_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "digitreader.pipeline._cut", None)  # import fails: as if never built
    monkeypatch.setattr(native, "_warned", False)
    assert native.missing() == ["_cut"]
    with caplog.at_level(logging.WARNING, logger="digitreader.pipeline.native"):
        native.warn_missing()
        native.warn_missing()  # once a process
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "_cut" in warnings[0] and "slower" in warnings[0]


def test_pages_segment_alike_without_the_c_halves(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole pages through segmentation with and without the C halves (a machine without a compiler):
    the same fields, the same box cells and blank decisions, crops within one grey level. A string's
    split may differ where the splitter model's reading of a crop one grey level apart tips it."""
    from digitreader.synth import generate

    files = generate(tmp_path, pages=4, seed=95, kind="mixed", style="rough", data_dir=data_dir)
    pages = [p for f in files for p in load_pages(f, Settings())]
    with_c = [segment_page(p) for p in pages]
    halves = ((cut, "_cut"), (fields, "_fields"), (normalize, "_normalize"), (prepare, "_prepare"), (split, "_split"))
    for module, name in halves:
        monkeypatch.setattr(module, name, None)
    without = [segment_page(p) for p in pages]
    strings = split_differ = 0
    for a, b in zip(with_c, without, strict=True):
        assert a.skew_degrees == b.skew_degrees
        assert [(f.name, f.kind, f.bbox) for f in a.fields] == [(f.name, f.kind, f.bbox) for f in b.fields]
        for fa, fb in zip(a.fields, b.fields, strict=True):
            if fa.kind == "string":
                strings += 1
                if [s.bbox for s in fa.slots] != [s.bbox for s in fb.slots]:
                    split_differ += 1
                    continue
            assert [(s.position, s.bbox, s.blank) for s in fa.slots] == [
                (s.position, s.bbox, s.blank) for s in fb.slots
            ]
            for sa, sb in zip(fa.slots, fb.slots, strict=True):
                assert np.abs(sa.crop.astype(int) - sb.crop.astype(int)).max() <= 1
    assert strings >= 4 and split_differ <= 1
