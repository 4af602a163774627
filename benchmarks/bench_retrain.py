"""Benchmark: the review -> retrain loop on the shipped model, at a realistic size.

    DIGITREADER_DATA_DIR=../shared/datasets nice -n 5 .venv/bin/python benchmarks/bench_retrain.py \\
        --init-from runs/quick > /tmp/bench_retrain.json

1. The shipped model (digitreader/models/) is registered as the active model with its PyTorch
   weights (`--init-from`: the run it was exported from; checked against the ONNX file, max |diff|
   of the logits < 1e-4, else refused).
2. `--seen` pages and `--fresh` pages are generated in a hard style (`HardStyleDigits`: heavy slant,
   very thick or broken strokes, crossed sevens, flagged ones; generated, not MNIST) and read by
   the embedded pipeline.
3. Every flagged digit of the seen pages is labelled from ground truth through the review CLI
   (`digitreader review list --json` / `review label ID LABEL`, in-process).
4. `retrain` (training/corrections.py, same as `digitreader train --with-corrections --promote`)
   fine-tunes, registers a candidate and runs the promotion gate.
5. The fresh pages are read again by the same pipeline object (it follows the active model) and
   scored against their ground truth; MNIST test accuracy comes from the gate's evaluation.

Prints one JSON object (stdout); progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench_retrain")


def _cli(args: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    from digitreader.cli.main import main

    buf = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(args)
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, buf.getvalue()


def _flag_stats(settings: Any, batch: int) -> dict[str, int]:
    from tests.test_retrain import scored_digits

    n = dict.fromkeys(("digits", "wrong", "flagged", "wrong_unflagged"), 0)
    for d, t in scored_digits(settings, batch):
        n["digits"] += 1
        bad = d["label"] != t
        n["wrong"] += bad
        n["flagged"] += d["needs_review"]
        n["wrong_unflagged"] += bad and not d["needs_review"]
    return n


def _crops_with_truth(settings: Any, batch: int) -> tuple[Any, Any]:
    """The stored crops of a batch's non-blank digits that match a truth digit, and their truth labels."""
    import numpy as np
    from sqlalchemy import select

    from digitreader.db import Digit, Document, Field, Page, session_scope
    from tests.test_retrain import truth_label

    crops, labels = [], []
    with session_scope(settings) as s:
        rows = s.execute(
            select(Digit, Page.number, Document.path)
            .join(Field, Digit.field_id == Field.id)
            .join(Page, Field.page_id == Page.id)
            .join(Document, Page.document_id == Document.id)
            .where(Document.batch_id == batch, Digit.crop.is_not(None))
        ).all()
        for d, page, path in rows:
            t = truth_label({"document": path, "bbox": list(d.bbox), "page": page})
            if t is None:
                continue
            assert d.crop is not None  # the query keeps only stored crops
            crops.append(np.frombuffer(d.crop, np.uint8).reshape(28, 28))
            labels.append(t)
    return np.stack(crops), np.array(labels)


def _model_on(path: Path, settings: Any, crops: Any, labels: Any) -> dict[str, float]:
    from digitreader.pipeline.recognize import Predictor

    r = Predictor.load(path, settings=settings).predict(crops)
    wrong = r.labels != labels
    flagged = r.needs_review
    return {"digits": int(len(labels)), "error": round(float(wrong.mean()), 4),
            "flagged": round(float(flagged.mean()), 4),
            "error_unflagged": round(float((wrong & ~flagged).sum() / max(1, (~flagged).sum())), 4)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init-from", required=True, help="run folder / weights of the shipped model")
    ap.add_argument("--seen", type=int, default=20, help="hard-style pages whose flagged digits get labelled")
    ap.add_argument("--fresh", type=int, default=10, help="fresh hard-style pages for the before/after score")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--weight", type=int, default=10)
    ap.add_argument("--mnist-per-epoch", type=int, default=15000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--report", action="store_true", help="full training report (slower)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")

    import os

    import numpy as np
    import torch

    from digitreader import registry
    from digitreader.db import session_scope
    from digitreader.pipeline.process import load_predictor, process_batch
    from digitreader.pipeline.recognize import MODELS_DIR, read_manifest
    from digitreader.settings import Settings, get_settings
    from digitreader.synth import generate
    from training.corrections import HardStyleDigits, RetrainConfig, load_weights, retrain, save_weights
    from training.data import load_mnist
    from training.export import onnx_logits
    from training.fit import predict_logits

    tmp = Path(tempfile.mkdtemp(prefix="bench_retrain-"))
    os.environ["DIGITREADER_HOME"] = str(tmp / "home")
    os.environ["DIGITREADER_REVIEWER"] = "bench-truth"
    os.environ.pop("DIGITREADER_DATABASE_URL", None)
    os.environ.pop("DIGITREADER_MODEL_PATH", None)
    get_settings.cache_clear()
    settings: Settings = get_settings()
    timings: dict[str, float] = {}

    shipped = MODELS_DIR / read_manifest()["model"]
    model, arch = load_weights(Path(args.init_from))
    x = load_mnist("test", settings.data_dir).images[:512]
    diff = float(np.abs(predict_logits(model, x, device=torch.device("cpu")) - onnx_logits(shipped, x)).max())
    if diff > 1e-4:
        raise SystemExit(f"--init-from {args.init_from} is not the shipped model's weights (max |diff| {diff:.2e})")
    weights = save_weights(model, arch, tmp / "shipped.pt", "shipped", registry.file_sha256(shipped))
    with session_scope(settings) as s:
        base = registry.register_model(s, settings, shipped, weights=weights, status="active").version
    live = load_predictor(settings)

    t = time.perf_counter()
    hard = HardStyleDigits()
    seen = generate(tmp / "seen", pages=args.seen, seed=1001, kind="form", style="scan", digit_source=hard)
    fresh = generate(tmp / "fresh", pages=args.fresh, seed=2002, kind="form", style="scan", digit_source=hard)
    timings["generate"] = time.perf_counter() - t

    t = time.perf_counter()
    seen_batch = process_batch(seen, settings, predictor=live).batch_id
    before_batch = process_batch(fresh, settings, predictor=live).batch_id
    timings["read_before"] = time.perf_counter() - t
    seen_stats = _flag_stats(settings, seen_batch)
    before = _flag_stats(settings, before_batch)
    log.info("before: %s", before)

    t = time.perf_counter()
    code, out = _cli(["review", "list", "--batch", str(seen_batch), "--json"])
    assert code == 0
    from tests.test_retrain import truth_label

    items = [json.loads(line) for line in out.splitlines()]
    for it in items:
        lab = truth_label(it)
        code, _ = _cli(["review", "label", str(it["digit_id"]), "x" if lab is None else str(lab)])
        assert code == 0
    timings["label_cli"] = time.perf_counter() - t
    log.info("labelled %d flagged digits in %.1f s", len(items), timings["label_cli"])

    t = time.perf_counter()
    cfg = RetrainConfig(out=str(tmp / "ft"), epochs=args.epochs, weight=args.weight,
                        mnist_per_epoch=args.mnist_per_epoch, lr=args.lr, version="bench-ft", report=args.report,
                        promote=True)  # fmt: skip
    result = retrain(cfg, settings)
    timings["retrain_and_gate"] = time.perf_counter() - t

    t = time.perf_counter()
    after_batch = process_batch(fresh, settings, predictor=live, force=True).batch_id
    timings["read_after"] = time.perf_counter() - t
    after = _flag_stats(settings, after_batch)
    promo = result["promotion"]
    # The same stored crops of the fresh pages (segmentation held fixed) through both models.
    crops, truth = _crops_with_truth(settings, before_batch)
    crop_before = _model_on(shipped, settings, crops, truth)
    crop_after = _model_on(Path(result["model"]), settings, crops, truth)
    out_json = {
        "machine": "2-core x86-64, no GPU (shared with other jobs)",
        "base": base, "candidate": result["version"], "promoted": promo["promoted"], "gate": promo["reasons"],
        "seen_pages": args.seen, "fresh_pages": args.fresh, "seen": seen_stats, "labelled": len(items),
        "corrected_trained": result["corrected_trained"], "frozen_corrected": result["frozen_corrected"],
        "fresh_before": before, "fresh_after": after, "model_after": live.info.version,
        "fresh_crops_base_model": crop_before, "fresh_crops_candidate": crop_after,
        "mnist_test_before": promo["active"]["mnist_test_accuracy"],
        "mnist_test_after": promo["candidate"]["mnist_test_accuracy"],
        "frozen_corrected_before": promo["active"]["corrected_accuracy"],
        "frozen_corrected_after": promo["candidate"]["corrected_accuracy"],
        "epochs": args.epochs, "weight": args.weight, "mnist_per_epoch": args.mnist_per_epoch, "lr": args.lr,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }  # fmt: skip
    print(json.dumps(out_json, indent=1))


if __name__ == "__main__":
    main()
