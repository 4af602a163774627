"""`digitreader synth`: sample scans with ground truth, from MNIST test digits."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from digitreader.cli.main import app
from digitreader.pipeline.load import load_pages
from digitreader.settings import Settings
from digitreader.synth import MnistTestDigits, generate, load_truth


def _check_truth(doc: dict, path: Path) -> None:
    assert doc["schema"] == "digitreader.truth/v1" and doc["file"] == path.name
    for page in doc["pages"]:
        W, H = page["width"], page["height"]
        assert page["fields"], "every page has fields"
        for f in page["fields"]:
            assert f["kind"] in ("boxes", "string")
            labels = [d["label"] for d in sorted(f["digits"], key=lambda d: d["position"])]
            assert f["value"] == "".join(str(v) for v in labels if v is not None)
            for d in f["digits"]:
                x, y, w, h = d["bbox"]
                assert x >= 0 and y >= 0 and x + w <= W and y + h <= H and w > 0 and h > 0
                assert d["label"] is None or 0 <= d["label"] <= 9
            if f["kind"] == "string":
                assert all(d["label"] is not None for d in f["digits"])


def test_generate_pages_with_truth(tmp_path: Path, data_dir: Path, settings: Settings) -> None:
    files = generate(tmp_path, pages=2, seed=3, kind="mixed", fmt="png", dpi=200, data_dir=data_dir)
    assert len(files) == 2
    for f in files:
        doc = load_truth(f)
        _check_truth(doc, f)
        (page,) = list(load_pages(f, settings))
        assert (page.width, page.height) == (doc["pages"][0]["width"], doc["pages"][0]["height"])
        assert page.dpi is not None and abs(page.dpi - 200) < 1
    blanks = [
        d
        for f in files
        for p in load_truth(f)["pages"]
        for fl in p["fields"]
        for d in fl["digits"]
        if d["label"] is None
    ]
    assert blanks, "generated forms include empty cells"


def test_digit_source_draws_in_truth_order(tmp_path: Path, data_dir: Path) -> None:
    """A page draws one image per written digit, in the order its truth lists them (fields in order,
    then positions): what `benchmarks/bench_gap.py` relies on to set each digit beside its MNIST
    original."""
    mnist = MnistTestDigits(data_dir)
    drawn: list[int] = []

    def source(label: int, rng: np.random.Generator) -> np.ndarray:
        drawn.append(label)
        return mnist(label, rng)

    marks: list[int] = []
    files = generate(tmp_path, pages=3, seed=5, kind="mixed", fmt="png", dpi=150, digit_source=source,
                     on_page=lambda n: marks.append(len(drawn)))  # fmt: skip
    start = 0
    for f, end in zip(files, marks, strict=True):
        truth = load_truth(f)["pages"][0]
        labels = [d["label"] for fl in truth["fields"] for d in fl["digits"] if d["label"] is not None]
        assert drawn[start:end] == labels
        start = end
    assert start == len(drawn) > 0


def test_same_seed_same_pages(tmp_path: Path, data_dir: Path) -> None:
    a = generate(tmp_path / "a", pages=1, seed=11, kind="cheque", dpi=150, data_dir=data_dir)[0]
    b = generate(tmp_path / "b", pages=1, seed=11, kind="cheque", dpi=150, data_dir=data_dir)[0]
    c = generate(tmp_path / "c", pages=1, seed=12, kind="cheque", dpi=150, data_dir=data_dir)[0]
    assert a.read_bytes() == b.read_bytes()
    assert load_truth(a)["pages"] == load_truth(b)["pages"]
    assert load_truth(a)["pages"] != load_truth(c)["pages"]


def test_multipage_tiff_and_pdf(tmp_path: Path, data_dir: Path, settings: Settings) -> None:
    for fmt in ("tiff", "pdf"):
        (f,) = generate(tmp_path / fmt, pages=2, per_file=2, seed=5, kind="cheque", fmt=fmt, dpi=150, data_dir=data_dir)
        doc = load_truth(f)
        assert len(doc["pages"]) == 2
        s = Settings(pdf_dpi=150, _env_file=None)  # type: ignore[call-arg]
        pages = list(load_pages(f, s))
        assert [p.number for p in pages] == [1, 2]
        for p, t in zip(pages, doc["pages"], strict=True):
            assert abs(p.width - t["width"]) <= 1 and abs(p.height - t["height"]) <= 1


def test_digit_source_hook(tmp_path: Path) -> None:
    """Another digit source can be plugged in (no MNIST needed): every digit comes from it."""
    calls: list[int] = []

    def seven_segment(label: int, rng: np.random.Generator) -> np.ndarray:
        calls.append(label)
        img = np.zeros((28, 28), np.uint8)
        cv2.putText(img, str(label), (6, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.9, 255, 2)
        return img

    (f,) = generate(tmp_path, pages=1, seed=1, kind="form", dpi=150, digit_source=seven_segment)
    doc = load_truth(f)
    n_digits = sum(1 for fl in doc["pages"][0]["fields"] for d in fl["digits"] if d["label"] is not None)
    assert len(calls) == n_digits and n_digits > 10


def test_mnist_source_reads_the_test_split_only(data_dir: Path) -> None:
    src = MnistTestDigits(data_dir)
    assert src.images.shape == (10000, 28, 28) and len(src.labels) == 10000
    rng = np.random.default_rng(0)
    img = src(7, rng)
    assert img.shape == (28, 28) and any((img == src.images[i]).all() for i in src.by_label[7])


def test_cli_synth(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITREADER_DATA_DIR", str(data_dir))
    from digitreader.settings import get_settings

    get_settings.cache_clear()
    runner = CliRunner()
    res = runner.invoke(
        app, ["synth", str(tmp_path), "--pages", "1", "--kind", "cheque", "--dpi", "150", "--format", "jpeg"]
    )
    assert res.exit_code == 0, res.output
    out = [line for line in res.stdout.splitlines() if line.strip()]
    assert len(out) == 1 and out[0].endswith(".jpg") and Path(out[0]).exists()
    assert json.loads(Path(out[0]).with_suffix(".truth.json").read_text())["pages"][0]["layout"] == "cheque"
    bad = runner.invoke(app, ["synth", str(tmp_path), "--kind", "letter"])
    assert bad.exit_code != 0
    get_settings.cache_clear()


def test_synth_and_train_into_a_folder_they_cannot_make_are_usage_errors(tmp_path: Path, data_dir: Path) -> None:
    """Before: a traceback and "internal error (please report it)", exit 1."""
    from digitreader.cli.main import main

    (tmp_path / "file").write_text("not a folder")
    for where in (tmp_path / "file" / "scans", Path("/proc/digitreader-nope/scans")):
        with pytest.raises(SystemExit) as info:
            main(["synth", str(where), "--pages", "1", "--data-dir", str(data_dir)])
        assert info.value.code == 2
    for command in (["train", "--epochs", "1", "--limit", "100"], ["train", "--finalize-only"]):
        with pytest.raises(SystemExit) as info:
            main([*command, "--out", str(tmp_path / "file" / "run")])  # refused before any training
        assert info.value.code == 2


def test_matching_rule_both_ways_nearest_first() -> None:
    """The one matching rule of the benchmarks and the page crops (`digitreader.synth.score`)."""
    from digitreader.synth.score import best_match, centre_in, matches

    truth = (100, 100, 40, 60)  # centre (120, 130)
    assert centre_in((102, 102, 10, 10), truth) and not centre_in(truth, (102, 102, 10, 10))
    assert matches((102, 102, 10, 10), truth) and matches(truth, (102, 102, 10, 10))
    assert not matches((0, 0, 10, 10), truth)
    # a comb field's truth is the thin line of ticks; the found field holds it and the digits above
    assert matches((90, 20, 60, 200), (100, 200, 40, 4))
    found = [(0, 0, 10, 10), (104, 104, 20, 20), (110, 115, 20, 30), (60, 60, 200, 200)]
    assert best_match(truth, found, lambda b: b, set()) == 2  # centre (120, 130): the nearest
    assert best_match(truth, found, lambda b: b, {2}) == 1  # the next nearest; used ones are skipped
    assert best_match(truth, found, lambda b: b, {1, 2}) == 3  # the truth's centre lies inside this one
    assert best_match(truth, found, lambda b: b, {1, 2, 3}) is None
