"""Which of the stages' C halves this install has.

Six stages have a C half beside their Python (optional extensions built at install, `pyproject.toml`):
`_png` (PNG decoding, with libdeflate), `_prepare` (the skew's projection profiles), `_fields` (the
line image), `_cut` (box-line removal, a box cell's mask), `_split` (a string piece's pen width) and
`_normalize` (crops to the MNIST form).
Without one, its stage runs its Python version: the same results (crops within one grey level),
slower. `missing()` says which are absent, for the batch's warning, the Dockerfile's build check and
the tests.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)
_warned = False

#: The C halves, by module name (in `digitreader.pipeline`).
C_HALVES = ("_png", "_prepare", "_fields", "_cut", "_split", "_normalize")


def missing() -> list[str]:
    """The C halves this install lacks (`_png` also when libdeflate, which it needs, is missing)."""
    out = []
    for name in C_HALVES:
        try:
            importlib.import_module(f"digitreader.pipeline.{name}")
        except ImportError:
            out.append(name)
    if "_png" not in out:
        from digitreader.pipeline import png

        if not png.available():
            out.append("_png")
    return out


def warn_missing() -> None:
    """Log a warning, once a process, naming the C halves this install lacks (none: nothing)."""
    global _warned
    if _warned:
        return
    _warned = True
    lacking = missing()
    if lacking:
        log.warning(
            "built without %s: those stages run in Python, the same results slower "
            "(install a C compiler, then reinstall: make install)",
            ", ".join(lacking),
        )
