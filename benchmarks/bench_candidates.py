"""Compare candidate models on validation data only (how the shipped model is chosen).

    .venv/bin/python benchmarks/bench_candidates.py digitreader/models/default.onnx runs/a/model.onnx ...

For each ONNX model:
- MNIST validation accuracy (the fixed 5,000-digit split of the training set; never the test set);
- digit crops that segmentation cuts from pages made of validation digits (`training/pagecrops.py`
  with its digit source restricted to the validation split): share read right, and share of the
  real pairs, pieces and stray slots rejected as "not a digit";
- optionally (`--e2e-pages N`) the end-to-end benchmark (`benchmarks/bench_e2e.py`, PNG, all
  cores) on N pages made of validation digits: digits right, error among unflagged, flagged.
The MNIST test set and the test-digit benchmark pages are left for reporting after the choice.

End to end, each candidate reads the digits while the string splitter keeps its own model
(DIGITREADER_SPLITTER, default the shipped splitter); with `--as-splitter` each candidate is tried as
the splitter's model instead, beside the shipped reader (how splitter-1.0.0 was chosen):

    .venv/bin/python benchmarks/bench_candidates.py runs/a/model.onnx --e2e-pages 150 --as-splitter
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_e2e import generate_validation_pages, run_e2e  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path, help="ONNX model files")
    default_data = os.environ.get("DIGITREADER_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--data-dir", default=default_data)
    ap.add_argument("--crop-pages", type=int, default=150, help="pages of validation digits cut into crops")
    ap.add_argument("--crop-seed", type=int, default=4242)
    ap.add_argument("--e2e-pages", type=int, default=0, help="end-to-end pages of validation digits (0: skip)")
    ap.add_argument("--as-splitter", action="store_true", help="end to end, try each model as the string splitter's")
    ap.add_argument("--e2e-seed", type=int, default=777)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "digitreader-bench")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from training import export
    from training.data import load_mnist, train_val_split
    from training.pagecrops import KINDS, MnistTrainDigits, generate_page_crops
    from training.run import SPLIT_SEED, VAL_SIZE

    full = load_mnist("train", args.data_dir)
    assert full.labels is not None
    _, val_idx = train_val_split(len(full), VAL_SIZE, SPLIT_SEED)
    val = full.subset(val_idx)
    source = MnistTrainDigits(full.images, full.labels, val_idx)
    crops = generate_page_crops(args.crop_pages, args.crop_seed, args.data_dir, source=source)
    print(f"validation crops: {crops.counts}", file=sys.stderr)
    pages_dir = None
    if args.e2e_pages:
        pages_dir = args.cache / f"synth-mixed-png-{args.e2e_pages}-seed{args.e2e_seed}-validation"
        if not (pages_dir / ".complete").exists():
            digits = MnistTrainDigits(full.images, full.labels, val_idx)
            generate_validation_pages(pages_dir, args.e2e_pages, args.e2e_seed, digits)
            (pages_dir / ".complete").write_text("ok")

    digit = crops.kinds == KINDS.index("digit")
    rows = []
    for model in args.models:
        row: dict[str, object] = {"model": str(model)}
        zv = export.onnx_logits(model, val.images)
        row["mnist_val_pct"] = round(100 * float((zv.argmax(1) == val.labels).mean()), 2)
        pred = export.onnx_logits(model, crops.crops).argmax(1)
        row["crop_digits_right_pct"] = round(100 * float((pred[digit] == crops.labels[digit]).mean()), 2)
        others = pred[~digit]
        row["crop_pairs_pieces_rejected_pct"] = round(100 * float((others == 10).mean()), 1) if others.size else None
        if pages_dir is not None:
            path = str(model.resolve())
            if args.as_splitter:
                e2e = run_e2e(pages_dir, decode=False, splitter=path)
            else:
                e2e = run_e2e(pages_dir, decode=False, model_path=path)
            for k in ("digit_accuracy_pct", "unflagged_error_pct", "flagged_pct", "field_exact_pct"):
                row[f"val_pages_{k}"] = e2e[k]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(json.dumps({"crop_counts": crops.counts, "rows": rows}, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"crop_counts": crops.counts, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
