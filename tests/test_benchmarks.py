"""The benchmark scripts' shared parts on a few generated pages: they must keep running as the
pipeline changes, and their two ways of scoring a run must agree (no timings are checked here)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_scans(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    from digitreader.synth import generate

    out = tmp_path_factory.mktemp("bench") / "scans"
    generate(out, pages=3, seed=2024, fmt="png", kind="mixed", data_dir=data_dir)
    return out


@pytest.fixture(scope="module")
def bench_modules() -> Iterator[tuple[Any, Any]]:
    sys.path.insert(0, str(BENCH))
    try:
        import bench_e2e
        import bench_errors

        yield bench_e2e, bench_errors
    finally:
        sys.path.remove(str(BENCH))


def test_e2e_and_error_list_score_a_run_alike(bench_scans: Path, bench_modules: tuple[Any, Any]) -> None:
    bench_e2e, bench_errors = bench_modules
    result = bench_e2e.run_e2e(bench_scans, sweep=(0.97,))
    assert result["pages"] == 3 and result["documents_failed"] == 0
    assert result["truth_digits"] > 50
    assert result["digit_accuracy_pct"] > 90  # the shipped reader on clean generated pages
    assert result["decode_only_ms_per_page"] > 0 and result["ratio_per_page_core_to_decode"] > 0
    assert [s["threshold"] for s in result["threshold_sweep"]] == [0.97]

    # The error list of a second run (bench_errors.run: the same pipeline, a fresh database) names
    # exactly the digits the end-to-end score counts wrong, and the fields it counts inexact.
    wrong = bench_errors.errors(bench_errors.run(bench_scans), bench_scans)
    digits = [e for e in wrong if e["kind"] == "digit"]
    fields = [e for e in wrong if e["kind"] == "field"]
    assert len(digits) == result["truth_digits"] - result["digits_right"]
    assert len(fields) == result["truth_fields"] - result["fields_exact"]
    assert all(e["label"] != e["truth"] for e in digits)
