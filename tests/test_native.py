"""The install builds the stages' C halves (a C compiler is part of the supported setup). Without
them every stage falls back to its Python version silently, the same results slower, and the parity
tests skip: this is where a build that lost one is noticed."""

from __future__ import annotations

import logging

import pytest

from digitreader.pipeline import cut, fields, native, normalize, png, prepare


def test_every_c_extension_is_built() -> None:
    assert native.missing() == []
    assert png.available()  # _png, with libdeflate
    assert cut._cut is not None and fields._fields is not None
    assert normalize._normalize is not None and prepare._prepare is not None


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
