"""fp32 against int8 (DIGITREADER_PRECISION): the models alone, then end to end, runs alternated.

    .venv/bin/python benchmarks/bench_precision.py                       # 200 A4 forms, seed 2024, 5 rounds
    .venv/bin/python benchmarks/bench_precision.py --kind mixed --rounds 3 --json out.json

1. Each shipped model (the reader and the string splitter) in both precisions, alone: crops per
   CPU-second at batch 256 on one thread (`training.export.throughput_cpu`), and how many of the
   MNIST test labels the int8 file changes.
2. The embedded pipeline on the same generated pages (`bench_e2e.py`'s cache) with
   DIGITREADER_PRECISION=fp32 and =int8 in turn, `--rounds` times each, alternated so that a VM
   slowing down or speeding up hits both alike: pages/s of every run and the medians, with digit
   accuracy, flagged share and error among unflagged digits of each precision (the same on every run
   of one precision: the pipeline is deterministic).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_e2e import generate_pages, run_e2e  # noqa: E402

from digitreader import cpu  # noqa: E402

PRECISIONS = ("fp32", "int8")
SCORES = ("digits_right", "truth_digits", "digit_accuracy_pct", "flagged_pct", "unflagged_error_pct", "field_exact_pct")


def model_rates(data_dir: str, batch: int = 256) -> list[dict[str, Any]]:
    """Both shipped models in both precisions: crops per CPU-second at `batch`, one thread
    (`training.export.throughput_cpu`), and how many MNIST test labels the int8 file changes."""
    from digitreader.pipeline.recognize import MODELS_DIR, int8_path
    from training.data import load_mnist
    from training.export import throughput_cpu
    from training.quantize import labels

    images = load_mnist("test", data_dir).images
    out = []
    for name, model in (("reader", MODELS_DIR / "default.onnx"), ("splitter", MODELS_DIR / "splitter" / "model.onnx")):
        row: dict[str, Any] = {"model": name}
        for precision, path in (("fp32", model), ("int8", int8_path(model))):
            row[f"{precision}_crops_per_cpu_s"] = round(throughput_cpu(path, batch))
        row["labels_changed"] = int((labels(model, images) != labels(int8_path(model), images)).sum())
        row["of"] = len(images)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--kind", default="form", help="form (A4, as the throughput target), cheque or mixed")
    ap.add_argument("--rounds", type=int, default=5, help="runs of each precision, alternated")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "digitreader-bench")
    default_data = os.environ.get("DIGITREADER_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--data-dir", default=default_data)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    os.environ["DIGITREADER_DATA_DIR"] = args.data_dir

    result: dict[str, Any] = {"machine": cpu.summary(), "models": model_rates(args.data_dir)}
    for row in result["models"]:
        print(f"{row['model']}: {row['fp32_crops_per_cpu_s']} -> {row['int8_crops_per_cpu_s']} crops per CPU-second, "
              f"{row['labels_changed']} of {row['of']} labels changed", file=sys.stderr)  # fmt: skip
    scans = generate_pages(args.cache, args.pages, args.seed, Path(args.data_dir), "png", args.kind)
    runs: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    scores: dict[str, dict[str, Any]] = {}
    for r in range(args.rounds):
        for precision in PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]:
            os.environ["DIGITREADER_PRECISION"] = precision
            res = run_e2e(scans, decode=False, sweep=())
            assert res["precision"] == precision, res["precision"]
            runs[precision].append(res["pages_per_s"])
            scores[precision] = {k: res[k] for k in SCORES}
            print(f"round {r + 1} {precision}: {res['pages_per_s']} pages/s", file=sys.stderr)
    os.environ.pop("DIGITREADER_PRECISION", None)
    result["pipeline"] = {
        p: {"pages_per_s": runs[p], "median_pages_per_s": statistics.median(runs[p]), **scores[p]} for p in PRECISIONS
    }
    result.update(pages=args.pages, seed=args.seed, kind=args.kind, rounds=args.rounds)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
