"""The whole loop, small: hard-style pages -> pipeline -> flagged digits labelled from ground truth
through the review CLI -> retrain on the corrections -> promotion gate -> the running pipeline picks
the new model up -> fresh hard-style pages are read with far fewer errors, MNIST test holds.

The base model is trained here (one short epoch on a slice of MNIST) so the test needs nothing but
the project's files and MNIST; the benchmark (benchmarks/bench_retrain.py) runs the same loop on
the shipped model at full size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from digitreader.db.session import dispose_engines
from digitreader.settings import Settings

pytestmark = pytest.mark.slow


def train_base(out: Path, data_dir: Path, n: int = 8000, seed: int = 0) -> tuple[Path, Path]:
    """A quick, weak base model (drnet, one epoch on `n` MNIST digits): (model.onnx, weights.pt)."""
    import torch
    from torch import nn

    from training import archs
    from training.corrections import export_light, save_weights
    from training.data import load_mnist, train_val_split
    from training.fit import train_one_epoch
    from training.nondigits import generate_nondigits
    from training.run import SPLIT_SEED, VAL_SIZE, TrainConfig, seed_everything

    seed_everything(seed)
    torch.set_num_threads(2)
    full = load_mnist("train", data_dir)
    assert full.labels is not None
    tr, val = train_val_split(len(full), VAL_SIZE, SPLIT_SEED)
    x = np.concatenate([full.images[tr[:n]], generate_nondigits(n // 10, 1)])
    y = np.concatenate([full.labels[tr[:n]], np.full(n // 10, 10, np.int64)])
    model = archs.build("drnet", 11)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(1):
        train_one_epoch(model, x, y, opt, batch_size=128, generator=torch.Generator().manual_seed(seed),
                        device=torch.device("cpu"), loss_fn=nn.CrossEntropyLoss())  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(arch="drnet", epochs=1, seed=seed, version="base-test", out=str(out))
    export_light(out, model, cfg, full.images[val], full.labels[val])
    from digitreader.registry import file_sha256

    weights = save_weights(model, "drnet", out / "model.pt", "base-test", file_sha256(out / "model.onnx"))
    return out / "model.onnx", weights


def truth_label(item: dict[str, Any]) -> int | None:
    """The ground-truth label of a stored digit: the truth digit whose box holds its centre."""
    p = Path(item["document"])
    truth = json.loads(p.with_name(p.name.rsplit(".", 1)[0] + ".truth.json").read_text())
    x, y, w, h = item["bbox"]
    cx, cy = x + w / 2, y + h / 2
    page = truth["pages"][item["page"] - 1]
    for f in page["fields"]:
        for d in f["digits"]:
            bx, by, bw, bh = d["bbox"]
            if bx <= cx <= bx + bw and by <= cy <= by + bh:
                return d["label"]
    return None


def scored_digits(settings: Settings, batch: int) -> Iterator[tuple[dict[str, Any], int]]:
    """(exported digit, truth label) for every non-blank digit of a batch that matches a truth digit.
    Shared with benchmarks/bench_retrain.py."""
    from digitreader.db import session_scope
    from digitreader.export import export_json

    with session_scope(settings) as s:
        out = export_json(s, batch)
    for doc in out["documents"]:
        for page in doc["pages"]:
            for f in page["fields"]:
                for d in f["digits"]:
                    if d["blank"]:
                        continue
                    t = truth_label({"document": doc["path"], "bbox": d["bbox"], "page": page["number"]})
                    if t is not None:
                        yield d, t


def page_errors(settings: Settings, batch: int) -> tuple[int, int]:
    """(wrong, total) over the truth's non-blank digits that the pipeline found."""
    wrong = total = 0
    for d, t in scored_digits(settings, batch):
        total += 1
        wrong += int(d["label"] != t)
    return wrong, total


def label_flagged_from_truth(batch: int, capsys: pytest.CaptureFixture[str]) -> int:
    """`digitreader review list --json`, then `review label ID LABEL|x` for each, from ground truth."""
    from tests.test_review import _cli

    code, out, err = _cli(["review", "list", "--batch", str(batch), "--json"], capsys)
    assert code == 0, err
    items = [json.loads(line) for line in out.splitlines()]
    for it in items:
        t = truth_label(it)
        code, _, err = _cli(["review", "label", str(it["digit_id"]), "x" if t is None else str(t)], capsys)
        assert code == 0, err
    return len(items)


def test_loop_lowers_error_on_the_hard_style(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from digitreader import registry
    from digitreader.db import session_scope
    from digitreader.pipeline.process import load_predictor, process_batch
    from digitreader.settings import get_settings
    from digitreader.synth import generate
    from tests.test_review import _cli
    from training.corrections import HardStyleDigits

    home = tmp_path / "home"
    monkeypatch.setenv("DIGITREADER_HOME", str(home))
    monkeypatch.setenv("DIGITREADER_DATA_DIR", str(data_dir))
    monkeypatch.setenv("DIGITREADER_REVIEWER", "truth-bot")
    monkeypatch.setenv("DIGITREADER_WORKERS", "1")
    for var in ("DIGITREADER_DATABASE_URL", "DIGITREADER_MODEL_PATH", "DIGITREADER_THRESHOLD"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    settings = get_settings()
    try:
        onnx_path, weights = train_base(tmp_path / "base", data_dir)
        with session_scope(settings) as s:
            registry.register_model(s, settings, onnx_path, weights=weights, status="active")
        live = load_predictor(settings)
        assert live.info.version == "base-test"

        hard = HardStyleDigits()
        seen = generate(tmp_path / "seen", pages=3, seed=101, kind="form", style="clean", digit_source=hard)
        fresh = generate(tmp_path / "fresh", pages=2, seed=202, kind="form", style="clean", digit_source=hard)
        seen_batch = process_batch(seen, settings, predictor=live).batch_id
        before_batch = process_batch(fresh, settings, predictor=live).batch_id
        wrong0, total = page_errors(settings, before_batch)
        assert total >= 60 and wrong0 / total >= 0.15, f"the hard style should fool the base model ({wrong0}/{total})"

        labelled = label_flagged_from_truth(seen_batch, capsys)
        assert labelled >= 30

        # What a person runs: digitreader train --with-corrections --promote (small settings).
        code, out, err = _cli(["train", "--with-corrections", "--promote", "--epochs", "2", "--limit", "3000",
                               "--corrections-weight", "15", "--out", str(tmp_path / "ft"),
                               "--model-version", "ft-test"], capsys)  # fmt: skip
        assert code == 0, err
        result = json.loads(out)
        assert (tmp_path / "ft" / "report.md").exists() and (tmp_path / "ft" / "weights.pt").exists()
        # Its int8 file is kept only if it reads MNIST test about as well as the model (gate's tolerance).
        q = result["int8"]
        assert q["kept"] == (q["accuracy_int8"] >= q["accuracy_fp32"] - 0.0005) and 0.98 < q["agreement"] <= 1
        assert (tmp_path / "ft" / "model.int8.onnx").exists() == q["kept"]
        assert result["parent"] == "base-test" and result["corrected_trained"] > 0
        assert result["frozen_corrected"] > 0  # held out, never trained on
        promo = result["promotion"]
        assert promo is not None and promo["promoted"], promo["reasons"]
        base_m, cand_m = promo["active"], promo["candidate"]
        assert cand_m["corrected_accuracy"] > base_m["corrected_accuracy"]
        assert cand_m["mnist_test_accuracy"] >= base_m["mnist_test_accuracy"] - 0.0005

        # The same predictor object (a running pipeline) picks the new model up, no restart.
        after = process_batch(fresh, settings, predictor=live, force=True)
        assert after.model_version == "base-test" or live.info.version == "ft-test"
        assert live.info.version == "ft-test" and live.info.precision == ("int8" if q["kept"] else "fp32")
        wrong1, total1 = page_errors(settings, after.batch_id)
        assert total1 == total
        assert wrong1 <= 0.5 * wrong0, f"error on fresh hard-style pages: {wrong0}/{total} -> {wrong1}/{total1}"
    finally:
        get_settings.cache_clear()
        dispose_engines()
