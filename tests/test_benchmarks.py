"""The benchmark scripts' shared parts on a few generated pages: they must keep running as the
pipeline changes, and their two ways of scoring a run must agree (no timings are checked here)."""

from __future__ import annotations

import importlib
import json
import os
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
    assert result["c_halves_missing"] == []  # the numbers are those of the C halves (pipeline/native.py)

    # The error list of a second run (bench_errors.run: the same pipeline, a fresh database) names
    # exactly the digits the end-to-end score counts wrong, and the fields it counts inexact.
    wrong = bench_errors.errors(bench_errors.run(bench_scans), bench_scans)
    digits = [e for e in wrong if e["kind"] == "digit"]
    fields = [e for e in wrong if e["kind"] == "field"]
    assert len(digits) == result["truth_digits"] - result["digits_right"]
    assert len(fields) == result["truth_fields"] - result["fields_exact"]
    assert all(e["label"] != e["truth"] for e in digits)


def test_e2e_scores_one_long_document(tmp_path: Path, data_dir: Path, bench_modules: tuple[Any, Any]) -> None:
    """`bench_e2e.py --per-file`: the pages in one PDF (cut in parts by the pipeline), scored page by
    page against their ground truth like separate files."""
    bench_e2e, _ = bench_modules
    scans = bench_e2e.generate_pages(tmp_path, 5, 7, data_dir, "pdf", "form", per_file=5)
    assert len(list(scans.glob("*.pdf"))) == 1
    result = bench_e2e.run_e2e(scans, sweep=(0.97,))
    assert result["documents"] == 1 and result["pages"] == 5 and result["documents_failed"] == 0
    assert result["fields_found"] == result["truth_fields"] > 0
    assert result["digit_accuracy_pct"] > 90


def test_e2e_scores_turned_pages(tmp_path: Path, data_dir: Path, bench_modules: tuple[Any, Any]) -> None:
    """`bench_e2e.py --turned`: pages scanned upside down or on a side, scored against their turned
    truth, and counted read upright or not; with DIGITREADER_ROTATE_PAGES=false none is."""
    bench_e2e, _ = bench_modules
    scans = bench_e2e.generate_pages(tmp_path, 4, 11, data_dir, "png", "form", turned=1.0)
    result = bench_e2e.run_e2e(scans, decode=False, sweep=(0.97,))
    assert result["turned_pages"] == 4 and result["turned_pages_read_upright"] == 4
    assert result["digit_accuracy_pct"] > 90
    off = bench_e2e.run_e2e(scans, decode=False, sweep=(0.97,), rotate_pages=False)
    assert off["turned_pages"] == 4 and off.get("turned_pages_read_upright", 0) == 0
    assert off["digit_accuracy_pct"] < result["digit_accuracy_pct"] - 20


def test_wilson_interval(bench_modules: tuple[Any, Any]) -> None:
    bench_e2e, _ = bench_modules
    # Known closed forms: with no successes the upper end is z^2 / (n + z^2), with all, the lower end
    # is n / (n + z^2).
    lo, hi = bench_e2e.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(100 * 1.96**2 / (10 + 1.96**2), abs=1e-3)
    lo, hi = bench_e2e.wilson(10, 10)
    assert hi == 100.0 and lo == pytest.approx(100 * 10 / (10 + 1.96**2), abs=1e-3)
    # About 10,000 digits at 99.5 %: known to about +-0.14 point, and the rate lies inside.
    lo, hi = bench_e2e.wilson(9950, 10000)
    assert lo < 99.5 < hi and 0.25 < hi - lo < 0.30
    assert bench_e2e.wilson(995, 1000)[1] - bench_e2e.wilson(995, 1000)[0] > 3 * (hi - lo)


def test_pooled_sets_add_counts_not_percentages(bench_scans: Path, bench_modules: tuple[Any, Any]) -> None:
    bench_e2e, _ = bench_modules
    one = bench_e2e.run_e2e(bench_scans, decode=False, sweep=())
    lo, hi = one["digit_accuracy_ci95_pct"]
    assert lo <= one["digit_accuracy_pct"] <= hi
    # A set with every digit wrong beside the real one: pooled, the rate is the sums' ratio.
    worse = {**one, "digits_right": 0, "pages": 1, "wall_s": 1.0}
    pooled = bench_e2e.pool([one, worse])
    assert pooled["sets"] == 2
    assert pooled["truth_digits"] == 2 * one["truth_digits"]
    assert pooled["pages"] == one["pages"] + 1
    assert pooled["digit_accuracy_pct"] == pytest.approx(
        100 * one["digits_right"] / (2 * one["truth_digits"]), abs=1e-3
    )
    assert pooled["pages_per_s"] == pytest.approx((one["pages"] + 1) / (one["wall_s"] + 1.0), abs=0.01)
    # The same set twice: the same rates, known more narrowly.
    twice = bench_e2e.pool([one, one])
    assert twice["digit_accuracy_pct"] == one["digit_accuracy_pct"]
    tlo, thi = twice["digit_accuracy_ci95_pct"]
    assert thi - tlo < hi - lo


def test_plot_of_sets_against_targets(bench_scans: Path, bench_modules: tuple[Any, Any], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import cv2

    bench_e2e, _ = bench_modules
    one = {"seed": 1, **bench_e2e.run_e2e(bench_scans, decode=False, sweep=())}
    two = {**one, "seed": 2}
    out = tmp_path / "sets.png"
    bench_e2e.plot_sets([one, two], bench_e2e.pool([one, two]), out)
    img = cv2.imread(str(out))
    assert img is not None and img.shape[1] > 800 and img.shape[0] > 300


def test_peer_scoring() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import bench_peers
    finally:
        sys.path.remove(str(BENCH))
    assert bench_peers.score_field("12345", "12345") == 5
    assert bench_peers.score_field("12945", "12345") == 4  # same length: position by position
    assert bench_peers.score_field("1245", "12345") == 4  # a digit missed: the common subsequence
    assert bench_peers.score_field("9912345", "12345") == 5
    assert bench_peers.score_field("", "12345") == 0


def test_rapidocr_reads_the_given_fields(bench_scans: Path) -> None:
    """The peer benchmark on one generated page, for real: RapidOCR (the `dev` extra installs it)
    reads each true field's crop, and the scores are counted from the truth."""
    import json

    pytest.importorskip("rapidocr")
    sys.path.insert(0, str(BENCH))
    try:
        import bench_peers
    finally:
        sys.path.remove(str(BENCH))
    truth_file = sorted(bench_scans.glob("*.truth.json"))[0]
    truth = json.loads(truth_file.read_text())
    s = bench_peers.do_file(str(bench_scans / truth["file"]), truth, "rapidocr")
    fields = truth["pages"][0]["fields"]
    assert s["pages"] == 1 and s["fields"] == len(fields)
    assert s["digits"] == sum(len(f["value"]) for f in fields)
    # A printed-text model on handwritten digits: far from perfect, far from nothing.
    assert 0.3 * s["digits"] < s["right"] <= s["digits"]
    assert bench_peers.engine_version("rapidocr").startswith("RapidOCR 3.10.0")


def test_precision_benchmark_runs_both_precisions(tmp_path: Path, data_dir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    import json

    sys.path.insert(0, str(BENCH))
    try:
        import bench_precision
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "p.json"
    assert bench_precision.main(["--pages", "2", "--kind", "form", "--rounds", "1", "--cache", str(tmp_path),
                                 "--data-dir", str(data_dir), "--json", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert [m["model"] for m in result["models"]] == ["reader", "splitter"]
    assert all(0 <= m["labels_changed"] <= 10 and m["of"] == 10000 for m in result["models"])
    for precision in ("fp32", "int8"):
        run = result["pipeline"][precision]
        assert len(run["pages_per_s"]) == 1 and run["truth_digits"] > 50 and run["digit_accuracy_pct"] > 90
    assert "round 1 int8" in capsys.readouterr().err


def _bench(name: str) -> Any:
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.slow
def test_stress_stops_finds_each_stopped_batch_finished_by_the_next_run(
    bench_scans: Path,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Three Ctrl-Cs at random moments of a pooled run: each run ends, its exit code and its batch's
    status agree, and the same command finishes the batch (no duplicates, every page stored)."""
    stress = _bench("stress_stops")
    monkeypatch.setenv("DIGITREADER_DATA_DIR", str(data_dir))
    rc = stress.main([str(bench_scans), "--rounds", "3", "--workers", "2", "--seed", "5"])
    report = json.loads(capsys.readouterr().out)
    assert report["broken"] == [] and rc == 0
    assert sum(report["outcomes"].values()) == 3 and report["clean"]["documents"] == 3
    # And at points of the code: the run raises the Ctrl-C itself, after its batch id.
    rc = stress.main([str(bench_scans), "--rounds", "2", "--workers", "2", "--seed", "6", "--at-returns"])
    report = json.loads(capsys.readouterr().out)
    assert report["broken"] == [] and rc == 0 and sum(report["outcomes"].values()) == 2
    assert 0 < report["clean"]["batch_id_at"] < report["clean"]["returns"]


@pytest.mark.slow
@pytest.mark.integration
def test_stress_stops_on_postgresql(
    bench_scans: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same on PostgreSQL (`--server`): each round's runs store into a database of their own on
    the server, made and dropped by the script; a Ctrl-C at a random moment and one at a point of the
    code, each batch finished by the next run."""
    from tests.test_db import PG_ADMIN_URL, _pg_available

    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (CI must have it)")
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    from sqlalchemy import create_engine, text

    def stops_databases() -> set[str]:
        admin = create_engine(PG_ADMIN_URL)
        with admin.connect() as conn:
            names = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE 'digitreader_stops_%'"))
            found = {str(row[0]) for row in names}
        admin.dispose()
        return found

    before = stops_databases()  # a killed run of the script elsewhere may have left its own
    stress = _bench("stress_stops")
    monkeypatch.setenv("DIGITREADER_DATA_DIR", str(data_dir))
    for extra in (["--seed", "7"], ["--seed", "8", "--at-returns"]):
        rc = stress.main([str(bench_scans), "--rounds", "2", "--workers", "2", "--server", PG_ADMIN_URL, *extra])
        report = json.loads(capsys.readouterr().out)
        assert report["broken"] == [] and rc == 0 and report["database"] == "postgresql"
        assert sum(report["outcomes"].values()) == 2 and report["clean"]["documents"] == 3
    assert stops_databases() - before == set()  # every database the rounds made was dropped


@pytest.mark.slow
def test_stress_inputs_reads_each_damaged_scan_or_names_what_is_wrong(
    bench_scans: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stress = _bench("stress_inputs")
    sources = stress._sources(bench_scans)
    assert stress.damaged(sources, 7) == stress.damaged(sources, 7)  # a mutation is made again from its number
    assert stress.damaged(sources, 7)[2] != stress.damaged(sources, 8)[2]
    monkeypatch.setenv("DIGITREADER_HOME", str(tmp_path / "home"))
    rc = stress.main([str(bench_scans), "--count", "12", "--batch", "6", "--seed", "40"])
    report = json.loads(capsys.readouterr().out)
    assert report["internal"] == [] and report["crashed"] == [] and rc == 0
    assert sum(report["outcomes"].values()) == 12
    assert any(not k.endswith(": read") for k in report["outcomes"])  # some damage was noticed


def test_scanner_kinds_move_the_truth_with_the_page_and_score(bench_scans: Path, tmp_path: Path) -> None:
    """bench_scanner.py: a margin moves every truth box with the sheet (the same pixels under it), a
    fax is written in normal mode, and a faint copy of the pages is scored against their truth."""
    import cv2

    sys.path.insert(0, str(BENCH))
    try:
        bench_scanner = importlib.import_module("bench_scanner")
    finally:
        sys.path.remove(str(BENCH))
    bench_scanner.make("margin_black", bench_scans, tmp_path / "margin")
    src = sorted(bench_scans.glob("*.png"))[0]
    before, after = cv2.imread(str(src), 0), cv2.imread(str(tmp_path / "margin" / src.name), 0)
    assert before is not None and after is not None
    t0 = json.loads(src.with_suffix(".truth.json").read_text())["pages"][0]["fields"][0]["bbox"]
    t1 = json.loads((tmp_path / "margin" / src.with_suffix(".truth.json").name).read_text())["pages"][0]["fields"][0][
        "bbox"
    ]
    assert after.shape[0] > before.shape[0] and (after[:5] == 0).all()
    assert (
        before[t0[1] : t0[1] + t0[3], t0[0] : t0[0] + t0[2]] == after[t1[1] : t1[1] + t1[3], t1[0] : t1[0] + t1[2]]
    ).all()
    bench_scanner.make("fax_normal", bench_scans, tmp_path / "fax")
    from PIL import Image

    with Image.open(next((tmp_path / "fax").glob("*.tif"))) as im:
        assert im.info["dpi"] == (204, 98) and im.mode == "1"
    bench_scanner.make("bilevel_dither", bench_scans, tmp_path / "dither")
    with Image.open(tmp_path / "dither" / src.name) as im:
        assert im.mode == "1"
    bench_scanner.make("form_red", bench_scans, tmp_path / "red")
    red = cv2.imread(str(tmp_path / "red" / src.name))  # BGR: the form's lines red, the digits blue-black
    assert red is not None and red.shape[:2] == before.shape
    d = json.loads(src.with_suffix(".truth.json").read_text())["pages"][0]["fields"][0]["digits"][0]["bbox"]
    digit = red[d[1] : d[1] + d[3], d[0] : d[0] + d[2]].reshape(-1, 3).astype(int)
    darkest = digit[digit.sum(axis=1).argmin()]
    assert darkest[0] > darkest[2]  # blue over red in the ink
    bench_scanner.make("faint", bench_scans, tmp_path / "faint")
    r = bench_scanner.score("faint", tmp_path / "faint")
    assert r["digits"] > 50 and r["digits_wrong"] <= 0.05 * r["digits"], r
