"""The skew measure's projection profiles in C (`pipeline/_prepare.c`) against numpy's
(`prepare._profile_scores_np`): the very same scores, so the very same skew."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digitreader.pipeline import prepare
from digitreader.pipeline.load import load_pages
from digitreader.pipeline.prepare import _profile_scores_np, estimate_skew, flatten, profile_scores, px_per_mm
from digitreader.settings import Settings

pytestmark = pytest.mark.skipif(prepare._prepare is None, reason="the C extension was not built (no C compiler)")


def test_random_points_give_the_same_scores() -> None:
    rng = np.random.default_rng(2026)
    for i in range(300):
        n, w, h = int(rng.integers(1, 9000)), int(rng.integers(20, 900)), int(rng.integers(20, 1300))
        xc = rng.integers(0, w, n).astype(np.float32) - w / 2
        yc = rng.integers(0, h, n).astype(np.float32) - h / 2
        n_bins = int(np.hypot(h, w)) + int(rng.integers(-40, 5))  # some points fall off either end
        angles = np.arange(-15.0, 15.0 + 1e-9, float(rng.choice([0.5, 0.1, 0.025]))) + float(rng.random())
        want = _profile_scores_np(xc, yc, angles, n_bins)
        got = profile_scores(xc, yc, angles, n_bins)
        assert got.dtype == np.float64 and np.array_equal(got, want), f"case {i}"


def test_bad_arguments_are_refused() -> None:
    x = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="alike"):
        prepare._prepare.profile_scores(x, x[:4], x, x, 10, np.zeros(5))
    with pytest.raises(ValueError, match="alike"):
        prepare._prepare.profile_scores(x, x, x, x, 10, np.zeros(4))


def test_generated_pages_get_the_same_skew(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from digitreader.synth import generate

    skews = []
    for f in generate(tmp_path, pages=4, seed=91, kind="mixed", style="rough", data_dir=data_dir):
        for page in load_pages(f, Settings()):
            ppm = px_per_mm(page.width, page.height, page.dpi)
            flat = flatten(page.gray, ppm)
            got = estimate_skew(flat, ppm)
            with monkeypatch.context() as m:
                m.setattr(prepare, "profile_scores", _profile_scores_np)
                assert estimate_skew(flat, ppm) == got
            skews.append(got)
    assert any(abs(s) >= 0.5 for s in skews)  # pages that were skewed
