"""The install builds the stages' C halves (a C compiler is part of the supported setup). Without
them every stage falls back to its Python version silently, the same results slower, and the parity
tests skip: this is where a build that lost one is noticed."""

from __future__ import annotations

from digitreader.pipeline import cut, fields, normalize, png, prepare


def test_every_c_extension_is_built() -> None:
    assert png.available()  # _png, with libdeflate
    assert cut._cut is not None
    assert fields._fields is not None
    assert normalize._normalize is not None
    assert prepare._prepare is not None
